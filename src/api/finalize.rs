//! Finish the job (API.md section 5): a real NOT NULL constraint without a long lock,
//! and the monitoring a cron job or postgres_exporter alerts on.
//!
//! `CALL finalize` (sql/procedures.sql) runs the steps below one transaction each:
//! 1. `ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID` (brief lock, no scan);
//! 2. `VALIDATE CONSTRAINT` (scans under a lock that lets reads and writes go on);
//! 3. `ALTER COLUMN ... SET NOT NULL`, which uses the validated check instead of a
//!    scan, then drops the check.

use crate::catalog;
use crate::checks;
use crate::error::{required, BackfillError, OrRaise, Result};
use crate::job::{self, Target};
use crate::locks;
use crate::rejections;
use crate::sql::{self, get_required, Value};
use crate::types::RegClass;
use pgrx::datum::Interval;
use pgrx::prelude::*;

fn constraint_name(target: &Target) -> String {
    let mut name = format!("tenant_backfill_{}_not_null", target.tenant.name);
    while name.len() > 63 {
        name.pop();
    }
    name
}

fn has_constraint(target: &Target) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2::text::pg_catalog.name)",
        &[Value::Oid(target.rel.oid), Value::text(constraint_name(target))],
    )?
    .unwrap_or(false))
}

/// The 23502 error for NULL rows that remain: count and first keys.
fn remaining_nulls(target: &Target) -> Result<Option<BackfillError>> {
    let nulls = checks::null_tenant_rows(target, "true", &[])?;
    if nulls.count == 0 {
        return Ok(None);
    }
    Ok(Some(BackfillError::NullTenant {
        message: format!(
            "{} still has {} rows with NULL {}; finalize added no constraint",
            target.rel.display, nulls.count, target.tenant.name
        ),
        detail: format!("First keys: {}.", nulls.key_list()),
        hint: Some("Backfill, review or soft-delete them first (tenant_backfill.review_queue).".into()),
    }))
}

/// Step 0 of `CALL finalize`: 'already' when the column is NOT NULL, an error when NULL
/// rows remain, else 'ready'.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _finalize_check(target: Option<RegClass>) -> String {
    required(target, "target").and_then(finalize_check).or_raise()
}

fn finalize_check(target: RegClass) -> Result<String> {
    sql::require_nonatomic("finalize")?;
    let target = job::target(target.0)?;
    catalog::require_table_privilege(&target.rel, "SELECT")?;
    if target.tenant.not_null {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "tenant_backfill: {} of {} is already NOT NULL; nothing to do",
                target.tenant.name, target.rel.display
            )
        );
        return Ok("already".into());
    }
    if let Some(err) = remaining_nulls(&target)? {
        if has_constraint(&target)? {
            drop_constraint(&target)?;
        }
        return Err(err);
    }
    Ok("ready".into())
}

/// One step of `CALL finalize`, in its own transaction, under `lock_timeout`.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _finalize_step(target: RegClass, step: i32, lock_timeout_ms: i32) {
    finalize_step(target, step, lock_timeout_ms).or_raise()
}

fn finalize_step(target: RegClass, step: i32, lock_timeout_ms: i32) -> Result<()> {
    let target = job::target(target.0)?;
    locks::set_lock_timeout(lock_timeout_ms)?;
    let table = target.rel.sql_name();
    let tenant = target.tenant.sql_name();
    let constraint = sql::ident(&constraint_name(&target));
    match step {
        1 => {
            if !has_constraint(&target)? {
                sql::execute(
                    &format!("ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({tenant} IS NOT NULL) NOT VALID"),
                    &[],
                )?;
            }
        }
        2 => {
            // New NULLs are blocked since step 1; ones that slipped in before it are named.
            if let Some(err) = remaining_nulls(&target)? {
                return Err(err);
            }
            sql::execute(&format!("ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}"), &[])?;
        }
        3 => {
            sql::execute(&format!("ALTER TABLE {table} ALTER COLUMN {tenant} SET NOT NULL"), &[])?;
            sql::execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {constraint}"), &[])?;
        }
        other => {
            return Err(BackfillError::Internal(format!("finalize has no step {other}")));
        }
    }
    Ok(())
}

/// Undoes a failed `CALL finalize`: drops its check constraint so nothing is left behind.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _finalize_abort(target: RegClass) {
    finalize_abort(target).or_raise()
}

fn finalize_abort(target: RegClass) -> Result<()> {
    let target = job::target(target.0)?;
    if has_constraint(&target)? {
        drop_constraint(&target)?;
    }
    Ok(())
}

fn drop_constraint(target: &Target) -> Result<()> {
    sql::execute(
        &format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            target.rel.sql_name(),
            sql::ident(&constraint_name(target))
        ),
        &[],
    )?;
    Ok(())
}

// ------------------------------------------------------------------ monitor

/// Rows for alerting: new NULL rows, related rows that disagree with their target row,
/// guard violations and quarantined rows in the window.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn monitor(
    target: Option<RegClass>,
    since: default!(Option<Interval>, "'1 hour'"),
) -> TableIterator<'static, (name!(check_name, String), name!(rows, i64), name!(detail, Option<String>))> {
    TableIterator::new(required(target, "target").and_then(|target| monitor_impl(target, since)).or_raise())
}

fn monitor_impl(target: RegClass, since: Option<Interval>) -> Result<Vec<(String, i64, Option<String>)>> {
    let job = job::job(target.0)?;
    job.require_read_access()?;
    let t = &job.target;
    let since_value = match since.and_then(|s| pgrx::IntoDatum::into_datum(s)) {
        Some(datum) => Value::Raw(datum, pg_sys::INTERVALOID),
        None => {
            return Err(BackfillError::BadArgument(
                "since is NULL".into(),
                "Pass the window to look back over, e.g. '1 hour'.".into(),
            ))
        }
    };
    let mut out = Vec::new();

    // New NULL rows: by the first timestamp column of these that exists, else all.
    let stamp = sql::select_value::<String>(
        "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid = $1 AND NOT a.attisdropped AND a.attnum > 0 \
            AND a.atttypid IN ('pg_catalog.timestamptz'::pg_catalog.regtype, 'pg_catalog.timestamp'::pg_catalog.regtype) \
            AND a.attname IN ('created_at', 'CreatedAt', 'inserted_at', 'updated_at', 'UpdatedAt') \
          ORDER BY pg_catalog.array_position(ARRAY['created_at', 'CreatedAt', 'inserted_at', 'updated_at', 'UpdatedAt']::pg_catalog.name[], a.attname) \
          LIMIT 1",
        &[Value::Oid(t.rel.oid)],
    )?;
    let (window, described) = match &stamp {
        Some(col) => {
            (format!("t.{} > pg_catalog.now() - $1::pg_catalog.interval", sql::ident(col)), format!("by {col}"))
        }
        None => (
            "$1::pg_catalog.interval IS NOT NULL".to_string(),
            "no created_at or updated_at column: all NULL rows".into(),
        ),
    };
    let new_nulls = checks::null_tenant_rows(t, &window, std::slice::from_ref(&since_value))?;
    out.push((
        "new_null_rows".into(),
        new_nulls.count,
        Some(if new_nulls.first_keys.is_empty() {
            described
        } else {
            format!("{described}; keys {}", new_nulls.first_keys.join(", "))
        }),
    ));

    let (disagree, detail) = checks::disagreements(&job)?;
    out.push(("sources_disagree".into(), disagree, detail));

    let violations = sql::select_rows(
        "SELECT v.action, pg_catalog.count(*) FROM tenant_backfill.violations v \
          WHERE v.target = $2::pg_catalog.oid::pg_catalog.regclass AND v.occurred_at > pg_catalog.now() - $1::pg_catalog.interval \
          GROUP BY v.action ORDER BY v.action",
        &[since_value.clone(), Value::Oid(t.rel.oid)],
        |row| Ok((get_required::<String>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?;
    out.push((
        "violations".into(),
        violations.iter().map(|v| v.1).sum(),
        (!violations.is_empty())
            .then(|| violations.iter().map(|(a, n)| format!("{a}: {n}")).collect::<Vec<_>>().join(", ")),
    ));

    let waiting = sql::select_value::<i64>(
        "SELECT pg_catalog.count(*) FROM tenant_backfill.quarantine \
          WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND released_at IS NULL",
        &[Value::Oid(t.rel.oid)],
    )?
    .unwrap_or(0);
    out.push(("quarantined".into(), waiting, Some("rows waiting in tenant_backfill.quarantine".into())));

    match rejections::queue_state() {
        Some((_, dropped)) => out.push((
            "rejections_dropped".into(),
            dropped,
            Some("rejected writes the full queue could not keep (since server start)".into()),
        )),
        None => out.push((
            "rejections_dropped".into(),
            0,
            Some("not preloaded: rejected writes are in the server log".into()),
        )),
    }
    Ok(out)
}
