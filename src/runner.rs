//! Running (API.md section 3): one plan, applied. A batch is the decision query over the
//! next keys of the key space, fed into the writer; `CALL run` (sql/procedures.sql)
//! commits after each batch, `run_now` loops in the caller's transaction, and
//! `apply_decisions` and `soft_delete_orphans` feed the same writer from other rows.

use crate::catalog::{self, Column, Job, Target};
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::{BackfillError, OrRaise, Result};
use crate::sql::{self, get, get_required, Statement, Value};
use crate::types::RegClass;
use crate::writer::{self, Changes, WriteSpec, BY_PHASE};
use pgrx::prelude::*;
use std::time::Instant;

/// First key of the advisory locks that keep one run per target ('tenb'); the second is
/// the target's OID.
pub(crate) const LOCK_CLASS: i32 = 0x7465_6e62;

/// `run_now` works in batches of this many rows, to keep memory bounded on big tables.
const RUN_NOW_BATCH: i64 = 5000;

/// How many times `run` walks the key space again for rows other sessions had locked.
const MAX_PASSES: i32 = 3;

/// What one batch did.
struct BatchResult {
    last_key: Option<String>,
    scanned: i64,
    changed: i64,
    by_phase: String,
    skipped: i64,
    for_review: i64,
}

/// A batch's decision, made by a statement that locks nothing.
struct Decision {
    /// The batch's highest key: where the next batch starts.
    last_key: Option<String>,
    scanned: i64,
    for_review: i64,
    changes: Changes,
}

/// Decides the rows of `scope` and collects the ones whose action changes them.
fn decide(job: &Job, mode: Mode, scope: &Scope) -> Result<Decision> {
    let mut st = engine::decision_query(job, mode, scope, Detail::Full);
    let actions = match mode {
        Mode::Fill => "('fill')",
        Mode::Reassign => "('fill', 'reassign')",
    };
    // The decision query returns its rows in key order; the ordered subquery keeps that
    // order in the arrays, so the write locks rows in key order.
    st.sql = format!(
        "WITH d AS MATERIALIZED ({decision}) \
         SELECT (SELECT d.key::text FROM d ORDER BY d.key DESC LIMIT 1), \
                (SELECT pg_catalog.count(*) FROM d), \
                (SELECT pg_catalog.count(*) FROM d WHERE d.action IN ('conflict', 'unresolved', 'orphan')), \
                pg_catalog.array_agg(c.key::text), pg_catalog.array_agg(c.current::text), \
                pg_catalog.array_agg(c.proposed::text), \
                pg_catalog.array_agg(CASE WHEN c.phase = 0 THEN 'override' ELSE c.phase::text END), \
                pg_catalog.array_agg(c.source), pg_catalog.array_agg(c.rule), pg_catalog.array_agg(c.evidence) \
           FROM (SELECT * FROM d WHERE d.action IN {actions} ORDER BY d.key) c",
        decision = st.sql,
    );
    let array = |row: &pgrx::spi::SpiHeapTupleData, ordinal| -> Result<Vec<Option<String>>> {
        Ok(get::<Vec<Option<String>>>(row, ordinal)?.unwrap_or_default())
    };
    sql::select_one_row(&st.sql, &st.params, "a batch's decision", |row| {
        Ok(Decision {
            last_key: get(row, 1)?,
            scanned: get_required(row, 2)?,
            for_review: get_required(row, 3)?,
            changes: Changes {
                key: array(row, 4)?,
                old: array(row, 5)?,
                new: array(row, 6)?,
                phase: array(row, 7)?,
                source: array(row, 8)?,
                rule: array(row, 9)?,
                evidence: array(row, 10)?,
            },
        })
    })
}

/// One batch: decide, then update, back up and audit the rows that change (`writer`).
/// Returns what the batch did and how long its rows were locked (from
/// the write statement on; the commit that follows releases them).
fn run_batch(job: &Job, mode: Mode, scope: &Scope, spec: &WriteSpec) -> Result<(BatchResult, f64)> {
    let Decision { last_key, scanned, for_review, changes } = decide(job, mode, scope)?;
    let to_change = changes.key.len() as i64;
    let (changed, by_phase, locked_ms) = if to_change == 0 {
        (0, "{}".to_string(), 0.0)
    } else {
        // The arrays are in key order: their ends are the batch's key range.
        let key_range = match (changes.key.first(), changes.key.last()) {
            (Some(Some(lowest)), Some(Some(highest))) => Some((lowest.clone(), highest.clone())),
            _ => None,
        };
        let spec = WriteSpec { key_range, ..*spec };
        if spec.guard && !spec.dry_run {
            write_logging_first(&spec, changes)?
        } else {
            let started = Instant::now();
            let mut st = Statement::new();
            let changes_cte = writer::changes_from_arrays(spec.target, spec.column, changes, &mut st);
            let write = writer::write_ctes(&spec, &mut st);
            st.sql = format!("{changes_cte}{write}");
            let (changed, by_phase) = write_and_count(st)?;
            (changed, by_phase, started.elapsed().as_secs_f64() * 1000.0)
        }
    };
    let batch = BatchResult { last_key, scanned, changed, by_phase, skipped: to_change - changed, for_review };
    Ok((batch, locked_ms))
}

/// A guarded batch's write, in three statements of one transaction: the backup and
/// audit rows of every row to change (no user row is locked yet), then the UPDATE
/// (after a lock step, when held rows are skipped), then, when some rows were not
/// written (another session held them, or set them meanwhile), the removal of their
/// log rows. Rows are locked from the second statement to the commit: the log
/// inserts, about 40% of the write, are outside.
/// Returns the rows changed, per phase, and the milliseconds rows were held locked.
fn write_logging_first(spec: &WriteSpec, changes: Changes) -> Result<(i64, String, f64)> {
    // The log rows need every column; the UPDATE needs the keys, values and phases only
    // (the empty arrays unnest as NULLs): the evidence is parsed once, for the audit log.
    let to_update = Changes {
        key: changes.key.clone(),
        old: changes.old.clone(),
        new: changes.new.clone(),
        phase: changes.phase.clone(),
        ..Changes::default()
    };
    let mut log = Statement::new();
    let changes_cte = writer::changes_from_arrays(spec.target, spec.column, changes, &mut log);
    log.sql = format!("{changes_cte}{}", writer::log_before_locking(spec, &mut log));
    let (backup_tids, audit_tids) = sql::select_one_row(&log.sql, &log.params, "a batch's log insert", |row| {
        Ok((
            get::<Vec<Option<String>>>(row, 1)?.unwrap_or_default(),
            get::<Vec<Option<String>>>(row, 2)?.unwrap_or_default(),
        ))
    })?;

    let started = Instant::now();
    let mut st = Statement::new();
    let changes_cte = writer::changes_from_arrays(spec.target, spec.column, to_update, &mut st);
    let write = writer::lock_and_update_ctes(spec, &mut st);
    st.sql = format!(
        "{changes_cte}{write} SELECT (SELECT pg_catalog.count(*) FROM upd), {BY_PHASE}::text, \
           (SELECT pg_catalog.array_agg(c.key::text) FROM changes c WHERE NOT EXISTS (SELECT FROM upd u WHERE u.key = c.key))"
    );
    let (changed, by_phase, not_written) = sql::select_one_row(&st.sql, &st.params, "a batch's write", |row| {
        Ok((
            get_required::<i64>(row, 1)?,
            get_required::<String>(row, 2)?,
            get::<Vec<Option<String>>>(row, 3)?.unwrap_or_default(),
        ))
    })?;
    if !not_written.is_empty() {
        let expected = 2 * not_written.len() as i64;
        let unlog = writer::unlog_statement(spec.run_id, backup_tids, audit_tids, not_written);
        let removed = sql::select_value::<i64>(&unlog.sql, &unlog.params)?.unwrap_or(0);
        if removed != expected {
            return Err(BackfillError::Internal(format!(
                "a batch removed {removed} log rows of rows it did not write, expected {expected}"
            )));
        }
    }
    Ok((changed, by_phase, started.elapsed().as_secs_f64() * 1000.0))
}

/// Checks what a run needs: read access to everything the decision reads, and UPDATE
/// on the tenant column unless nothing is written.
fn load_job_for_writing(target: RegClass, dry_run: bool) -> Result<Job> {
    let job = catalog::job(target.0)?;
    job.require_read_access()?;
    if !dry_run {
        catalog::require_update(&job.target.rel, &job.target.tenant)?;
    }
    Ok(job)
}

/// The highest key now (a run's upper bound: rows inserted later belong to the guard
/// trigger, so a run always ends), the table's row count, and how many rows a run in
/// `mode` examines (none without a mode).
fn run_bounds(target: &Target, mode: Option<Mode>) -> Result<(Option<String>, i64, i64)> {
    let key = target.key.sql_name();
    let table = target.rel.sql_name();
    let upper = match mode {
        Some(_) => sql::select_value::<String>(
            &format!("SELECT t.{key}::text FROM {table} t ORDER BY t.{key} DESC LIMIT 1"),
            &[],
        )?,
        None => None,
    };
    let examined = match mode {
        Some(Mode::Fill) => format!("pg_catalog.count(*) FILTER (WHERE t.{} IS NULL)", target.tenant.sql_name()),
        Some(Mode::Reassign) => "pg_catalog.count(*)".into(),
        None => "0::pg_catalog.int8".into(),
    };
    let (rows, total) = sql::select_rows(
        &format!("SELECT pg_catalog.count(*), {examined} FROM {table} t"),
        &[],
        |row| Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?
    .into_iter()
    .next()
    .unwrap_or((0, 0));
    Ok((upper, rows, total))
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Fill => "fill",
        Mode::Reassign => "reassign",
    }
}

fn insert_run(target: &Target, kind: &str, mode: Option<Mode>, dry_run: bool, parameters: serde_json::Value) -> Result<i64> {
    let (upper, rows_at_start, rows_total) = run_bounds(target, mode)?;
    sql::select_value::<i64>(
        "INSERT INTO tenant_backfill.runs (target, kind, mode, dry_run, status, parameters, rows_at_start, rows_total, upper_key) \
         VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4::text::pg_catalog.bool, 'running', $5::text::pg_catalog.jsonb, \
                 $6, $7, $8) RETURNING run_id",
        &[
            Value::Oid(target.rel.oid),
            Value::text(kind),
            Value::Text(mode.map(|m| mode_name(m).into())),
            Value::text(dry_run.to_string()),
            Value::text(parameters.to_string()),
            Value::Int8(Some(rows_at_start)),
            Value::Int8(Some(rows_total)),
            Value::Text(upper),
        ],
    )?
    .ok_or_else(|| BackfillError::Internal("INSERT INTO runs returned no run_id".into()))
}

/// Adds a batch's counts to its run; `first_pass` counts examined rows and rows for
/// review only once.
fn record_batch(run_id: i64, batch: &BatchResult, locked_ms: f64) -> Result<()> {
    sql::execute(
        "UPDATE tenant_backfill.runs r SET \
             rows_done = r.rows_done + CASE WHEN r.pass = 1 THEN $2 ELSE 0 END, \
             rows_changed = r.rows_changed + $3, \
             by_phase = (SELECT COALESCE(pg_catalog.jsonb_object_agg(e.key, e.n), '{}'::pg_catalog.jsonb) \
                           FROM (SELECT x.key, pg_catalog.sum(x.value::pg_catalog.int8) AS n \
                                   FROM (SELECT * FROM pg_catalog.jsonb_each_text(r.by_phase) \
                                         UNION ALL SELECT * FROM pg_catalog.jsonb_each_text($4::text::pg_catalog.jsonb)) x \
                                  GROUP BY x.key) e), \
             left_for_review = r.left_for_review + CASE WHEN r.pass = 1 THEN $5 ELSE 0 END, \
             rows_skipped = r.rows_skipped + $6, \
             batches = r.batches + 1, \
             longest_batch_ms = GREATEST(r.longest_batch_ms, $7::text::pg_catalog.float8), \
             last_key = COALESCE($8, r.last_key), \
             updated_at = pg_catalog.clock_timestamp() \
         WHERE r.run_id = $1",
        &[
            Value::Int8(Some(run_id)),
            Value::Int8(Some(batch.scanned)),
            Value::Int8(Some(batch.changed)),
            Value::text(batch.by_phase.clone()),
            Value::Int8(Some(batch.for_review)),
            Value::Int8(Some(batch.skipped)),
            Value::text(format!("{locked_ms:.3}")),
            Value::Text(batch.last_key.clone()),
        ],
    )?;
    Ok(())
}

fn finish_run(run_id: i64, dry_run: bool, error: Option<String>) -> Result<()> {
    let status = match (&error, dry_run) {
        (Some(_), _) => "failed",
        (None, true) => "planned",
        (None, false) => "done",
    };
    sql::execute(
        "UPDATE tenant_backfill.runs SET status = $2, error = $3, finished_at = pg_catalog.clock_timestamp(), \
             updated_at = pg_catalog.clock_timestamp() WHERE run_id = $1",
        &[Value::Int8(Some(run_id)), Value::text(status), Value::Text(error)],
    )?;
    Ok(())
}

fn parse_mode_and_check(batch_size: Option<i32>, mode: Option<&str>) -> Result<Mode> {
    if let Some(size) = batch_size {
        if size < 1 {
            return Err(BackfillError::BadArgument(
                format!("batch_size {size} is not a positive number"),
                "A batch holds at least one row; 1000 to 10000 suits most tables.".into(),
            ));
        }
    }
    Mode::parse(mode)
}

// ------------------------------------------------------------------ CALL run

/// Who holds the run lock of a target, if anyone but this session.
fn lock_holder(target: &Target) -> Result<Option<i32>> {
    sql::select_value::<i32>(
        "SELECT l.pid FROM pg_catalog.pg_locks l \
          WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid \
            AND l.objid = $2::pg_catalog.oid AND l.objsubid = 2 AND l.granted \
            AND l.pid <> pg_catalog.pg_backend_pid() LIMIT 1",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.rel.oid)],
    )
}

fn holds_run_lock(target: &Target) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
          WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid \
            AND l.objid = $2::pg_catalog.oid AND l.objsubid = 2 AND l.granted \
            AND l.pid = pg_catalog.pg_backend_pid())",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.rel.oid)],
    )?
    .unwrap_or(false))
}

fn busy(target: &Target, pid: Option<i32>) -> BackfillError {
    BackfillError::Busy(
        format!("another run of {} is in progress", target.rel.display),
        format!(
            "One run per target at a time{}: wait for it (SELECT * FROM tenant_backfill.progress) or stop it.",
            pid.map(|p| format!(" (it is backend pid {p})")).unwrap_or_default()
        ),
    )
}

/// Takes the session-level run lock of the target (held across the procedure's commits).
fn take_session_lock(target: &Target) -> Result<()> {
    if holds_run_lock(target)? {
        return Ok(());
    }
    let taken = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.rel.oid)],
    )?
    .unwrap_or(false);
    if taken {
        Ok(())
    } else {
        Err(busy(target, lock_holder(target)?))
    }
}

fn release_session_lock(target_oid: pg_sys::Oid) -> Result<()> {
    sql::select_value::<bool>(
        "SELECT pg_catalog.pg_advisory_unlock($1, $2::pg_catalog.oid::pg_catalog.int4) \
          WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                         WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid \
                           AND l.objid = $2::pg_catalog.oid AND l.objsubid = 2 AND l.granted \
                           AND l.pid = pg_catalog.pg_backend_pid())",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target_oid)],
    )?;
    Ok(())
}

/// Starts (or resumes) a `CALL run`: validates, takes the target's run lock, and returns
/// the run id. An unfinished run of the same target, mode and dry_run is resumed where
/// it stopped.
#[pg_extern]
fn _run_begin(
    target: RegClass,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    mode: Option<String>,
    dry_run: Option<bool>,
    lock_timeout_ms: Option<i32>,
) -> i64 {
    run_begin(target, batch_size, pause_ms, mode.as_deref(), dry_run.unwrap_or(false), lock_timeout_ms).or_raise()
}

fn run_begin(
    target: RegClass,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    mode: Option<&str>,
    dry_run: bool,
    lock_timeout_ms: Option<i32>,
) -> Result<i64> {
    let mode = parse_mode_and_check(batch_size, mode)?;
    let batch_size = batch_size.unwrap_or(1000);
    if pause_ms.unwrap_or(0) < 0 || lock_timeout_ms.unwrap_or(1000) < 1 {
        return Err(BackfillError::BadArgument(
            "pause_ms must be 0 or more and lock_timeout_ms 1 or more".into(),
            "Both are milliseconds.".into(),
        ));
    }
    let job = load_job_for_writing(target, dry_run)?;
    take_session_lock(&job.target)?;
    let parameters = serde_json::json!({
        "batch_size": batch_size,
        "pause_ms": pause_ms.unwrap_or(0),
        "lock_timeout_ms": lock_timeout_ms.unwrap_or(1000),
    });
    let mode_text = mode_name(mode);
    let started = (|| {
        let resumed = sql::select_value::<i64>(
            "UPDATE tenant_backfill.runs SET status = 'running', error = NULL, parameters = $4::text::pg_catalog.jsonb, \
                 updated_at = pg_catalog.clock_timestamp() \
              WHERE run_id = (SELECT r.run_id FROM tenant_backfill.runs r \
                               WHERE r.target = $1::pg_catalog.oid::pg_catalog.regclass AND r.kind = 'run' \
                                 AND r.status IN ('running', 'failed') AND r.mode = $2 AND r.dry_run = $3::text::pg_catalog.bool \
                               ORDER BY r.run_id DESC LIMIT 1) \
             RETURNING run_id",
            &[
                Value::Oid(job.target.rel.oid),
                Value::text(mode_text),
                Value::text(dry_run.to_string()),
                Value::text(parameters.to_string()),
            ],
        )?;
        match resumed {
            Some(run_id) => {
                ereport!(
                    NOTICE,
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!("tenant_backfill: resuming run {run_id} of {} where it stopped", job.target.rel.display)
                );
                Ok(run_id)
            }
            None => insert_run(&job.target, "run", Some(mode), dry_run, parameters),
        }
    })();
    if started.is_err() {
        release_session_lock(job.target.rel.oid)?;
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
fn _run_batch(run_id: i64, skip_held_rows: bool) -> bool {
    sql::without_jit(|| run_one_batch(run_id, skip_held_rows)).or_raise()
}

/// How long the first try of a batch waits for a lock (at most `lock_timeout_ms`). Rows
/// it has updated stay locked while it waits, so it is short; an application's row lock
/// usually lasts a few milliseconds.
const FIRST_TRY_WAIT_MS: i64 = 50;

struct RunState {
    target: pg_sys::Oid,
    mode: Mode,
    dry_run: bool,
    batch_size: i64,
    lock_timeout_ms: i64,
    last_key: Option<String>,
    upper_key: Option<String>,
    pass: i32,
    rows_skipped: i64,
}

fn load_run_state(run_id: i64) -> Result<RunState> {
    let rows = sql::select_rows(
        "SELECT target::pg_catalog.oid, mode, dry_run, (parameters->>'batch_size')::pg_catalog.int8, \
                (parameters->>'lock_timeout_ms')::pg_catalog.int8, last_key, upper_key, pass, rows_skipped, status \
           FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
        |row| {
            Ok((
                RunState {
                    target: get_required(row, 1)?,
                    mode: Mode::parse(get::<String>(row, 2)?.as_deref())?,
                    dry_run: get_required(row, 3)?,
                    batch_size: get::<i64>(row, 4)?.unwrap_or(1000),
                    lock_timeout_ms: get::<i64>(row, 5)?.unwrap_or(1000),
                    last_key: get(row, 6)?,
                    upper_key: get(row, 7)?,
                    pass: get_required(row, 8)?,
                    rows_skipped: get_required(row, 9)?,
                },
                get_required::<String>(row, 10)?,
            ))
        },
    )?;
    let (state, status) = rows.into_iter().next().ok_or(BackfillError::UnknownRun(run_id))?;
    if status != "running" {
        return Err(BackfillError::BadArgument(
            format!("run {run_id} is {status}, not running"),
            "Start or resume a run with CALL tenant_backfill.run(target).".into(),
        ));
    }
    Ok(state)
}

fn run_one_batch(run_id: i64, skip_held_rows: bool) -> Result<bool> {
    let state = load_run_state(run_id)?;
    if state.upper_key.is_none() {
        // The table was empty when the run started.
        return Ok(true);
    }
    let job = catalog::job(state.target)?;
    // Only this batch's transaction waits at most lock_timeout for a lock.
    let lock_wait_ms =
        if skip_held_rows { state.lock_timeout_ms } else { state.lock_timeout_ms.min(FIRST_TRY_WAIT_MS) };
    sql::execute(
        "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
        &[Value::text(format!("{lock_wait_ms}ms"))],
    )?;
    let scope = Scope::Batch {
        after: state.last_key.clone(),
        up_to: state.upper_key.clone(),
        limit: Some(state.batch_size),
    };
    let spec = WriteSpec {
        target: &job.target,
        column: &job.target.tenant,
        run_id,
        skip_locked: skip_held_rows,
        guard: true,
        dry_run: state.dry_run,
        key_range: None,
    };
    let (batch, locked_ms) = run_batch(&job, state.mode, &scope, &spec)?;
    record_batch(run_id, &batch, locked_ms)?;

    if batch.scanned > 0 {
        report_progress(run_id, &job)?;
        return Ok(false);
    }
    // The end of a pass. Rows other sessions had locked are tried again in a new pass.
    if state.rows_skipped > 0 && state.pass < MAX_PASSES {
        sql::execute(
            "UPDATE tenant_backfill.runs SET pass = pass + 1, last_key = NULL, rows_skipped = 0 WHERE run_id = $1",
            &[Value::Int8(Some(run_id))],
        )?;
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "tenant_backfill: {} rows of {} were locked by other sessions; pass {} tries them again",
                state.rows_skipped,
                job.target.rel.display,
                state.pass + 1
            )
        );
        return Ok(false);
    }
    if state.rows_skipped > 0 {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "tenant_backfill: {} rows of {} stayed locked by other sessions through {} passes and were not changed",
                state.rows_skipped,
                job.target.rel.display,
                state.pass
            ),
            "CALL run again later to pick them up."
        );
    }
    Ok(true)
}

fn report_progress(run_id: i64, job: &Job) -> Result<()> {
    let rows = sql::select_rows(
        "SELECT rows_done, rows_total, rows_changed, left_for_review, \
                pg_catalog.date_part('epoch', updated_at - started_at)::pg_catalog.float8 \
           FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
        |row| {
            Ok((
                get_required::<i64>(row, 1)?,
                get_required::<i64>(row, 2)?,
                get_required::<i64>(row, 3)?,
                get_required::<i64>(row, 4)?,
                get_required::<f64>(row, 5)?,
            ))
        },
    )?;
    if let Some((done, total, changed, review, seconds)) = rows.into_iter().next() {
        let percent = if total > 0 { 100.0 * done as f64 / total as f64 } else { 100.0 };
        let rate = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "tenant_backfill: run {run_id} of {}: {done}/{total} rows ({percent:.1}%), {changed} changed, {review} left for review, {rate:.0} rows/s",
                job.target.rel.display
            )
        );
    }
    Ok(())
}

/// Ends a `CALL run`: records done (planned for a dry run) or failed with the error,
/// and releases the target's run lock. Called on every exit path of the procedure.
#[pg_extern]
fn _run_end(run_id: i64, error_state: Option<String>, error_message: Option<String>) {
    run_end(run_id, error_state, error_message).or_raise()
}

fn run_end(run_id: i64, error_state: Option<String>, error_message: Option<String>) -> Result<()> {
    let rows = sql::select_rows(
        "SELECT target::pg_catalog.oid, dry_run FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
        |row| Ok((get_required::<pg_sys::Oid>(row, 1)?, get_required::<bool>(row, 2)?)),
    )?;
    let (target, dry_run) = rows.into_iter().next().ok_or(BackfillError::UnknownRun(run_id))?;
    let error = error_state.map(|state| format!("{state}: {}", error_message.unwrap_or_default()));
    finish_run(run_id, dry_run, error)?;
    release_session_lock(target)
}

// ------------------------------------------------------------------ run_now

/// The whole job in the caller's transaction, for migrations and small tables.
#[pg_extern]
fn run_now(
    target: RegClass,
    mode: default!(Option<String>, "'fill'"),
    dry_run: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(run_id, i64),
        name!(rows_changed, i64),
        name!(by_phase, pgrx::JsonB),
        name!(left_for_review, i64),
    ),
> {
    TableIterator::once(sql::without_jit(|| run_now_impl(target, mode.as_deref(), dry_run.unwrap_or(false))).or_raise())
}

fn run_now_impl(target: RegClass, mode: Option<&str>, dry_run: bool) -> Result<(i64, i64, pgrx::JsonB, i64)> {
    let mode = Mode::parse(mode)?;
    let job = load_job_for_writing(target, dry_run)?;
    // A transaction-level run lock: it conflicts with a CALL run's session lock.
    let locked = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(job.target.rel.oid)],
    )?
    .unwrap_or(false);
    if !locked {
        return Err(busy(&job.target, lock_holder(&job.target)?));
    }
    let run_id = insert_run(&job.target, "run_now", Some(mode), dry_run, serde_json::json!({}))?;
    let upper_key = sql::select_value::<String>(
        "SELECT upper_key FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
    )?;
    let spec = WriteSpec {
        target: &job.target,
        column: &job.target.tenant,
        run_id,
        skip_locked: false,
        guard: true,
        dry_run,
        key_range: None,
    };
    let mut last_key: Option<String> = None;
    while upper_key.is_some() {
        let scope = Scope::Batch { after: last_key.clone(), up_to: upper_key.clone(), limit: Some(RUN_NOW_BATCH) };
        let (batch, locked_ms) = run_batch(&job, mode, &scope, &spec)?;
        record_batch(run_id, &batch, locked_ms)?;
        if batch.scanned == 0 {
            break;
        }
        last_key = batch.last_key;
    }
    finish_run(run_id, dry_run, None)?;
    run_summary(run_id)
}

fn run_summary(run_id: i64) -> Result<(i64, i64, pgrx::JsonB, i64)> {
    sql::select_rows(
        "SELECT run_id, rows_changed, by_phase, left_for_review FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::Int8(Some(run_id))],
        |row| Ok((get_required(row, 1)?, get_required(row, 2)?, get_required(row, 3)?, get_required(row, 4)?)),
    )?
    .into_iter()
    .next()
    .ok_or(BackfillError::UnknownRun(run_id))
}

// ------------------------------------------------------------------ apply_decisions

/// Applies a reviewed table (columns `row_key`, `tenant`) through the same backup and
/// audit path, phase `manual`. Rows with an empty tenant are left alone (not yet
/// decided); unknown keys, uncastable values or a key decided twice are an error and
/// nothing is applied.
#[pg_extern]
fn apply_decisions(target: RegClass, decisions: RegClass) -> i64 {
    apply_decisions_impl(target, decisions).or_raise()
}

fn first_values(sql_text: &str, params: &[Value]) -> Result<Vec<String>> {
    sql::select_rows(sql_text, params, |row| Ok(get::<String>(row, 1)?.unwrap_or_else(|| "NULL".into())))
}

fn apply_decisions_impl(target: RegClass, decisions: RegClass) -> Result<i64> {
    let target = catalog::target(target.0)?;
    let rel = catalog::relation(decisions.0)?;
    let row_key = catalog::column(&rel, "row_key")?;
    let tenant = catalog::column(&rel, "tenant")?;
    catalog::require_select(&rel, &[&row_key, &tenant])?;
    catalog::require_select(&target.rel, &[&target.key, &target.tenant])?;
    catalog::require_update(&target.rel, &target.tenant)?;

    let table = rel.sql_name();
    let decided = "NULLIF(pg_catalog.btrim(d.tenant::text), '') IS NOT NULL";
    let kt = Value::Oid(target.key.type_oid);
    let tt = Value::Oid(target.tenant.type_oid);
    let bad_keys = first_values(
        &format!(
            "SELECT d.row_key::text FROM {table} d \
              WHERE d.row_key IS NULL OR NOT tenant_backfill._casts_to(d.row_key::text, $1::pg_catalog.regtype) \
              ORDER BY 1 LIMIT 5"
        ),
        &[kt],
    )?;
    if !bad_keys.is_empty() {
        return Err(invalid_values(&rel, "row_key", &bad_keys, &target.key));
    }
    let bad_tenants = first_values(
        &format!(
            "SELECT d.tenant::text FROM {table} d \
              WHERE {decided} AND NOT tenant_backfill._casts_to(pg_catalog.btrim(d.tenant::text), $1::pg_catalog.regtype) \
              ORDER BY 1 LIMIT 5"
        ),
        &[tt],
    )?;
    if !bad_tenants.is_empty() {
        return Err(invalid_values(&rel, "tenant", &bad_tenants, &target.tenant));
    }
    let key = target.key.sql_name();
    let kt_sql = &target.key.type_sql;
    let tt_sql = &target.tenant.type_sql;
    let unknown = first_values(
        &format!(
            "SELECT d.row_key::text FROM {table} d \
              WHERE {decided} AND NOT EXISTS (SELECT 1 FROM {target_table} t WHERE t.{key} = d.row_key::text::{kt_sql}) \
              ORDER BY 1 LIMIT 5",
            target_table = target.rel.sql_name()
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
            "SELECT d.row_key::text::{kt_sql}::text FROM {table} d WHERE {decided} \
              GROUP BY 1 HAVING pg_catalog.count(DISTINCT pg_catalog.btrim(d.tenant::text)::{tt_sql}) > 1 ORDER BY 1 LIMIT 5"
        ),
        &[],
    )?;
    if !twice.is_empty() {
        return Err(BackfillError::BadArgument(
            format!("{} decides rows {} more than once, differently", rel.display, twice.join(", ")),
            "Nothing was applied. Keep one decision per row.".into(),
        ));
    }

    let run_id = insert_run(
        &target,
        "apply_decisions",
        None,
        false,
        serde_json::json!({ "decisions": rel.display }),
    )?;
    let mut st = Statement::new();
    let source = st.param(Value::text(rel.display.clone()));
    let write = writer::write_ctes(
        &WriteSpec { target: &target, column: &target.tenant, run_id, skip_locked: false, guard: true, dry_run: false, key_range: None },
        &mut st,
    );
    st.sql = format!(
        "WITH changes AS (SELECT DISTINCT ON (t.{key}) t.{key} AS key, t.{tenant} AS old, \
                 pg_catalog.btrim(d.tenant::text)::{tt_sql} AS new, 'manual'::text AS phase, {source}::text AS source, \
                 'manual'::text AS rule, NULL::pg_catalog.jsonb AS evidence \
            FROM {table} d JOIN {target_table} t ON t.{key} = d.row_key::text::{kt_sql} \
           WHERE {decided} AND t.{tenant} IS DISTINCT FROM pg_catalog.btrim(d.tenant::text)::{tt_sql} \
           ORDER BY t.{key}){write}",
        tenant = target.tenant.sql_name(),
        target_table = target.rel.sql_name(),
    );
    write_in_one_statement(st, run_id, false)
}

/// Runs a write (its `changes` CTE and the writer's CTEs already in `st`) and returns
/// the rows it changed and how many per phase.
fn write_and_count(mut st: Statement) -> Result<(i64, String)> {
    st.sql.push_str(&format!(" SELECT (SELECT pg_catalog.count(*) FROM upd), {BY_PHASE}::text"));
    sql::select_one_row(&st.sql, &st.params, "a write", |row| {
        Ok((get_required::<i64>(row, 1)?, get_required::<String>(row, 2)?))
    })
}

/// Runs a one-statement write (its `changes` CTE and the writer's CTEs already in `st`)
/// and closes its run with the counts. Returns the rows changed.
fn write_in_one_statement(st: Statement, run_id: i64, dry_run: bool) -> Result<i64> {
    let (changed, by_phase) = write_and_count(st)?;
    record_batch(
        run_id,
        &BatchResult { last_key: None, scanned: changed, changed, by_phase, skipped: 0, for_review: 0 },
        0.0,
    )?;
    finish_run(run_id, dry_run, None)?;
    Ok(changed)
}

fn invalid_values(rel: &catalog::Relation, column: &str, values: &[String], target_col: &Column) -> BackfillError {
    BackfillError::InvalidValue {
        value: values.join("\", \""),
        column: format!("{}.{}", rel.display, sql::ident(column)),
        type_name: target_col.type_display.clone(),
    }
}

// ------------------------------------------------------------------ soft_delete_orphans

/// Sets the target's soft-delete column on orphans only (rows with no related row in
/// any source), audited and reversible with `rollback`.
#[pg_extern]
fn soft_delete_orphans(target: RegClass, dry_run: default!(Option<bool>, "false")) -> i64 {
    sql::without_jit(|| soft_delete_orphans_impl(target, dry_run.unwrap_or(false))).or_raise()
}

fn soft_delete_orphans_impl(target: RegClass, dry_run: bool) -> Result<i64> {
    let job = catalog::job(target.0)?;
    job.require_read_access()?;
    let t = &job.target;
    let column = catalog::column(&t.rel, &t.soft_delete_column).map_err(|_| {
        BackfillError::NoSoftDeleteColumn { table: t.rel.display.clone(), column: t.soft_delete_column.clone() }
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
    let run_id = insert_run(t, "soft_delete_orphans", None, dry_run, serde_json::json!({ "column": column.name }))?;
    let mut st = engine::decision_query(&job, Mode::Fill, &Scope::All, Detail::Full);
    let write = writer::write_ctes(
        &WriteSpec { target: t, column: &column, run_id, skip_locked: false, guard: true, dry_run, key_range: None },
        &mut st,
    );
    let col = column.sql_name();
    st.sql = format!(
        "WITH d AS ({decision}) \
         , changes AS (SELECT t.{key} AS key, t.{col} AS old, {deleted_value} AS new, 'orphan'::text AS phase, \
                 'soft_delete_orphans'::text AS source, 'orphan'::text AS rule, tenant_backfill._evidence_jsonb(d.evidence) AS evidence \
            FROM d JOIN {table} t ON t.{key} = d.key WHERE d.action = 'orphan' AND t.{col} IS NULL){write}",
        decision = st.sql,
        key = t.key.sql_name(),
        table = t.rel.sql_name(),
    );
    write_in_one_statement(st, run_id, dry_run)
}
