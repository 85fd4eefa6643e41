//! Keep it fixed (API.md section 5): install and remove the guard trigger
//! (src/trigger.rs), and release what it quarantined.

use crate::catalog;
use crate::error::{report_with_hint, required, BackfillError, OrRaise, Result};
use crate::guard::{self, GuardArgs, GuardMode};
use crate::job::{self, Target};
use crate::rejections;
use crate::runs::{self, NewRun, RunKind};
use crate::sql::{self, get_required, Value};
use crate::types::{RegClass, SqlName};
use crate::writer::{self, WriteSpec};
use pgrx::prelude::*;

// ------------------------------------------------------------------ enforce / unenforce

/// Installs (or re-installs with another mode) the guard trigger on a target.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn enforce(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'reject'"),
    parent_column: default!(Option<SqlName>, "NULL"),
) {
    required(target, "target")
        .and_then(|target| enforce_impl(target, mode.as_deref(), parent_column.as_ref()))
        .or_raise()
}

fn enforce_impl(target: RegClass, mode: Option<&str>, parent_column: Option<&SqlName>) -> Result<()> {
    let mode = GuardMode::parse(mode)?;
    let target = job::target(target.0)?;
    catalog::require_table_privilege(&target.rel, "TRIGGER")?;
    let parent = match parent_column {
        Some(name) => {
            if mode != GuardMode::Assign {
                return Err(BackfillError::BadArgument(
                    "parent_column only applies to mode 'assign'".into(),
                    "Leave parent_column NULL for the other modes.".into(),
                ));
            }
            let column = catalog::column(&target.rel, name.as_str())?;
            catalog::parent_link(&target.rel, &column.name, &target.tenant.name)?.require_comparable()?;
            column.name
        }
        None => String::new(),
    };
    // The target and its legacy inheritance children, each checked before any is changed.
    let family = guard::family(&target.rel)?;
    for table in &family {
        catalog::require_table_privilege(table, "TRIGGER")?;
    }
    if catalog::citus_without_triggers(&family.iter().map(|t| t.oid).collect::<Vec<_>>())? {
        return Err(BackfillError::Unsupported(
            format!("the guard cannot be installed on {}: it is a Citus table", target.rel.display),
            "Citus runs no trigger on the shards of a distributed or reference table (citus.enable_unsafe_triggers \
             is off), so the guard would never fire."
                .into(),
            format!(
                "Finish the backfill and make the column NOT NULL (CALL tenant_backfill.finalize('{}')): Citus checks \
                 the constraint on every shard.",
                target.rel.display
            ),
        ));
    }
    let args = GuardArgs { mode, tenant: target.tenant.name.clone(), key: target.key.name.clone(), parent };
    for table in &family {
        guard::install(table, &args)?;
    }
    if mode == GuardMode::Reject && !rejections::preloaded() {
        report_with_hint(
            PgLogLevel::NOTICE,
            format!("tenant_backfill: rejected writes to {} are recorded in the server log", target.rel.display),
            "Add tenant_backfill to shared_preload_libraries to record them in tenant_backfill.violations as well."
                .into(),
        );
    }
    Ok(())
}

/// Removes the guard trigger.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn unenforce(target: Option<RegClass>) {
    required(target, "target").and_then(unenforce_impl).or_raise()
}

fn unenforce_impl(target: RegClass) -> Result<()> {
    let rel = catalog::relation(target.0)?;
    catalog::require_table_privilege(&rel, "TRIGGER")?;
    if !guard::guard_installed(&rel)? {
        return Err(BackfillError::BadArgument(
            format!("{} has no tenant_backfill guard", rel.display),
            "tenant_backfill.enforce(target) installs one.".into(),
        ));
    }
    let family = guard::family(&rel)?;
    for table in &family {
        catalog::require_table_privilege(table, "TRIGGER")?;
    }
    for table in &family {
        guard::remove(table)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ quarantine

/// Puts quarantined rows of a target that now carry a tenant back into the table (an
/// INSERT for a quarantined insert, an UPDATE for a quarantined update), audited as a
/// run of kind `release_quarantine`. Give the tenant in `quarantine.row_data` first, or
/// pass `tenant` to give it to every waiting row of the target.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn release_quarantine(target: Option<RegClass>, tenant: default!(Option<String>, "NULL")) -> i64 {
    required(target, "target").and_then(|target| release_impl(target, tenant.as_deref())).or_raise()
}

fn release_impl(target: RegClass, tenant: Option<&str>) -> Result<i64> {
    let target = job::target(target.0)?;
    catalog::require_table_privilege(&target.rel, "INSERT")?;
    catalog::require_update(&target.rel, &target.tenant)?;
    if let Some(tenant) = tenant {
        let tenant = catalog::canonical_value(tenant, &target.tenant, &target.rel)?;
        sql::as_extension_owner(|| {
            sql::execute(
                "UPDATE tenant_backfill.quarantine SET row_data = row_data || pg_catalog.jsonb_build_object($2::text, $3::text)\n \
                 WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND released_at IS NULL",
                &[Value::Oid(target.rel.oid), Value::text(target.tenant.name.clone()), Value::text(tenant)],
            )
        })?;
    }
    let columns = writable_columns(&target)?;
    let run_id = runs::insert(NewRun {
        target: &target,
        kind: RunKind::ReleaseQuarantine,
        mode: None,
        dry_run: false,
        settings: None,
        limits: runs::ThrottleLimits::default(),
        driver: runs::Driver::Foreground,
        parameters: serde_json::json!({}),
    })?;
    let spec = WriteSpec::guarded(&target, &target.tenant, run_id, false);
    let released = writer::release_quarantined(&spec, &columns)?;
    runs::finish_with_counts(run_id, released, None, "quarantine")?;
    Ok(released)
}

/// The columns a row can be written with: not dropped, not generated.
fn writable_columns(target: &Target) -> Result<Vec<String>> {
    sql::select_rows(
        "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
          ORDER BY a.attnum",
        &[Value::Oid(target.rel.oid)],
        |row| get_required::<String>(row, 1),
    )
}
