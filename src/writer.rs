//! The one way tenant_backfill changes a user table. Every consumer (a batch of `run`,
//! `run_now`, `apply_decisions`, `soft_delete_orphans`, `rollback`) describes the rows to
//! change as a CTE named `changes` with columns
//! `(key, old, new, phase text, source text, rule text, evidence jsonb)`, and appends
//! these CTEs, which in one statement:
//!
//! - lock the rows (`FOR NO KEY UPDATE`, skipping rows other sessions hold when asked),
//!   only while the column still holds `old` (rechecked on the newest row version): an
//!   application that set the value in the meantime wins, and nothing of its work is
//!   lost; once locked, the value cannot change before the UPDATE;
//! - update them with one `UPDATE ... FROM`;
//! - write the prior value to `backup` and a row to `audit_log`, from the UPDATE's
//!   RETURNING, so the change, its backup and its audit commit or vanish together.
//!
//! After the CTEs, `upd` holds `(key, old, new, phase, source, rule, evidence)` of the
//! rows actually changed.

use crate::catalog::{Column, Target};
use crate::sql::{Statement, Value};

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
}

/// The CTEs after `changes`; starts with a comma.
pub fn write_ctes(spec: &WriteSpec, st: &mut Statement) -> String {
    let target = spec.target.rel.sql_name();
    let key = spec.target.key.sql_name();
    let col = spec.column.sql_name();
    if spec.dry_run {
        return ", upd AS (SELECT c.key, c.old, c.new, c.phase, c.source, c.rule, c.evidence FROM changes c)".into();
    }
    let guard = if spec.guard { format!(" AND t.{col} IS NOT DISTINCT FROM c.old") } else { String::new() };
    let skip = if spec.skip_locked { " SKIP LOCKED" } else { "" };
    let run_id = st.param(Value::Int8(Some(spec.run_id)));
    let target_oid = st.param(Value::Oid(spec.target.rel.oid));
    let column_name = st.param(Value::text(spec.column.name.clone()));
    // `locked` carries everything the UPDATE needs, so the UPDATE joins the target (by
    // its key index) to one CTE: joining two CTEs to each other has no index and
    // degrades to a nested loop over both.
    format!(
        ", locked AS (SELECT c.key, t.{col} AS actual, c.new, c.phase, c.source, c.rule, c.evidence \
             FROM {target} t JOIN changes c ON t.{key} = c.key \
             WHERE true{guard} FOR NO KEY UPDATE OF t{skip}) \
         , upd AS (UPDATE {target} t SET {col} = l.new FROM locked l WHERE t.{key} = l.key \
             RETURNING l.key, l.actual AS old, l.new, l.phase, l.source, l.rule, l.evidence) \
         , bak AS (INSERT INTO tenant_backfill.backup (run_id, target, row_key, column_name, old_value, new_value) \
             SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, u.key::text, \
                    {column_name}::text::pg_catalog.name, u.old::text, u.new::text FROM upd u) \
         , aud AS (INSERT INTO tenant_backfill.audit_log \
                     (run_id, target, row_key, column_name, old_value, new_value, phase, source, rule, evidence) \
             SELECT {run_id}::pg_catalog.int8, {target_oid}::pg_catalog.oid::pg_catalog.regclass, u.key::text, \
                    {column_name}::text::pg_catalog.name, u.old::text, u.new::text, u.phase, u.source, u.rule, u.evidence \
               FROM upd u)"
    )
}

/// `{"1": 15, "override": 1}`: rows changed per phase, from `upd`.
pub const BY_PHASE: &str = "(SELECT COALESCE(pg_catalog.jsonb_object_agg(x.phase, x.n), '{}'::pg_catalog.jsonb) \
     FROM (SELECT u.phase, pg_catalog.count(*) AS n FROM upd u GROUP BY u.phase) x)";
