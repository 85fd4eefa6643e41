//! The guard on a table (API.md section 5): its modes, its triggers, the tables it
//! covers, and the setting `assign` reads. `enforce` and `unenforce` (src/api/guard.rs)
//! install and remove it through here; the function the triggers call is
//! src/trigger.rs.
//!
//! A guarded table has three triggers, created and dropped together (`install`), all
//! calling `tenant_backfill.guard(mode, tenant column, key column, parent column or '')`:
//!
//! - `tenant_backfill_guard`, BEFORE INSERT OR UPDATE OF the tenant column, FOR EACH
//!   ROW WHEN (NEW.tenant IS NULL): the guard proper, acting on a NULL tenant in its
//!   mode. Postgres evaluates the WHEN clause itself, so the function is called only for
//!   a row without a tenant; it still reads the attribute (found by number, the trigger's
//!   own column list, which follows renames) and tests it, and everything else happens
//!   only on a violation.
//! - `tenant_backfill_guard_after_insert` and `..._after_update`, AFTER ROW triggers
//!   whose WHEN clause admits only a row that ends NULL (an insert, or an update that
//!   set a tenant to NULL): the backstop for BEFORE triggers that fire after the guard
//!   (they fire in name order) and set the tenant to NULL, even on an UPDATE that does
//!   not name the column. Such a row is rejected; mode `log`, which lets NULLs in, has
//!   no backstop. For a row that carries a tenant the WHEN clauses keep the function
//!   from being called, but Postgres still evaluates them: of a bulk INSERT, 2.6% for
//!   the BEFORE trigger (what any row trigger costs) and 3.2% for the two backstops
//!   (BENCHMARKS.md, the fourth session of 2026-12-04).
//!
//! Legacy inheritance children get the triggers too (partitions inherit them from a
//! partitioned table by themselves), present ones from `enforce`, future ones from the
//! DDL event trigger (`_on_ddl_command_end` in sql/procedures.sql, which calls
//! `_guard_inheritors` below).

use crate::catalog;
use crate::error::{BackfillError, OrRaise, Result};
use crate::sql::{self, get_required, Value};
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::cell::RefCell;
use std::ffi::CString;

/// `tenant_backfill.tenant`: the tenant `assign` gives a row that has no parent to take
/// it from (and the setting `validate` sets for its isolation check by default).
/// Registered so `SHOW` and `current_setting` know it once the library is loaded.
pub static TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Called from `_PG_init`.
pub fn init() {
    GucRegistry::define_string_guc(
        c"tenant_backfill.tenant",
        c"The current tenant: what the guard's assign mode gives a row without one.",
        c"Set it per transaction (SET LOCAL, or set_config(..., true)): behind a transaction pooler a session-level SET reaches other clients' transactions.",
        &TENANT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub const TRIGGER_NAME: &str = "tenant_backfill_guard";
pub const AFTER_INSERT_NAME: &str = "tenant_backfill_guard_after_insert";
pub const AFTER_UPDATE_NAME: &str = "tenant_backfill_guard_after_update";

/// The guard's modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    Reject,
    Quarantine,
    Assign,
    Log,
}

impl GuardMode {
    pub fn parse(text: Option<&str>) -> Result<GuardMode> {
        match text {
            Some("reject") => Ok(GuardMode::Reject),
            Some("quarantine") => Ok(GuardMode::Quarantine),
            Some("assign") => Ok(GuardMode::Assign),
            Some("log") => Ok(GuardMode::Log),
            other => Err(BackfillError::BadArgument(
                format!("unknown guard mode \"{}\"", other.unwrap_or("NULL")),
                "mode is 'reject', 'quarantine', 'assign' or 'log'.".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Reject => "reject",
            GuardMode::Quarantine => "quarantine",
            GuardMode::Assign => "assign",
            GuardMode::Log => "log",
        }
    }
}

/// What a guard was installed with: its trigger arguments.
#[derive(Clone, Debug)]
pub struct GuardArgs {
    pub mode: GuardMode,
    pub tenant: String,
    pub key: String,
    /// The foreign key column `assign` reads the parent's tenant through, or ''.
    pub parent: String,
}

/// Installs the guard's three triggers on a table, replacing any it had. DDL takes no
/// parameters: the arguments are quoted literals, the names quoted identifiers.
pub fn install(table: &catalog::Relation, args: &GuardArgs) -> Result<()> {
    remove(table)?;
    let name = table.sql_name();
    let tenant = sql::ident(&args.tenant);
    let call = format!(
        "EXECUTE FUNCTION tenant_backfill.guard({}, {}, {}, {})",
        pgrx::spi::quote_literal(args.mode.as_str()),
        pgrx::spi::quote_literal(&args.tenant),
        pgrx::spi::quote_literal(&args.key),
        pgrx::spi::quote_literal(&args.parent),
    );
    // Every mode acts on a NULL tenant only: with the WHEN clause the function is not
    // even called for a row that carries one (BENCHMARKS.md).
    sql::execute(
        &format!(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF {tenant} ON {name} FOR EACH ROW\nWHEN (NEW.{tenant} IS NULL)\n{call}",
            sql::ident(TRIGGER_NAME)
        ),
        &[],
    )?;
    // In mode log a NULL is let in anyway, and the BEFORE trigger records what it saw.
    if args.mode == GuardMode::Log {
        return Ok(());
    }
    for statement in [
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {name} FOR EACH ROW\nWHEN (NEW.{tenant} IS NULL)\n{call}",
            sql::ident(AFTER_INSERT_NAME)
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {name} FOR EACH ROW\nWHEN (OLD.{tenant} IS NOT NULL AND NEW.{tenant} IS NULL)\n{call}",
            sql::ident(AFTER_UPDATE_NAME)
        ),
    ] {
        sql::execute(&statement, &[])?;
    }
    Ok(())
}

/// Drops the guard's triggers from a table (those it has).
pub fn remove(table: &catalog::Relation) -> Result<()> {
    let present = sql::select_rows(
        "SELECT t.tgname::text FROM pg_catalog.pg_trigger t\n \
         WHERE t.tgrelid = $1 AND t.tgname = ANY ($2::text[]::pg_catalog.name[]) ORDER BY 1",
        &[
            Value::Oid(table.oid),
            Value::TextArray(
                [TRIGGER_NAME, AFTER_INSERT_NAME, AFTER_UPDATE_NAME].map(|n| Some(n.to_string())).to_vec(),
            ),
        ],
        |row| sql::get_required::<String>(row, 1),
    )?;
    for trigger in present {
        sql::execute(&format!("DROP TRIGGER {} ON {}", sql::ident(&trigger), table.sql_name()), &[])?;
    }
    Ok(())
}

/// The table and its legacy inheritance children, grandchildren included: the tables
/// one guard covers. (Partitions inherit a partitioned table's triggers by themselves.)
pub fn family(table: &catalog::Relation) -> Result<Vec<catalog::Relation>> {
    let oids = sql::select_rows(
        "WITH RECURSIVE family(oid) AS (\n    SELECT $1::pg_catalog.oid\n    \
         UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i\n      \
         JOIN family f ON i.inhparent = f.oid\n      \
         JOIN pg_catalog.pg_class p ON p.oid = i.inhparent AND p.relkind = 'r')\n\
         SELECT oid FROM family",
        &[Value::Oid(table.oid)],
        |row| sql::get_required::<pg_sys::Oid>(row, 1),
    )?;
    oids.into_iter().map(catalog::relation).collect()
}

/// The guard a table has, read back from its BEFORE trigger's arguments.
pub fn installed(table: pg_sys::Oid) -> Result<Option<GuardArgs>> {
    // The tenant column by its name now (a rename since enforce keeps its number).
    let args = sql::select_rows(
        "SELECT t.tgargs, a.attname::text FROM pg_catalog.pg_trigger t\n  \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = t.tgattr[0]\n \
         WHERE t.tgrelid = $1 AND t.tgname = $2::text::pg_catalog.name",
        &[Value::Oid(table), Value::text(TRIGGER_NAME)],
        |row| Ok((sql::get_required::<Vec<u8>>(row, 1)?, sql::get_required::<String>(row, 2)?)),
    )?;
    let Some((bytes, tenant_now)) = args.into_iter().next() else {
        return Ok(None);
    };
    // tgargs is the arguments one after another, each ended by a NUL byte.
    let parts: Vec<String> = bytes.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    Ok(Some(GuardArgs { mode: GuardMode::parse(Some(&part(0)))?, tenant: tenant_now, key: part(2), parent: part(3) }))
}

/// Gives a table that inherits from a guarded table the same guard (called by the DDL
/// event trigger after CREATE TABLE ... INHERITS and ALTER TABLE ... INHERIT).
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _guard_inheritors(table: Option<crate::types::RegClass>) {
    let Some(table) = table else { return };
    guard_inheritor(table.0).or_raise()
}

fn guard_inheritor(table: pg_sys::Oid) -> Result<()> {
    if installed(table)?.is_some() {
        return Ok(());
    }
    let parents = sql::select_rows(
        "SELECT i.inhparent FROM pg_catalog.pg_inherits i\n  \
         JOIN pg_catalog.pg_class p ON p.oid = i.inhparent AND p.relkind = 'r'\n \
         WHERE i.inhrelid = $1 ORDER BY i.inhseqno",
        &[Value::Oid(table)],
        |row| sql::get_required::<pg_sys::Oid>(row, 1),
    )?;
    for parent in parents {
        if let Some(args) = installed(parent)? {
            let rel = catalog::relation(table)?;
            // A child table gets every column of its parent, the tenant among them.
            return install(&rel, &args);
        }
    }
    Ok(())
}

/// Whether the table has the guard trigger.
pub fn guard_installed(rel: &catalog::Relation) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2::text::pg_catalog.name)",
        &[Value::Oid(rel.oid), Value::text(TRIGGER_NAME)],
    )?
    .unwrap_or(false))
}

// ------------------------------------------------------------------ the rollback bypass

thread_local! {
    /// The tables whose guard trigger lets this backend's own write through: a target
    /// with its partitions and inheritance children (the trigger fires on the table that
    /// holds the row). Set by the writer's `restore` for its one statement only, so nothing a client
    /// can run (no setting, no function) opens the guard.
    static GUARD_BYPASS: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// Whether the guard of `table` is to let the current write through (trigger.rs).
pub fn bypassed_for(table: pg_sys::Oid) -> bool {
    GUARD_BYPASS.with(|b| b.borrow().contains(&table))
}

/// Opens the guard of a table and of every table below it until dropped, also when an
/// error unwinds.
pub struct Bypass;

impl Bypass {
    pub fn open(table: pg_sys::Oid) -> Result<Bypass> {
        let tables = sql::select_rows(
            "WITH RECURSIVE below(oid) AS (\n    SELECT $1::pg_catalog.oid\n    \
             UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN below b ON i.inhparent = b.oid)\n\
             SELECT oid FROM below",
            &[Value::Oid(table)],
            |row| get_required::<pg_sys::Oid>(row, 1),
        )?;
        GUARD_BYPASS.with(|b| *b.borrow_mut() = tables);
        Ok(Bypass)
    }
}

impl Drop for Bypass {
    fn drop(&mut self) {
        GUARD_BYPASS.with(|b| b.borrow_mut().clear());
    }
}
