//! Operating a long run (API.md section 6): `start` a run in a background worker
//! (src/worker.rs), `pause`, `resume` and `cancel` it, and `wait` for it. The run is
//! the same run of committed batches as `CALL run`'s (src/committed.rs): one run per
//! target, resumable by either, with the same backup and audit.

use crate::committed::{self, load_job_for_writing};
use crate::engine::Mode;
use crate::error::{required, BackfillError, OrRaise, Result};
use crate::job;
use crate::locks;
use crate::runs::{self, BatchSettings, Driver, Run, RunKind, RunStatus, ThrottleLimits};
use crate::sql::{self, Value};
use crate::throttle;
use crate::types::RegClass;
use crate::worker;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Starts (or resumes) the run of a target in a background worker of this database and
/// returns its run id at once. The worker begins when the calling transaction commits.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn start(
    target: Option<RegClass>,
    mode: default!(Option<String>, "'fill'"),
    batch_size: default!(Option<i32>, "NULL"),
    workers: default!(Option<i32>, "1"),
    pause_ms: default!(Option<i32>, "0"),
    target_batch_ms: default!(Option<i32>, "100"),
    max_replica_lag: default!(Option<Interval>, "'10 seconds'"),
    max_replica_lag_bytes: default!(Option<i64>, "268435456"),
    lock_timeout_ms: default!(Option<i32>, "1000"),
) -> i64 {
    (|| {
        let target = required(target, "target")?;
        let mode = Mode::parse(mode.as_deref())?;
        let settings = BatchSettings::new(batch_size, target_batch_ms, pause_ms, lock_timeout_ms)?;
        let limits = ThrottleLimits::new(max_replica_lag, max_replica_lag_bytes, throttle::max_transaction_age())?;
        let workers = required(workers, "workers")?;
        let most = throttle::max_workers();
        if !(1..=most).contains(&workers) {
            return Err(BackfillError::BadArgument(
                format!("workers => {workers} is not between 1 and {most}"),
                "Each worker takes one of max_worker_processes; about one per core suits most machines. \
                 A superuser sets the most a run may have with tenant_backfill.max_workers."
                    .into(),
            ));
        }
        start_impl(target, mode, settings, limits, workers)
    })()
    .or_raise()
}

fn start_impl(
    target: RegClass,
    mode: Mode,
    settings: BatchSettings,
    limits: ThrottleLimits,
    workers: i32,
) -> Result<i64> {
    let job = load_job_for_writing(target.0, false)?;
    locks::require_free(&job.target.rel)?;
    let driver = Driver::Background { run_as: current_user() };
    let run_id = committed::resume_or_insert(&job, mode, false, settings, limits, driver)?;
    // A new run, or one still in its first pass without parts, is split for its workers.
    let run = runs::load(run_id)?;
    if workers > 1 && run.pass == 1 && runs::parts(run_id)?.is_empty() {
        runs::split(run_id, &job.target, mode, workers)?;
    }
    launch(run_id, job.target.rel.oid)?;
    Ok(run_id)
}

fn current_user() -> pg_sys::Oid {
    // SAFETY: the current user id of this backend.
    unsafe { pg_sys::GetUserId() }
}

/// Starts the run's workers, to begin when this transaction commits, and records the
/// lead: one worker per part of its first pass not yet walked (the lead walks the
/// first, and any part whose worker is gone), else one.
fn launch(run_id: i64, target: pg_sys::Oid) -> Result<()> {
    // SAFETY: this backend's users, and the id of the (sub)transaction that starts the
    // run (assigned now if it has none): the workers begin once it commits, and not at
    // all if it (or a savepoint around it) rolls back.
    let (session, starter) =
        unsafe { ((pg_sys::GetSessionUserId(), current_user()), u32::from(pg_sys::GetCurrentTransactionId())) };
    let lead = worker::launch(run_id, target, None, session, starter)?;
    runs::set_pid(run_id, lead)?;
    let run = runs::load(run_id)?;
    if run.pass == 1 {
        let left: Vec<i32> = runs::parts(run_id)?.into_iter().filter(|p| !p.done).map(|p| p.part).collect();
        for part in left.into_iter().skip(1) {
            worker::launch(run_id, target, Some(part), session, starter)?;
        }
    }
    Ok(())
}

/// A run of committed batches the caller may drive: it may run the target.
fn load_operable(run_id: i64) -> Result<Run> {
    let run = runs::load(run_id)?;
    if run.kind != RunKind::Run {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is a {} run, not a run of committed batches", run.kind.as_str()),
            "Only runs of CALL run and start can be paused, resumed, cancelled and waited for.".into(),
        ));
    }
    load_job_for_writing(run.target, run.dry_run)?;
    Ok(run)
}

fn not_now(run: &Run, what: &str) -> BackfillError {
    BackfillError::WrongState(
        format!("run {} cannot be {what}: it is {}", run.run_id, run.status.as_str()),
        format!("Its status is {}, which is final.", run.status.as_str()),
        "SELECT * FROM tenant_backfill.progress shows every run's state; start(target) begins a new run.".into(),
    )
}

/// Pauses a run after its current batch; paused, it holds nothing. A run with no process
/// behind it is paused at once.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn pause(run_id: Option<i64>) {
    (|| {
        let run = load_operable(required(run_id, "run_id")?)?;
        match run.status {
            RunStatus::Running if runs::alive(&run)? => runs::request(run.run_id, "pause"),
            RunStatus::Running | RunStatus::Failed => {
                runs::stop(run.run_id, RunStatus::Paused, &[RunStatus::Running, RunStatus::Failed], true)
            }
            RunStatus::Paused => Ok(()),
            _ => Err(not_now(&run, "paused")),
        }
    })()
    .or_raise()
}

/// Stops a run for good after its current batch (status cancelled). What it wrote stays;
/// `rollback(run_id)` undoes it.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn cancel(run_id: Option<i64>) {
    (|| {
        let run = load_operable(required(run_id, "run_id")?)?;
        match run.status {
            RunStatus::Running if runs::alive(&run)? => runs::request(run.run_id, "cancel"),
            RunStatus::Running | RunStatus::Paused | RunStatus::Failed => runs::stop(
                run.run_id,
                RunStatus::Cancelled,
                &[RunStatus::Running, RunStatus::Paused, RunStatus::Failed],
                true,
            ),
            RunStatus::Cancelled => Ok(()),
            _ => Err(not_now(&run, "cancelled")),
        }
    })()
    .or_raise()
}

/// Continues a paused or failed run, or one whose process is gone, in a background
/// worker from where it stopped, with its settings.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn resume(run_id: Option<i64>) {
    (|| {
        let run = load_operable(required(run_id, "run_id")?)?;
        match run.status {
            RunStatus::Running if runs::alive(&run)? => {
                return Err(BackfillError::WrongState(
                    format!("run {} is running", run.run_id),
                    format!("Process {} drives it.", run.pid.unwrap_or_default()),
                    "Pause it first, or wait for it: SELECT tenant_backfill.wait(run_id).".into(),
                ))
            }
            RunStatus::Running | RunStatus::Paused | RunStatus::Failed => {}
            _ => return Err(not_now(&run, "resumed")),
        }
        let target = job::target(run.target)?;
        locks::require_free(&target.rel)?;
        runs::restart(run.run_id, None, &ThrottleLimits::default(), Driver::Background { run_as: current_user() })?;
        launch(run.run_id, run.target)
    })()
    .or_raise()
}

/// How often `wait` looks at the run.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Blocks until the run is no longer running or throttled, or the timeout passes, and
/// returns its state (`progress.state`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn wait(run_id: Option<i64>, timeout: default!(Option<Interval>, "NULL")) -> String {
    (|| {
        let run_id = required(run_id, "run_id")?;
        let deadline = timeout.map(|t| {
            let micros = t.as_micros().max(0);
            Instant::now() + Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
        });
        require_can_wait(run_id)?;
        // Visible to the run's throttle, which must not wait for this session in turn.
        locks::mark_waiting(runs::load(run_id)?.target)?;
        loop {
            // Until no process of the run is left: a paused or failed run's workers may
            // still finish the batch they are in.
            let (state, alive) = sql::with_fresh_snapshot(|| {
                sql::select_rows(
                    "SELECT p.state, p.alive FROM tenant_backfill.progress p WHERE p.run_id = $1",
                    &[Value::int8(run_id)],
                    |row| Ok((sql::get_required::<String>(row, 1)?, sql::get_required::<bool>(row, 2)?)),
                )
            })?
            .into_iter()
            .next()
            .ok_or(BackfillError::UnknownRun(run_id))?;
            let ended = !matches!(state.as_str(), "running" | "throttled") && !alive;
            // (A run that ended between the view's read of its row and of the lock table
            // reads as ended, not failed: sql/write_path.sql, _run_now.)
            if ended || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(state);
            }
            sql::sleep(WAIT_POLL);
        }
    })()
    .or_raise()
}

/// `wait` sees other sessions' commits only with a snapshot per look, and a run started
/// in this very transaction does not begin before it commits.
fn require_can_wait(run_id: i64) -> Result<()> {
    let (isolation, xmin) = sql::select_one_row(
        "SELECT pg_catalog.current_setting('transaction_isolation'),\n       \
         (SELECT r.xmin::pg_catalog.text FROM tenant_backfill.runs r WHERE r.run_id = $1)",
        &[Value::int8(run_id)],
        "the transaction's state",
        |row| Ok((sql::get_required::<String>(row, 1)?, sql::get::<String>(row, 2)?)),
    )?;
    let xmin = xmin.and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
    // SAFETY: whether the run's row was written by this transaction or one of its
    // subtransactions (a savepoint around start).
    let started_here = xmin != 0 && unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xmin.into()) };
    if started_here {
        return Err(BackfillError::WrongState(
            format!("run {run_id} was started or resumed in this transaction"),
            "Its worker begins when this transaction commits, so waiting here would never end.".into(),
            "COMMIT first, then SELECT tenant_backfill.wait(run_id).".into(),
        ));
    }
    if isolation != "read committed" {
        return Err(BackfillError::WrongState(
            format!("wait cannot see the run change in a {isolation} transaction"),
            "The transaction's snapshot is fixed, so the run's progress would look frozen.".into(),
            "Call it in a read committed transaction (the default), or on its own.".into(),
        ));
    }
    Ok(())
}
