//! The guard trigger function (`tenant_backfill.guard()`, installed by src/guard.rs),
//! and the rows it leaves behind: a logged, assigned or quarantined write is recorded in
//! `violations` and a quarantined row is kept in `quarantine` from here; rejected writes
//! reach `violations` through src/rejections.rs, and `release_quarantine`
//! (src/api/guard.rs, through src/writer.rs) puts rows back.

use crate::catalog;
use crate::error::{BackfillError, OrRaise};
use crate::guard::GuardMode;
use crate::rejections;
use crate::sql::{self, Value};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, PgTupleDesc};

// The error type of the trigger's own code, next to std's Result of the trigger function.
type GuardResult<T> = crate::error::Result<T>;
use std::ffi::CStr;

// ------------------------------------------------------------------ the trigger

/// Postgres' version-1 calling convention for `guard_wrapper`.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_guard_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// The guard trigger function as Postgres calls it (`tenant_backfill.guard()`, declared
/// in sql/guard.sql). Written out rather than by `#[pg_trigger]`, whose wrapper answers
/// a direct call (`SELECT tenant_backfill.guard()`) with pgrx's panic text: here it is
/// a 39P01 that says what the function is for.
///
/// # Safety
/// Called by Postgres' function manager with a valid `fcinfo`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn guard_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the function manager passes a valid fcinfo; from_fcinfo checks that the
    // call comes from the trigger manager.
    let trigger = match unsafe { fcinfo.as_ref() }.map(|f| unsafe { PgTrigger::from_fcinfo(f) }) {
        Some(Ok(trigger)) => trigger,
        _ => BackfillError::NotCalledAsTrigger.raise(),
    };
    // A BEFORE trigger returns the row to write, or a null pointer to skip the write.
    let datum = match guard(&trigger) {
        // A row that cannot be handed back is an error, never a silently skipped write.
        Ok(Some(row)) => match row.into_trigger_datum() {
            Some(datum) => datum,
            None => BackfillError::Internal("the guard could not hand the row back".into()).raise(),
        },
        Ok(None) => pg_sys::Datum::from(0),
        Err(err) => err.raise(),
    };
    datum
}

/// The guard: the new row's tenant is read, and only a NULL one goes further.
fn guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BackfillError> {
    let Some(row) = trigger.new() else {
        return Ok(None);
    };
    let data = trigger.trigger_data();
    let tg = trigger.trigger();
    if tg.tgnargs < 3 || tg.tgargs.is_null() {
        BackfillError::BadArgument(
            "the tenant_backfill guard trigger needs its arguments (mode, tenant column, key column)".into(),
            "Install it with tenant_backfill.enforce(target, mode).".into(),
        )
        .raise();
    }
    // SAFETY: Postgres gives tgnargs C strings in tgargs for the firing trigger.
    let args = unsafe { std::slice::from_raw_parts(tg.tgargs, tg.tgnargs as usize) };
    // SAFETY: tg_relation is the open relation the trigger fires on.
    let (relid, tupdesc) = unsafe { ((*data.tg_relation).rd_id, (*data.tg_relation).rd_att) };
    if fired_after(data) {
        // An AFTER trigger's WHEN clause admitted the row: it ends with a NULL tenant.
        if crate::guard::bypassed_for(relid) {
            return Ok(None);
        }
        return sql::with_pinned_settings(|| {
            let attnum = guard_attnum(relid)?;
            after_null_tenant(data, args, attnum)
        })
        .map(|_| None)
        .or_raise_ok();
    }
    let attnum = before_attnum(tg);
    let tuple = new_tuple(data);
    // The hot path: one attribute, one NULL test.
    // SAFETY: tuple belongs to the relation described by tupdesc.
    if unsafe { !pg_sys::heap_attisnull(tuple, attnum as i32, tupdesc) } {
        return Ok(Some(row));
    }
    // A rollback puts back the NULLs a run replaced: its own writes pass.
    if crate::guard::bypassed_for(relid) {
        return Ok(Some(row));
    }
    // The cold path runs statements of its own: under the pinned settings, so nothing
    // in them resolves through the writer's search_path or prints as the writer's
    // session would.
    sql::with_pinned_settings(|| on_null_tenant(data, args, attnum, row)).or_raise_ok()
}

fn fired_after(data: &pg_sys::TriggerData) -> bool {
    (data.tg_event & pg_sys::TRIGGER_EVENT_TIMINGMASK) == pg_sys::TRIGGER_EVENT_AFTER
}

/// The tenant column's number: the first (only) column of the BEFORE trigger's `UPDATE
/// OF` list. Postgres keeps that list by number, so it follows a rename, and maps it to
/// each partition's own numbering when it clones the trigger.
fn before_attnum(tg: &pg_sys::Trigger) -> i16 {
    if tg.tgnattr >= 1 && !tg.tgattr.is_null() {
        // SAFETY: tgattr holds tgnattr attribute numbers.
        return unsafe { *tg.tgattr };
    }
    BackfillError::BadArgument(
        "the tenant_backfill guard trigger has no column list".into(),
        "Install the guard again: tenant_backfill.enforce(target).".into(),
    )
    .raise()
}

/// The tenant column's number for an AFTER trigger (which has no column list): the one
/// the same table's BEFORE guard trigger names. Only on the cold path.
fn guard_attnum(relid: pg_sys::Oid) -> GuardResult<i16> {
    sql::select_value::<i16>(
        "SELECT t.tgattr[0] FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = $2::text::pg_catalog.name",
        &[Value::Oid(relid), Value::text(crate::guard::TRIGGER_NAME)],
    )?
    .ok_or_else(|| {
        BackfillError::Internal("the guard's AFTER trigger found no BEFORE guard trigger on its table".into())
    })
}

trait OrRaiseOk<T> {
    fn or_raise_ok(self) -> std::result::Result<T, BackfillError>;
}

impl<T> OrRaiseOk<T> for GuardResult<T> {
    /// Raises with our own SQLSTATE rather than pgrx's generic trigger error.
    fn or_raise_ok(self) -> std::result::Result<T, BackfillError> {
        Ok(self.or_raise())
    }
}

fn arg(args: &[*mut std::ffi::c_char], i: usize) -> String {
    match args.get(i) {
        // SAFETY: trigger arguments are NUL-terminated strings.
        Some(p) if !p.is_null() => unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned(),
        _ => String::new(),
    }
}

fn new_tuple(data: &pg_sys::TriggerData) -> pg_sys::HeapTuple {
    if is_update(data) {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    }
}

fn is_update(data: &pg_sys::TriggerData) -> bool {
    (data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK) == pg_sys::TRIGGER_EVENT_UPDATE
}

/// A column of the new row as text (its output function), or None when NULL.
fn column_text(data: &pg_sys::TriggerData, name: &str) -> Option<String> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: as in `guard`.
    unsafe {
        let rel = data.tg_relation;
        let attnum = pg_sys::get_attnum((*rel).rd_id, cname.as_ptr());
        if attnum == pg_sys::InvalidAttrNumber as i16 {
            return None;
        }
        let value = pg_sys::SPI_getvalue(new_tuple(data), (*rel).rd_att, attnum as i32);
        if value.is_null() {
            None
        } else {
            Some(CStr::from_ptr(value).to_string_lossy().into_owned())
        }
    }
}

struct Violation {
    target: pg_sys::Oid,
    table: String,
    column: String,
    key: String,
    operation: &'static str,
    role: String,
    application: String,
}

fn describe(data: &pg_sys::TriggerData, args: &[*mut std::ffi::c_char], attnum: i16) -> GuardResult<Violation> {
    // SAFETY: tg_relation is valid while the trigger fires.
    let target = unsafe { (*data.tg_relation).rd_id };
    let rel = catalog::relation(target)?;
    // The column's name now (a rename since enforce changes it), from its number.
    let column = sql::select_value::<String>(
        "SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum = $2",
        &[Value::Oid(target), Value::Int4(Some(attnum.into()))],
    )?
    .unwrap_or_else(|| arg(args, 1));
    let application = sql::select_value::<String>("SELECT pg_catalog.current_setting('application_name')", &[])?;
    Ok(Violation {
        target,
        table: rel.sql_name(),
        column,
        key: column_text(data, &arg(args, 2)).unwrap_or_else(|| "NULL".into()),
        operation: if is_update(data) { "UPDATE" } else { "INSERT" },
        role: sql::current_role(),
        application: application.unwrap_or_default(),
    })
}

/// The cold path: the new row has no tenant.
fn on_null_tenant<'a>(
    data: &'a pg_sys::TriggerData,
    args: &[*mut std::ffi::c_char],
    attnum: i16,
    row: PgHeapTuple<'a, AllocatedByPostgres>,
) -> GuardResult<Option<PgHeapTuple<'a, AllocatedByPostgres>>> {
    let mode = GuardMode::parse(Some(arg(args, 0).as_str()))?;
    let v = describe(data, args, attnum)?;
    match mode {
        GuardMode::Reject => Err(reject(&v)),
        GuardMode::Log => {
            insert_violation(&v, mode, "logged")?;
            Ok(Some(row))
        }
        GuardMode::Quarantine => {
            quarantine(data, &v)?;
            insert_violation(&v, mode, "quarantined")?;
            // A BEFORE trigger that returns no row skips the write: the row waits in
            // quarantine instead of entering the table.
            Ok(None)
        }
        GuardMode::Assign => match assigned_tenant(data, args)? {
            Some(tenant) => {
                let tuple = with_tenant(data, attnum, &tenant)?;
                insert_violation(&v, mode, "assigned")?;
                // SAFETY: the tuple was built from the relation's own descriptor.
                let tupdesc = unsafe { PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att) };
                Ok(Some(unsafe { PgHeapTuple::from_heap_tuple(tupdesc, tuple) }))
            }
            None => Err(reject(&v)),
        },
    }
}

/// The backstop: a row that ends NULL although the guard ran before it (a BEFORE
/// trigger that fires after the guard set the tenant to NULL, or an UPDATE that does not
/// name the column, which the guard does not see). Rejected (mode `log` has no backstop).
fn after_null_tenant(data: &pg_sys::TriggerData, args: &[*mut std::ffi::c_char], attnum: i16) -> GuardResult<()> {
    let v = describe(data, args, attnum)?;
    let mut err = reject(&v);
    if let BackfillError::NullTenant { detail, hint, .. } = &mut err {
        *detail =
            format!("Failing row has key {}; a trigger that fired after the guard set {} to NULL.", v.key, v.column);
        *hint = Some(
            "Triggers fire in name order: a BEFORE trigger named after tenant_backfill_guard must keep the tenant."
                .into(),
        );
    }
    Err(err)
}

/// The rejection error, like Postgres' own NOT NULL message, recorded durably first.
fn reject(v: &Violation) -> BackfillError {
    rejections::record(v.target, &v.table, &v.column, &v.key, v.operation, &v.role, &v.application);
    BackfillError::NullTenant {
        message: format!(
            "null value in column \"{}\" of relation {} violates the tenant_backfill guard",
            v.column, v.table
        ),
        detail: format!("Failing row has key {}.", v.key),
        hint: None,
    }
}

fn insert_violation(v: &Violation, mode: GuardMode, action: &str) -> GuardResult<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.violations (target, row_key, column_name, role, application_name, mode, action, operation) \
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3::text::pg_catalog.name, $4::text::pg_catalog.name, $5, $6, $7, $8)",
            &[
                Value::Oid(v.target),
                Value::text(v.key.clone()),
                Value::text(v.column.clone()),
                Value::text(v.role.clone()),
                Value::text(v.application.clone()),
                Value::text(mode.as_str()),
                Value::text(action),
                Value::text(v.operation),
            ],
        )
    })?;
    Ok(())
}

fn quarantine(data: &pg_sys::TriggerData, v: &Violation) -> GuardResult<()> {
    // SAFETY: the new tuple and its descriptor; the copy is a composite Datum of the
    // table's row type.
    let (datum, row_type) = unsafe {
        let rel = data.tg_relation;
        let datum = pg_sys::heap_copy_tuple_as_datum(new_tuple(data), (*rel).rd_att);
        (datum, (*(*rel).rd_rel).reltype)
    };
    // The row as jsonb text, with the writer's rights: turning a value into json may call
    // a cast of the user's, which must never run as the extension's owner.
    let row_data =
        sql::select_value::<String>("SELECT pg_catalog.to_jsonb($1)::pg_catalog.text", &[Value::Raw(datum, row_type)])?;
    sql::as_extension_owner(|| {
        sql::execute(
            "INSERT INTO tenant_backfill.quarantine (target, operation, row_key, row_data, role, application_name) \
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4::pg_catalog.text::pg_catalog.jsonb, \
                     $5::pg_catalog.text::pg_catalog.name, $6)",
            &[
                Value::Oid(v.target),
                Value::text(v.operation),
                Value::text(v.key.clone()),
                Value::Text(row_data),
                Value::text(v.role.clone()),
                Value::text(v.application.clone()),
            ],
        )
    })?;
    Ok(())
}

/// The tenant `assign` gives a row: its parent's (through the foreign key column named
/// when the guard was installed), else the session's `tenant_backfill.tenant`.
fn assigned_tenant(data: &pg_sys::TriggerData, args: &[*mut std::ffi::c_char]) -> GuardResult<Option<String>> {
    let parent_column = arg(args, 3);
    if !parent_column.is_empty() {
        if let Some(parent_key) = column_text(data, &parent_column) {
            // SAFETY: tg_relation is valid while the trigger fires.
            let relid = unsafe { (*data.tg_relation).rd_id };
            let rel = catalog::relation(relid)?;
            let fk = catalog::parent_link(&rel, &parent_column, &arg(args, 1))?;
            fk.require_comparable()?;
            let lookup = format!(
                "SELECT p.{tenant}::text FROM {parent} p WHERE p.{key} {eq} {value}",
                tenant = sql::ident(&fk.parent_tenant),
                parent = fk.parent_table,
                key = fk.parent_key.sql_name(),
                value = fk.parent_key.from_text("$1"),
                eq = fk.parent_key.ops().eq,
            );
            if let Some(tenant) = sql::select_value::<String>(&lookup, &[Value::text(parent_key)])? {
                return Ok(Some(tenant));
            }
        }
    }
    let setting = sql::select_value::<String>(
        "SELECT NULLIF(pg_catalog.current_setting('tenant_backfill.tenant', true), '')",
        &[],
    )?;
    Ok(setting)
}

/// A copy of the new row with the tenant set (through the type's input function).
fn with_tenant(data: &pg_sys::TriggerData, attnum: i16, tenant: &str) -> GuardResult<pg_sys::HeapTuple> {
    let text = std::ffi::CString::new(tenant)
        .map_err(|_| BackfillError::BadArgument("the tenant contains a NUL byte".into(), String::new()))?;
    // SAFETY: attnum is a valid attribute of the relation; the input function of its type
    // parses the text (raising 22P02 itself for a value that does not fit).
    unsafe {
        let rel = data.tg_relation;
        let tupdesc = (*rel).rd_att;
        // The catalog, not the descriptor's layout, which differs between versions.
        let mut type_oid: pg_sys::Oid = pg_sys::InvalidOid;
        let mut typmod: i32 = -1;
        let mut collation: pg_sys::Oid = pg_sys::InvalidOid;
        pg_sys::get_atttypetypmodcoll((*rel).rd_id, attnum, &mut type_oid, &mut typmod, &mut collation);
        let mut input: pg_sys::Oid = pg_sys::InvalidOid;
        let mut ioparam: pg_sys::Oid = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(type_oid, &mut input, &mut ioparam);
        let value = pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, typmod);
        let mut values = [value];
        let mut nulls = [false];
        let mut columns = [attnum as i32];
        Ok(pg_sys::heap_modify_tuple_by_cols(
            new_tuple(data),
            tupdesc,
            1,
            columns.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        ))
    }
}
