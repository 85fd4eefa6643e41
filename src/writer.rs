//! The only code that changes user rows, and the only code that writes `backup` and
//! `audit_log`. Five ways in:
//!
//! - `write_decided`: a batch of `CALL run` (or of a dry `run_now`), decided beforehand
//!   (without locks) and handed over as the arrays the decision built (`Decided`);
//!   `write_batch` for the same as decoded `Changes`;
//! - `decided_update_cte` and `log_written`: `run_now`, whose statements decide and
//!   update a range of keys each with the caller's rights (src/batch.rs), and whose written
//!   rows are then logged as the owner, from text, like step 1 below but after the
//!   UPDATE (its rows stay locked until the caller commits anyway);
//! - `write_selected`: rows chosen by a query of the caller (apply_decisions,
//!   soft_delete_orphans, and `restore`), read into arrays and written as a batch;
//! - `restore`: a rollback, from a run's backup;
//! - `release_quarantined`: rows the guard kept out, inserted or updated back from
//!   `quarantine` with the caller's rights, then marked and logged.
//!
//! Every write is three statements of one transaction, the rows to change passed as
//! arrays (a CTE `changes` of `(key, old, new, phase, source, rule, evidence)`):
//!
//! 1. as the extension's owner, the backup and audit rows of every row about to change,
//!    from text only (no code of the user's runs as the owner); no user row is locked yet;
//! 2. with the caller's rights, one `UPDATE ... FROM`, only where the column still holds
//!    `old` (rechecked on the newest row version): an application that set the value in
//!    the meantime wins. When rows other sessions hold are to be skipped, a lock step
//!    (`FOR NO KEY UPDATE SKIP LOCKED`) comes first. Rows are locked from here to the
//!    commit only;
//! 3. as the owner again, the removal of the log rows of any row not written after all
//!    (and, for a batch of a run's pass, the record of its key for the next pass,
//!    `run_skipped`).
//!
//! So the change, its backup and its audit commit or vanish together. A write that is
//! not guarded (a forced rollback) locks its rows and reads what they hold first; a dry
//! run writes nothing. A batch of `CALL run` first waits briefly for rows other sessions
//! hold; when that wait runs out, the procedure does the batch again, skipping them
//! (sql/procedures.sql).

use crate::catalog::Column;
use crate::error::{BackfillError, Result};
use crate::guard;
use crate::job::Target;
use crate::sql::{self, get, get_required, Statement, Value};
use std::time::Instant;

/// The rows a decision changes, column by column, in key order, as text (every key
/// and tenant type converts to text and back exactly; `rollback` relies on it too).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub key: Vec<Option<String>>,
    pub old: Vec<Option<String>>,
    pub new: Vec<Option<String>>,
    pub phase: Vec<Option<String>>,
    pub source: Vec<Option<String>>,
    pub rule: Vec<Option<String>>,
    pub evidence: Vec<Option<String>>,
}

impl Changes {
    /// The seven arrays of a row, in field order, from column `first` on.
    pub fn from_row(row: &pgrx::spi::SpiHeapTupleData, first: usize) -> Result<Changes> {
        let array = |i: usize| -> Result<Vec<Option<String>>> {
            Ok(get::<Vec<Option<String>>>(row, first + i)?.unwrap_or_default())
        };
        Ok(Changes {
            key: array(0)?,
            old: array(1)?,
            new: array(2)?,
            phase: array(3)?,
            source: array(4)?,
            rule: array(5)?,
            evidence: array(6)?,
        })
    }

    /// The lowest and highest key: the arrays are in key order.
    pub(crate) fn key_range(&self) -> Option<(String, String)> {
        match (self.key.first(), self.key.last()) {
            (Some(Some(lowest)), Some(Some(highest))) => Some((lowest.clone(), highest.clone())),
            _ => None,
        }
    }

    /// The seven arrays as arguments, in field order.
    fn into_arrays(self) -> ChangeArrays {
        let Changes { key, old, new, phase, source, rule, evidence } = self;
        [key, old, new, phase, source, rule, evidence].map(Value::TextArray)
    }
}

/// The seven arrays of rows to change, `(key, old, new, phase, source, rule, evidence)`,
/// as `text[]` arguments: from `Changes`, or as a decision returned them (`Decided`).
type ChangeArrays = [Value; 7];

/// The columns of `arrays` the UPDATE needs: keys, values and phases (the empty arrays
/// unnest as NULLs), so the evidence is parsed once, for the audit log.
fn for_update(arrays: &ChangeArrays) -> ChangeArrays {
    let [key, old, new, phase, ..] = arrays;
    [
        key.clone(),
        old.clone(),
        new.clone(),
        phase.clone(),
        Value::TextArray(Vec::new()),
        Value::TextArray(Vec::new()),
        Value::TextArray(Vec::new()),
    ]
}

/// The seven arrays of rows to change kept from a statement (`sql::Kept`, in `Changes`
/// order), as arguments.
fn kept_arrays(kept: &sql::Kept, what: &str) -> Result<ChangeArrays> {
    let value =
        |i: usize| kept.value(i).ok_or_else(|| BackfillError::Internal(format!("array {} of {what} was NULL", i + 1)));
    Ok([value(0)?, value(1)?, value(2)?, value(3)?, value(4)?, value(5)?, value(6)?])
}

/// The rows a batch's decision changes, as the decision's statement returned them: seven
/// `text[]` kept as Postgres built them (`sql::Kept`), in key order, with how many rows
/// and their lowest and highest key.
pub struct Decided {
    pub arrays: sql::Kept,
    pub rows: i64,
    pub key_range: Option<(String, String)>,
}

impl Decided {
    fn arrays(&self) -> Result<ChangeArrays> {
        kept_arrays(&self.arrays, "a decision")
    }

    /// The rows as `Changes`, for the writes that look at them row by row.
    fn decoded(&self) -> Result<Changes> {
        let params = self.arrays()?;
        sql::select_one_row(sql::fixed("SELECT $1, $2, $3, $4, $5, $6, $7"), &params, "a decision's arrays", |row| {
            Changes::from_row(row, 1)
        })
    }
}

/// How to write.
pub struct WriteSpec<'a> {
    pub target: &'a Target,
    /// The column written: the tenant column, or the soft-delete column.
    pub column: &'a Column,
    pub run_id: i64,
    /// Skip rows other sessions have locked (for a later pass) instead of waiting.
    pub skip_locked: bool,
    /// Write only where the column still holds `changes.old` (false only for a forced rollback).
    pub guard: bool,
    /// Count what would change without writing anything.
    pub dry_run: bool,
    /// The pass of a run of committed batches this write is a batch of: the rows it does
    /// not write are recorded for the next pass (`run_skipped`), which decides those keys
    /// again and no others. So a run writes a row once, and its backup holds one row per
    /// row it changed, which `rollback` and `validate` rely on.
    pub pass: Option<i32>,
}

impl<'a> WriteSpec<'a> {
    /// A write in one transaction that waits for rows other sessions hold and writes
    /// only where the column still holds `old`: every write but a batch of `CALL run` and
    /// a forced rollback.
    pub fn guarded(target: &'a Target, column: &'a Column, run_id: i64, dry_run: bool) -> WriteSpec<'a> {
        WriteSpec { target, column, run_id, skip_locked: false, guard: true, dry_run, pass: None }
    }
}

/// What a write did.
#[derive(Clone, Debug)]
pub struct Written {
    /// Rows `changes` named.
    pub planned: i64,
    pub changed: i64,
    /// `{"1": 15, "override": 1}`: rows changed per phase, JSON text.
    pub by_phase: String,
    /// How long the rows were held locked, from the UPDATE on (the commit that follows
    /// releases them), in milliseconds.
    pub locked_ms: f64,
}

/// Writes a batch as its decision returned it: passed on to the write's statements as
/// it is, or decoded for a write that looks at the rows one by one first (a dry run, a
/// forced write).
pub fn write_decided(spec: &WriteSpec, decided: Decided) -> Result<Written> {
    if decided.rows == 0 {
        return Ok(Written { planned: 0, changed: 0, by_phase: "{}".into(), locked_ms: 0.0 });
    }
    if spec.dry_run || !spec.guard {
        return write_batch(spec, decided.decoded()?);
    }
    write_logging_first(spec, decided.arrays()?, decided.rows, decided.key_range.as_ref())
}

/// Writes a decided batch.
pub fn write_batch(spec: &WriteSpec, changes: Changes) -> Result<Written> {
    let planned = changes.key.len() as i64;
    if planned == 0 {
        return Ok(Written { planned, changed: 0, by_phase: "{}".into(), locked_ms: 0.0 });
    }
    if spec.dry_run {
        let by_phase = phase_counts(&changes.phase);
        return Ok(Written { planned, changed: planned, by_phase, locked_ms: 0.0 });
    }
    // An unguarded write (a forced rollback) replaces whatever the rows hold now: lock
    // them first and log what they hold, then write as a guarded batch would.
    let changes = if spec.guard { changes } else { as_they_are(spec, changes)? };
    // The UPDATE then reads only the batch's stretch of the key index. Without it the
    // planner, which cannot see where a batch's keys lie, joins by reading the key index
    // from the table's first row, and later batches take longer and longer.
    let key_range = changes.key_range();
    write_logging_first(spec, changes.into_arrays(), planned, key_range.as_ref())
}

/// `upd` for a statement that decides and writes at once (`run_now`, src/batch.rs):
/// the rows of the CTE `rows` (key, old, new, phase, source, rule, evidence, the key and
/// the values in their own types) updated where the column still holds `old`, with the
/// caller's rights; starts with a comma. Nothing is logged yet: `log_written` logs
/// what the UPDATE returned, in the same transaction. For a guarded write that waits
/// for rows other sessions hold (`run_now`'s; src/batch.rs checks it).
pub(crate) fn decided_update_cte(spec: &WriteSpec, rows: &str) -> String {
    let key = spec.target.key.sql_name();
    let col = spec.column.sql_name();
    format!(
        "\n, upd AS (\n    UPDATE {target} t SET {col} = c.new FROM {rows} c\n     \
         WHERE t.{key} {key_eq} c.key AND {guard}\n    \
         RETURNING c.key, c.old, c.new, c.phase, c.source, c.rule, c.evidence)",
        target = spec.target.rel.sql_name(),
        key_eq = spec.target.key.ops().eq,
        guard = spec.column.ops().not_distinct(&format!("t.{col}"), "c.old"),
    )
}

/// The backup and audit rows of rows already written (`decided_update_cte`), as the
/// extension's owner, from text only, like the first statement of a logging-first write.
pub(crate) fn log_written(spec: &WriteSpec, written: &sql::Kept) -> Result<()> {
    let arrays = kept_arrays(written, "the rows written")?;
    let mut log = Statement::new();
    let changes_cte = changes_as_text(arrays, &mut log);
    let log_ctes = log_ctes(spec, &mut log, "changes", false);
    log.sql = format!("WITH {changes_cte}{log_ctes}\nSELECT");
    sql::as_extension_owner(|| sql::execute(&log.sql, &log.params))?;
    Ok(())
}

/// `{"1": 15, "override": 1}`: how many rows of each phase, as JSON text.
fn phase_counts(phases: &[Option<String>]) -> String {
    let mut counts = serde_json::Map::new();
    for phase in phases.iter().flatten() {
        let n = counts.get(phase).and_then(serde_json::Value::as_i64).unwrap_or(0);
        counts.insert(phase.clone(), serde_json::Value::from(n + 1));
    }
    serde_json::Value::Object(counts).to_string()
}

/// The rows of `changes`, locked (`FOR NO KEY UPDATE`, waiting for other sessions) and
/// with `old` as they hold it now; rows that are gone are left out.
fn as_they_are(spec: &WriteSpec, changes: Changes) -> Result<Changes> {
    let mut st = Statement::new();
    let changes_cte = changes_from_arrays(spec, changes.into_arrays(), &mut st);
    st.sql = format!(
        "WITH {changes_cte}\n\
         SELECT {arrays}\n  \
         FROM changes c CROSS JOIN LATERAL (SELECT t.{col} AS actual FROM {target} t\n\
         \x20                                  WHERE t.{key} {key_eq} c.key FOR NO KEY UPDATE OF t) t",
        arrays = ["c.key", "t.actual", "c.new", "c.phase", "c.source", "c.rule", "c.evidence"]
            .map(|e| format!("pg_catalog.array_agg({e}::text ORDER BY c.key{})", spec.target.key.collate))
            .join(", "),
        col = spec.column.sql_name(),
        target = spec.target.rel.sql_name(),
        key = spec.target.key.sql_name(),
        key_eq = spec.target.key.ops().eq,
    );
    select_changes(&st)
}

/// Decodes the seven arrays of a statement's one row into `Changes`.
fn select_changes(st: &Statement) -> Result<Changes> {
    sql::select_one_row(&st.sql, &st.params, "the rows to change", |row| Changes::from_row(row, 1))
}

/// Writes the rows that `select` (a query whose columns are those of `changes`, its
/// values already in the statement) returns: read with the caller's rights, then
/// written as a batch is.
pub fn write_selected(spec: &WriteSpec, mut select: Statement) -> Result<Written> {
    select.sql = format!(
        "SELECT {}\n  FROM (\n{}) s",
        ["key", "old", "new", "phase", "source", "rule", "evidence"]
            .map(|c| format!("pg_catalog.array_agg(s.{c}::text ORDER BY s.key{})", spec.target.key.collate))
            .join(", "),
        select.sql
    );
    let changes = select_changes(&select)?;
    write_batch(spec, changes)
}

/// Puts back the values of `column` that run `original` replaced, as run `spec.run_id`
/// (phase `rollback`): from what the run wrote to what it found, only where the row
/// still holds what the run wrote (unless `spec.guard` is off, a forced rollback).
/// The target's guard lets these writes through: a rollback of a fill puts NULLs back.
pub fn restore(spec: &WriteSpec, original: i64) -> Result<Written> {
    // The backup as text, read as its owner (the caller's rights on the target were
    // checked; the backup's own rows are shown only to those who may read all of it).
    let (keys, written, found) = sql::as_extension_owner(|| {
        sql::select_one_row(
            "SELECT pg_catalog.array_agg(b.row_key ORDER BY b.row_key), pg_catalog.array_agg(b.new_value ORDER BY b.row_key),\n       \
             pg_catalog.array_agg(b.old_value ORDER BY b.row_key)\n  \
             FROM tenant_backfill.backup b\n \
             WHERE b.run_id = $1 AND b.column_name = $2::pg_catalog.text",
            &[Value::int8(original), Value::text(spec.column.name.clone())],
            "a run's backup",
            |row| {
                let array = |i| -> Result<Vec<Option<String>>> { Ok(get::<Vec<Option<String>>>(row, i)?.unwrap_or_default()) };
                Ok((array(1)?, array(2)?, array(3)?))
            },
        )
    })?;
    // Cast with the caller's rights: from what the run wrote back to what it found.
    let mut st = Statement::new();
    let (keys, written, found) =
        (st.param(Value::TextArray(keys)), st.param(Value::TextArray(written)), st.param(Value::TextArray(found)));
    let source = st.param(Value::text(format!("run {original}")));
    st.sql = format!(
        "SELECT {key} AS key, c.written::{ct} AS old, c.found::{ct} AS new,\n       \
         'rollback'::text AS phase, {source}::text AS source, 'rollback'::text AS rule, NULL::pg_catalog.jsonb AS evidence\n  \
         FROM ROWS FROM (pg_catalog.unnest({keys}::text[]), pg_catalog.unnest({written}::text[]),\n                 \
         pg_catalog.unnest({found}::text[])) AS c(key, written, found)",
        key = spec.target.key.from_text("c.key"),
        ct = spec.column.type_sql,
    );
    let _bypass = guard::Bypass::open(spec.target.rel.oid)?;
    write_selected(spec, st)
}

/// Puts the quarantined rows of the target that now carry a tenant back into the table
/// (an INSERT for a quarantined insert, an UPDATE for a quarantined update), marks them
/// released by run `spec.run_id`, and logs each; returns how many. `columns` are the
/// table's writable columns.
pub fn release_quarantined(spec: &WriteSpec, columns: &[String]) -> Result<i64> {
    let target = spec.target;
    // With the caller's rights: the quarantine rows it may see, into the table.
    let mut st = Statement::new();
    let target_oid = st.param(Value::Oid(target.rel.oid));
    let column_list = columns.iter().map(|c| sql::ident(c)).collect::<Vec<_>>().join(", ");
    // The quarantined row is kept as one composite value, `rec`, so none of the table's
    // column names can collide with the quarantine's own.
    let from_record = columns.iter().map(|c| format!("(q.rec).{}", sql::ident(c))).collect::<Vec<_>>().join(", ");
    let table = target.rel.sql_name();
    let key = target.key.sql_name();
    let tenant = target.tenant.sql_name();
    let key_eq = target.key.ops().eq;
    st.sql = format!(
        "WITH q AS (\n    SELECT x.quarantine_id, x.operation, pg_catalog.jsonb_populate_record(NULL::{table}, x.row_data) AS rec\n      \
         FROM tenant_backfill.quarantine x\n     \
         WHERE x.target = {target_oid}::pg_catalog.oid::pg_catalog.regclass AND x.released_at IS NULL)\n\
         , ready AS (SELECT * FROM q WHERE (q.rec).{tenant} IS NOT NULL)\n\
         , ins AS (\n    INSERT INTO {table} ({column_list}) OVERRIDING SYSTEM VALUE\n    \
         SELECT {from_record} FROM ready q WHERE q.operation = 'INSERT'\n    \
         RETURNING {key} AS key, {tenant} AS tenant)\n\
         , upd AS (\n    UPDATE {table} t SET ({column_list}) = ROW({from_record}) FROM ready q\n     \
         WHERE q.operation = 'UPDATE' AND t.{key} {key_eq} (q.rec).{key}\n    \
         RETURNING t.{key} AS key, t.{tenant} AS tenant)\n\
         SELECT (SELECT pg_catalog.array_agg(r.quarantine_id) FROM ready r),\n       \
         (SELECT pg_catalog.array_agg(d.key::text) FROM (SELECT * FROM ins UNION ALL SELECT * FROM upd) d),\n       \
         (SELECT pg_catalog.array_agg(d.tenant::text) FROM (SELECT * FROM ins UNION ALL SELECT * FROM upd) d)"
    );
    let (released, keys, tenants) = sql::select_one_row(&st.sql, &st.params, "a release", |row| {
        Ok((
            get::<Vec<Option<i64>>>(row, 1)?.unwrap_or_default(),
            get::<Vec<Option<String>>>(row, 2)?.unwrap_or_default(),
            get::<Vec<Option<String>>>(row, 3)?.unwrap_or_default(),
        ))
    })?;
    let written = keys.len() as i64;
    // As the extension: the quarantine rows marked released, and the logs.
    let mut log = Statement::new();
    let ids = log.param(Value::Int8Array(released));
    let run_id = log.param(Value::int8(spec.run_id));
    let released_by = log.param(Value::text(sql::current_role()));
    let keys = log.param(Value::TextArray(keys));
    let tenants = log.param(Value::TextArray(tenants));
    let log_ctes = log_ctes(spec, &mut log, "done", false);
    log.sql = format!(
        "WITH done AS (\n    SELECT d.key, NULL::text AS old, d.new, 'quarantine'::text AS phase, 'quarantine'::text AS source,\n           \
         'manual'::text AS rule, NULL::pg_catalog.jsonb AS evidence\n      \
         FROM ROWS FROM (pg_catalog.unnest({keys}::text[]), pg_catalog.unnest({tenants}::text[])) AS d(key, new))\n\
         , mark AS (\n    UPDATE tenant_backfill.quarantine x\n       \
         SET released_at = pg_catalog.clock_timestamp(), released_by = {released_by}::text::pg_catalog.name,\n           \
         released_run = {run_id}::pg_catalog.int8\n     \
         WHERE x.quarantine_id = ANY ({ids}::pg_catalog.int8[]))\n\
         {log_ctes}\n\
         SELECT pg_catalog.count(*) FROM done"
    );
    // `log_ctes` starts with a comma: it follows `mark`.
    sql::as_extension_owner(|| sql::execute(&log.sql, &log.params))?;
    Ok(written)
}

/// A guarded batch's write, in three statements of one transaction: the backup and
/// audit rows of every row to change (no user row is locked yet), then the UPDATE
/// (after a lock step, when held rows are skipped), then, when some rows were not
/// written (another session held them, or set them meanwhile), the removal of their
/// log rows. Rows are locked from the second statement to the commit: the log inserts,
/// about 40% of the write, are outside.
fn write_logging_first(
    spec: &WriteSpec,
    changes: ChangeArrays,
    planned: i64,
    key_range: Option<&(String, String)>,
) -> Result<Written> {
    let to_update = for_update(&changes);
    // As the extension's owner: so nothing in it may run code of the user's, and it casts
    // nothing to the user's types (a domain's CHECK could call a function of theirs).
    let mut log = Statement::new();
    let changes_cte = changes_as_text(changes, &mut log);
    let log_ctes = log_ctes(spec, &mut log, "changes", true);
    log.sql = format!(
        "WITH {changes_cte}{log_ctes}\n\
         SELECT (SELECT pg_catalog.array_agg(b.ctid::text) FROM bak b), (SELECT pg_catalog.array_agg(a.ctid::text) FROM aud a)"
    );
    let (backup_tids, audit_tids) = sql::as_extension_owner(|| {
        sql::select_one_row(&log.sql, &log.params, "a batch's log insert", |row| {
            Ok((
                get::<Vec<Option<String>>>(row, 1)?.unwrap_or_default(),
                get::<Vec<Option<String>>>(row, 2)?.unwrap_or_default(),
            ))
        })
    })?;

    let started = Instant::now();
    let mut st = Statement::new();
    let changes_cte = changes_from_arrays(spec, to_update, &mut st);
    let update = lock_and_update_ctes(spec, key_range, &mut st);
    st.sql = format!(
        "WITH {changes_cte}{update}\n\
         SELECT (SELECT pg_catalog.count(*) FROM upd), {BY_PHASE}::text,\n       \
         (SELECT pg_catalog.array_agg(c.key::text) FROM changes c WHERE NOT EXISTS (SELECT FROM upd u WHERE u.key {key_eq} c.key))",
        key_eq = spec.target.key.ops().eq,
    );
    let (changed, by_phase, not_written) = sql::select_one_row(&st.sql, &st.params, "a batch's write", |row| {
        Ok((
            get_required::<i64>(row, 1)?,
            get_required::<String>(row, 2)?,
            get::<Vec<Option<String>>>(row, 3)?.unwrap_or_default(),
        ))
    })?;
    if !not_written.is_empty() {
        unlog(spec, backup_tids, audit_tids, not_written)?;
    }
    Ok(Written { planned, changed, by_phase, locked_ms: started.elapsed().as_secs_f64() * 1000.0 })
}

/// Deletes the log rows `write_logging_first` wrote for `keys`, rows that were not
/// written after all (locked by another session, or changed meanwhile), found by their
/// ctids among the batch's own; and, for a batch of a run's pass, records their keys for
/// the next pass.
fn unlog(
    spec: &WriteSpec,
    backup_tids: Vec<Option<String>>,
    audit_tids: Vec<Option<String>>,
    keys: Vec<Option<String>>,
) -> Result<()> {
    let expected = 2 * keys.len() as i64;
    let mut st = Statement::new();
    let run_id = st.param(Value::int8(spec.run_id));
    let backup_tids = st.param(Value::TextArray(backup_tids));
    let audit_tids = st.param(Value::TextArray(audit_tids));
    let keys = st.param(Value::TextArray(keys));
    let skipped = match spec.pass {
        Some(pass) => {
            let target_oid = st.param(Value::Oid(spec.target.rel.oid));
            let pass = st.param(Value::Int4(Some(pass)));
            format!(
                "\n, s AS (\n    INSERT INTO tenant_backfill.run_skipped (run_id, target, pass, row_key)\n    \
                 SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, {pass}::pg_catalog.int4, k.key\n      \
                 FROM pg_catalog.unnest({keys}::text[]) AS k(key))"
            )
        }
        None => String::new(),
    };
    st.sql = format!(
        "WITH b AS (\n    DELETE FROM tenant_backfill.backup b WHERE b.ctid = ANY({backup_tids}::text[]::pg_catalog.tid[])\n       \
         AND b.run_id = {run_id}::pg_catalog.int8 AND b.row_key = ANY({keys}::text[]) RETURNING 1)\n\
         , a AS (\n    DELETE FROM tenant_backfill.audit_log a WHERE a.ctid = ANY({audit_tids}::text[]::pg_catalog.tid[])\n       \
         AND a.run_id = {run_id}::pg_catalog.int8 AND a.row_key = ANY({keys}::text[]) RETURNING 1){skipped}\n\
         SELECT (SELECT pg_catalog.count(*) FROM b) + (SELECT pg_catalog.count(*) FROM a)"
    );
    let removed = sql::as_extension_owner(|| sql::select_value::<i64>(&st.sql, &st.params))?.unwrap_or(0);
    if removed != expected {
        return Err(BackfillError::Internal(format!(
            "a batch removed {removed} log rows of rows it did not write, expected {expected}"
        )));
    }
    Ok(())
}

/// `changes AS (...)` over `changes` as text, for the statement that logs them as the
/// extension's owner: the text of each value is what the decision printed, exactly what
/// the log keeps, and nothing is cast to a type of the user's.
fn changes_as_text(changes: ChangeArrays, st: &mut Statement) -> String {
    let rows = unnest_changes(changes, st);
    format!(
        "changes AS (\n    SELECT c.key, c.old, c.new, c.phase, c.source, c.rule,\n           \
         tenant_backfill_internal._evidence_jsonb(c.evidence) AS evidence\n{rows})"
    )
}

/// `changes AS (...)` over `changes`, cast back to the key's and the written column's
/// types: for the statements that read or write the user's table with the caller's rights.
fn changes_from_arrays(spec: &WriteSpec, changes: ChangeArrays, st: &mut Statement) -> String {
    let rows = unnest_changes(changes, st);
    format!(
        "changes AS (\n    SELECT {key} AS key, c.old::{column_type} AS old, c.new::{column_type} AS new,\n           \
         c.phase, c.source, c.rule, tenant_backfill_internal._evidence_jsonb(c.evidence) AS evidence\n{rows})",
        key = spec.target.key.from_text("c.key"),
        column_type = spec.column.type_sql,
    )
}

/// `FROM (SELECT unnest(...) AS key, ...) AS c`: the seven arrays of `changes` as seven
/// `text[]` arguments, row by row. The unnests stand in a select list, where Postgres runs
/// them in step (the shorter padded with NULLs, as `ROWS FROM` would): a `ROWS FROM` fills
/// a tuplestore with each function's rows before the first row comes out, seven of them a
/// statement.
fn unnest_changes(changes: ChangeArrays, st: &mut Statement) -> String {
    let [key, old, new, phase, source, rule, evidence] = changes.map(|values| st.param(values));
    format!(
        "      FROM (SELECT pg_catalog.unnest({key}::text[]) AS key, pg_catalog.unnest({old}::text[]) AS old,\n              \
         pg_catalog.unnest({new}::text[]) AS new, pg_catalog.unnest({phase}::text[]) AS phase,\n              \
         pg_catalog.unnest({source}::text[]) AS source, pg_catalog.unnest({rule}::text[]) AS rule,\n              \
         pg_catalog.unnest({evidence}::text[]) AS evidence) AS c"
    )
}

/// `upd`: the rows of `changes` updated, after `locked` locked them when rows other
/// sessions hold are to be skipped or the write is not guarded; starts with a comma.
fn lock_and_update_ctes(spec: &WriteSpec, key_range: Option<&(String, String)>, st: &mut Statement) -> String {
    let target = spec.target.rel.sql_name();
    let key = spec.target.key.sql_name();
    let col = spec.column.sql_name();
    let key_ops = spec.target.key.ops();
    let key_eq = &key_ops.eq;
    let guard = if spec.guard {
        format!(" AND {}", spec.column.ops().not_distinct(&format!("t.{col}"), "c.old"))
    } else {
        String::new()
    };
    let skip = if spec.skip_locked { " SKIP LOCKED" } else { "" };
    let range = match key_range {
        Some((lowest, highest)) => {
            let lowest = spec.target.key.from_text(&st.param(Value::text(lowest.clone())));
            let highest = spec.target.key.from_text(&st.param(Value::text(highest.clone())));
            format!("\n       AND t.{key} {} {lowest} AND t.{key} {} {highest}", key_ops.ge, key_ops.le)
        }
        None => String::new(),
    };
    if spec.guard && !spec.skip_locked {
        // A guarded write that waits for rows other sessions hold needs no lock step: the
        // UPDATE waits for each such row and rechecks its WHERE, the guard included, on the
        // newest version, as `FOR NO KEY UPDATE` followed by the UPDATE would; and the value
        // it replaces is `old`, which the guard ensures. A lock step costs a second index
        // lookup and a lock record in the WAL per row, about a fifth of the time rows are
        // held (BENCHMARKS.md).
        return format!(
            "\n, upd AS (\n    UPDATE {target} t SET {col} = c.new FROM changes c\n     \
             WHERE t.{key} {key_eq} c.key{guard}{range}\n    \
             RETURNING c.key, c.old, c.new, c.phase, c.source, c.rule, c.evidence)"
        );
    }
    // `locked` finds each row through the key index (LATERAL: a plain join, once the
    // planner knows a batch's size, may become a merge join that reads the key index
    // from the table's first row). It carries everything the UPDATE needs, so the
    // UPDATE joins the target (by its key index) to one CTE: joining two CTEs to each
    // other has no index and degrades to a nested loop over both.
    format!(
        "\n, locked AS (\n    SELECT c.key, t.actual, c.new, c.phase, c.source, c.rule, c.evidence\n      \
         FROM changes c CROSS JOIN LATERAL (SELECT t.{col} AS actual FROM {target} t\n                                          \
         WHERE t.{key} {key_eq} c.key{guard} FOR NO KEY UPDATE OF t{skip}) t)\n\
         , upd AS (\n    UPDATE {target} t SET {col} = l.new FROM locked l\n     \
         WHERE t.{key} {key_eq} l.key{range}\n    \
         RETURNING l.key, l.actual AS old, l.new, l.phase, l.source, l.rule, l.evidence)"
    )
}

/// `aud` and `bak`: an audit row and a backup row for each row of `rows` (`upd`, the
/// rows just changed, `changes`, the rows about to be, or `done`, the released rows),
/// both returning their ctids when `ctids`; starts with a comma. The one place the
/// extension's backup and audit rows are written. The backup rows are made from the audit
/// rows the insert returns (the same key and values, as text), so `rows` is read once: read
/// by both inserts, a CTE is kept whole in a tuplestore first, the evidence of every row
/// included (the audit insert's returned rows are kept too, as any data-modifying CTE's
/// are, but only their key, values and ctid).
fn log_ctes(spec: &WriteSpec, st: &mut Statement, rows: &str, ctids: bool) -> String {
    let run_id = st.param(Value::int8(spec.run_id));
    let target_oid = st.param(Value::Oid(spec.target.rel.oid));
    let column_name = st.param(Value::text(spec.column.name.clone()));
    // The caller, named before the extension writes the row as its owner.
    let changed_by = st.param(Value::text(sql::current_role()));
    let (aud_ctid, bak_returning) = if ctids { (", ctid", " RETURNING ctid") } else { ("", "") };
    format!(
        "\n, aud AS (\n    INSERT INTO tenant_backfill.audit_log\n        \
         (run_id, target, row_key, column_name, old_value, new_value, phase, source, rule, evidence, changed_by)\n    \
         SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, u.key::text,\n           \
         {column_name}::text, u.old::text, u.new::text, u.phase, u.source, u.rule, u.evidence,\n           \
         {changed_by}::text\n      \
         FROM {rows} u\n    \
         RETURNING row_key, old_value, new_value{aud_ctid})\n\
         , bak AS (\n    INSERT INTO tenant_backfill.backup (run_id, target, row_key, column_name, old_value, new_value)\n    \
         SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, a.row_key,\n           \
         {column_name}::text, a.old_value, a.new_value FROM aud a{bak_returning})"
    )
}

/// `{"1": 15, "override": 1}`: rows changed per phase, from `upd`.
pub(crate) const BY_PHASE: &str =
    "(SELECT COALESCE(pg_catalog.jsonb_object_agg(x.phase, x.n), '{}'::pg_catalog.jsonb)\n          \
     FROM (SELECT u.phase, pg_catalog.count(*) AS n FROM upd u GROUP BY u.phase) x)";
