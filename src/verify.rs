//! Check and undo (API.md section 4): prove the result of a run, and restore a run's
//! rows from its backup.

use crate::catalog::{self, Job, Rule, Target};
use crate::engine;
use crate::error::{BackfillError, OrRaise, Result};
use crate::sql::{self, get, get_required, Statement, Value};
use crate::types::RegClass;
use crate::writer::{self, WriteSpec};
use pgrx::prelude::*;

/// How many offending keys a detail names.
const FIRST_KEYS: i64 = 5;

type Check = (String, Option<bool>, Option<String>, Option<String>, Option<String>);

fn check(name: &str, ok: Option<bool>, expected: impl ToString, actual: impl ToString, detail: Option<String>) -> Check {
    (name.into(), ok, Some(expected.to_string()), Some(actual.to_string()), detail)
}

/// The run a validation is about.
struct RunFacts {
    run_id: i64,
    rows_at_start: Option<i64>,
    rows_changed: i64,
    dry_run: bool,
    status: String,
}

/// Proves the result: no NULL tenant left (but documented exceptions), the row count
/// unchanged, sources agreeing with their target rows, an audit and a backup row for
/// every changed row, and, where the target has row-level security, isolation.
#[pg_extern]
fn validate(
    target: RegClass,
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
    TableIterator::new(validate_impl(target, run_id, &setting).or_raise())
}

fn validate_impl(target: RegClass, run_id: Option<i64>, tenant_setting: &str) -> Result<Vec<Check>> {
    let job = catalog::job(target.0)?;
    job.require_read_access()?;
    let run = find_run(&job.target, run_id)?;
    let mut checks = vec![no_null_tenant(&job.target)?];
    let count_sql = format!("SELECT pg_catalog.count(*) FROM {}", job.target.rel.sql_name());
    let rows_now = sql::select_value::<i64>(&count_sql, &[])?.unwrap_or(0);
    match &run {
        Some(run) => {
            let expected = run.rows_at_start.unwrap_or(rows_now);
            checks.push(check(
                "row_count_unchanged",
                Some(expected == rows_now),
                expected,
                rows_now,
                Some(format!("rows of {} when run {} started, and now", job.target.rel.display, run.run_id)),
            ));
        }
        None => checks.push(no_run_check("row_count_unchanged", &job.target, rows_now)),
    }
    checks.push(sources_agree(&job)?);
    match &run {
        Some(run) => {
            checks.push(written_check(run, "audit_complete", "audit_log")?);
            checks.push(written_check(run, "backup_complete", "backup")?);
        }
        None => {
            checks.push(no_run_check("audit_complete", &job.target, 0));
            checks.push(no_run_check("backup_complete", &job.target, 0));
        }
    }
    if let Some(isolation) = isolation(&job, tenant_setting)? {
        checks.push(isolation);
    }
    Ok(checks)
}

fn no_run_check(name: &str, target: &Target, actual: i64) -> Check {
    (
        name.into(),
        None,
        None,
        Some(actual.to_string()),
        Some(format!("no run of {} has written anything yet", target.rel.display)),
    )
}

fn find_run(target: &Target, run_id: Option<i64>) -> Result<Option<RunFacts>> {
    let decode = |row: &pgrx::spi::SpiHeapTupleData| {
        Ok(RunFacts {
            run_id: get_required(row, 1)?,
            rows_at_start: get(row, 2)?,
            rows_changed: get_required(row, 3)?,
            dry_run: get_required(row, 4)?,
            status: get_required(row, 5)?,
        })
    };
    let columns = "run_id, rows_at_start, rows_changed, dry_run, status, target::pg_catalog.oid";
    match run_id {
        Some(id) => {
            let rows = sql::select_rows(
                &format!("SELECT {columns} FROM tenant_backfill.runs WHERE run_id = $1"),
                &[Value::Int8(Some(id))],
                |row| Ok((decode(row)?, get_required::<pg_sys::Oid>(row, 6)?)),
            )?;
            let (run, oid) = rows.into_iter().next().ok_or(BackfillError::UnknownRun(id))?;
            if oid != target.rel.oid {
                return Err(BackfillError::BadArgument(
                    format!("run {id} is not a run of {}", target.rel.display),
                    "Pass a run of this target, or leave run_id NULL for its latest.".into(),
                ));
            }
            Ok(Some(run))
        }
        None => Ok(sql::select_rows(
            &format!(
                "SELECT {columns} FROM tenant_backfill.runs \
                  WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND NOT dry_run AND kind <> 'rollback' \
                  ORDER BY run_id DESC LIMIT 1"
            ),
            &[Value::Oid(target.rel.oid)],
            decode,
        )?
        .into_iter()
        .next()),
    }
}

/// "16, 17, 18, 24, 28" and "…" when there are more.
fn key_list(keys: Vec<String>, total: i64) -> String {
    let more = if total > keys.len() as i64 { ", …" } else { "" };
    format!("{}{more}", keys.join(", "))
}

fn no_null_tenant(target: &Target) -> Result<Check> {
    let table = target.rel.sql_name();
    let key = target.key.sql_name();
    let tenant = target.tenant.sql_name();
    // Soft-deleted rows are the documented exceptions (orphans soft_delete_orphans set aside).
    let soft_delete = catalog::column(&target.rel, &target.soft_delete_column).ok();
    let (live, excepted) = match &soft_delete {
        Some(col) => (format!("t.{} IS NULL", col.sql_name()), format!("t.{} IS NOT NULL", col.sql_name())),
        None => ("true".to_string(), "false".to_string()),
    };
    let (nulls, exceptions) = sql::select_rows(
        &format!(
            "SELECT pg_catalog.count(*) FILTER (WHERE {live}), pg_catalog.count(*) FILTER (WHERE {excepted}) \
               FROM {table} t WHERE t.{tenant} IS NULL"
        ),
        &[],
        |row| Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?
    .into_iter()
    .next()
    .unwrap_or((0, 0));
    let keys = sql::select_rows(
        &format!("SELECT t.{key}::text FROM {table} t WHERE t.{tenant} IS NULL AND {live} ORDER BY t.{key} LIMIT {FIRST_KEYS}"),
        &[],
        |row| get_required::<String>(row, 1),
    )?;
    let mut detail = Vec::new();
    if nulls > 0 {
        detail.push(format!("still NULL: {} (see review_queue)", key_list(keys, nulls)));
    }
    if exceptions > 0 {
        detail.push(format!("{exceptions} soft-deleted rows excepted ({})", target.soft_delete_column));
    }
    Ok(check("no_null_tenant", Some(nulls == 0), 0, nulls, (!detail.is_empty()).then(|| detail.join("; "))))
}

/// No related row whose tenant differs from its target row's, for every unanimous
/// source. Rows an override decides are excepted (a human said so), and majority
/// sources are not checked: they may disagree by design.
fn sources_agree(job: &Job) -> Result<Check> {
    let (total, detail) = disagreements(job)?;
    Ok(check("sources_agree", Some(total == 0), 0, total, detail))
}

/// Related rows (of unanimous sources) whose tenant differs from their target row's,
/// but for rows an override decides: the count and a detail per source.
pub fn disagreements(job: &Job) -> Result<(i64, Option<String>)> {
    let t = &job.target;
    let mut total = 0;
    let mut detail = Vec::new();
    for s in &job.sources {
        if s.rule == Rule::Majority {
            detail.push(format!("{}: not checked (majority)", s.label));
            continue;
        }
        let mut st = Statement::new();
        let overridden = engine::overridden_keys(job, &mut st);
        st.sql = format!(
            "WITH bad AS (SELECT t.{key} AS key FROM {source} s JOIN {target} t ON t.{key} = s.{via} \
                           WHERE s.{stenant} IS NOT NULL AND t.{tenant} IS NOT NULL \
                             AND s.{stenant}::{tt} <> t.{tenant} AND t.{key}::text NOT IN ({overridden})) \
             SELECT (SELECT pg_catalog.count(*) FROM bad), \
                    (SELECT pg_catalog.string_agg(x.key::text, ', ' ORDER BY x.key) \
                       FROM (SELECT DISTINCT b.key FROM bad b ORDER BY b.key LIMIT {FIRST_KEYS}) x), \
                    (SELECT pg_catalog.count(DISTINCT b.key) FROM bad b)",
            key = t.key.sql_name(),
            tenant = t.tenant.sql_name(),
            tt = t.tenant.type_sql,
            target = t.rel.sql_name(),
            source = s.rel.sql_name(),
            via = s.via.sql_name(),
            stenant = s.tenant.sql_name(),
        );
        let (n, keys, distinct) = sql::select_rows(&st.sql, &st.params, |row| {
            Ok((get_required::<i64>(row, 1)?, get::<String>(row, 2)?, get_required::<i64>(row, 3)?))
        })?
        .into_iter()
        .next()
        .unwrap_or((0, None, 0));
        total += n;
        if n > 0 {
            let more = if distinct > FIRST_KEYS { ", …" } else { "" };
            detail.push(format!(
                "{}: {n} related rows disagree ({} {}{more})",
                s.label,
                t.rel.display,
                keys.unwrap_or_default()
            ));
        }
    }
    Ok((total, (!detail.is_empty()).then(|| detail.join("; "))))
}

/// One audit (or backup) row per row the run changed.
fn written_check(run: &RunFacts, name: &str, table: &str) -> Result<Check> {
    if run.dry_run {
        return Ok((
            name.into(),
            None,
            Some("0".into()),
            Some("0".into()),
            Some(format!("run {} was a dry run and wrote nothing", run.run_id)),
        ));
    }
    let count_sql = format!(
        "SELECT pg_catalog.count(DISTINCT (row_key, column_name)) FROM tenant_backfill.{} WHERE run_id = $1",
        sql::ident(table)
    );
    let actual = sql::select_value::<i64>(&count_sql, &[Value::Int8(Some(run.run_id))])?.unwrap_or(0);
    Ok(check(
        name,
        Some(actual == run.rows_changed),
        run.rows_changed,
        actual,
        Some(format!("rows changed by run {} ({}) and rows in {table}", run.run_id, run.status)),
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
        return Ok(Some((
            "isolation".into(),
            None,
            None,
            None,
            Some(format!(
                "skipped: role {} is not subject to the row-level security of {} (superuser, table owner without FORCE, or BYPASSRLS); run validate as an application role",
                sql::select_value::<String>("SELECT CURRENT_USER::text", &[])?.unwrap_or_default(),
                t.rel.display
            )),
        )));
    }
    // The tenants this extension wrote or was told about: the caller cannot list the
    // table's tenants itself, row-level security hides them.
    let tenants = sql::select_rows(
        "SELECT DISTINCT v FROM (SELECT a.new_value AS v FROM tenant_backfill.audit_log a \
                                  WHERE a.target = $1::pg_catalog.oid::pg_catalog.regclass AND a.column_name = $2::text::pg_catalog.name \
                                 UNION SELECT o.tenant FROM tenant_backfill.overrides o \
                                  WHERE o.target = $1::pg_catalog.oid::pg_catalog.regclass) x \
          WHERE v IS NOT NULL ORDER BY v LIMIT 100",
        &[Value::Oid(t.rel.oid), Value::text(t.tenant.name.clone())],
        |row| get_required::<String>(row, 1),
    )?;
    let previous = sql::select_value::<String>("SELECT pg_catalog.current_setting($1, true)", &[Value::text(tenant_setting)])?;
    let mut leaks = Vec::new();
    for tenant in &tenants {
        sql::execute("SELECT pg_catalog.set_config($1, $2, true)", &[Value::text(tenant_setting), Value::text(tenant.clone())])?;
        let leaked = sql::select_value::<i64>(
            &format!(
                "SELECT pg_catalog.count(*) FROM {} t WHERE t.{} IS DISTINCT FROM $1::text::{}",
                t.rel.sql_name(),
                t.tenant.sql_name(),
                t.tenant.type_sql
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
    Ok(Some(check("isolation", Some(leaks.is_empty()), 0, leaks.len(), Some(detail))))
}

// ------------------------------------------------------------------ rollback

/// Restores a run's rows from its backup in one transaction. A row whose value is no
/// longer what the run wrote is skipped and counted (drift), unless `force`.
#[pg_extern]
fn rollback(
    run_id: i64,
    force: default!(Option<bool>, "false"),
) -> TableIterator<'static, (name!(restored, i64), name!(skipped, i64))> {
    TableIterator::once(rollback_impl(run_id, force.unwrap_or(false)).or_raise())
}

fn rollback_impl(run_id: i64, force: bool) -> Result<(i64, i64)> {
    let rows = sql::select_rows(
        "SELECT target::pg_catalog.oid, kind, status, dry_run, rolled_back_by FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
        |row| {
            Ok((
                get_required::<pg_sys::Oid>(row, 1)?,
                get_required::<String>(row, 2)?,
                get_required::<String>(row, 3)?,
                get_required::<bool>(row, 4)?,
                get::<i64>(row, 5)?,
            ))
        },
    )?;
    let (target_oid, kind, status, dry_run, rolled_back_by) =
        rows.into_iter().next().ok_or(BackfillError::UnknownRun(run_id))?;
    if status == "rolled_back" {
        return Err(BackfillError::BadArgument(
            format!(
                "run {run_id} was already rolled back{}",
                rolled_back_by.map(|r| format!(" by run {r}")).unwrap_or_default()
            ),
            "A run is rolled back once. Its rows are as they were before it.".into(),
        ));
    }
    if kind == "rollback" {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is itself a rollback"),
            "Run the original job again instead of rolling back a rollback.".into(),
        ));
    }
    if dry_run {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} was a dry run and changed nothing"),
            "There is nothing to roll back.".into(),
        ));
    }
    let target = catalog::target(target_oid)?;
    let locked = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(crate::runner::LOCK_CLASS)), Value::Oid(target.rel.oid)],
    )?
    .unwrap_or(false);
    if !locked {
        return Err(BackfillError::Busy(
            format!("a run of {} is in progress", target.rel.display),
            "Wait for it to finish (SELECT * FROM tenant_backfill.progress), then roll back.".into(),
        ));
    }
    let columns = sql::select_rows(
        "SELECT DISTINCT column_name::text FROM tenant_backfill.backup WHERE run_id = $1 ORDER BY 1",
        &[Value::Int8(Some(run_id))],
        |row| get_required::<String>(row, 1),
    )?;
    let columns = columns
        .iter()
        .map(|name| catalog::column(&target.rel, name))
        .collect::<Result<Vec<_>>>()?;
    for column in &columns {
        catalog::require_update(&target.rel, column)?;
    }
    let rollback_run = sql::select_value::<i64>(
        "INSERT INTO tenant_backfill.runs (target, kind, status, parameters) \
         VALUES ($1::pg_catalog.oid::pg_catalog.regclass, 'rollback', 'running', $2::text::pg_catalog.jsonb) RETURNING run_id",
        &[Value::Oid(target.rel.oid), Value::text(serde_json::json!({ "rolls_back": run_id, "force": force }).to_string())],
    )?
    .ok_or_else(|| BackfillError::Internal("INSERT INTO runs returned no run_id".into()))?;

    let (mut restored, mut skipped) = (0i64, 0i64);
    for column in &columns {
        let mut st = Statement::new();
        let original = st.param(Value::Int8(Some(run_id)));
        let column_name = st.param(Value::text(column.name.clone()));
        let source = st.param(Value::text(format!("run {run_id}")));
        let write = writer::write_ctes(
            &WriteSpec {
                target: &target,
                column,
                run_id: rollback_run,
                skip_locked: false,
                guard: !force,
                dry_run: false,
                key_range: None,
            },
            &mut st,
        );
        st.sql = format!(
            "WITH changes AS (SELECT b.row_key::text::{kt} AS key, b.new_value::text::{ct} AS old, \
                     b.old_value::text::{ct} AS new, 'rollback'::text AS phase, {source}::text AS source, \
                     'rollback'::text AS rule, NULL::pg_catalog.jsonb AS evidence \
                FROM tenant_backfill.backup b \
               WHERE b.run_id = {original}::pg_catalog.int8 AND b.column_name = {column_name}::text::pg_catalog.name){write} \
             SELECT (SELECT pg_catalog.count(*) FROM changes), (SELECT pg_catalog.count(*) FROM upd)",
            kt = target.key.type_sql,
            ct = column.type_sql,
        );
        let (planned, done) = sql::select_rows(&st.sql, &st.params, |row| {
            Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?))
        })?
        .into_iter()
        .next()
        .unwrap_or((0, 0));
        restored += done;
        skipped += planned - done;
    }
    sql::execute(
        "UPDATE tenant_backfill.runs SET status = 'done', rows_changed = $2, rows_done = $2 + $3, \
             by_phase = pg_catalog.jsonb_build_object('rollback', $2), \
             parameters = parameters || pg_catalog.jsonb_build_object('skipped', $3), \
             finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp() \
          WHERE run_id = $1",
        &[Value::Int8(Some(rollback_run)), Value::Int8(Some(restored)), Value::Int8(Some(skipped))],
    )?;
    sql::execute(
        "UPDATE tenant_backfill.runs SET status = 'rolled_back', rolled_back_by = $2, updated_at = pg_catalog.clock_timestamp() \
          WHERE run_id = $1",
        &[Value::Int8(Some(run_id)), Value::Int8(Some(rollback_run))],
    )?;
    if skipped > 0 {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("tenant_backfill: {skipped} rows of {} changed since run {run_id} and were left as they are", target.rel.display),
            format!("SELECT * FROM tenant_backfill.rollback({run_id}, force => true) would restore them too; this rollback is run {rollback_run}.")
        );
    }
    Ok((restored, skipped))
}
