//! One batch of a run: the decision query over the next keys of the key space, made
//! by a statement that locks nothing, then the rows it changes handed to the writer.
//! `CALL run` does one batch per transaction. `run_now` decides and writes the table in
//! a few statements instead, one per range of keys (`decide_and_write_all`), in the
//! caller's transaction; only its dry run goes batch by batch.

use crate::checks;
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::{BackfillError, Result};
use crate::job::Job;
use crate::runs::BatchCounts;
use crate::sql::{self, get, get_required, Statement};
use crate::writer::{self, WriteSpec};
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PgLogLevel};
use std::collections::BTreeMap;
use std::time::Instant;

/// The actions a human decides (conflicts, unresolved rows, orphans), as a SQL list.
const FOR_REVIEW: &str = "('conflict', 'unresolved', 'orphan')";

/// A decided row's phase as the log keeps it: `override` for phase 0, else its number.
fn phase_text(alias: &str) -> String {
    format!("CASE WHEN {alias}.phase = 0 THEN 'override' ELSE {alias}.phase::text END")
}

/// A batch's decision.
struct Decision {
    /// The batch's highest key: where the next batch starts.
    last_key: Option<String>,
    scanned: i64,
    for_review: i64,
    changes: writer::Decided,
}

/// Decides the rows of `scope` and collects the ones whose action changes them.
fn decide(job: &Job, mode: Mode, scope: &Scope) -> Result<Decision> {
    let mut st = Statement::new();
    let decision = engine::decision_query(&mut st, job, mode, scope, Detail::Full);
    // The decision query returns its rows in key order; the ordered subquery keeps that
    // order in the arrays, so the write locks rows in key order.
    st.sql = format!(
        "WITH d AS MATERIALIZED (\n{decision})\n\
         SELECT (SELECT d.key::text FROM d ORDER BY d.key DESC LIMIT 1),\n       \
         (SELECT pg_catalog.count(*) FROM d),\n       \
         (SELECT pg_catalog.count(*) FROM d WHERE d.action IN {FOR_REVIEW}),\n       \
         pg_catalog.array_agg(c.key::text), pg_catalog.array_agg(c.current::text),\n       \
         pg_catalog.array_agg(c.proposed::text),\n       \
         pg_catalog.array_agg({phase}),\n       \
         pg_catalog.array_agg(c.source), pg_catalog.array_agg(c.rule), pg_catalog.array_agg(c.evidence),\n       \
         pg_catalog.count(c.key), (pg_catalog.array_agg(c.key::text))[1],\n       \
         (pg_catalog.array_agg(c.key::text))[pg_catalog.count(c.key)::int4]\n  \
         FROM (SELECT * FROM d WHERE d.action IN {actions} ORDER BY d.key) c",
        actions = mode.writing_actions(),
        phase = phase_text("c"),
    );
    // Columns 4 to 10, the seven arrays of the rows to change in `Changes` order, are
    // kept as they are, for the write's statements; 11 to 13 count them and bound their keys.
    let ((last_key, scanned, for_review, rows, lowest, highest), arrays) =
        sql::select_one_row_keeping(&st.sql, &st.params, "a batch's decision", 4..=10, |row| {
            Ok((
                get(row, 1)?,
                get_required(row, 2)?,
                get_required(row, 3)?,
                get_required::<i64>(row, 11)?,
                get::<String>(row, 12)?,
                get::<String>(row, 13)?,
            ))
        })?;
    let key_range = lowest.zip(highest);
    Ok(Decision { last_key, scanned, for_review, changes: writer::Decided { arrays, rows, key_range } })
}

/// One batch: decide, then update, back up and audit the rows that change.
pub fn run_batch(job: &Job, mode: Mode, scope: &Scope, spec: &WriteSpec) -> Result<BatchCounts> {
    checks::require_castable_sources(job, mode, scope)?;
    let Decision { last_key, scanned, for_review, changes } = decide(job, mode, scope)?;
    let written = writer::write_decided(spec, changes)?;
    Ok(BatchCounts {
        last_key,
        scanned,
        changed: written.changed,
        by_phase: written.by_phase,
        skipped: written.planned - written.changed,
        for_review,
        locked_ms: written.locked_ms,
    })
}

/// `tenant_backfill.run_now_statement_rows`: how many rows of the target's key range one
/// statement of `run_now` decides and writes.
static STATEMENT_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

/// The most statements `run_now` divides a table into: fewer than the 64 subtransaction
/// ids a transaction keeps in shared memory, with room left for the caller's own.
const MOST_STATEMENTS: i64 = 48;

/// How many statements `run_now` may divide a table into now: MOST_STATEMENTS less the
/// subtransaction ids the caller's transaction has taken already (a migration that fills
/// several tables in one transaction, each `run_now` taking one id per range it
/// changes), so that the transaction stays 16 below 64 while it can; at least one. Once
/// past 64 (`overflowed`), fewer statements save nothing, and MOST_STATEMENTS holds.
/// Returns it with the ids taken.
fn most_statements_now() -> (i64, i64) {
    // SAFETY: MyProc is this backend's own PGPROC, set for as long as it runs; its
    // subtransaction cache is written by this backend (GetNewTransactionId), or for it
    // while it waits at commit (ProcArrayGroupClearXid), never while it runs this.
    let status = unsafe { (*pg_sys::MyProc).subxidStatus };
    let taken = i64::from(status.count);
    if status.overflowed {
        return (MOST_STATEMENTS, taken);
    }
    ((MOST_STATEMENTS - taken).max(1), taken)
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"tenant_backfill.run_now_statement_rows",
        c"How many rows of the target's key range one statement of run_now decides and writes.",
        c"A statement keeps one queued check per row it changes under a foreign key (or an AFTER ROW trigger) \
          in memory until it ends: run_now walks the key range in statements of this many rows, \
          or more when the table would take more than 48 statements, less the subtransaction ids \
          its transaction has taken already.",
        &STATEMENT_ROWS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The whole of `run_now`: every row of the target up to `up_to` (the end its run
/// recorded), decided and updated with the caller's rights as the logged floor does it
/// (BENCHMARKS.md), a range of `tenant_backfill.run_now_statement_rows` keys per
/// statement, each statement's written rows then logged as the extension's owner,
/// `chunk` rows at a time (a statement cannot change identity halfway, and the log is
/// written only as the owner). `run_now` holds its rows locked until the caller commits,
/// so the short lock window of `run_batch` (logging first, the decision before any lock,
/// batch by batch) buys nothing here; a statement over a range lets the planner decide
/// it as `plan` does (grouped, merged in key order, each source's index read for the
/// range) instead of probing the sources' indexes batch by batch, and saves passing each
/// batch to the writer and joining it back. Memory stays flat: Postgres keeps the
/// written rows in a tuplestore that goes to disk past `work_mem`, and the one thing
/// that grows with the rows a statement changes, its queue of AFTER trigger events (a
/// foreign-key check per row when the tenant column has a foreign key), ends with each
/// range. A dry run writes nothing and takes `run_batch`.
pub fn decide_and_write_all(job: &Job, mode: Mode, spec: &WriteSpec, up_to: &str, chunk: i64) -> Result<BatchCounts> {
    if spec.dry_run || spec.skip_locked || !spec.guard {
        return Err(BackfillError::Internal("run_now's statements write guarded and wait for held rows".into()));
    }
    checks::require_castable_sources(job, mode, &Scope::Range { after: None, up_to: up_to.to_string(), rows: None })?;
    let started = Instant::now();
    let setting = crate::int_setting(c"tenant_backfill.run_now_statement_rows", || STATEMENT_ROWS.get(), 1_000_000);
    // Each statement that writes takes a subtransaction id of its own (sql.rs,
    // in_subtransaction), all in the caller's one transaction: past 64, every snapshot
    // in the cluster overflows until the caller commits. So the ranges grow with the
    // table, to at most MOST_STATEMENTS of them, fewer when the transaction has taken
    // ids already.
    let table_rows = crate::runs::load(spec.run_id)?.rows_at_start.unwrap_or(0);
    let (statements, taken) = most_statements_now();
    let rows = i64::from(setting).max((table_rows + statements - 1) / statements);
    if rows > i64::from(setting) && rows > (table_rows + MOST_STATEMENTS - 1) / MOST_STATEMENTS {
        crate::error::report_with_hint(
            PgLogLevel::NOTICE,
            format!(
                "tenant_backfill: run_now decides {} in statements of {rows} rows, more than run_now_statement_rows \
                 ({setting}): its transaction holds {taken} subtransaction ids already",
                job.target.rel.display
            ),
            "A statement keeps a queued check per row it changes under a foreign key in memory until it ends: \
             commit between the tables of a migration to keep statements small."
                .into(),
        );
    }
    let mut total = Written::default();
    let mut after: Option<String> = None;
    loop {
        let end = range_end(job, after.as_deref(), up_to, rows)?;
        let last = end.as_deref().is_none_or(|e| e == up_to);
        let end = end.unwrap_or_else(|| up_to.to_string());
        write_range(
            job,
            mode,
            spec,
            Scope::Range { after: after.take(), up_to: end.clone(), rows: Some(rows) },
            chunk,
            &mut total,
        )?;
        if last {
            break;
        }
        after = Some(end);
    }
    Ok(BatchCounts {
        last_key: None,
        scanned: total.scanned,
        changed: total.changed,
        by_phase: serde_json::to_string(&total.by_phase).map_err(|e| BackfillError::Internal(e.to_string()))?,
        skipped: total.planned - total.changed,
        for_review: total.for_review,
        locked_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// What the statements of a `run_now` did, added up.
#[derive(Default)]
struct Written {
    scanned: i64,
    for_review: i64,
    /// Rows the decisions would change.
    planned: i64,
    changed: i64,
    by_phase: BTreeMap<String, i64>,
}

/// The key `rows` rows after `after` (the first row's, for no `after`), or None when the
/// range up to `up_to` holds fewer: where a statement of `run_now` ends. Counted over
/// every row of the range, so a statement changes at most `rows`.
fn range_end(job: &Job, after: Option<&str>, up_to: &str, rows: i64) -> Result<Option<String>> {
    let mut st = Statement::new();
    let (key, table) = (job.target.key.sql_name(), job.target.rel.sql_name());
    let bounds = engine::key_range_filters(&mut st, &job.target.key, &format!("t.{key}"), after, Some(up_to));
    let offset = st.param(sql::Value::Int8(Some(rows - 1)));
    st.sql = format!(
        "SELECT t.{key}::text FROM {table} t WHERE {bounds} ORDER BY t.{key} OFFSET {offset}::pg_catalog.int8 LIMIT 1",
        bounds = bounds.join(" AND "),
    );
    sql::select_value::<String>(&st.sql, &st.params)
}

/// One statement of `run_now`: the rows of `scope` decided and updated, then the rows
/// it wrote logged, `chunk` at a time; its counts added to `total`.
fn write_range(job: &Job, mode: Mode, spec: &WriteSpec, scope: Scope, chunk: i64, total: &mut Written) -> Result<()> {
    let mut st = Statement::new();
    let decision = engine::decision_query(&mut st, job, mode, &scope, Detail::Full);
    let update = writer::decided_update_cte(spec, "c");
    // d, the decision, is made once (MATERIALIZED) and read twice: by the UPDATE, through
    // c, and once more for all three counts (one read of a million rows instead of three).
    // c, the rows to change, is a filter over it: inlined (NOT MATERIALIZED), it is not
    // written out a second time, a million rows to disk past work_mem. The rows changed
    // per phase are counted from upd, the rows written (every row to change has a phase:
    // the decision gives one to every row it proposes a tenant for).
    st.sql = format!(
        "WITH d AS MATERIALIZED (\n{decision})\n\
         , c AS NOT MATERIALIZED (\n    SELECT d.key, d.current AS old, d.proposed AS new,\n           \
         {phase} AS phase, d.source, d.rule, d.evidence\n      \
         FROM d WHERE d.action IN {actions}){update}\n\
         SELECT u.key::text, u.old::text, u.new::text, u.phase, u.source, u.rule, u.evidence,\n       \
         NULL::pg_catalog.int8, NULL::pg_catalog.int8, NULL::pg_catalog.int8, NULL::text FROM upd u\n\
         UNION ALL\n\
         SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, n.scanned, n.for_review, n.planned, {by_phase}::text\n  \
         FROM (SELECT pg_catalog.count(*) AS scanned, pg_catalog.count(*) FILTER (WHERE d.action IN {FOR_REVIEW}) AS for_review,\n               \
         pg_catalog.count(*) FILTER (WHERE d.action IN {actions}) AS planned FROM d) n",
        actions = mode.writing_actions(),
        phase = phase_text("d"),
        by_phase = writer::BY_PHASE,
    );
    // Columns 1 to 7 of the written rows reach the log as the arrays Postgres builds from
    // them; the last row, the counts, is the one whose column 8 is not NULL.
    let counts = |row: &pgrx::spi::SpiHeapTupleData| -> Result<(i64, i64, i64, String)> {
        Ok((get_required(row, 8)?, get_required(row, 9)?, get_required(row, 10)?, get_required(row, 11)?))
    };
    let mut counted = false;
    sql::stream_arrays(&st.sql, &st.params, chunk, 1..=7, 8, counts, |written, rows, counts| {
        for (scanned, for_review, planned, by_phase) in counts {
            total.scanned += scanned;
            total.for_review += for_review;
            total.planned += planned;
            let by_phase: BTreeMap<String, i64> =
                serde_json::from_str(&by_phase).map_err(|e| BackfillError::Internal(e.to_string()))?;
            for (phase, n) in by_phase {
                *total.by_phase.entry(phase).or_default() += n;
            }
            counted = true;
        }
        total.changed += rows;
        if rows == 0 {
            return Ok(());
        }
        writer::log_written(spec, &written)
    })?;
    if !counted {
        return Err(BackfillError::Internal("a statement of run_now returned no counts".into()));
    }
    Ok(())
}
