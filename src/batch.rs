//! One batch of a run: the decision query over the next keys of the key space, made
//! by a statement that locks nothing, then the rows it changes handed to the writer.
//! `CALL run` does one batch per transaction; `run_now` loops over them in the caller's.

use crate::checks;
use crate::engine::{self, Detail, Mode, Scope};
use crate::error::Result;
use crate::job::Job;
use crate::runs::BatchCounts;
use crate::sql::{self, get, get_required, Statement};
use crate::writer::{self, Changes, WriteSpec};

/// A batch's decision.
struct Decision {
    /// The batch's highest key: where the next batch starts.
    last_key: Option<String>,
    scanned: i64,
    for_review: i64,
    changes: Changes,
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
         (SELECT pg_catalog.count(*) FROM d WHERE d.action IN ('conflict', 'unresolved', 'orphan')),\n       \
         pg_catalog.array_agg(c.key::text), pg_catalog.array_agg(c.current::text),\n       \
         pg_catalog.array_agg(c.proposed::text),\n       \
         pg_catalog.array_agg(CASE WHEN c.phase = 0 THEN 'override' ELSE c.phase::text END),\n       \
         pg_catalog.array_agg(c.source), pg_catalog.array_agg(c.rule), pg_catalog.array_agg(c.evidence)\n  \
         FROM (SELECT * FROM d WHERE d.action IN {actions} ORDER BY d.key) c",
        actions = mode.writing_actions(),
    );
    sql::select_one_row(&st.sql, &st.params, "a batch's decision", |row| {
        // Columns 4 to 10: the seven arrays of the rows to change, in `Changes` order.
        Ok(Decision {
            last_key: get(row, 1)?,
            scanned: get_required(row, 2)?,
            for_review: get_required(row, 3)?,
            changes: Changes::from_row(row, 4)?,
        })
    })
}

/// One batch: decide, then update, back up and audit the rows that change.
pub fn run_batch(job: &Job, mode: Mode, scope: &Scope, spec: &WriteSpec) -> Result<BatchCounts> {
    checks::require_castable_sources(job, mode, scope)?;
    let Decision { last_key, scanned, for_review, changes } = decide(job, mode, scope)?;
    let written = writer::write_batch(spec, changes)?;
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
