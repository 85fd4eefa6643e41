//! Running (API.md section 3): one plan, applied batch by batch. `CALL run`
//! (sql/procedures.sql) is a thin PL/pgSQL loop over the three functions here, because
//! only a procedure can COMMIT between batches; `run_now` decides and writes the table
//! a range of keys per statement, in the caller's transaction (src/batch.rs).

use crate::batch;
use crate::committed::{self, load_job_for_writing};
use crate::engine::{Mode, Scope};
use crate::error::{report_with_hint, required, OrRaise, Result};
use crate::job::Job;
use crate::locks;
use crate::runs::{self, BatchSettings, Driver, NewRun, RunKind, ThrottleLimits};
use crate::sql;
use crate::throttle;
use crate::types::RegClass;
use crate::writer::WriteSpec;
use pgrx::datum::Interval;
use pgrx::prelude::*;

/// `run_now` logs (and a dry run counts) this many rows at a time, to keep memory bounded on big tables.
const RUN_NOW_BATCH: i64 = 5000;

fn tenant_spec<'a>(job: &'a Job, run_id: i64, dry_run: bool) -> WriteSpec<'a> {
    WriteSpec::guarded(&job.target, &job.target.tenant, run_id, dry_run)
}

// ------------------------------------------------------------------ CALL run

/// Starts (or resumes) a `CALL run`: validates, takes the target's run lock, and returns
/// the run id. An unfinished run of the same target, mode and dry_run (running with no
/// process behind it, paused or failed) is resumed where it stopped.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn _run_begin(
    target: Option<RegClass>,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    mode: Option<String>,
    dry_run: Option<bool>,
    lock_timeout_ms: Option<i32>,
    target_batch_ms: Option<i32>,
    max_replica_lag: Option<Interval>,
    max_replica_lag_bytes: Option<i64>,
) -> i64 {
    (|| {
        sql::require_nonatomic("run")?;
        let target = required(target, "target")?;
        let dry_run = required(dry_run, "dry_run")?;
        // The batch size is checked first, then the mode, then the times.
        BatchSettings::new(batch_size, None, None, None)?;
        let mode = Mode::parse(mode.as_deref())?;
        let settings = BatchSettings::new(batch_size, target_batch_ms, pause_ms, lock_timeout_ms)?;
        let limits = ThrottleLimits::new(max_replica_lag, max_replica_lag_bytes, throttle::max_transaction_age())?;
        begin(target, mode, dry_run, settings, limits)
    })()
    .or_raise()
}

fn begin(target: RegClass, mode: Mode, dry_run: bool, settings: BatchSettings, limits: ThrottleLimits) -> Result<i64> {
    let job = load_job_for_writing(target.0, dry_run)?;
    locks::take_for_session(&job.target.rel)?;
    let started = (|| {
        let run_id = committed::resume_or_insert(&job, mode, dry_run, settings, limits, Driver::Foreground)?;
        committed::drive_here(run_id, &job.target.rel.sql_name(), Some(job.target.rel.oid))?;
        Ok(run_id)
    })();
    if started.is_err() {
        locks::release_session(job.target.rel.oid)?;
    }
    if let Ok(run_id) = started {
        warn_of_statement_timeout(run_id, &job.target.rel.display)?;
    }
    started
}

/// statement_timeout times the whole `CALL run`, however many batches it commits: a
/// session that carries one (a role's default, a pooler's) stops a long run part way.
/// Said before the first batch, so it is not a surprise minutes later.
fn warn_of_statement_timeout(run_id: i64, target: &str) -> Result<()> {
    // SAFETY: a GUC variable of this backend, read on its own thread.
    if unsafe { pg_sys::StatementTimeout } <= 0 {
        return Ok(());
    }
    let timeout =
        sql::select_value::<String>("SELECT pg_catalog.current_setting('statement_timeout')", &[])?.unwrap_or_default();
    report_with_hint(
        PgLogLevel::NOTICE,
        format!(
            "tenant_backfill: statement_timeout is {timeout} in this session, and it times the whole CALL: \
             run {run_id} of {target} stops when it runs out"
        ),
        "What its batches committed stays, and CALL run resumes where it stopped. For a long run, \
         SET statement_timeout = 0 in a session of its own (a direct connection: behind a transaction pooler \
         the setting stays on a server connection other clients get), or use tenant_backfill.start, whose \
         background workers no statement_timeout stops."
            .into(),
    );
    Ok(())
}

/// Before each batch of a `CALL run`: how many seconds to wait first, 0 when no signal
/// is over its limit (src/throttle.rs).
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _run_throttle(run_id: i64) -> f64 {
    committed::throttle(run_id, None).map(|wait| wait.map(|w| w.as_secs_f64()).unwrap_or(0.0)).or_raise()
}

/// Does exactly one batch of a `CALL run` (or of a background worker, which names its
/// part of a run several workers share) and says what next: `more`, `finished`, or
/// `waiting` for other workers (src/committed.rs). The caller commits after each call.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _run_batch(run_id: i64, skip_held_rows: bool, part: default!(Option<i32>, "NULL")) -> &'static str {
    sql::without_jit(|| committed::one_batch(run_id, skip_held_rows, part)).map(|step| step.as_str()).or_raise()
}

/// Ends a `CALL run`: records done (planned for a dry run) or failed with the error,
/// and releases the target's run lock. Called on every exit path of the procedure.
#[pg_extern(schema = "tenant_backfill_internal")]
#[search_path(pg_catalog, pg_temp)]
fn _run_end(run_id: i64, error_state: Option<String>, error_message: Option<String>) {
    let error = error_state.map(|state| format!("{state}: {}", error_message.unwrap_or_default()));
    committed::end(run_id, error).or_raise()
}

// ------------------------------------------------------------------ run_now

/// The whole job in the caller's transaction, for migrations and small tables.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn run_now(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'fill'"),
    dry_run: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (name!(run_id, i64), name!(rows_changed, i64), name!(by_phase, pgrx::JsonB), name!(left_for_review, i64)),
> {
    let run = || {
        let (target, dry_run) = (required(target, "target")?, required(dry_run, "dry_run")?);
        sql::without_jit(|| run_now_impl(target, mode.as_deref(), dry_run))
    };
    TableIterator::once(run().or_raise())
}

fn run_now_impl(target: RegClass, mode: Option<&str>, dry_run: bool) -> Result<(i64, i64, pgrx::JsonB, i64)> {
    let mode = Mode::parse(mode)?;
    let job = load_job_for_writing(target.0, dry_run)?;
    locks::take_for_transaction(&job.target.rel, locks::Purpose::Run)?;
    let run_id = runs::insert(NewRun {
        target: &job.target,
        kind: RunKind::RunNow,
        mode: Some(mode),
        dry_run,
        settings: None,
        limits: ThrottleLimits::default(),
        driver: Driver::Foreground,
        parameters: serde_json::json!({}),
    })?;
    let upper_key = runs::load(run_id)?.upper_key;
    let spec = tenant_spec(&job, run_id, dry_run);
    if let (Some(upper_key), false) = (&upper_key, dry_run) {
        let written = batch::decide_and_write_all(&job, mode, &spec, upper_key, RUN_NOW_BATCH)?;
        runs::record_batch(run_id, &written, None)?;
    }
    // A dry run counts batch by batch (it writes nothing).
    let mut last_key: Option<String> = None;
    while upper_key.is_some() && dry_run {
        let scope = Scope::Batch { after: last_key.clone(), up_to: upper_key.clone(), limit: Some(RUN_NOW_BATCH) };
        let batch = batch::run_batch(&job, mode, &scope, &spec)?;
        runs::record_batch(run_id, &batch, None)?;
        if batch.scanned == 0 {
            break;
        }
        last_key = batch.last_key;
    }
    runs::finish(run_id, dry_run, None)?;
    runs::summary(run_id)
}
