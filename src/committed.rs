//! A run of committed batches, the steps every driver takes: `CALL run` (a PL/pgSQL
//! loop in sql/procedures.sql, because only a procedure can COMMIT) and a background
//! worker (src/worker.rs, which commits its own transactions). Each batch is one call
//! of [`one_batch`]: it honours a pause or cancel asked of the run, decides and writes
//! the next keys, records the counts, sizes the next batch, and says whether the run
//! is complete. Before each batch the driver asks [`throttle`] whether to wait.

use crate::batch;
use crate::catalog;
use crate::engine::Scope;
use crate::error::{report_with_hint, BackfillError, Result};
use crate::job::{self, Job};
use crate::locks;
use crate::runs::{self, BatchSettings, RunKind, RunStatus};
use crate::sql::{self, Value};
use crate::throttle;
use crate::writer::WriteSpec;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How many passes a run makes: the walk over the key space, then up to two over the rows
/// the pass before did not write (other sessions held them, or set them meanwhile).
const MAX_PASSES: i32 = 3;

/// How long the first try of a batch waits for a lock (at most `lock_timeout_ms`). Rows
/// it has updated stay locked while it waits, so it is short; an application's row lock
/// usually lasts a few milliseconds.
const FIRST_TRY_WAIT_MS: i32 = 50;

/// A foreground run's progress NOTICE comes at most this often (and once at the end):
/// one per batch would bury everything else in a psql session or a migration log.
const NOTICE_EVERY: Duration = Duration::from_secs(5);

/// The runs this backend drives (begun here and not ended), each with when it last
/// reported progress and how long it has been throttled: nothing a client can call adds
/// to it, unlike an advisory lock anyone may take.
struct Driven {
    run_id: i64,
    last_notice: Instant,
    /// Consecutive throttled checks, and the reason last reported.
    throttled: u32,
    reason: Option<String>,
    /// The application_name to put back when the run ends here.
    application_name: Option<String>,
    /// A `CALL run`'s target, whose session lock an abort that ends the procedure releases
    /// (`on_transaction_event`); None for a background worker, which recovers from an
    /// abort and goes on holding it.
    release_on_abort: Option<pg_sys::Oid>,
}

thread_local! {
    static DRIVEN: RefCell<Vec<Driven>> = const { RefCell::new(Vec::new()) };
}

fn with_driven<R>(run_id: i64, f: impl FnOnce(Option<&mut Driven>) -> R) -> R {
    DRIVEN.with(|d| f(d.borrow_mut().iter_mut().find(|d| d.run_id == run_id)))
}

/// Checks what a run needs: read access to everything the decision reads, and UPDATE
/// on the tenant column unless nothing is written.
pub fn load_job_for_writing(target: pg_sys::Oid, dry_run: bool) -> Result<Job> {
    let job = job::job(target)?;
    job.require_read_access()?;
    if !dry_run {
        catalog::require_update(&job.target.rel, &job.target.tenant)?;
    }
    Ok(job)
}

/// The target's unfinished run of committed batches in this mode and dry-run-ness,
/// resumed with these settings and driver (said in a NOTICE), or else a new one: the
/// one rule `CALL run`, `start` and a resume by either follow.
pub fn resume_or_insert(
    job: &Job,
    mode: crate::engine::Mode,
    dry_run: bool,
    settings: BatchSettings,
    limits: runs::ThrottleLimits,
    driver: runs::Driver,
) -> Result<i64> {
    if let Some(run_id) = runs::resume(&job.target, mode, dry_run, settings, &limits, driver)? {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("tenant_backfill: resuming run {run_id} of {} where it stopped", job.target.rel.display)
        );
        return Ok(run_id);
    }
    runs::insert(runs::NewRun {
        target: &job.target,
        kind: RunKind::Run,
        mode: Some(mode),
        dry_run,
        settings: Some(settings),
        limits,
        driver,
        parameters: serde_json::json!({}),
    })
}

/// This backend drives the run from now on: it holds the target's run lock, and
/// `pg_stat_activity` names the run (the old application_name comes back at the end).
pub fn drive_here(run_id: i64, target_name: &str, release_on_abort: Option<pg_sys::Oid>) -> Result<()> {
    watch_transactions();
    let previous =
        sql::select_value::<String>(sql::fixed("SELECT pg_catalog.current_setting('application_name')"), &[])?;
    sql::execute(
        sql::fixed("SELECT pg_catalog.set_config('application_name', $1, false)"),
        &[Value::text(application_name(run_id, target_name))],
    )?;
    DRIVEN.with(|d| {
        let mut d = d.borrow_mut();
        d.retain(|d| d.run_id != run_id);
        d.push(Driven {
            run_id,
            last_notice: Instant::now(),
            throttled: 0,
            reason: None,
            application_name: previous,
            release_on_abort,
        });
    });
    Ok(())
}

thread_local! {
    static WATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Registers `on_transaction_event`, once per backend.
fn watch_transactions() {
    if !WATCHING.with(|w| w.replace(true)) {
        // SAFETY: a callback with the signature Postgres expects, registered once and
        // never unregistered (it lives as long as the library, loaded for the backend's life).
        unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut()) }
    }
}

/// A `CALL run` records its end and releases its run lock on every error inside its
/// batches' blocks (sql/procedures.sql). A cancel can still land outside them: PL/pgSQL
/// checks for interrupts before each statement, and between a batch's COMMIT and the
/// next block there is such a statement. The error then ends the procedure without
/// `end`, and the session-level run lock would stay with the connection, which a pooler
/// hands to its next client (tests/shell/pgbouncer.sh). So when a transaction aborts
/// while a `CALL run` is driven here, the procedure is over: its lock is released here
/// (no statement can run in an aborting transaction, so without SQL), and the run reads
/// as failed, not alive, until a `CALL run` resumes it.
#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event != pg_sys::XactEvent::XACT_EVENT_ABORT {
        return;
    }
    // try_borrow_mut: a panic here would be an ERROR inside an abort.
    let ended: Vec<pg_sys::Oid> = DRIVEN.with(|d| match d.try_borrow_mut() {
        Ok(mut d) => {
            let ended = d.iter().filter_map(|d| d.release_on_abort).collect();
            d.retain(|d| d.release_on_abort.is_none());
            ended
        }
        Err(_) => Vec::new(),
    });
    for target in ended {
        locks::release_session_in_abort(target);
    }
}

/// `tenant_backfill run 12 (public.customers)`, cut to what application_name keeps.
pub fn application_name(run_id: i64, target_name: &str) -> String {
    let mut name = format!("tenant_backfill run {run_id} ({target_name})");
    // NAMEDATALEN - 1 bytes; cut on a character boundary.
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// The steps of a run are called only by the backend that drives it and holds the
/// target's run lock; called from anywhere else (another session during a run, by
/// hand) they would corrupt its bookkeeping, so they refuse.
pub fn require_driven_here(run: &runs::Run, part: Option<i32>) -> Result<()> {
    let here = with_driven(run.run_id, |d| d.is_some());
    let holds = match part {
        None => locks::held_here(run.target)?,
        Some(part) => locks::part_held_by(run.run_id, part, None)?,
    };
    if here && run.kind == RunKind::Run && holds {
        return Ok(());
    }
    Err(BackfillError::WrongState(
        format!("run {} is not this session's run", run.run_id),
        "Its steps are called only by the CALL tenant_backfill.run or the background worker that holds the target's run lock."
            .into(),
        "CALL tenant_backfill.run(target) or tenant_backfill.resume(run_id) continues it.".into(),
    ))
}

/// Whether the run should wait before its next batch, and how long: None when no
/// signal is over its limit. The reason is recorded in the run (`progress` shows it),
/// and a foreground run says so in a NOTICE when it changes. Consecutive waits back
/// off from 0.25 s to 2 s, so a run resumes within 2 s of the signal clearing.
pub fn throttle(run_id: i64, part: Option<i32>) -> Result<Option<Duration>> {
    let run = runs::load(run_id)?;
    require_driven_here(&run, part)?;
    // A dry run writes nothing to throttle; a pause or cancel asked of a throttled run
    // is done by the next batch at once.
    let reason = if run.dry_run || run.requested.is_some() { None } else { throttle::reason(run_id)? };
    throttle::record(run_id, reason.as_deref())?;
    let (wait, changed) = with_driven(run_id, |d| match d {
        Some(d) => {
            let changed = d.reason != reason;
            d.reason = reason.clone();
            d.throttled = if reason.is_some() { d.throttled + 1 } else { 0 };
            let wait = reason.as_ref().map(|_| Duration::from_millis((125u64 << d.throttled.min(4)).min(2000)));
            (wait, changed)
        }
        None => (None, false),
    });
    if changed && !run.background {
        match &reason {
            Some(why) => ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("tenant_backfill: run {run_id} is throttled: {why}; it goes on by itself when that clears")
            ),
            None => ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("tenant_backfill: run {run_id} is no longer throttled")
            ),
        }
    }
    Ok(wait)
}

/// What a batch step leaves the driver to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Go on with the next batch.
    More,
    /// The run is complete, or stopped on request (paused, cancelled) or by another of its
    /// workers (failed); a helper's part is walked.
    Finished,
    /// Every part left is walked by another live worker: wait, then step again.
    Waiting,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::More => "more",
            Step::Finished => "finished",
            Step::Waiting => "waiting",
        }
    }
}

/// Does exactly one batch. A batch is first tried with `skip_held_rows` false: its
/// UPDATE waits at most `FIRST_TRY_WAIT_MS` for a row another session holds, and the
/// driver, on that lock timeout, does the batch again with `skip_held_rows` true (a lock
/// step that skips held rows, for a later pass). Rows are rarely held, and the first
/// try's write costs what a bare UPDATE does.
///
/// A run several workers share walks its first pass in parts: a helper worker names
/// its part; the lead (or a CALL run resuming the run) takes the next part no live
/// worker holds, and once all are walked, goes on with the passes that follow.
pub fn one_batch(run_id: i64, skip_held_rows: bool, part: Option<i32>) -> Result<Step> {
    let run = runs::load(run_id)?;
    require_driven_here(&run, part)?;
    // The rights checked when the run began, again: they may have been revoked since.
    let job = load_job_for_writing(run.target, run.dry_run)?;
    match run.status {
        RunStatus::Running => {}
        // Stopped by another worker of the run meanwhile.
        RunStatus::Paused | RunStatus::Cancelled | RunStatus::Failed => return Ok(Step::Finished),
        _ => {
            return Err(BackfillError::BadArgument(
                format!("run {run_id} is {}, not running", run.status.as_str()),
                "Start or resume a run with CALL tenant_backfill.run(target) or tenant_backfill.resume(run_id).".into(),
            ))
        }
    }
    match run.requested.as_deref() {
        Some("pause") => {
            runs::stop(run_id, RunStatus::Paused, &[RunStatus::Running], false)?;
            return Ok(Step::Finished);
        }
        Some("cancel") => {
            runs::stop(run_id, RunStatus::Cancelled, &[RunStatus::Running], false)?;
            return Ok(Step::Finished);
        }
        _ => {}
    }
    if run.upper_key.is_none() {
        // The table was empty when the run started.
        return Ok(Step::Finished);
    }
    // Which keys: the part's (a helper's, or one the lead takes), else the run's cursor.
    let walking = match part {
        Some(part) => match runs::parts(run_id)?.into_iter().find(|p| p.part == part) {
            Some(p) if !p.done => Some(p),
            _ => return Ok(Step::Finished),
        },
        None if run.workers > 1 && run.pass == 1 && run.last_key != run.upper_key => match next_part(run_id)? {
            NextPart::Take(p) => Some(p),
            NextPart::Waiting => return Ok(Step::Waiting),
            NextPart::AllWalked => {
                runs::end_split_pass(run_id)?;
                return Ok(Step::More);
            }
        },
        None => None,
    };
    let (after, up_to) = match &walking {
        Some(p) => (p.last_key.clone().or(p.after_key.clone()), Some(p.up_to_key.clone())),
        None => (run.last_key.clone(), run.upper_key.clone()),
    };
    let settings = run.settings.unwrap_or(BatchSettings::DEFAULT);
    let mode = run.mode.ok_or_else(|| BackfillError::Internal(format!("run {run_id} has no mode")))?;
    // Citus cannot plan the lock step that skips held rows (`FOR NO KEY UPDATE SKIP
    // LOCKED` in a subquery over a Citus table is "currently unsupported"): a batch of a
    // Citus target waits for held rows on every try, as long as lock_timeout_ms, and its
    // driver backs off and tries again after that. Two workers of one run on a
    // distributed target wait so for each other's shard locks.
    let skip_held_rows = skip_held_rows && !job.target_in_citus;
    // Only this batch's transaction waits at most lock_timeout for a lock.
    let lock_wait_ms = if skip_held_rows || job.target_in_citus {
        settings.lock_timeout_ms
    } else {
        settings.lock_timeout_ms.min(FIRST_TRY_WAIT_MS)
    };
    locks::set_lock_timeout(lock_wait_ms)?;
    // A later pass decides again the rows the pass before did not write, and no others:
    // so it never writes a row twice, and costs what those rows do, not a walk of the table.
    let retried = match (run.pass > 1, &walking) {
        (true, None) => Some(runs::take_skipped(run_id, run.pass - 1, settings.batch_size)?),
        _ => None,
    };
    if retried.as_ref().is_some_and(|keys| keys.is_empty()) {
        // The end of the pass updates the run's row, which may wait as the bookkeeping
        // below does, not as briefly as a batch's first try.
        locks::set_lock_timeout(settings.lock_timeout_ms)?;
        return end_of_pass(&run, &job);
    }
    let scope = match retried {
        Some(keys) => Scope::Keys(keys),
        None => Scope::Batch { after, up_to, limit: Some(settings.batch_size.into()) },
    };
    let spec = WriteSpec {
        target: &job.target,
        column: &job.target.tenant,
        run_id,
        skip_locked: skip_held_rows,
        guard: true,
        dry_run: run.dry_run,
        pass: Some(run.pass),
    };
    let began = Instant::now();
    let mut batch = batch::run_batch(&job, mode, &scope, &spec)?;
    if let Scope::Keys(_) = scope {
        // The cursor is the first pass's.
        batch.last_key = None;
    }
    let took_ms = began.elapsed().as_secs_f64() * 1000.0;
    let next_size = settings.next_size(settings.batch_size, took_ms);
    // The bookkeeping below updates the run's row, which the other workers of the run
    // update too: it may wait for them as long as lock_timeout_ms, not the first try's
    // short wait meant for application rows.
    locks::set_lock_timeout(settings.lock_timeout_ms)?;
    if let Some(p) = &walking {
        // A part moves its own cursor; the run's stays where the parts began.
        runs::record_part(run_id, p.part, batch.last_key.take(), batch.scanned == 0)?;
        if batch.scanned == 0 && part.is_none() {
            locks::release_part(run_id, p.part)?;
        }
    }
    runs::record_batch(run_id, &batch, Some(next_size))?;
    if batch.scanned > 0
        && !run.background
        && with_driven(run_id, |d| d.is_some_and(|d| d.last_notice.elapsed() >= NOTICE_EVERY))
    {
        report_progress(run_id, &job.target.rel.display, false)?;
    }
    if walking.is_some() {
        // A helper is finished with its part; the lead goes on to the next.
        return Ok(if batch.scanned == 0 && part.is_some() { Step::Finished } else { Step::More });
    }
    if batch.scanned > 0 || matches!(scope, Scope::Keys(_)) {
        return Ok(Step::More);
    }
    end_of_pass(&run, &job)
}

/// The end of a pass: the rows it did not write (other sessions held them, or set
/// them meanwhile) are tried again in a new pass, up to `MAX_PASSES`.
fn end_of_pass(run: &runs::Run, job: &Job) -> Result<Step> {
    let run_id = run.run_id;
    if run.rows_skipped > 0 && run.pass < MAX_PASSES {
        runs::start_next_pass(run_id)?;
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "tenant_backfill: {} rows of {} were not written (other sessions held them, or set them meanwhile); pass {} tries them again",
                run.rows_skipped,
                job.target.rel.display,
                run.pass + 1
            )
        );
        return Ok(Step::More);
    }
    if run.rows_skipped > 0 {
        report_with_hint(
            PgLogLevel::WARNING,
            format!(
                "tenant_backfill: {} rows of {} were not written in {} passes (other sessions held them, or set them meanwhile)",
                run.rows_skipped, job.target.rel.display, run.pass
            ),
            format!(
                "Their keys are in tenant_backfill.run_skipped (run_id {run_id}, pass {}). CALL run again later to pick them up.",
                run.pass
            ),
        );
    }
    Ok(Step::Finished)
}

/// The part the lead walks next.
enum NextPart {
    Take(runs::Part),
    /// The parts left are walked by other live workers.
    Waiting,
    AllWalked,
}

/// The first part not walked yet that this backend holds or can take: its worker is
/// gone (or never came), so the lead walks it itself.
fn next_part(run_id: i64) -> Result<NextPart> {
    let left: Vec<runs::Part> = runs::parts(run_id)?.into_iter().filter(|p| !p.done).collect();
    if left.is_empty() {
        return Ok(NextPart::AllWalked);
    }
    for p in left {
        if locks::try_take_part(run_id, p.part)? {
            return Ok(NextPart::Take(p));
        }
    }
    Ok(NextPart::Waiting)
}

fn report_progress(run_id: i64, target: &str, last: bool) -> Result<()> {
    let p = runs::progress(run_id)?;
    with_driven(run_id, |d| {
        if let Some(d) = d {
            d.last_notice = Instant::now();
        }
    });
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "tenant_backfill: run {run_id} of {target}{}: {}/{} rows ({:.1}%), {} changed, {} left for review, {:.0} rows/s",
            if last { format!(" {}", p.status) } else { String::new() },
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

/// Ends the run this backend drives: done (planned for a dry run) or failed with the
/// error, unless it stopped on request; releases the target's run lock, puts the
/// application_name back, and (in the foreground) reports where it ended.
pub fn end(run_id: i64, error: Option<String>) -> Result<()> {
    let run = runs::load(run_id)?;
    require_driven_here(&run, None)?;
    runs::finish(run_id, run.dry_run, error)?;
    runs::detach(run_id)?;
    // The parts this backend took over (a CALL run resuming a run workers shared).
    for part in runs::parts(run_id)? {
        locks::release_part(run_id, part.part)?;
    }
    if !run.background {
        let target =
            job::target(run.target).map(|t| t.rel.display).unwrap_or_else(|_| u32::from(run.target).to_string());
        report_progress(run_id, &target, true)?;
    }
    let previous = DRIVEN.with(|d| {
        let mut d = d.borrow_mut();
        let previous = d.iter().find(|d| d.run_id == run_id).and_then(|d| d.application_name.clone());
        d.retain(|d| d.run_id != run_id);
        previous
    });
    sql::execute(
        sql::fixed("SELECT pg_catalog.set_config('application_name', $1, false)"),
        &[Value::text(previous.unwrap_or_default())],
    )?;
    locks::release_session_at_commit(run.target)
}
