//! Check and undo (API.md section 4): prove the result of a run, and restore a run's
//! rows from its backup.

use crate::catalog;
use crate::checks::{self, NullRows};
use crate::error::{report_with_hint, required, BackfillError, OrRaise, Result};
use crate::guard;
use crate::job::{self, Job, Target};
use crate::locks;
use crate::runs::{self, NewRun, Run, RunKind, RunStatus};
use crate::sql::{self, get_required, Value};
use crate::types::RegClass;
use crate::writer::{self, WriteSpec};
use pgrx::prelude::*;

/// One row of `validate`.
struct Check {
    name: &'static str,
    /// NULL when the check does not apply (nothing to compare).
    ok: Option<bool>,
    expected: Option<String>,
    actual: Option<String>,
    detail: Option<String>,
}

impl Check {
    fn compared(name: &'static str, expected: impl ToString, actual: impl ToString, detail: Option<String>) -> Check {
        let (expected, actual) = (expected.to_string(), actual.to_string());
        Check { name, ok: Some(expected == actual), expected: Some(expected), actual: Some(actual), detail }
    }

    fn not_applicable(name: &'static str, expected: Option<String>, actual: Option<String>, detail: String) -> Check {
        Check { name, ok: None, expected, actual, detail: Some(detail) }
    }

    /// What a check about a run says when no run has written anything.
    fn without_run(name: &'static str, target: &Target, actual: i64) -> Check {
        Check::not_applicable(
            name,
            None,
            Some(actual.to_string()),
            format!("no run of {} has written anything yet", target.rel.display),
        )
    }

    fn into_row(self) -> (String, Option<bool>, Option<String>, Option<String>, Option<String>) {
        (self.name.into(), self.ok, self.expected, self.actual, self.detail)
    }
}

/// Proves the result: no NULL tenant left (but documented exceptions), the row count
/// unchanged, sources agreeing with their target rows, an audit and a backup row for
/// every changed row, and, where the target has row-level security, isolation.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn validate(
    target: Option<RegClass>,
    run_id: default!(Option<i64>, "NULL"),
    tenant_setting: default!(Option<String>, "'tenant_backfill.tenant'"),
) -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(ok, Option<bool>),
        name!(expected, Option<String>),
        name!(actual, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    let setting = tenant_setting.unwrap_or_else(|| "tenant_backfill.tenant".into());
    let checks = required(target, "target").and_then(|target| validate_impl(target, run_id, &setting)).or_raise();
    TableIterator::new(checks.into_iter().map(Check::into_row))
}

fn validate_impl(target: RegClass, run_id: Option<i64>, tenant_setting: &str) -> Result<Vec<Check>> {
    let job = job::job(target.0)?;
    job.require_read_access()?;
    let run = find_run(&job.target, run_id)?;
    let mut checks = vec![no_null_tenant(&job.target)?];
    let count_sql = format!("SELECT pg_catalog.count(*) FROM {}", job.target.rel.sql_name());
    let rows_now = sql::select_value::<i64>(&count_sql, &[])?.unwrap_or(0);
    match &run {
        Some(run) => checks.push(Check::compared(
            "row_count_unchanged",
            run.rows_at_start.unwrap_or(rows_now),
            rows_now,
            Some(format!("rows of {} when run {} started, and now", job.target.rel.display, run.run_id)),
        )),
        None => checks.push(Check::without_run("row_count_unchanged", &job.target, rows_now)),
    }
    let (disagreeing, detail) = checks::disagreements(&job)?;
    checks.push(Check::compared("sources_agree", 0, disagreeing, detail));
    match &run {
        Some(run) => {
            checks.push(written_check(run, "audit_complete", "audit_log")?);
            checks.push(written_check(run, "backup_complete", "backup")?);
        }
        None => {
            checks.push(Check::without_run("audit_complete", &job.target, 0));
            checks.push(Check::without_run("backup_complete", &job.target, 0));
        }
    }
    if let Some(isolation) = isolation(&job, tenant_setting)? {
        checks.push(isolation);
    }
    Ok(checks)
}

/// The run named, which must be one of this target, or the latest that wrote something.
fn find_run(target: &Target, run_id: Option<i64>) -> Result<Option<Run>> {
    let Some(id) = run_id else {
        return runs::latest_written(target);
    };
    let run = runs::load(id)?;
    if run.target != target.rel.oid {
        return Err(BackfillError::BadArgument(
            format!("run {id} is not a run of {}", target.rel.display),
            "Pass a run of this target, or leave run_id NULL for its latest.".into(),
        ));
    }
    Ok(Some(run))
}

fn no_null_tenant(target: &Target) -> Result<Check> {
    // Soft-deleted rows are the documented exceptions (orphans soft_delete_orphans set aside).
    let soft_delete = catalog::column(&target.rel, &target.soft_delete_column).ok();
    let (live, excepted) = match &soft_delete {
        Some(col) => (format!("t.{} IS NULL", col.sql_name()), format!("t.{} IS NOT NULL", col.sql_name())),
        None => ("true".to_string(), "false".to_string()),
    };
    let nulls: NullRows = checks::null_tenant_rows(target, &live, &[])?;
    let exceptions = sql::select_value::<i64>(
        &format!(
            "SELECT pg_catalog.count(*) FROM {} t WHERE t.{} IS NULL AND {excepted}",
            target.rel.sql_name(),
            target.tenant.sql_name()
        ),
        &[],
    )?
    .unwrap_or(0);
    let mut detail = Vec::new();
    if nulls.count > 0 {
        detail.push(format!("still NULL: {} (see review_queue)", nulls.key_list()));
    }
    if exceptions > 0 {
        detail.push(format!("{exceptions} soft-deleted rows excepted ({})", target.soft_delete_column));
    }
    Ok(Check::compared("no_null_tenant", 0, nulls.count, (!detail.is_empty()).then(|| detail.join("; "))))
}

/// One audit (or backup) row per row the run changed.
fn written_check(run: &Run, name: &'static str, table: &str) -> Result<Check> {
    if run.dry_run {
        return Ok(Check::not_applicable(
            name,
            Some("0".into()),
            Some("0".into()),
            format!("run {} was a dry run and wrote nothing", run.run_id),
        ));
    }
    let count_sql = format!(
        "SELECT pg_catalog.count(DISTINCT (row_key, column_name)) FROM tenant_backfill.{} WHERE run_id = $1",
        sql::ident(table)
    );
    // Counted as the logs' owner: the caller may read the target, which is what validate asks.
    let actual =
        sql::as_extension_owner(|| sql::select_value::<i64>(&count_sql, &[Value::int8(run.run_id)]))?.unwrap_or(0);
    Ok(Check::compared(
        name,
        run.rows_changed,
        actual,
        Some(format!("rows changed by run {} ({}) and rows in {table}", run.run_id, run.status.as_str())),
    ))
}

/// Under each tenant's setting, no row of another tenant and no NULL row is visible.
/// Only where the target has row-level security, and only for a role it applies to.
fn isolation(job: &Job, tenant_setting: &str) -> Result<Option<Check>> {
    let t = &job.target;
    let has_rls = sql::select_value::<bool>(
        "SELECT relrowsecurity FROM pg_catalog.pg_class WHERE oid = $1",
        &[Value::Oid(t.rel.oid)],
    )?
    .unwrap_or(false);
    if !has_rls {
        return Ok(None);
    }
    let applies = sql::select_value::<bool>(
        "SELECT pg_catalog.row_security_active($1::pg_catalog.oid::pg_catalog.regclass)",
        &[Value::Oid(t.rel.oid)],
    )?
    .unwrap_or(false);
    if !applies {
        return Ok(Some(Check::not_applicable(
            "isolation",
            None,
            None,
            format!(
                "skipped: role {} is not subject to the row-level security of {} (superuser, table owner without FORCE, or BYPASSRLS); run validate as an application role",
                sql::current_role(),
                t.rel.display
            ),
        )));
    }
    // The tenants this extension wrote or was told about: the caller cannot list the
    // table's tenants itself, row-level security hides them.
    let tenants = sql::select_rows(
        "SELECT DISTINCT v FROM (SELECT a.new_value AS v FROM tenant_backfill.audit_log a\n                          \
         WHERE a.target = $1::pg_catalog.oid::pg_catalog.regclass AND a.column_name = $2::text\n                         \
         UNION SELECT o.tenant FROM tenant_backfill.overrides o\n                          \
         WHERE o.target = $1::pg_catalog.oid::pg_catalog.regclass) x\n \
         WHERE v IS NOT NULL ORDER BY v LIMIT 100",
        &[Value::Oid(t.rel.oid), Value::text(t.tenant.name.clone())],
        |row| get_required::<String>(row, 1),
    )?;
    let previous =
        sql::select_value::<String>("SELECT pg_catalog.current_setting($1, true)", &[Value::text(tenant_setting)])?;
    let mut leaks = Vec::new();
    for tenant in &tenants {
        sql::execute(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &[Value::text(tenant_setting), Value::text(tenant.clone())],
        )?;
        let leaked = sql::select_value::<i64>(
            &format!(
                "SELECT pg_catalog.count(*) FROM {} t WHERE {}",
                t.rel.sql_name(),
                t.tenant
                    .ops()
                    .distinct(&format!("t.{}", t.tenant.sql_name()), &format!("$1::text::{}", t.tenant.type_sql)),
            ),
            &[Value::text(tenant.clone())],
        )?
        .unwrap_or(0);
        if leaked > 0 {
            leaks.push(format!("tenant {tenant} sees {leaked} rows of other tenants or without one"));
        }
    }
    sql::execute(
        "SELECT pg_catalog.set_config($1, COALESCE($2, ''), true)",
        &[Value::text(tenant_setting), Value::Text(previous)],
    )?;
    let detail = if leaks.is_empty() {
        format!("{} tenants checked with {tenant_setting}", tenants.len())
    } else {
        leaks.join("; ")
    };
    Ok(Some(Check::compared("isolation", 0, leaks.len(), Some(detail))))
}

// ------------------------------------------------------------------ rollback

/// Whether the run replaced NULLs of `column` (its backup holds NULL old values).
fn replaced_nulls(run_id: i64, column: &catalog::Column) -> Result<bool> {
    Ok(sql::as_extension_owner(|| {
        sql::select_value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM tenant_backfill.backup\n \
         WHERE run_id = $1 AND column_name = $2::text AND old_value IS NULL)",
            &[Value::int8(run_id), Value::text(column.name.clone())],
        )
    })?
    .unwrap_or(false))
}

/// How many rows a rollback run set back to a NULL tenant.
fn rows_set_to_null(rollback_run: i64, target: &Target) -> Result<i64> {
    Ok(sql::as_extension_owner(|| {
        sql::select_value::<i64>(
            "SELECT pg_catalog.count(*) FROM tenant_backfill.audit_log\n \
         WHERE run_id = $1 AND column_name = $2::text AND new_value IS NULL",
            &[Value::int8(rollback_run), Value::text(target.tenant.name.clone())],
        )
    })?
    .unwrap_or(0))
}

/// Restores a run's rows from its backup in one transaction. A row whose value is no
/// longer what the run wrote is skipped and counted (drift), unless `force`.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn rollback(
    run_id: Option<i64>,
    force: default!(Option<bool>, "false"),
) -> TableIterator<'static, (name!(restored, i64), name!(skipped, i64))> {
    TableIterator::once((|| rollback_impl(required(run_id, "run_id")?, required(force, "force")?))().or_raise())
}

fn rollback_impl(run_id: i64, force: bool) -> Result<(i64, i64)> {
    let run = runs::load(run_id)?;
    if run.status == RunStatus::RolledBack {
        return Err(BackfillError::BadArgument(
            format!(
                "run {run_id} was already rolled back{}",
                run.rolled_back_by.map(|r| format!(" by run {r}")).unwrap_or_default()
            ),
            "A run is rolled back once. Its rows are as they were before it.".into(),
        ));
    }
    if run.kind == RunKind::Rollback {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is itself a rollback"),
            "Run the original job again instead of rolling back a rollback.".into(),
        ));
    }
    if run.dry_run {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} was a dry run and changed nothing"),
            "There is nothing to roll back.".into(),
        ));
    }
    let target = job::target(run.target)?;
    locks::take_for_transaction(&target.rel, locks::Purpose::Rollback)?;
    let columns = sql::as_extension_owner(|| {
        sql::select_rows(
            "SELECT DISTINCT column_name::text FROM tenant_backfill.backup WHERE run_id = $1 ORDER BY 1",
            &[Value::int8(run_id)],
            |row| get_required::<String>(row, 1),
        )
    })?
    .iter()
    .map(|name| catalog::column(&target.rel, name))
    .collect::<Result<Vec<_>>>()?;
    // A run writes one column, by its kind: a backup naming another was not written by it.
    let written = match run.kind {
        RunKind::SoftDeleteOrphans => {
            runs::soft_delete_column(run_id)?.unwrap_or_else(|| target.soft_delete_column.clone())
        }
        _ => target.tenant.name.clone(),
    };
    if let Some(other) = columns.iter().find(|c| c.name != written) {
        return Err(BackfillError::WrongState(
            format!(
                "the backup of run {run_id} names column {}, which a {} run does not write",
                other.name,
                run.kind.as_str()
            ),
            format!("A {} run writes {written} only. Nothing was changed.", run.kind.as_str()),
            "Restore those columns by hand if they need it; rolling the run back restores only what it wrote.".into(),
        ));
    }
    for column in &columns {
        catalog::require_update(&target.rel, column)?;
        if column.not_null && replaced_nulls(run_id, column)? {
            return Err(BackfillError::WrongState(
                format!(
                    "run {run_id} cannot be rolled back: column {} of {} is NOT NULL now",
                    column.name, target.rel.display
                ),
                format!("The run filled NULLs of {}, and rolling it back would put them back.", column.name),
                format!(
                    "Nothing was changed. To undo the run anyway, drop the constraint first \
                     (ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL), then roll back.",
                    target.rel.sql_name(),
                    column.sql_name()
                ),
            ));
        }
    }
    let rollback_run = runs::insert(NewRun {
        target: &target,
        kind: RunKind::Rollback,
        mode: None,
        dry_run: false,
        settings: None,
        limits: runs::ThrottleLimits::default(),
        driver: runs::Driver::Foreground,
        parameters: serde_json::json!({ "rolls_back": run_id, "force": force }),
    })?;

    let (mut restored, mut skipped) = (0i64, 0i64);
    for column in &columns {
        let spec = WriteSpec {
            target: &target,
            column,
            run_id: rollback_run,
            skip_locked: false,
            guard: !force,
            dry_run: false,
            pass: None,
        };
        let written = writer::restore(&spec, run_id)?;
        restored += written.changed;
        skipped += written.planned - written.changed;
    }
    runs::finish_with_counts(rollback_run, restored, Some(skipped), "rollback")?;
    runs::mark_rolled_back(run_id, rollback_run)?;
    let back_to_null = rows_set_to_null(rollback_run, &target)?;
    if back_to_null > 0 && guard::guard_installed(&target.rel)? {
        report_with_hint(
            PgLogLevel::NOTICE,
            format!(
                "tenant_backfill: {back_to_null} rows of {} are NULL in {} again, although its guard is enforced",
                target.rel.display, target.tenant.name
            ),
            "The guard let this rollback through; new writes of a NULL tenant are still stopped. \
             Backfill the rows again, or leave them for review."
                .into(),
        );
    }
    if skipped > 0 {
        report_with_hint(
            PgLogLevel::NOTICE,
            format!("tenant_backfill: {skipped} rows of {} changed since run {run_id} and were left as they are", target.rel.display),
            format!("SELECT * FROM tenant_backfill.rollback({run_id}, force => true) would restore them too; this rollback is run {rollback_run}."),
        );
    }
    Ok((restored, skipped))
}
