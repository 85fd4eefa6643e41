//! Background runs (`start`, `resume`): a dynamic background worker of the run's
//! database drives its batches, so the run outlives the client that started it. No
//! `shared_preload_libraries` is needed: the worker is registered when the run starts.
//!
//! The worker connects, names itself in `pg_stat_activity` (`tenant_backfill run 12
//! (public.customers)`), waits for the transaction that started it to commit (it
//! exits if that rolled back), and then works with the rights of the role that called
//! `start`: a local user-id change, as a SECURITY DEFINER function makes, so nothing
//! it runs (a trigger on the target) can SET ROLE back to the superuser it connected as.
//! It takes the target's run lock, and loops: throttle check, batch, commit, each in its
//! own short transaction. Every wait (throttled, pause_ms, lock backoff) is spent
//! outside any transaction, so it holds no snapshot and no lock.
//!
//! `pg_terminate_backend` of the worker stops it after its current batch; the run is
//! then `running` with no process, which `progress` shows as failed with alive false,
//! and `resume` continues it.

use crate::committed;
use crate::error::{BackfillError, Result};
use crate::job;
use crate::locks;
use crate::runs::{self, RunStatus};
use crate::sql::{self, get, get_required, Value};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// A batch that could not get its locks is tried this many more times, backing off.
const LOCK_RETRIES: u32 = 5;

/// How long `start` waits for its worker to connect and take the target's run lock.
const STARTUP: Duration = Duration::from_secs(10);

/// Starts a worker for the run of `target`, to work as `run_as` once the current
/// transaction (`starter`, its full xid) commits, and returns its pid once it holds its
/// lock. The lead (`part` None) holds the target's run lock: from then on `progress`
/// sees the run alive, and no other run of the target can start. A helper holds the
/// lock of its part of a run several workers share.
pub fn launch(
    run_id: i64,
    target: pg_sys::Oid,
    part: Option<i32>,
    session: (pg_sys::Oid, pg_sys::Oid),
    starter: u32,
) -> Result<i32> {
    // SAFETY: MyDatabaseId and MyProcPid are set in every backend connected to a database.
    let (database, me) = unsafe { (u32::from(pg_sys::MyDatabaseId), pg_sys::MyProcPid) };
    let worker = BackgroundWorkerBuilder::new(&format!("tenant_backfill run {run_id}"))
        .set_type("tenant_backfill run")
        .set_function("tenant_backfill_run_worker")
        .set_library(crate::LIBRARY)
        .set_argument(Some(pg_sys::Datum::from(run_id)))
        .set_extra(&format!(
            "{database} {} {} {starter} {} {}",
            u32::from(session.0),
            u32::from(session.1),
            u32::from(target),
            part.unwrap_or(-1)
        ))
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
        .map_err(|_| no_worker(run_id, "no background worker slot is free"))?;
    let pid = worker
        .wait_for_startup()
        .map_err(|status| no_worker(run_id, &format!("the worker did not start ({status:?})")))?;
    let began = std::time::Instant::now();
    let holds = || match part {
        None => locks::held_by(target, pid),
        Some(part) => locks::part_held_by(run_id, part, Some(pid)),
    };
    while !holds()? {
        if worker.pid().is_err() {
            // It stopped without its lock: another process holds it, or it failed.
            return Err(BackfillError::Busy(
                format!("run {run_id} could not start: its worker stopped before it took its lock"),
                "Another process runs the target (SELECT * FROM tenant_backfill.progress), or the worker failed \
                 (the server log says why); try again once the target is free."
                    .into(),
            ));
        }
        if began.elapsed() > STARTUP {
            return Err(no_worker(run_id, "the worker did not connect within 10 seconds"));
        }
        sql::sleep(Duration::from_millis(5));
    }
    Ok(pid)
}

fn no_worker(run_id: i64, why: &str) -> BackfillError {
    BackfillError::WrongState(
        format!("could not start a background worker for run {run_id}"),
        format!("{why}; nothing was started."),
        "Raise max_worker_processes (a restart), or run it in the foreground with CALL tenant_backfill.run(target)."
            .into(),
    )
}

/// What a worker is given: the database, the starting session's session user and
/// current user, the starter's (sub)transaction id, the target, and its part (None: the
/// lead).
struct Given {
    database: pg_sys::Oid,
    session_user: pg_sys::Oid,
    role: pg_sys::Oid,
    starter: u32,
    target: pg_sys::Oid,
    part: Option<i32>,
}

fn parse_extra(extra: &str) -> Option<Given> {
    let mut parts = extra.split(' ');
    let database = pg_sys::Oid::from(parts.next()?.parse::<u32>().ok()?);
    let session_user = pg_sys::Oid::from(parts.next()?.parse::<u32>().ok()?);
    let role = pg_sys::Oid::from(parts.next()?.parse::<u32>().ok()?);
    let starter = parts.next()?.parse::<u32>().ok()?;
    let target = pg_sys::Oid::from(parts.next()?.parse::<u32>().ok()?);
    let part = parts.next()?.parse::<i32>().ok().filter(|p| *p >= 0);
    Some(Given { database, session_user, role, starter, target, part })
}

/// The worker's entry point.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn tenant_backfill_run_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let run_id = arg.value() as i64;
    let Some(given) = parse_extra(BackgroundWorker::get_extra()) else {
        return;
    };
    // As the starting session's user, so session_user reads the same in the run (a trigger
    // or a policy may check it); it logged in, so it may connect.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(given.database), Some(given.session_user));
    // SAFETY: sets this backend's current user for the rest of its life; the local
    // user-id change forbids SET ROLE and SET SESSION AUTHORIZATION meanwhile, so
    // nothing the run executes (a trigger on the target) can become anyone else.
    unsafe { pg_sys::SetUserIdAndSecContext(given.role, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32) };
    // Its lock first, before the run is even visible: `start` waits for it.
    let locked = transaction(|| -> Result<bool> {
        // This session is the extension's own: nothing in it resolves through a
        // search_path other than the pinned one.
        sql::execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)", &[])?;
        let name = sql::select_value::<String>(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c\n \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[Value::Oid(given.target)],
        )?
        .unwrap_or_default();
        sql::execute(
            "SELECT pg_catalog.set_config('application_name', $1, false)",
            &[Value::text(committed::application_name(run_id, &name))],
        )?;
        match given.part {
            None => locks::try_take_for_session(given.target),
            Some(part) => Ok(locks::try_take_part(run_id, part)? && locks::join_as_helper(given.target)?),
        }
    });
    if !matches!(locked, Ok(true)) || !starter_committed(given.starter) {
        return;
    }
    match transaction(|| claim(run_id, given.part)) {
        Ok(true) => drive(run_id, given.part, given.target),
        Ok(false) => log_failure(run_id, "the run was not running when its worker began"),
        // Another process drives the target (a CALL run took this run over meanwhile):
        // the run is that process's now.
        Err(err @ BackfillError::Busy(..)) => log_failure(run_id, &err.to_string()),
        // Anything else (rights revoked since start, a dropped target) fails the run.
        Err(err) => {
            let error = format!("{}: {err}", err.sqlstate_text());
            let _ = transaction(|| runs::finish(run_id, false, Some(error)));
            log_failure(run_id, &err.to_string());
        }
    }
}

/// Waits for the (sub)transaction that started the worker to end: whether it committed.
/// It waits until the transaction is no longer running at all (not only recorded as
/// committed, which under synchronous replication comes while it still waits for the
/// standby), so the worker's next snapshot sees the run it started.
fn starter_committed(starter: u32) -> bool {
    if starter == 0 {
        return true;
    }
    let xid = pg_sys::TransactionId::from(starter);
    loop {
        // SAFETY: a look at the proc array, in a transaction of this worker's.
        if !BackgroundWorker::transaction(|| unsafe { pg_sys::TransactionIdIsInProgress(xid) }) {
            break;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
            return false;
        }
    }
    // SAFETY: reads the commit log for an xid that has ended.
    BackgroundWorker::transaction(|| unsafe { pg_sys::TransactionIdDidCommit(xid) })
}

/// Takes the run over (the lead) or joins it (a helper), its rights checked as CALL run
/// checks them. False when the run is no longer this worker's to drive.
fn claim(run_id: i64, part: Option<i32>) -> Result<bool> {
    let run = match runs::load(run_id) {
        Ok(run) => run,
        Err(BackfillError::UnknownRun(_)) => return Ok(false),
        Err(err) => return Err(err),
    };
    if run.status != RunStatus::Running || !run.background {
        return Ok(false);
    }
    let target = job::target(run.target)?;
    committed::load_job_for_writing(run.target, run.dry_run)?;
    if part.is_none() {
        locks::take_for_session(&target.rel)?;
        // SAFETY: this process's pid.
        runs::set_pid(run_id, unsafe { pg_sys::MyProcPid })?;
    }
    committed::drive_here(run_id, &target.rel.sql_name(), None)?;
    Ok(true)
}

/// One transaction of the worker. An ERROR in it (one the batch's own subtransaction did
/// not catch: in the throttle check, the bookkeeping, the end) rolls it back and comes
/// back as a value, as Postgres' own background processes recover, so the worker can
/// record it on the run instead of dying with the run's error unsaid.
fn transaction<R>(work: impl FnOnce() -> Result<R> + std::panic::UnwindSafe + std::panic::RefUnwindSafe) -> Result<R> {
    PgTryBuilder::new(|| BackgroundWorker::transaction(work))
        .catch_others(|caught| {
            // SAFETY: rolls back the transaction the error interrupted; the worker starts
            // a new one for its next step.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(match caught {
                pg_sys::panic::CaughtError::PostgresError(report)
                | pg_sys::panic::CaughtError::ErrorReport(report)
                | pg_sys::panic::CaughtError::RustPanic { ereport: report, .. } => {
                    BackfillError::Caught(report.sql_error_code(), report.message().to_string())
                }
            })
        })
        .execute()
}

/// What a batch's transaction ended with.
enum Outcome {
    More,
    Finished,
    Waiting,
    Failed { state: String, message: String },
}

/// One batch, its error caught (sql/procedures.sql, _run_batch_caught: a
/// subtransaction) so the worker can record it and decide what to do.
fn caught_batch(run_id: i64, skip_held_rows: bool, part: Option<i32>) -> Result<Outcome> {
    sql::select_one_row(
        "SELECT step, err_state, err_message FROM tenant_backfill_internal._run_batch_caught($1, $2, $3)",
        &[Value::int8(run_id), Value::Bool(Some(skip_held_rows)), Value::Int4(part)],
        "a batch's outcome",
        |row| {
            Ok(match get::<String>(row, 2)? {
                Some(state) => Outcome::Failed { state, message: get::<String>(row, 3)?.unwrap_or_default() },
                None => match get_required::<String>(row, 1)?.as_str() {
                    "finished" => Outcome::Finished,
                    "waiting" => Outcome::Waiting,
                    _ => Outcome::More,
                },
            })
        },
    )
}

/// A helper goes on only while its run's lead does: without the lead (killed), the run
/// reads failed and `resume` starts all its workers again.
fn lead_alive(run_id: i64) -> Result<bool> {
    let run = runs::load(run_id)?;
    Ok(run.status == RunStatus::Running && runs::alive(&run)?)
}

/// The worker's loop over the run's batches, as CALL run's procedure loops over them. A
/// helper walks its part and stops; the lead walks the rest and ends the run.
fn drive(run_id: i64, part: Option<i32>, target: pg_sys::Oid) {
    let pause = transaction(|| runs::load(run_id))
        .ok()
        .and_then(|r| r.settings)
        .map(|s| Duration::from_millis(s.pause_ms as u64))
        .unwrap_or_default();
    // How a worker stops on an error: the lead ends the run failed; a helper fails it,
    // and the lead stops at its next batch.
    let stop = |error: String| match part {
        None => {
            wait_for_helpers(target);
            end(run_id, Some(error))
        }
        Some(_) => {
            if let Err(err) = transaction(|| runs::finish(run_id, false, Some(error))) {
                log_failure(run_id, &err.to_string());
            }
        }
    };
    let mut wait = Duration::ZERO;
    let mut skip_held_rows = false;
    let mut lock_failures = 0u32;
    loop {
        // SIGTERM (pg_terminate_backend, shutdown) ends the worker between batches.
        if !wait.is_zero() && !BackgroundWorker::wait_latch(Some(wait)) {
            return;
        }
        if BackgroundWorker::sigterm_received() {
            return;
        }
        wait = Duration::ZERO;
        if part.is_some() && !matches!(transaction(|| lead_alive(run_id)), Ok(true)) {
            return;
        }
        match transaction(|| committed::throttle(run_id, part)) {
            Ok(Some(throttled)) => {
                wait = throttled;
                continue;
            }
            Ok(None) => {}
            Err(err) => return stop(format!("{}: {err}", err.sqlstate_text())),
        }
        let outcome = match transaction(|| caught_batch(run_id, skip_held_rows, part)) {
            Ok(outcome) => outcome,
            Err(err) => return stop(format!("{}: {err}", err.sqlstate_text())),
        };
        match outcome {
            Outcome::Finished if part.is_some() => return,
            Outcome::Finished => {
                wait_for_helpers(target);
                return end(run_id, None);
            }
            Outcome::More => {
                skip_held_rows = false;
                lock_failures = 0;
                wait = pause;
            }
            // The lead has walked what it can of the first pass: the helpers walk the rest.
            Outcome::Waiting => wait = WAIT_FOR_HELPERS,
            // The first try met a lock (a row another session holds, most likely): do the
            // batch again at once, skipping held rows.
            Outcome::Failed { state, .. } if state == "55P03" && !skip_held_rows => skip_held_rows = true,
            Outcome::Failed { state, message } if state == "55P03" => {
                if lock_failures >= LOCK_RETRIES {
                    return stop(format!("{state}: {message}"));
                }
                lock_failures += 1;
                wait = Duration::from_millis(50u64 << lock_failures.min(6)).min(Duration::from_secs(2));
            }
            Outcome::Failed { state, message } => return stop(format!("{state}: {message}")),
        }
    }
}

/// The lead ends the run only once its helpers are gone (each stops after its current
/// batch once the run is no longer running), so nothing writes after `wait` returns.
fn wait_for_helpers(target: pg_sys::Oid) {
    while !matches!(transaction(|| locks::no_helpers(target)), Ok(true)) {
        if !BackgroundWorker::wait_latch(Some(WAIT_FOR_HELPERS)) {
            return;
        }
    }
}

/// How often a lead that waits for its helpers looks again.
const WAIT_FOR_HELPERS: Duration = Duration::from_millis(100);

/// Ends the run (done, planned, or failed with the error) and its worker.
fn end(run_id: i64, error: Option<String>) {
    if let Err(err) = transaction(|| committed::end(run_id, error)) {
        log_failure(run_id, &err.to_string());
    }
}

fn log_failure(run_id: i64, what: &str) {
    ereport!(
        WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("tenant_backfill: the background worker of run {run_id} stopped: {what}"),
        "SELECT * FROM tenant_backfill.progress shows the run; tenant_backfill.resume(run_id) continues it."
    );
}
