//! What a human decides, and orphans (API.md section 3): a reviewed file applied, and
//! orphans soft-deleted, both through the writer's backup and audit path as runs of
//! their own, so `rollback` undoes them.

use crate::catalog::{self, Column, Relation};
use crate::checks;
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::{required, BackfillError, OrRaise, Result};
use crate::job;
use crate::runs::{self, BatchCounts, NewRun, RunKind};
use crate::sql::{self, get, Statement, Value};
use crate::types::RegClass;
use crate::writer::{self, WriteSpec};
use pgrx::prelude::*;

// ------------------------------------------------------------------ apply_decisions

/// Applies a reviewed table (columns `row_key`, `tenant`) through the same backup and
/// audit path, phase `manual`. Rows with an empty tenant are left alone (not yet
/// decided); unknown keys, uncastable values or a key decided twice are an error and
/// nothing is applied.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn apply_decisions(target: Option<RegClass>, decisions: Option<RegClass>) -> i64 {
    (|| apply_decisions_impl(required(target, "target")?, required(decisions, "decisions")?))().or_raise()
}

/// The condition for a decided row of the decisions table `d`.
const DECIDED: &str = "NULLIF(pg_catalog.btrim(d.tenant::text), '') IS NOT NULL";

/// The first values (at most five) a query finds, as text: the offenders an error names.
fn first_values(sql_text: &str, params: &[Value]) -> Result<Vec<String>> {
    sql::select_rows(sql_text, params, |row| Ok(get::<String>(row, 1)?.unwrap_or_else(|| "NULL".into())))
}

fn apply_decisions_impl(target: RegClass, decisions: RegClass) -> Result<i64> {
    let target = job::target(target.0)?;
    let rel = catalog::relation(decisions.0)?;
    let row_key = catalog::column(&rel, "row_key")?;
    let tenant = catalog::column(&rel, "tenant")?;
    catalog::require_select(&rel, &[&row_key, &tenant])?;
    catalog::require_select(&target.rel, &[&target.key, &target.tenant])?;
    catalog::require_update(&target.rel, &target.tenant)?;

    let table = rel.sql_name();
    let bad_keys = first_values(
        &format!(
            "SELECT d.row_key::text FROM {table} d\n \
             WHERE d.row_key IS NULL OR NOT tenant_backfill_internal._casts_to(d.row_key::text, $1::pg_catalog.regtype)\n \
             ORDER BY 1 LIMIT 5"
        ),
        &[Value::Oid(target.key.type_oid)],
    )?;
    if !bad_keys.is_empty() {
        return Err(invalid_values(&rel, "row_key", &bad_keys, &target.key));
    }
    let bad_tenants = first_values(
        &format!(
            "SELECT d.tenant::text FROM {table} d\n \
             WHERE {DECIDED} AND NOT tenant_backfill_internal._casts_to(pg_catalog.btrim(d.tenant::text), $1::pg_catalog.regtype)\n \
             ORDER BY 1 LIMIT 5"
        ),
        &[Value::Oid(target.tenant.type_oid)],
    )?;
    if !bad_tenants.is_empty() {
        return Err(invalid_values(&rel, "tenant", &bad_tenants, &target.tenant));
    }
    let key = target.key.sql_name();
    let kt = &target.key.type_sql;
    let collate = &target.key.collate;
    let decided_key = target.key.from_text("d.row_key::text");
    let tt = &target.tenant.type_sql;
    let target_table = target.rel.sql_name();
    let (key_eq, tenant_ops) = (target.key.ops().eq, target.tenant.ops());
    let unknown = first_values(
        &format!(
            "SELECT d.row_key::text FROM {table} d\n \
             WHERE {DECIDED} AND NOT EXISTS (SELECT 1 FROM {target_table} t WHERE t.{key} {key_eq} {decided_key})\n \
             ORDER BY 1 LIMIT 5"
        ),
        &[],
    )?;
    if !unknown.is_empty() {
        return Err(BackfillError::BadArgument(
            format!("{} names rows that {} does not have: {}", rel.display, target.rel.display, unknown.join(", ")),
            "Nothing was applied. Remove those rows from the decisions, or fix their keys.".into(),
        ));
    }
    let twice = first_values(
        &format!(
            // Grouped by the key as the column compares it (citext, or a case-insensitive
            // collation: 'A' and 'a' are one row).
            "SELECT pg_catalog.min(d.row_key::text) FROM {table} d WHERE {DECIDED}\n \
             GROUP BY d.row_key::text::{kt}{collate} HAVING pg_catalog.count(DISTINCT pg_catalog.btrim(d.tenant::text)::{tt}) > 1\n \
             ORDER BY 1 LIMIT 5"
        ),
        &[],
    )?;
    if !twice.is_empty() {
        return Err(BackfillError::BadArgument(
            format!("{} decides rows {} more than once, differently", rel.display, twice.join(", ")),
            "Nothing was applied. Keep one decision per row.".into(),
        ));
    }

    let run_id = runs::insert(NewRun {
        target: &target,
        kind: RunKind::ApplyDecisions,
        mode: None,
        dry_run: false,
        settings: None,
        limits: runs::ThrottleLimits::default(),
        driver: runs::Driver::Foreground,
        parameters: serde_json::json!({ "decisions": rel.display }),
    })?;
    let mut select = Statement::new();
    let source = select.param(Value::text(rel.display.clone()));
    select.sql = format!(
        "SELECT DISTINCT ON (t.{key}) t.{key} AS key, t.{tenant} AS old, pg_catalog.btrim(d.tenant::text)::{tt} AS new,\n       \
         'manual'::text AS phase, {source}::text AS source, 'manual'::text AS rule, NULL::pg_catalog.jsonb AS evidence\n  \
         FROM {table} d JOIN {target_table} t ON t.{key} {key_eq} {decided_key}\n \
         WHERE {DECIDED} AND {differs}\n \
         ORDER BY t.{key}",
        tenant = target.tenant.sql_name(),
        differs = tenant_ops
            .distinct(&format!("t.{}", target.tenant.sql_name()), &format!("pg_catalog.btrim(d.tenant::text)::{tt}")),
    );
    let spec = WriteSpec::guarded(&target, &target.tenant, run_id, false);
    write_and_finish(&spec, select)
}

fn invalid_values(rel: &Relation, column: &str, values: &[String], target_col: &Column) -> BackfillError {
    BackfillError::InvalidValue {
        value: values.join("\", \""),
        column: format!("{}.{}", rel.display, sql::ident(column)),
        type_name: target_col.type_display.clone(),
    }
}

/// Writes the selected rows and closes the run with the counts; returns the rows changed.
fn write_and_finish(spec: &WriteSpec, select: Statement) -> Result<i64> {
    let written = writer::write_selected(spec, select)?;
    runs::record_batch(
        spec.run_id,
        &BatchCounts {
            scanned: written.changed,
            changed: written.changed,
            by_phase: written.by_phase,
            ..BatchCounts::default()
        },
        None,
    )?;
    runs::finish(spec.run_id, spec.dry_run, None)?;
    Ok(written.changed)
}

// ------------------------------------------------------------------ soft_delete_orphans

/// Sets the target's soft-delete column on orphans only (rows with no related row in
/// any source), audited and reversible with `rollback`.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn soft_delete_orphans(target: Option<RegClass>, dry_run: default!(Option<bool>, "false")) -> i64 {
    (|| {
        let (target, dry_run) = (required(target, "target")?, required(dry_run, "dry_run")?);
        sql::without_jit(|| soft_delete_orphans_impl(target, dry_run))
    })()
    .or_raise()
}

fn soft_delete_orphans_impl(target: RegClass, dry_run: bool) -> Result<i64> {
    let job = job::job(target.0)?;
    job.require_read_access()?;
    let t = &job.target;
    let column = catalog::column(&t.rel, &t.soft_delete_column).map_err(|_| BackfillError::NoSoftDeleteColumn {
        table: t.rel.display.clone(),
        column: t.soft_delete_column.clone(),
    })?;
    let deleted_value = match column.type_display.as_str() {
        "timestamp with time zone" | "timestamp without time zone" | "date" => {
            format!("pg_catalog.now()::{}", column.type_sql)
        }
        "boolean" => "true".to_string(),
        other => {
            return Err(BackfillError::TypeMismatch(
                format!("soft-delete column {} of {} is {other}", column.name, t.rel.display),
                "A soft-delete column is a timestamp, timestamptz, date or boolean; name another with define(..., soft_delete_column => ...).".into(),
            ))
        }
    };
    if !dry_run {
        catalog::require_update(&t.rel, &column)?;
    }
    checks::require_castable_sources(&job, Mode::Fill, &Scope::All)?;
    let run_id = runs::insert(NewRun {
        target: t,
        kind: RunKind::SoftDeleteOrphans,
        mode: None,
        dry_run,
        settings: None,
        limits: runs::ThrottleLimits::default(),
        driver: runs::Driver::Foreground,
        parameters: serde_json::json!({ "column": column.name }),
    })?;
    let mut select = Statement::new();
    let decision = engine::decision_query(&mut select, &job, Mode::Fill, &Scope::All, Detail::Full);
    let col = column.sql_name();
    select.sql = format!(
        "WITH d AS (\n{decision})\n\
         SELECT t.{key} AS key, t.{col} AS old, {deleted_value} AS new, 'orphan'::text AS phase,\n       \
         'soft_delete_orphans'::text AS source, 'orphan'::text AS rule, tenant_backfill_internal._evidence_jsonb(d.evidence) AS evidence\n  \
         FROM d JOIN {table} t ON t.{key} {key_eq} d.key\n \
         WHERE d.action = 'orphan' AND t.{col} IS NULL",
        key = t.key.sql_name(),
        key_eq = t.key.ops().eq,
        table = t.rel.sql_name(),
    );
    let spec = WriteSpec::guarded(t, &column, run_id, dry_run);
    write_and_finish(&spec, select)
}
