//! Running (API.md section 3): one plan, applied batch by batch. `CALL run`
//! (sql/procedures.sql) is a thin PL/pgSQL loop over the three functions here, because
//! only a procedure can COMMIT between batches; `run_now` loops over the same batches
//! in the caller's transaction.

use crate::batch;
use crate::catalog;
use crate::engine::{Mode, Scope};
use crate::error::{report_with_hint, required, BackfillError, OrRaise, Result};
use crate::job::{self, Job};
use crate::locks;
use crate::runs::{self, BatchSettings, NewRun, RunKind, RunStatus};
use crate::sql::{self, Value};
use crate::types::RegClass;
use crate::writer::WriteSpec;
use pgrx::prelude::*;

/// `run_now` works in batches of this many rows, to keep memory bounded on big tables.
const RUN_NOW_BATCH: i64 = 5000;

/// How many times `run` walks the key space again for rows other sessions had locked.
const MAX_PASSES: i32 = 3;

/// How long the first try of a batch waits for a lock (at most `lock_timeout_ms`). Rows
/// it has updated stay locked while it waits, so it is short; an application's row lock
/// usually lasts a few milliseconds.
const FIRST_TRY_WAIT_MS: i32 = 50;

/// Checks what a run needs: read access to everything the decision reads, and UPDATE
/// on the tenant column unless nothing is written.
fn load_job_for_writing(target: RegClass, dry_run: bool) -> Result<Job> {
    let job = job::job(target.0)?;
    job.require_read_access()?;
    if !dry_run {
        catalog::require_update(&job.target.rel, &job.target.tenant)?;
    }
    Ok(job)
}

fn tenant_spec<'a>(job: &'a Job, run_id: i64, skip_locked: bool, dry_run: bool) -> WriteSpec<'a> {
    WriteSpec { target: &job.target, column: &job.target.tenant, run_id, skip_locked, guard: true, dry_run }
}

// ------------------------------------------------------------------ CALL run

/// Starts (or resumes) a `CALL run`: validates, takes the target's run lock, and returns
/// the run id. An unfinished run of the same target, mode and dry_run is resumed where
/// it stopped.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn _run_begin(
    target: Option<RegClass>,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    mode: Option<String>,
    dry_run: Option<bool>,
    lock_timeout_ms: Option<i32>,
) -> i64 {
    (|| {
        run_begin(
            required(target, "target")?,
            batch_size,
            pause_ms,
            mode.as_deref(),
            required(dry_run, "dry_run")?,
            lock_timeout_ms,
        )
    })()
    .or_raise()
}

fn run_begin(
    target: RegClass,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    mode: Option<&str>,
    dry_run: bool,
    lock_timeout_ms: Option<i32>,
) -> Result<i64> {
    sql::require_nonatomic("run")?;
    // The batch size is checked first, then the mode, then the times.
    BatchSettings::new(batch_size, None, None)?;
    let mode = Mode::parse(mode)?;
    let settings = BatchSettings::new(batch_size, pause_ms, lock_timeout_ms)?;
    let job = load_job_for_writing(target, dry_run)?;
    locks::take_for_session(&job.target.rel)?;
    let started = (|| match runs::resume(&job.target, mode, dry_run, settings)? {
        Some(run_id) => {
            ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("tenant_backfill: resuming run {run_id} of {} where it stopped", job.target.rel.display)
            );
            Ok(run_id)
        }
        None => runs::insert(NewRun {
            target: &job.target,
            kind: RunKind::Run,
            mode: Some(mode),
            dry_run,
            settings: Some(settings),
            parameters: serde_json::json!({}),
        }),
    })();
    match &started {
        Ok(run_id) => OWN_RUNS.with(|r| r.borrow_mut().push(*run_id)),
        Err(_) => locks::release_session(job.target.rel.oid)?,
    }
    started
}

/// Does exactly one batch of a `CALL run` and returns whether the run is complete.
/// The procedure commits after each call. A batch is first tried with `skip_held_rows`
/// false: its UPDATE waits at most `FIRST_TRY_WAIT_MS` for a row another session holds,
/// and the procedure, on that lock timeout, does the batch again with `skip_held_rows`
/// true (a lock step that skips held rows, for a later pass). Rows are rarely held, and
/// the first try's write costs what a bare UPDATE does.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn _run_batch(run_id: i64, skip_held_rows: bool) -> bool {
    sql::without_jit(|| run_one_batch(run_id, skip_held_rows)).or_raise()
}

fn run_one_batch(run_id: i64, skip_held_rows: bool) -> Result<bool> {
    let run = runs::load(run_id)?;
    require_own_run(&run)?;
    // The rights `_run_begin` checked, again: they may have been revoked since.
    let job = load_job_for_writing(RegClass(run.target), run.dry_run)?;
    if run.status != RunStatus::Running {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is {}, not running", run.status.as_str()),
            "Start or resume a run with CALL tenant_backfill.run(target).".into(),
        ));
    }
    if run.kind != RunKind::Run {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is a {} run, not a CALL run", run.kind.as_str()),
            "Start or resume a run with CALL tenant_backfill.run(target).".into(),
        ));
    }
    if run.upper_key.is_none() {
        // The table was empty when the run started.
        return Ok(true);
    }
    let settings = run.settings.unwrap_or(BatchSettings::DEFAULT);
    let mode = run.mode.ok_or_else(|| BackfillError::Internal(format!("run {run_id} has no mode")))?;
    // Only this batch's transaction waits at most lock_timeout for a lock.
    let lock_wait_ms =
        if skip_held_rows { settings.lock_timeout_ms } else { settings.lock_timeout_ms.min(FIRST_TRY_WAIT_MS) };
    sql::execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
        &[Value::text(format!("{lock_wait_ms}ms"))],
    )?;
    let scope = Scope::Batch {
        after: run.last_key.clone(),
        up_to: run.upper_key.clone(),
        limit: Some(settings.batch_size.into()),
    };
    let spec = tenant_spec(&job, run_id, skip_held_rows, run.dry_run);
    let batch = batch::run_batch(&job, mode, &scope, &spec)?;
    runs::record_batch(run_id, &batch)?;

    if batch.scanned > 0 {
        report_progress(run_id, &job)?;
        return Ok(false);
    }
    // The end of a pass. Rows other sessions had locked are tried again in a new pass.
    if run.rows_skipped > 0 && run.pass < MAX_PASSES {
        runs::start_next_pass(run_id)?;
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "tenant_backfill: {} rows of {} were locked by other sessions; pass {} tries them again",
                run.rows_skipped,
                job.target.rel.display,
                run.pass + 1
            )
        );
        return Ok(false);
    }
    if run.rows_skipped > 0 {
        report_with_hint(
            PgLogLevel::WARNING,
            format!(
                "tenant_backfill: {} rows of {} stayed locked by other sessions through {} passes and were not changed",
                run.rows_skipped, job.target.rel.display, run.pass
            ),
            "CALL run again later to pick them up.".into(),
        );
    }
    Ok(true)
}

thread_local! {
    /// The runs `_run_begin` started or resumed in this backend and `_run_end` has not
    /// ended: nothing a client can call adds to it, unlike an advisory lock anyone may take.
    static OWN_RUNS: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `_run_batch` and `_run_end` are the steps of the `CALL run` that began the run in this
/// backend and holds the target's run lock; called from anywhere else (another session
/// during a run, by hand) they would corrupt its bookkeeping, so they refuse.
fn require_own_run(run: &runs::Run) -> Result<()> {
    let begun_here = OWN_RUNS.with(|r| r.borrow().contains(&run.run_id));
    if begun_here && run.kind == RunKind::Run && run.status == RunStatus::Running && locks::held_here(run.target)? {
        return Ok(());
    }
    Err(BackfillError::WrongState(
        format!("run {} is not this session's run", run.run_id),
        "Its steps are called only by the CALL tenant_backfill.run that holds the target's run lock.".into(),
        "CALL tenant_backfill.run(target) starts or resumes it.".into(),
    ))
}

fn report_progress(run_id: i64, job: &Job) -> Result<()> {
    let p = runs::progress(run_id)?;
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "tenant_backfill: run {run_id} of {}: {}/{} rows ({:.1}%), {} changed, {} left for review, {:.0} rows/s",
            job.target.rel.display,
            p.rows_done,
            p.rows_total,
            p.percent(),
            p.rows_changed,
            p.left_for_review,
            p.rows_per_second()
        )
    );
    Ok(())
}

/// Ends a `CALL run`: records done (planned for a dry run) or failed with the error,
/// and releases the target's run lock. Called on every exit path of the procedure.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn _run_end(run_id: i64, error_state: Option<String>, error_message: Option<String>) {
    run_end(run_id, error_state, error_message).or_raise()
}

fn run_end(run_id: i64, error_state: Option<String>, error_message: Option<String>) -> Result<()> {
    let run = runs::load(run_id)?;
    require_own_run(&run)?;
    let error = error_state.map(|state| format!("{state}: {}", error_message.unwrap_or_default()));
    runs::finish(run_id, run.dry_run, error)?;
    OWN_RUNS.with(|r| r.borrow_mut().retain(|id| *id != run_id));
    locks::release_session(run.target)
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
    let job = load_job_for_writing(target, dry_run)?;
    locks::take_for_transaction(&job.target.rel, locks::Purpose::Run)?;
    let run_id = runs::insert(NewRun {
        target: &job.target,
        kind: RunKind::RunNow,
        mode: Some(mode),
        dry_run,
        settings: None,
        parameters: serde_json::json!({}),
    })?;
    let upper_key = runs::load(run_id)?.upper_key;
    let spec = tenant_spec(&job, run_id, false, dry_run);
    let mut last_key: Option<String> = None;
    while upper_key.is_some() {
        let scope = Scope::Batch { after: last_key.clone(), up_to: upper_key.clone(), limit: Some(RUN_NOW_BATCH) };
        let batch = batch::run_batch(&job, mode, &scope, &spec)?;
        runs::record_batch(run_id, &batch)?;
        if batch.scanned == 0 {
            break;
        }
        last_key = batch.last_key;
    }
    runs::finish(run_id, dry_run, None)?;
    runs::summary(run_id)
}
