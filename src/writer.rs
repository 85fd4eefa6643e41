//! The one way tenant_backfill changes a user table. Every consumer (a batch of `run`,
//! `run_now`, `apply_decisions`, `soft_delete_orphans`, `rollback`) describes the rows to
//! change as a CTE named `changes` with columns
//! `(key, old, new, phase text, source text, rule text, evidence jsonb)`, and appends
//! these CTEs, which in one statement:
//!
//! - update them with one `UPDATE ... FROM`, only while the column still holds `old`
//!   (rechecked on the newest row version): an application that set the value in the
//!   meantime wins, and nothing of its work is lost;
//! - when rows other sessions hold are to be skipped rather than waited for (or the
//!   write is not guarded), lock the rows first (`FOR NO KEY UPDATE [SKIP LOCKED]`) and
//!   update what was locked: once locked, the value cannot change before the UPDATE;
//! - write the prior value to `backup` and a row to `audit_log`, from the UPDATE's
//!   RETURNING, so the change, its backup and its audit commit or vanish together.
//!
//! After the CTEs, `upd` holds `(key, old, new, phase, source, rule, evidence)` of the
//! rows actually changed.
//!
//! A batch of `run` (and of `run_now`) decides first, in a statement of its own that
//! locks nothing, and hands the rows to change on as arrays (`changes_from_arrays`).
//! It then writes their backup and audit rows (`log_before_locking`), and only then
//! updates them (`lock_and_update_ctes`), removing the log rows of any row it did not
//! write after all (`unlog_statement`), all in the batch's transaction: rows are locked
//! only for the UPDATE, from that statement to the batch's commit. A batch of `CALL run`
//! first waits briefly for rows other sessions hold; when that wait runs out, the
//! procedure does the batch again, skipping them (sql/procedures.sql).

use crate::catalog::{Column, Target};
use crate::sql::{Statement, Value};

/// The rows a decision changes, column by column, in key order, as text (every key
/// and tenant type converts to text and back exactly; `rollback` relies on it too).
#[derive(Debug, Default)]
pub struct Changes {
    pub key: Vec<Option<String>>,
    pub old: Vec<Option<String>>,
    pub new: Vec<Option<String>>,
    pub phase: Vec<Option<String>>,
    pub source: Vec<Option<String>>,
    pub rule: Vec<Option<String>>,
    pub evidence: Vec<Option<String>>,
}

/// The `changes` CTE (`WITH changes AS (...)`) over `changes`, passed as seven `text[]`
/// arguments and cast back to the key's and the written column's types. (`ROWS FROM`
/// because only the unqualified `unnest` takes several arrays.)
pub fn changes_from_arrays(target: &Target, column: &Column, changes: Changes, st: &mut Statement) -> String {
    let Changes { key, old, new, phase, source, rule, evidence } = changes;
    let [key, old, new, phase, source, rule, evidence] =
        [key, old, new, phase, source, rule, evidence].map(|values| st.param(Value::TextArray(values)));
    format!(
        "WITH changes AS (SELECT c.key::{key_type} AS key, c.old::{column_type} AS old, c.new::{column_type} AS new, \
                 c.phase, c.source, c.rule, tenant_backfill._evidence_jsonb(c.evidence) AS evidence \
            FROM ROWS FROM (pg_catalog.unnest({key}::text[]), pg_catalog.unnest({old}::text[]), \
                            pg_catalog.unnest({new}::text[]), pg_catalog.unnest({phase}::text[]), \
                            pg_catalog.unnest({source}::text[]), pg_catalog.unnest({rule}::text[]), \
                            pg_catalog.unnest({evidence}::text[])) AS c(key, old, new, phase, source, rule, evidence))",
        key_type = target.key.type_sql,
        column_type = column.type_sql,
    )
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
    /// The lowest and highest key of `changes`, as text, when the caller knows them (a
    /// batch): the UPDATE then reads only that stretch of the key index. Without it the
    /// planner, which cannot see where a batch's keys lie, joins by reading the key
    /// index from the table's first row, and later batches take longer and longer.
    pub key_range: Option<(String, String)>,
}

/// The CTEs after `changes`; starts with a comma.
pub fn write_ctes(spec: &WriteSpec, st: &mut Statement) -> String {
    if spec.dry_run {
        return ", upd AS (SELECT c.key, c.old, c.new, c.phase, c.source, c.rule, c.evidence FROM changes c)".into();
    }
    let lock_and_update = lock_and_update_ctes(spec, st);
    format!("{lock_and_update}{}", log_ctes(spec, st, "upd", ""))
}

/// `upd`: the rows of `changes` updated, after `locked` locked them when rows other
/// sessions hold are to be skipped or the write is not guarded; starts with a comma.
pub fn lock_and_update_ctes(spec: &WriteSpec, st: &mut Statement) -> String {
    let target = spec.target.rel.sql_name();
    let key = spec.target.key.sql_name();
    let col = spec.column.sql_name();
    let guard = if spec.guard { format!(" AND t.{col} IS NOT DISTINCT FROM c.old") } else { String::new() };
    let skip = if spec.skip_locked { " SKIP LOCKED" } else { "" };
    let range = match &spec.key_range {
        Some((lowest, highest)) => {
            let key_type = &spec.target.key.type_sql;
            let lowest = st.param(Value::text(lowest.clone()));
            let highest = st.param(Value::text(highest.clone()));
            format!(" AND t.{key} BETWEEN {lowest}::text::{key_type} AND {highest}::text::{key_type}")
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
            ", upd AS (UPDATE {target} t SET {col} = c.new FROM changes c WHERE t.{key} = c.key{guard}{range} \
               RETURNING c.key, c.old, c.new, c.phase, c.source, c.rule, c.evidence)"
        );
    }
    // `locked` finds each row through the key index (LATERAL: a plain join, once the
    // planner knows a batch's size, may become a merge join that reads the key index
    // from the table's first row). It carries everything the UPDATE needs, so the
    // UPDATE joins the target (by its key index) to one CTE: joining two CTEs to each
    // other has no index and degrades to a nested loop over both.
    format!(
        ", locked AS (SELECT c.key, t.actual, c.new, c.phase, c.source, c.rule, c.evidence \
             FROM changes c CROSS JOIN LATERAL (SELECT t.{col} AS actual FROM {target} t \
                 WHERE t.{key} = c.key{guard} FOR NO KEY UPDATE OF t{skip}) t) \
         , upd AS (UPDATE {target} t SET {col} = l.new FROM locked l WHERE t.{key} = l.key{range} \
             RETURNING l.key, l.actual AS old, l.new, l.phase, l.source, l.rule, l.evidence)"
    )
}

/// `bak` and `aud`: a backup row and an audit row for each row of `rows` (`upd`, the
/// rows just changed, or `changes`, the rows about to be), with `returning` appended
/// to both inserts; starts with a comma.
fn log_ctes(spec: &WriteSpec, st: &mut Statement, rows: &str, returning: &str) -> String {
    let run_id = st.param(Value::Int8(Some(spec.run_id)));
    let target_oid = st.param(Value::Oid(spec.target.rel.oid));
    let column_name = st.param(Value::text(spec.column.name.clone()));
    format!(
        ", bak AS (INSERT INTO tenant_backfill.backup (run_id, target, row_key, column_name, old_value, new_value) \
             SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, u.key::text, \
                    {column_name}::text::pg_catalog.name, u.old::text, u.new::text FROM {rows} u{returning}) \
         , aud AS (INSERT INTO tenant_backfill.audit_log \
                     (run_id, target, row_key, column_name, old_value, new_value, phase, source, rule, evidence) \
             SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, u.key::text, \
                    {column_name}::text::pg_catalog.name, u.old::text, u.new::text, u.phase, u.source, u.rule, u.evidence \
               FROM {rows} u{returning})"
    )
}

/// For a guarded batch (where a row is written only while it still holds `old`, so
/// what is logged as old is what the row held when locked): the backup and audit
/// rows of every row in `changes`, written before any row is locked, so that the
/// locks are held only for the UPDATE. Selects the new rows' ctids as two text
/// arrays, for `unlog_statement`; starts with a comma, then the SELECT.
pub fn log_before_locking(spec: &WriteSpec, st: &mut Statement) -> String {
    format!(
        "{} SELECT (SELECT pg_catalog.array_agg(b.ctid::text) FROM bak b), \
                  (SELECT pg_catalog.array_agg(a.ctid::text) FROM aud a)",
        log_ctes(spec, st, "changes", " RETURNING ctid")
    )
}

/// Deletes the log rows `log_before_locking` wrote for `keys`, rows that were not
/// written after all (locked by another session, or changed meanwhile), found by
/// their ctids among the batch's own.
pub fn unlog_statement(run_id: i64, backup_tids: Vec<Option<String>>, audit_tids: Vec<Option<String>>, keys: Vec<Option<String>>) -> Statement {
    let mut st = Statement::new();
    let run_id = st.param(Value::Int8(Some(run_id)));
    let backup_tids = st.param(Value::TextArray(backup_tids));
    let audit_tids = st.param(Value::TextArray(audit_tids));
    let keys = st.param(Value::TextArray(keys));
    st.sql = format!(
        "WITH b AS (DELETE FROM tenant_backfill.backup b WHERE b.ctid = ANY({backup_tids}::text[]::pg_catalog.tid[]) \
                      AND b.run_id = {run_id}::pg_catalog.int8 AND b.row_key = ANY({keys}::text[]) RETURNING 1) \
            , a AS (DELETE FROM tenant_backfill.audit_log a WHERE a.ctid = ANY({audit_tids}::text[]::pg_catalog.tid[]) \
                      AND a.run_id = {run_id}::pg_catalog.int8 AND a.row_key = ANY({keys}::text[]) RETURNING 1) \
         SELECT (SELECT pg_catalog.count(*) FROM b) + (SELECT pg_catalog.count(*) FROM a)"
    );
    st
}

/// `{"1": 15, "override": 1}`: rows changed per phase, from `upd`.
pub const BY_PHASE: &str = "(SELECT COALESCE(pg_catalog.jsonb_object_agg(x.phase, x.n), '{}'::pg_catalog.jsonb) \
     FROM (SELECT u.phase, pg_catalog.count(*) AS n FROM upd u GROUP BY u.phase) x)";
