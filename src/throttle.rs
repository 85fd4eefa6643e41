//! The throttle: before each batch of a run of committed batches, the signals that say
//! the database is under pressure the run would add to, each against the run's limit.
//! The first one over its limit is the reason to wait, in words a DBA can act on:
//!
//! - replay lag of any standby in `pg_stat_replication`, in bytes (`max_replica_lag_bytes`)
//!   and in time (`max_replica_lag`): every batch adds WAL a standby must replay;
//! - the oldest open transaction of another session of this database that holds back
//!   the xmin horizon (`max_transaction_age`, setting `tenant_backfill.max_transaction_age`):
//!   while it is open, no row version the run replaces can be vacuumed (a session in
//!   `tenant_backfill.wait` is not counted: it waits for the run);
//! - autovacuum working on the target: the run would give it more to do as it goes.
//!
//! The signals are read as the extension's owner: `pg_stat_replication`'s positions and
//! other roles' sessions are visible only to privileged roles.

use crate::error::Result;
use crate::sql::{self, Value};
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `tenant_backfill.max_transaction_age`, in seconds; 0 watches nothing.
static MAX_TRANSACTION_AGE: GucSetting<i32> = GucSetting::<i32>::new(3600);

/// `tenant_backfill.max_workers`: the most workers one run may have (superuser only: each
/// takes one of max_worker_processes, which parallel query and replication need too).
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);

/// The most workers a run may have now.
pub fn max_workers() -> i32 {
    crate::int_setting(c"tenant_backfill.max_workers", || MAX_WORKERS.get(), 4)
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"tenant_backfill.max_workers",
        c"The most background workers one run (start(workers => N)) may have.",
        c"Each takes one of max_worker_processes. Only a superuser may change it.",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenant_backfill.max_transaction_age",
        c"A run waits while another session of the database has had a transaction open longer than this.",
        c"Such a transaction holds back the xmin horizon: no row version a run replaces can be vacuumed meanwhile. \
          0 watches nothing. Read when CALL run or start begins a run (or picks up an unfinished one); resume keeps the run's.",
        &MAX_TRANSACTION_AGE,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
}

/// The limit a run that starts now takes, from the setting.
pub fn max_transaction_age() -> Option<pgrx::datum::Interval> {
    match crate::int_setting(c"tenant_backfill.max_transaction_age", || MAX_TRANSACTION_AGE.get(), 3600) {
        0 => None,
        seconds => Some(pgrx::datum::Interval::from_seconds(f64::from(seconds))),
    }
}

/// The signals against the run's limits, worst first within each; the first row is
/// the reason. Each names what it measured, where, and the limit it is over.
const SIGNALS: &str = "\
WITH run AS (SELECT r.target, r.max_replica_lag, r.max_replica_lag_bytes, r.max_transaction_age
               FROM tenant_backfill.runs r WHERE r.run_id = $1),
standby AS (SELECT COALESCE(NULLIF(s.application_name, ''), pg_catalog.host(s.client_addr), 'pid ' || s.pid) AS name,
                   pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.replay_lsn)::pg_catalog.int8 AS lag_bytes,
                   s.replay_lag
              FROM pg_catalog.pg_stat_replication s)
SELECT why FROM (
    (SELECT 1 AS signal, pg_catalog.format('replica lag %s on %s > %s', pg_catalog.pg_size_pretty(s.lag_bytes), s.name,
                                           pg_catalog.pg_size_pretty(run.max_replica_lag_bytes)) AS why
       FROM run, standby s WHERE s.lag_bytes > run.max_replica_lag_bytes ORDER BY s.lag_bytes DESC LIMIT 1)
    UNION ALL
    (SELECT 2, pg_catalog.format('replica lag %s on %s > %s', s.replay_lag, s.name, run.max_replica_lag)
       FROM run, standby s WHERE s.replay_lag > run.max_replica_lag ORDER BY s.replay_lag DESC LIMIT 1)
    UNION ALL
    (SELECT 3, pg_catalog.format('transaction of pid %s open for %s > %s', a.pid,
                                 pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - a.xact_start),
                                 run.max_transaction_age)
       FROM run, pg_catalog.pg_stat_activity a
      WHERE a.datname = pg_catalog.current_database() AND a.backend_type = 'client backend'
        AND a.pid <> pg_catalog.pg_backend_pid()
        AND (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
        AND a.xact_start < pg_catalog.clock_timestamp() - run.max_transaction_age
        -- a session in tenant_backfill.wait waits for a run (src/locks.rs, WAITER_CLASS)
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                         WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.objsubid = 2
                           AND l.classid = $2::pg_catalog.int4::pg_catalog.oid)
      ORDER BY a.xact_start LIMIT 1)
    UNION ALL
    (SELECT 4, pg_catalog.format('autovacuum on %s (pid %s, %s)', run.target, p.pid, p.phase)
       FROM run, pg_catalog.pg_stat_progress_vacuum p
       JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
      WHERE p.relid = run.target::pg_catalog.oid AND a.backend_type = 'autovacuum worker' LIMIT 1)
) signals
ORDER BY signal LIMIT 1";

/// Why the run should wait now, or None.
pub fn reason(run_id: i64) -> Result<Option<String>> {
    sql::as_extension_owner(|| {
        sql::select_value::<String>(
            sql::fixed(SIGNALS),
            &[Value::int8(run_id), Value::Int4(Some(crate::locks::WAITER_CLASS))],
        )
    })
}

/// Records why the run waits (`progress.throttled_by`), or that it does not.
pub fn record(run_id: i64, reason: Option<&str>) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            sql::fixed(
                "UPDATE tenant_backfill.runs SET throttled_by = $2\n \
         WHERE run_id = $1 AND throttled_by IS DISTINCT FROM $2",
            ),
            &[Value::int8(run_id), Value::Text(reason.map(str::to_string))],
        )
    })?;
    Ok(())
}
