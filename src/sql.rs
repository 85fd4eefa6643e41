//! The small core under every capability: the only code that turns identifiers into
//! SQL text (always through pgrx's quoting helpers) and the one way the extension runs
//! SQL through SPI (always with values as SPI arguments, never spliced into the text).
//! The violations worker (rejections.rs) is the one exception: it runs in a background
//! worker's own transaction, outside any SQL function, with pgrx's SPI client directly.

use crate::error::{BackfillError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use pgrx::PgMemoryContexts;

/// A quoted identifier: `company_id`, `"CompanyId"`, `"Tenant Id"`.
pub fn ident(name: &str) -> String {
    pgrx::spi::quote_identifier(name)
}

/// A quoted schema-qualified name: `public.customers`, `"Sales Ops"."client; DROP TABLE x--"`.
pub fn qualified(schema: &str, name: &str) -> String {
    pgrx::spi::quote_qualified_identifier(schema, name)
}

/// A value passed to a statement as an SPI argument, with its own type: the text of a
/// statement never carries a value, and a placeholder's cast only states the type.
#[derive(Clone, Debug)]
pub enum Value {
    Text(Option<String>),
    Int4(Option<i32>),
    Int8(Option<i64>),
    Bool(Option<bool>),
    Float8(Option<f64>),
    Oid(pg_sys::Oid),
    TextArray(Vec<Option<String>>),
    Int8Array(Vec<Option<i64>>),
    /// A Datum of the given type, e.g. a row as a composite (the quarantine).
    Raw(pg_sys::Datum, pg_sys::Oid),
}

impl Value {
    pub fn text(value: impl Into<String>) -> Value {
        Value::Text(Some(value.into()))
    }

    pub fn int8(value: i64) -> Value {
        Value::Int8(Some(value))
    }

    fn to_datum(&self) -> DatumWithOid<'static> {
        match self {
            Value::Text(v) => v.clone().into(),
            Value::Int4(v) => (*v).into(),
            Value::Int8(v) => (*v).into(),
            Value::Bool(v) => (*v).into(),
            Value::Float8(v) => (*v).into(),
            Value::Oid(v) => (*v).into(),
            // From the strings where they are, without cloning them first (Postgres
            // copies each into the array): a batch passes thousands in each array.
            Value::TextArray(v) => v.iter().map(Option::as_ref).collect::<Vec<Option<&String>>>().into(),
            Value::Int8Array(v) => v.clone().into(),
            // SAFETY: the caller built the Datum as a value of that type.
            Value::Raw(datum, oid) => unsafe { DatumWithOid::new(*datum, *oid) },
        }
    }

    /// The value's text form, for a statement whose arguments travel as one `text[]`;
    /// None for a value that has no faithful text form here.
    fn as_text(&self) -> Option<Option<String>> {
        match self {
            Value::Text(t) => Some(t.clone()),
            Value::Int4(i) => Some(i.map(|i| i.to_string())),
            Value::Int8(i) => Some(i.map(|i| i.to_string())),
            Value::Bool(b) => Some(b.map(|b| b.to_string())),
            // Rust prints the shortest text that reads back as the same float8.
            Value::Float8(f) => Some(f.map(|f| f.to_string())),
            Value::Oid(o) => Some(Some(u32::from(*o).to_string())),
            Value::Raw(..) | Value::TextArray(_) | Value::Int8Array(_) => None,
        }
    }
}

/// How a statement's placeholders read their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Placeholders {
    /// `$1`, `$2`, ...: one SPI argument per value.
    #[default]
    Positional,
    /// `($1::pg_catalog.text[])[n]`: every value as text in one array, for PL/pgSQL's
    /// `RETURN QUERY EXECUTE ... USING`, which takes a fixed number of arguments.
    TextArray,
}

/// SQL text with its arguments, built up piece by piece: `param` adds a value and
/// returns its placeholder, so a builder never counts `$n` by hand, and the text is
/// never rewritten afterwards (a rewrite could not tell a placeholder from a `$` inside
/// a quoted identifier such as `"org$1"`).
#[derive(Clone, Debug, Default)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
    placeholders: Placeholders,
    /// Set when a value with no text form was added to a `TextArray` statement.
    unpackable: bool,
}

impl Statement {
    pub fn new() -> Self {
        Self::default()
    }

    /// A statement whose values all travel as one `text[]` argument (see `into_text_array`).
    pub fn with_text_array() -> Self {
        Statement { placeholders: Placeholders::TextArray, ..Self::default() }
    }

    /// Adds a value and returns its placeholder (`$3`), typed by the caller's cast.
    /// Every placeholder this crate writes is followed by a cast, so a value that
    /// travels as text reaches the same type.
    pub fn param(&mut self, value: Value) -> String {
        if self.placeholders == Placeholders::TextArray && value.as_text().is_none() {
            self.unpackable = true;
        }
        self.params.push(value);
        match self.placeholders {
            Placeholders::Positional => format!("${}", self.params.len()),
            Placeholders::TextArray => format!("($1::pg_catalog.text[])[{}]", self.params.len()),
        }
    }

    /// The SQL and its one `text[]` argument, for a statement built `with_text_array`.
    pub fn into_text_array(self) -> Result<(String, Vec<Option<String>>)> {
        if self.placeholders != Placeholders::TextArray || self.unpackable {
            return Err(BackfillError::Internal("this statement's arguments cannot travel as one text[]".into()));
        }
        let params = self.params.iter().filter_map(Value::as_text).collect();
        Ok((self.sql, params))
    }
}

/// A statement's text, and whether its plan is kept.
///
/// Most statements are planned for the values they are given, every time (SPI's
/// one-shot plans): a decision over a batch's keys, or an UPDATE over them, is only as
/// good as the estimates those values give. A `fixed` statement is a lookup whose best
/// plan does not depend on its values (a catalog row by OID, a run's row by id): it is
/// parsed and planned once per backend, as a generic, serial plan, and its plan kept
/// (Postgres replans it itself when the definition of a table it reads changes, or the
/// search_path, or, for a table with row-level security, the role). A batch of `CALL
/// run` runs some twenty of them, and planning them afresh cost each batch more than
/// its commit (BENCHMARKS.md, the fourth session of 2026-12-04).
#[derive(Clone, Copy, Debug)]
pub enum Sql<'a> {
    /// Planned for its values at every call.
    OneShot(&'a str),
    /// Planned once, generic, and the plan kept (`fixed`).
    Fixed(&'static str),
}

/// A statement whose plan is kept: its text is a constant, its values only select rows.
pub fn fixed(text: &'static str) -> Sql<'static> {
    Sql::Fixed(text)
}

impl Sql<'_> {
    fn text(&self) -> &str {
        match self {
            Sql::OneShot(text) => text,
            Sql::Fixed(text) => text,
        }
    }
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(text: &'a str) -> Self {
        Sql::OneShot(text)
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(text: &'a String) -> Self {
        Sql::OneShot(text)
    }
}

/// The most plans kept: `fixed` statements are constants, a few dozen in all, so the
/// limit only guards against a mistake; past it a statement is planned afresh (a kept
/// plan is never freed, so none can be freed while it runs further up the stack).
const MAX_KEPT_PLANS: usize = 256;

thread_local! {
    // A backend runs SQL on one thread. The plans live in CacheMemoryContext
    // (SPI_keepplan) for the life of the backend.
    static KEPT_PLANS: std::cell::RefCell<std::collections::HashMap<(&'static str, Vec<pg_sys::Oid>), pg_sys::SPIPlanPtr>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    // How many plans were prepared (for the tests: each once).
    static PREPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The kept plan of a `fixed` statement for these argument types, prepared and kept on
/// first use; None past MAX_KEPT_PLANS.
fn kept_plan(st: &mut SpiStatement, text: &'static str) -> Result<Option<pg_sys::SPIPlanPtr>> {
    let key = (text, st.types.clone());
    let (plan, full) = KEPT_PLANS.with(|plans| {
        let plans = plans.borrow();
        (plans.get(&key).copied(), plans.len() >= MAX_KEPT_PLANS)
    });
    if plan.is_some() || full {
        return Ok(plan);
    }
    PREPARED.with(|n| n.set(n.get() + 1));
    // SAFETY: the text is NUL-terminated and the types array holds nargs entries; SPI
    // raises an ERROR for a statement that does not parse. A kept plan belongs to no SPI
    // connection; SPI_freeplan frees it.
    unsafe {
        let plan = pg_sys::SPI_prepare_cursor(
            st.text.as_ptr(),
            st.nargs,
            st.types.as_mut_ptr(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as std::ffi::c_int,
        );
        if plan.is_null() {
            let code = pg_sys::SPI_result;
            return Err(BackfillError::Internal(format!("SPI could not prepare a statement ({code})")));
        }
        let code = pg_sys::SPI_keepplan(plan);
        if code != 0 {
            pg_sys::SPI_freeplan(plan);
            return Err(BackfillError::Internal(format!("SPI could not keep a plan ({code})")));
        }
        KEPT_PLANS.with(|plans| plans.borrow_mut().insert(key, plan));
        Ok(Some(plan))
    }
}

/// How many plans this backend keeps, and how many it prepared (for the tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn kept_plans() -> (usize, usize) {
    (KEPT_PLANS.with(|plans| plans.borrow().len()), PREPARED.with(std::cell::Cell::get))
}

/// The arguments as Datums. Called inside `Spi::connect_mut`, where the current memory
/// context is SPI's, freed when the call ends: built outside, a batch's arrays stayed
/// allocated until the calling function returned.
fn datums(params: &[Value]) -> Vec<DatumWithOid<'static>> {
    params.iter().map(Value::to_datum).collect()
}

/// A statement's text and arguments as SPI takes them: a type, a value and a null flag
/// for each argument. The values are the arguments' Datums, which point into SPI's
/// memory (`datums`) for a by-reference type, so they live until the connection ends.
struct SpiStatement {
    text: std::ffi::CString,
    nargs: i32,
    types: Vec<pg_sys::Oid>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<std::ffi::c_char>,
}

impl SpiStatement {
    fn new(sql: &str, args: &[DatumWithOid]) -> Result<SpiStatement> {
        let text = std::ffi::CString::new(sql)
            .map_err(|_| BackfillError::Internal("a statement's text held a NUL byte".into()))?;
        let nargs = i32::try_from(args.len()).map_err(|_| BackfillError::Internal("too many arguments".into()))?;
        let mut statement = SpiStatement {
            text,
            nargs,
            types: Vec::with_capacity(args.len()),
            values: Vec::with_capacity(args.len()),
            nulls: Vec::with_capacity(args.len()),
        };
        for arg in args {
            statement.types.push(arg.oid());
            let (value, null) = match arg.datum() {
                Some(datum) => (datum.sans_lifetime(), b' '),
                None => (pg_sys::Datum::from(0usize), b'n'),
            };
            statement.values.push(value);
            statement.nulls.push(null as std::ffi::c_char);
        }
        Ok(statement)
    }
}

/// Runs one statement read-write, as pgrx's `SpiClient::update` ran it
/// (`SPI_execute_with_args` with read_only false: the command counter advanced and, in
/// read committed, a snapshot of its own, so it sees what the statements before it
/// wrote, and may write; a one-shot plan for these argument values, parallel allowed),
/// but without `update`'s first step, which asks for the current transaction's id and
/// so assigns one: every statement, reads included, took a transaction id, and inside
/// `in_subtransaction` a subtransaction id (`plan` took 17), and past 64 in one
/// transaction every other session's snapshots overflow. Postgres assigns one itself to
/// a statement that writes or locks rows. Returns how many rows it processed and the
/// rows it returned, which point into SPI's memory until the connection ends (a
/// released subtransaction leaves them there; only an aborted one frees its results).
/// A `fixed` statement runs its kept plan (`SPI_execute_plan`, read_only false too: the
/// same snapshot and command counter), generic and serial.
fn run_read_write<'conn>(
    _client: &SpiClient<'conn>,
    sql: Sql<'_>,
    args: &[DatumWithOid],
) -> Result<(u64, Vec<SpiHeapTupleData<'conn>>)> {
    let mut st = SpiStatement::new(sql.text(), args)?;
    let plan = match sql {
        Sql::Fixed(text) => kept_plan(&mut st, text)?,
        Sql::OneShot(_) => None,
    };
    // SAFETY: the arrays hold nargs entries each and outlive the call; SPI raises an
    // ERROR for a statement that fails, and the client's connection is open. A kept
    // plan was prepared for these argument types.
    let code = unsafe {
        pg_sys::SPI_tuptable = std::ptr::null_mut();
        match plan {
            Some(plan) => pg_sys::SPI_execute_plan(plan, st.values.as_mut_ptr(), st.nulls.as_ptr(), false, 0),
            None => pg_sys::SPI_execute_with_args(
                st.text.as_ptr(),
                st.nargs,
                st.types.as_mut_ptr(),
                st.values.as_mut_ptr(),
                st.nulls.as_ptr(),
                false,
                0,
            ),
        }
    };
    Spi::check_status(code)?;
    // SAFETY: SPI_tuptable is the result of the statement just run (or null for one
    // that returns no rows), kept in the connection's memory.
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() {
            return Ok((pg_sys::SPI_processed, Vec::new()));
        }
        let count = (*table).numvals as usize;
        let mut rows = Vec::with_capacity(count);
        for i in 0..count {
            if let Some(row) = SpiHeapTupleData::new((*table).tupdesc, *(*table).vals.add(i))? {
                rows.push(row);
            }
        }
        Ok((count as u64, rows))
    }
}

/// Opens a cursor for one statement with read_only false, as `run_read_write` runs one
/// and as pgrx's `try_open_cursor_mut` opened it, without asking for a transaction id;
/// returns its name. The statement runs at the first fetch. (Its plan, as before, is
/// SPI's cached kind: serial, and generic under `plan_cache_mode = force_generic_plan`.)
fn open_read_write_cursor(_client: &SpiClient<'_>, sql: &str, args: &[DatumWithOid]) -> Result<String> {
    let mut st = SpiStatement::new(sql, args)?;
    // SAFETY: as in run_read_write (the portal copies the arguments);
    // SPI_cursor_open_with_args raises an ERROR rather than return no portal, and the
    // portal's name is a NUL-terminated string.
    unsafe {
        let portal = pg_sys::SPI_cursor_open_with_args(
            std::ptr::null(),
            st.text.as_ptr(),
            st.nargs,
            st.types.as_mut_ptr(),
            st.values.as_mut_ptr(),
            st.nulls.as_ptr(),
            false,
            0,
        );
        if portal.is_null() {
            return Err(BackfillError::Internal("SPI opened no cursor".into()));
        }
        Ok(std::ffi::CStr::from_ptr((*portal).name).to_string_lossy().into_owned())
    }
}

/// Runs a statement and decodes every row it returns with `decode`. Every statement
/// runs under settings pinned for it alone (`with_pinned_settings`: the search_path and
/// how values print): the SET clause of the calling function covers its start only, and
/// code of the user's that a statement runs (a domain's CHECK, a trigger) could change
/// them for the ones after.
///
/// Every statement runs read-write (`run_read_write`), reads included: a read-only SPI call
/// would keep the function's first snapshot and miss what an earlier statement of the
/// same call wrote (a run's row, a batch's counts), and could not run the write path's
/// data-modifying CTEs at all.
pub fn select_rows<'a, T>(
    sql: impl Into<Sql<'a>>,
    params: &[Value],
    mut decode: impl FnMut(&SpiHeapTupleData) -> Result<T>,
) -> Result<Vec<T>> {
    let sql = sql.into();
    with_pinned_settings(|| {
        Spi::connect_mut(|client| {
            let args = datums(params);
            let (_, rows) = in_subtransaction(|| run_read_write(client, sql, &args))?;
            in_spi_memory(|| {
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(decode(row)?);
                }
                Ok(out)
            })
        })
    })
}

/// Runs a statement that always returns exactly one row (an aggregate, a write's
/// summary) and decodes it; `what` names the statement in the error if it returns none.
pub fn select_one_row<'a, T>(
    sql: impl Into<Sql<'a>>,
    params: &[Value],
    what: &str,
    decode: impl FnMut(&SpiHeapTupleData) -> Result<T>,
) -> Result<T> {
    select_rows(sql, params, decode)?
        .into_iter()
        .next()
        .ok_or_else(|| BackfillError::Internal(format!("{what} returned no row")))
}

/// Values a statement returned, kept as Postgres made them, in a memory context of their
/// own that is freed when this is dropped: for later statements to take as arguments
/// (`Kept::value`). A batch's arrays of thousands of elements so go from the statement
/// that built them to the ones that write them without being decoded into Rust strings
/// and encoded back, which took 4-5% of a `CALL run` (BENCHMARKS.md).
pub struct Kept {
    values: Vec<Option<pg_sys::Datum>>,
    types: Vec<pg_sys::Oid>,
    // Last: the values point into it.
    _memory: PgMemoryContexts,
}

impl Kept {
    /// Value `i` (from 0) of those kept, as an argument; None for a NULL. The argument
    /// points into this value's memory: it is passed to statements while this lives.
    pub fn value(&self, i: usize) -> Option<Value> {
        let datum = (*self.values.get(i)?)?;
        Some(Value::Raw(datum, *self.types.get(i)?))
    }
}

/// Runs a statement that returns one row, as `select_one_row` does, and keeps columns
/// `keep` (1-based) as they are (`Kept`).
pub fn select_one_row_keeping<'a, T>(
    sql: impl Into<Sql<'a>>,
    params: &[Value],
    what: &str,
    keep: std::ops::RangeInclusive<usize>,
    mut decode: impl FnMut(&SpiHeapTupleData) -> Result<T>,
) -> Result<(T, Kept)> {
    let sql = sql.into();
    // Made here, outside the SPI connection, whose memory the connection's end frees.
    let mut memory = PgMemoryContexts::new("tenant_backfill kept values");
    let (decoded, values, types) = with_pinned_settings(|| {
        Spi::connect_mut(|client| {
            let args = datums(params);
            let (_, rows) = in_subtransaction(|| run_read_write(client, sql, &args))?;
            let Some(row) = rows.first() else {
                return Err(BackfillError::Internal(format!("{what} returned no row")));
            };
            let decoded = in_spi_memory(|| decode(row))?;
            let (mut values, mut types) = (Vec::new(), Vec::new());
            // SAFETY: SPI_tuptable is the result of the statement just run (it returned a
            // row, so it is not null), and each column kept is within its descriptor; a
            // varlena is copied into memory that outlives the connection.
            unsafe {
                let table = pg_sys::SPI_tuptable;
                let tupdesc = (*table).tupdesc;
                for column in keep {
                    let attribute = attribute_number(tupdesc, column, what)?;
                    let mut is_null = false;
                    let datum = pg_sys::SPI_getbinval(*(*table).vals, tupdesc, attribute, &mut is_null);
                    let type_oid = pg_sys::SPI_gettypeid(tupdesc, attribute);
                    let (mut length, mut by_value) = (0i16, false);
                    pg_sys::get_typlenbyval(type_oid, &mut length, &mut by_value);
                    let value = match (is_null, by_value, length) {
                        (true, ..) => None,
                        (false, true, _) => Some(datum),
                        // A varlena (an array): copied whole, decompressed if it was.
                        (false, false, -1) => {
                            Some(memory.switch_to(|_| {
                                pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr()))
                            }))
                        }
                        _ => return Err(BackfillError::Internal(format!("{what}: column {column} cannot be kept"))),
                    };
                    values.push(value);
                    types.push(type_oid);
                }
            }
            Ok((decoded, values, types))
        })
    })?;
    Ok((decoded, Kept { values, types, _memory: memory }))
}

/// Runs a statement through a cursor and hands its rows to `each` `chunk` rows at a
/// time: for a statement whose result is too big to hold at once. A statement that
/// writes runs to completion at the first fetch, its rows kept by Postgres in a
/// tuplestore that goes to disk past `work_mem`. Each chunk is fetched in an SPI session
/// of its own, so its rows are freed before the next one, and `each` runs outside any
/// session. Of the rows whose column `marker` is NULL, `each` gets columns `arrays` as
/// one array each, built by Postgres from the rows' values and kept (`Kept`), with how
/// many rows they hold; the other rows decoded by `decode`. So a statement's thousands of
/// written rows reach the statement that logs them without each value being decoded into
/// a Rust string and encoded back into an array.
pub fn stream_arrays<T>(
    sql: &str,
    params: &[Value],
    chunk: i64,
    arrays: std::ops::RangeInclusive<usize>,
    marker: usize,
    mut decode: impl FnMut(&SpiHeapTupleData) -> Result<T>,
    mut each: impl FnMut(Kept, i64, Vec<T>) -> Result<()>,
) -> Result<()> {
    with_pinned_settings(|| {
        let cursor = Spi::connect_mut(|client| -> Result<String> {
            let args = datums(params);
            in_subtransaction(|| open_read_write_cursor(client, sql, &args))
        })?;
        let streamed = (|| loop {
            // Made outside the SPI session, whose memory its end frees.
            let mut memory = PgMemoryContexts::new("tenant_backfill kept values");
            let fetched = Spi::connect_mut(
                |client| -> Result<Option<(Vec<Option<pg_sys::Datum>>, Vec<pg_sys::Oid>, i64, Vec<T>)>> {
                    let mut open = client.find_cursor(&cursor)?;
                    let rows = in_subtransaction(|| open.fetch(chunk))?.len();
                    let fetched = if rows == 0 {
                        Ok(None)
                    } else {
                        // SAFETY: SPI_tuptable is the result of the fetch just made (it returned
                        // rows), kept in this session's memory; the columns are checked against
                        // its descriptor; construct_md_array copies the values into `memory`.
                        unsafe { gather_arrays(&arrays, marker, &mut memory, &mut decode).map(Some) }
                    };
                    // Left open for the next chunk (dropping it would close it).
                    open.detach_into_name();
                    fetched
                },
            )?;
            let Some((values, types, rows, others)) = fetched else {
                return Ok(());
            };
            each(Kept { values, types, _memory: memory }, rows, others)?;
        })();
        // Closed on every way out; an error that aborts the transaction closes it too.
        Spi::connect_mut(|client| drop(client.find_cursor(&cursor)));
        streamed
    })
}

/// Column `column` (1-based) of a result's descriptor as the attribute number SPI takes,
/// or an error naming `what` when it has no such column.
///
/// # Safety
/// `tupdesc` must be a valid tuple descriptor.
unsafe fn attribute_number(tupdesc: pg_sys::TupleDesc, column: usize, what: &str) -> Result<i32> {
    i32::try_from(column)
        .ok()
        .filter(|&c| c >= 1 && c <= (*tupdesc).natts)
        .ok_or_else(|| BackfillError::Internal(format!("{what} has no column {column}")))
}

/// `stream_arrays`' work on one fetched chunk (SPI_tuptable): the arrays of columns
/// `arrays` over the rows whose `marker` is NULL, in `memory`, their types and how many
/// rows; the other rows decoded.
///
/// # Safety
/// SPI_tuptable must be the result of a fetch that returned rows, in the open session.
unsafe fn gather_arrays<T>(
    arrays: &std::ops::RangeInclusive<usize>,
    marker: usize,
    memory: &mut PgMemoryContexts,
    decode: &mut impl FnMut(&SpiHeapTupleData) -> Result<T>,
) -> Result<(Vec<Option<pg_sys::Datum>>, Vec<pg_sys::Oid>, i64, Vec<T>)> {
    let table = pg_sys::SPI_tuptable;
    let tupdesc = (*table).tupdesc;
    let attribute = |column: usize| attribute_number(tupdesc, column, "a streamed statement");
    let marker = attribute(marker)?;
    let tuples = std::slice::from_raw_parts((*table).vals, (*table).numvals as usize);
    let (mut kept, mut others) = (Vec::with_capacity(tuples.len()), Vec::new());
    for &tuple in tuples {
        let mut is_null = false;
        pg_sys::SPI_getbinval(tuple, tupdesc, marker, &mut is_null);
        if is_null {
            kept.push(tuple);
        } else if let Some(row) = SpiHeapTupleData::new(tupdesc, tuple)? {
            others.push(in_spi_memory(|| decode(&row))?);
        }
    }
    let (mut values, mut types) = (Vec::new(), Vec::new());
    for column in arrays.clone() {
        let attribute = attribute(column)?;
        let element = pg_sys::SPI_gettypeid(tupdesc, attribute);
        let array_type = pg_sys::get_array_type(element);
        if array_type == pg_sys::InvalidOid {
            return Err(BackfillError::Internal(format!("column {column} of a streamed statement has no array type")));
        }
        if kept.is_empty() {
            values.push(None);
            types.push(array_type);
            continue;
        }
        let (mut datums, mut nulls) = (Vec::with_capacity(kept.len()), Vec::with_capacity(kept.len()));
        for &tuple in &kept {
            let mut is_null = false;
            datums.push(pg_sys::SPI_getbinval(tuple, tupdesc, attribute, &mut is_null));
            nulls.push(is_null);
        }
        let (mut length, mut by_value, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(element, &mut length, &mut by_value, &mut align);
        let mut dims = [i32::try_from(kept.len()).map_err(|_| BackfillError::Internal("too many rows".into()))?];
        let mut lower_bounds = [1i32];
        let array = memory.switch_to(|_| {
            pg_sys::construct_md_array(
                datums.as_mut_ptr(),
                nulls.as_mut_ptr(),
                1,
                dims.as_mut_ptr(),
                lower_bounds.as_mut_ptr(),
                element,
                i32::from(length),
                by_value,
                align,
            )
        });
        values.push(Some(pg_sys::Datum::from(array)));
        types.push(array_type);
    }
    Ok((values, types, kept.len() as i64, others))
}

/// Runs a statement that returns one value (or none).
pub fn select_value<'a, T: FromDatum + IntoDatum>(sql: impl Into<Sql<'a>>, params: &[Value]) -> Result<Option<T>> {
    let sql = sql.into();
    with_pinned_settings(|| {
        Spi::connect_mut(|client| {
            let args = datums(params);
            let (_, rows) = in_subtransaction(|| run_read_write(client, sql, &args))?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            in_spi_memory(|| Ok(row.get::<T>(1)?))
        })
    })
}

/// Runs `decode` in a child of SPI's memory context. pgrx copies every value it decodes
/// into the parent of the current context; inside SPI that parent is the transaction's
/// context, where a batch's arrays would pile up until commit (`run_now` grew with the
/// table). From a child of SPI's context, the copies land in SPI's, freed when the
/// call ends, after `decode` has turned them into Rust values.
fn in_spi_memory<R>(decode: impl FnOnce() -> R) -> R {
    let mut context = PgMemoryContexts::new("tenant_backfill decode");
    // SAFETY: the context lives until the end of this function, and nothing allocated
    // in it (or in its parent) is used after the SPI call that encloses it.
    unsafe { context.switch_to(|_| decode()) }
}

/// How many `as_extension_owner` calls are under way: their statements write only the
/// extension's own tables and run no code of the user's.
static OWNER_DEPTH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How many `as_extension_owner_checked` calls are under way.
static CHECKED_DEPTH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs one SPI call in a subtransaction of its own, as PL/pgSQL's exception blocks and
/// PL/Python's `plpy.execute` do. An ERROR raised under it by code that opened an SPI
/// connection of its own (a PL/pgSQL trigger, a foreign-key check) leaves that
/// connection on SPI's stack; pgrx turns the ERROR into a panic, and its SPI client,
/// dropped on the way out, then finished the other connection instead of its own and
/// left the backend in a memory context already freed: the re-raised ERROR crashed the
/// server. Rolling back the subtransaction first pops what was opened under it, as a
/// transaction's abort would; the ERROR then goes on as it was. Statements run as the
/// extension's owner run no such code and skip it: each writing subtransaction takes a
/// transaction id of its own, and past 64 in one transaction every other session's
/// snapshots overflow (`run_now` logs thousands of chunks in one, the guard may write a
/// row for every row of a bulk INSERT). Except those that fire the foreign keys between
/// the extension's own tables, whose checks run under SPI (`as_extension_owner_checked`).
fn in_subtransaction<T>(call: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering::Relaxed;
    if OWNER_DEPTH.load(Relaxed) > 0 && CHECKED_DEPTH.load(Relaxed) == 0 {
        return call();
    }
    // SAFETY: as PL/pgSQL's exec_stmt_block: the subtransaction is begun, and released
    // or rolled back, here, inside the caller's SPI connection, and the memory context
    // and resource owner are put back after either.
    unsafe {
        let (context, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
        match outcome {
            Ok(value) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                value
            }
            Err(error) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                std::panic::resume_unwind(error)
            }
        }
    }
}

/// Runs `work` with JIT compilation off, then puts the caller's setting back (the
/// change is transaction-local, so an error that aborts the transaction undoes it too).
/// The engine's statements are planned afresh on every call, and their estimates count
/// the per-tenant probe of a conflicting key as if every row had one: Postgres compiled
/// each batch statement (40 ms to a 5000-row batch of 150 ms) and optimized the
/// whole-table plan (400 ms), compilations that a single execution never pays back.
pub fn without_jit<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = select_value::<String>(fixed("SELECT pg_catalog.current_setting('jit')"), &[])?;
    execute(fixed("SELECT pg_catalog.set_config('jit', 'off', true)"), &[])?;
    let outcome = work();
    if let Some(previous) = previous {
        execute(fixed("SELECT pg_catalog.set_config('jit', $1, true)"), &[Value::text(previous)])?;
    }
    outcome
}

/// Runs a statement that writes; returns the number of rows it processed.
pub fn execute<'a>(sql: impl Into<Sql<'a>>, params: &[Value]) -> Result<u64> {
    let sql = sql.into();
    with_pinned_settings(|| {
        Spi::connect_mut(|client| {
            let args = datums(params);
            let (processed, _) = in_subtransaction(|| run_read_write(client, sql, &args))?;
            Ok(processed)
        })
    })
}

/// Reads column `ordinal` (1-based) of a row, as `T`.
pub fn get<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData, ordinal: usize) -> Result<Option<T>> {
    Ok(row.get::<T>(ordinal)?)
}

/// Reads a column that the query guarantees is NOT NULL.
pub fn get_required<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData, ordinal: usize) -> Result<T> {
    row.get::<T>(ordinal)?
        .ok_or_else(|| crate::error::BackfillError::Internal(format!("column {ordinal} of an internal query was NULL")))
}

/// Checks that the procedure calling this (`CALL tenant_backfill.run`, `finalize`) can
/// COMMIT: it was called on its own, not inside a transaction block, a function, or a
/// CALL that a function made. Called first, before anything is taken or written, so a
/// procedure that cannot commit leaves nothing behind (a run's session lock, once
/// taken, outlives a failed COMMIT).
pub fn require_nonatomic(procedure: &str) -> Result<()> {
    // SAFETY: both only read the state of the current transaction and of the SPI
    // connection of the PL/pgSQL procedure that called this function.
    let (nonatomic, in_block) = unsafe { (pg_sys::SPI_inside_nonatomic_context(), pg_sys::IsTransactionBlock()) };
    if nonatomic {
        return Ok(());
    }
    Err(BackfillError::CannotCommit {
        procedure: format!("CALL tenant_backfill.{procedure}"),
        context: if in_block { "a transaction block" } else { "a function or a CALL made by one" },
        in_block,
    })
}

/// The settings every statement of the extension runs under. The search_path, so
/// nothing resolves through the caller's. And how values print as text: keys travel
/// between statements, sessions and runs as text (runs.last_key and upper_key, the
/// backup's and the audit's row_key, a rollback's bounds), so they must read back as
/// the same value in any session. At extra_float_digits 0 or below a float8 key prints
/// rounded (1.0000000000000002 as 1), and a run would stop short of its last rows; under
/// DateStyle `SQL, DMY` a timestamp prints as 04/03/2026, which a session under MDY
/// reads back as another day; under IntervalStyle `sql_standard` an interval of -1 day
/// -02:03:04 prints as `-1 2:03:04`, which the default style reads back as -1 day
/// +02:03:04. Any positive extra_float_digits prints the shortest text that reads back
/// exactly; DateStyle `ISO` sets only the output style and keeps the caller's input
/// order (DMY, MDY) for the text the caller gives (a decisions table); bytea_output
/// `hex` makes a bytea key's text one spelling (an override names it so). TimeZone is
/// not pinned: a timestamptz prints with its offset and reads back exactly anywhere,
/// and pinning it would change what the user's own triggers compute; overrides on such
/// a key are printed again in the session that matches them (engine.rs, override_key).
/// sql/procedures.sql's plan, which runs the engine's statement from PL/pgSQL, carries
/// the same settings as SET clauses.
const PINNED_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 5] = [
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"extra_float_digits", c"1"),
    (c"DateStyle", c"ISO"),
    (c"IntervalStyle", c"postgres"),
    (c"bytea_output", c"hex"),
];

/// Runs `work` under PINNED_SETTINGS, as a function's SET clauses do: a GUC nest level
/// of its own, popped on the way out, and by Postgres itself when an error aborts the
/// (sub)transaction. For code that cannot carry the clauses: the guard trigger's
/// function, where a clause would cost every row, pins them only on the cold path,
/// around its own statements; and each statement, since code of the user's that one
/// runs (a trigger, a domain's CHECK) could change them for the ones after.
pub fn with_pinned_settings<T>(work: impl FnOnce() -> T) -> T {
    struct PopOnDrop(std::ffi::c_int);
    impl Drop for PopOnDrop {
        fn drop(&mut self) {
            // SAFETY: pops the nest level this function pushed, restoring the settings.
            unsafe { pg_sys::AtEOXact_GUC(true, self.0) }
        }
    }
    // SAFETY: as fmgr_security_definer does for a SET clause.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in PINNED_SETTINGS {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let _pop = PopOnDrop(level);
    work()
}

/// Runs `work` as the extension's owner: the one identity that may write the
/// extension's tables (no role is granted INSERT, UPDATE or DELETE on them). Each caller
/// checks the caller's rights on the user tables first; `work` holds only the statements
/// that write the extension's own tables. The user id is switched the way Postgres' own
/// referential-integrity triggers switch it (a local user-id change, so SET ROLE and
/// SET SESSION AUTHORIZATION are refused meanwhile) and switched back on the way out,
/// by Postgres itself when an error aborts the (sub)transaction.
pub fn as_extension_owner<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    struct SwitchBack(pg_sys::Oid, std::ffi::c_int);
    impl Drop for SwitchBack {
        fn drop(&mut self) {
            OWNER_DEPTH.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: restores the identity saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    // Security-restricted too, as Postgres runs index expressions and REFRESH: nothing
    // in it may SET ROLE or leave state behind (temporary objects, cursors).
    let owner = select_value::<pg_sys::Oid>(
        fixed("SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'tenant_backfill'"),
        &[],
    )?
    .ok_or_else(|| BackfillError::Internal("the extension tenant_backfill is not installed here".into()))?;
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets the current user id and security context of this backend.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as std::ffi::c_int,
        );
    }
    let _back = SwitchBack(user, context);
    OWNER_DEPTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    work()
}

/// `as_extension_owner`, for statements that fire the foreign keys between the
/// extension's own tables (a source, an override or a run's part names its target or
/// run; a target's removal cascades): their checks run under SPI connections of their
/// own, so each statement keeps its subtransaction (`in_subtransaction`). Configuration
/// and a run's start, a statement or a few per call.
pub fn as_extension_owner_checked<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Uncount;
    impl Drop for Uncount {
        fn drop(&mut self) {
            CHECKED_DEPTH.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    CHECKED_DEPTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _uncount = Uncount;
    as_extension_owner(work)
}

/// Runs `work` under a snapshot taken now, so it sees what other sessions committed
/// since the statement began (a read-only SPI statement uses the statement's own).
/// Read committed only: in a stricter transaction the snapshot is fixed.
pub fn with_fresh_snapshot<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            // SAFETY: pops the snapshot pushed below (an error aborting the transaction
            // pops it too, and then this runs during unwinding first).
            unsafe { pg_sys::PopActiveSnapshot() }
        }
    }
    // SAFETY: a new snapshot for this backend, pushed as the active one.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let _pop = Pop;
    work()
}

/// Sleeps, answering a cancel or termination at once (the latch wakes on either).
pub fn sleep(how_long: std::time::Duration) {
    // SAFETY: waits on this backend's own latch, as pg_sleep does, then resets it and
    // lets Postgres act on a pending interrupt (a cancel raises an ERROR here).
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            how_long.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
    }
}

/// The current user's name (`CURRENT_USER`), for rows the extension writes as its owner
/// on the caller's behalf.
pub fn current_role() -> String {
    // SAFETY: the name of the current user id, which exists while it is current.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true);
        if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}
