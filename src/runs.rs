//! The `runs` table's whole lifecycle, and the only code that writes it: a run is
//! inserted when it starts (with the bounds it will walk), gains each batch's counts,
//! and ends done, planned (a dry run), failed or rolled back. Every kind of change
//! (CALL run, run_now, apply_decisions, soft_delete_orphans, rollback,
//! release_quarantine) is a run, so `progress`, `validate` and `rollback` see them all
//! the same way.

use crate::engine::Mode;
use crate::error::{BackfillError, Result};
use crate::job::Target;
use crate::sql::{self, get, get_required, Value};
use pgrx::pg_sys;

/// What made a run (`runs.kind`, which has a CHECK listing these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// `CALL run`: committed batches.
    Run,
    RunNow,
    ApplyDecisions,
    SoftDeleteOrphans,
    Rollback,
    ReleaseQuarantine,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::RunNow => "run_now",
            RunKind::ApplyDecisions => "apply_decisions",
            RunKind::SoftDeleteOrphans => "soft_delete_orphans",
            RunKind::Rollback => "rollback",
            RunKind::ReleaseQuarantine => "release_quarantine",
        }
    }

    fn parse(text: &str) -> Result<RunKind> {
        Ok(match text {
            "run" => RunKind::Run,
            "run_now" => RunKind::RunNow,
            "apply_decisions" => RunKind::ApplyDecisions,
            "soft_delete_orphans" => RunKind::SoftDeleteOrphans,
            "rollback" => RunKind::Rollback,
            "release_quarantine" => RunKind::ReleaseQuarantine,
            other => return Err(BackfillError::Internal(format!("runs holds an unknown kind \"{other}\""))),
        })
    }

    /// Whether the run records the table's row count and highest key when it starts:
    /// the runs that walk the table (validate compares the count after). A rollback or
    /// a release touches only rows it already knows, and counts nothing.
    fn counts_the_table(self) -> bool {
        !matches!(self, RunKind::Rollback | RunKind::ReleaseQuarantine)
    }
}

/// `runs.status` (a CHECK lists these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// A dry run: what it would change is counted, nothing was written.
    Planned,
    Running,
    /// Stopped after a batch on request (`pause`), holding nothing; `resume` continues it.
    Paused,
    Done,
    Failed,
    /// Stopped for good on request (`cancel`); what it wrote stays, `rollback` undoes it.
    Cancelled,
    RolledBack,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planned => "planned",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::RolledBack => "rolled_back",
        }
    }

    fn parse(text: &str) -> Result<RunStatus> {
        Ok(match text {
            "planned" => RunStatus::Planned,
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "done" => RunStatus::Done,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "rolled_back" => RunStatus::RolledBack,
            other => return Err(BackfillError::Internal(format!("runs holds an unknown status \"{other}\""))),
        })
    }
}

/// The settings of a `CALL run` or a `start`, stored in typed columns of its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// The size of the next batch: fixed, or (adaptive) the last size the run chose.
    pub batch_size: i32,
    /// Each batch is sized toward `target_batch_ms` (batch_size NULL was given).
    pub adaptive: bool,
    pub target_batch_ms: i32,
    pub pause_ms: i32,
    pub lock_timeout_ms: i32,
}

/// An adaptive run's first batch, and the bounds of every later one.
pub const ADAPTIVE_FIRST: i32 = 1000;
pub const ADAPTIVE_MIN: i32 = 100;
pub const ADAPTIVE_MAX: i32 = 1_000_000;

impl BatchSettings {
    /// The defaults of `CALL run`'s signature (sql/procedures.sql).
    pub const DEFAULT: BatchSettings =
        BatchSettings { batch_size: 1000, adaptive: false, target_batch_ms: 100, pause_ms: 0, lock_timeout_ms: 1000 };

    /// Checks the arguments of `CALL run` and `start`. A NULL batch size means adaptive;
    /// a NULL elsewhere, the default.
    pub fn new(
        batch_size: Option<i32>,
        target_batch_ms: Option<i32>,
        pause_ms: Option<i32>,
        lock_timeout_ms: Option<i32>,
    ) -> Result<BatchSettings> {
        let settings = BatchSettings {
            batch_size: batch_size.unwrap_or(ADAPTIVE_FIRST),
            adaptive: batch_size.is_none(),
            target_batch_ms: target_batch_ms.unwrap_or(Self::DEFAULT.target_batch_ms),
            pause_ms: pause_ms.unwrap_or(Self::DEFAULT.pause_ms),
            lock_timeout_ms: lock_timeout_ms.unwrap_or(Self::DEFAULT.lock_timeout_ms),
        };
        if settings.batch_size < 1 {
            return Err(BackfillError::BadArgument(
                format!("batch_size {} is not a positive number", settings.batch_size),
                "A batch holds at least one row; 1000 to 10000 suits most tables, and NULL sizes each batch \
                 toward target_batch_ms."
                    .into(),
            ));
        }
        if settings.pause_ms < 0 || settings.lock_timeout_ms < 1 || settings.target_batch_ms < 1 {
            return Err(BackfillError::BadArgument(
                "pause_ms must be 0 or more, lock_timeout_ms and target_batch_ms 1 or more".into(),
                "All three are milliseconds.".into(),
            ));
        }
        Ok(settings)
    }

    /// The size of the batch after one of `size` rows that took `elapsed_ms`: toward
    /// `target_batch_ms`, at most double or half the last, within the adaptive bounds.
    /// A fixed size stays.
    pub fn next_size(&self, size: i32, elapsed_ms: f64) -> i32 {
        if !self.adaptive {
            return self.batch_size;
        }
        let ratio = (f64::from(self.target_batch_ms) / elapsed_ms.max(0.001)).clamp(0.5, 2.0);
        ((f64::from(size) * ratio).round() as i64).clamp(i64::from(ADAPTIVE_MIN), i64::from(ADAPTIVE_MAX)) as i32
    }
}

/// What a run is throttled on (src/throttle.rs); NULL: that signal is not watched.
#[derive(Clone, Debug, Default)]
pub struct ThrottleLimits {
    pub max_replica_lag: Option<pgrx::datum::Interval>,
    pub max_replica_lag_bytes: Option<i64>,
    pub max_transaction_age: Option<pgrx::datum::Interval>,
}

impl ThrottleLimits {
    pub fn new(
        max_replica_lag: Option<pgrx::datum::Interval>,
        max_replica_lag_bytes: Option<i64>,
        max_transaction_age: Option<pgrx::datum::Interval>,
    ) -> Result<ThrottleLimits> {
        let negative = |i: &Option<pgrx::datum::Interval>| {
            i.map(|i| i.months() < 0 || i.days() < 0 || i.micros() < 0).unwrap_or(false)
        };
        if negative(&max_replica_lag) || negative(&max_transaction_age) || max_replica_lag_bytes.is_some_and(|b| b < 0)
        {
            return Err(BackfillError::BadArgument(
                "max_replica_lag, max_replica_lag_bytes and tenant_backfill.max_transaction_age must not be negative"
                    .into(),
                "NULL watches nothing; '10 seconds', 268435456 (256 MB) and '1 hour' are the defaults.".into(),
            ));
        }
        Ok(ThrottleLimits { max_replica_lag, max_replica_lag_bytes, max_transaction_age })
    }

    fn values(&self) -> [Value; 3] {
        let interval = |i: Option<pgrx::datum::Interval>| match i.and_then(|i| pgrx::IntoDatum::into_datum(i)) {
            Some(datum) => Value::Raw(datum, pg_sys::INTERVALOID),
            None => Value::Text(None),
        };
        [interval(self.max_replica_lag), Value::Int8(self.max_replica_lag_bytes), interval(self.max_transaction_age)]
    }
}

/// Who drives a run of committed batches: this backend (`CALL run`), or a background
/// worker (`start`, `resume`) with the rights of `run_as`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Foreground,
    Background { run_as: pg_sys::Oid },
}

/// A run as stored.
#[derive(Clone, Debug)]
pub struct Run {
    pub run_id: i64,
    pub target: pg_sys::Oid,
    pub kind: RunKind,
    /// NULL for the kinds that do not decide (rollback, apply_decisions, ...).
    pub mode: Option<Mode>,
    pub dry_run: bool,
    pub status: RunStatus,
    /// CALL run's and start's settings; None for the other kinds.
    pub settings: Option<BatchSettings>,
    /// Started by `start` or `resume`: a worker does its batches.
    pub background: bool,
    /// `pause` or `cancel`, asked of the run and not yet done.
    pub requested: Option<String>,
    pub pid: Option<i32>,
    /// How many workers share its first pass (run_parts).
    pub workers: i32,
    pub rows_at_start: Option<i64>,
    pub rows_changed: i64,
    pub rows_skipped: i64,
    /// Which pass: 1, the walk over the key space; then up to 3, over the rows the pass
    /// before did not write (`run_skipped`).
    pub pass: i32,
    /// The keyset cursor: the last key done, and the highest key when the run started.
    pub last_key: Option<String>,
    pub upper_key: Option<String>,
    pub rolled_back_by: Option<i64>,
}

const RUN_COLUMNS: &str = "run_id, target::pg_catalog.oid, kind, mode, dry_run, status, batch_size, pause_ms, \
     lock_timeout_ms, rows_at_start, rows_changed, rows_skipped, pass, last_key, upper_key, rolled_back_by, \
     adaptive_batch, target_batch_ms, background, requested, pid, workers";

fn decode_run(row: &pgrx::spi::SpiHeapTupleData) -> Result<Run> {
    let mode = match get::<String>(row, 4)? {
        Some(mode) => Some(Mode::parse(Some(&mode))?),
        None => None,
    };
    let settings = match (get::<i32>(row, 7)?, get::<i32>(row, 8)?, get::<i32>(row, 9)?) {
        (Some(batch_size), Some(pause_ms), Some(lock_timeout_ms)) => Some(BatchSettings {
            batch_size,
            adaptive: get_required(row, 17)?,
            target_batch_ms: get::<i32>(row, 18)?.unwrap_or(BatchSettings::DEFAULT.target_batch_ms),
            pause_ms,
            lock_timeout_ms,
        }),
        _ => None,
    };
    Ok(Run {
        run_id: get_required(row, 1)?,
        target: get_required(row, 2)?,
        kind: RunKind::parse(&get_required::<String>(row, 3)?)?,
        mode,
        dry_run: get_required(row, 5)?,
        status: RunStatus::parse(&get_required::<String>(row, 6)?)?,
        settings,
        rows_at_start: get(row, 10)?,
        rows_changed: get_required(row, 11)?,
        rows_skipped: get_required(row, 12)?,
        pass: get_required(row, 13)?,
        last_key: get(row, 14)?,
        upper_key: get(row, 15)?,
        rolled_back_by: get(row, 16)?,
        background: get_required(row, 19)?,
        requested: get(row, 20)?,
        pid: get(row, 21)?,
        workers: get_required(row, 22)?,
    })
}

/// A stored run.
pub fn load(run_id: i64) -> Result<Run> {
    // Read several times a batch: its plan is kept (sql::fixed).
    static LOAD: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {RUN_COLUMNS} FROM tenant_backfill.runs WHERE run_id = $1"));
    sql::select_rows(sql::fixed(LOAD.as_str()), &[Value::int8(run_id)], decode_run)?
        .into_iter()
        .next()
        .ok_or(BackfillError::UnknownRun(run_id))
}

/// The column a run of `soft_delete_orphans` wrote, as it recorded it.
pub fn soft_delete_column(run_id: i64) -> Result<Option<String>> {
    sql::select_value::<String>(
        "SELECT parameters->>'column' FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::int8(run_id)],
    )
}

/// The latest run of a target that wrote something (not a dry run, not a rollback).
pub fn latest_written(target: &Target) -> Result<Option<Run>> {
    Ok(sql::select_rows(
        &format!(
            "SELECT {RUN_COLUMNS} FROM tenant_backfill.runs\n \
             WHERE target = $1::pg_catalog.oid::pg_catalog.regclass AND NOT dry_run AND kind <> 'rollback'\n \
             ORDER BY run_id DESC LIMIT 1"
        ),
        &[Value::Oid(target.rel.oid)],
        decode_run,
    )?
    .into_iter()
    .next())
}

/// What a new run is.
pub struct NewRun<'a> {
    pub target: &'a Target,
    pub kind: RunKind,
    pub mode: Option<Mode>,
    pub dry_run: bool,
    pub settings: Option<BatchSettings>,
    /// The throttle's limits of a run of committed batches.
    pub limits: ThrottleLimits,
    pub driver: Driver,
    /// What else the kind was given, for the record: the decisions table, the run rolled back.
    pub parameters: serde_json::Value,
}

/// Records a new run, status running, and returns its id. A run that walks the table
/// records where the walk ends (the highest key now: rows inserted later belong to the
/// guard trigger, so a run always ends), the table's row count, and how many rows it
/// will examine.
pub fn insert(new: NewRun) -> Result<i64> {
    let (upper_key, rows_at_start, rows_total) = if new.kind.counts_the_table() {
        let (upper, rows, total) = table_bounds(new.target, new.mode)?;
        (upper, Some(rows), total)
    } else {
        (None, None, 0)
    };
    // The caller, named before the row is written as the extension's owner.
    let caller = sql::current_role();
    let [lag, lag_bytes, xact_age] = new.limits.values();
    let (background, run_as) = match new.driver {
        Driver::Foreground => (false, None),
        Driver::Background { run_as } => (true, Some(run_as)),
    };
    sql::as_extension_owner(|| {
        sql::select_value::<i64>(
            "INSERT INTO tenant_backfill.runs\n    \
         (target, target_name, kind, mode, dry_run, status, batch_size, pause_ms, lock_timeout_ms, parameters,\n     \
         rows_at_start, rows_total, upper_key, started_by, adaptive_batch, target_batch_ms,\n     \
         max_replica_lag, max_replica_lag_bytes, max_transaction_age, background, run_as, pid)\n\
         VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $12, $2, $3, $4, 'running', $5, $6, $7,\n        \
         $8::pg_catalog.text::pg_catalog.jsonb, $9, $10, $11, $13::pg_catalog.text::pg_catalog.name,\n        \
         COALESCE($14, false), $15, $16::pg_catalog.interval, $17, $18::pg_catalog.interval, $19,\n        \
         NULLIF($20::pg_catalog.oid, 0::pg_catalog.oid),\n        \
         CASE WHEN $19 THEN NULL ELSE pg_catalog.pg_backend_pid() END)\n\
         RETURNING run_id",
            &[
                Value::Oid(new.target.rel.oid),
                Value::text(new.kind.as_str()),
                Value::Text(new.mode.map(|m| m.as_str().into())),
                Value::Bool(Some(new.dry_run)),
                Value::Int4(new.settings.map(|s| s.batch_size)),
                Value::Int4(new.settings.map(|s| s.pause_ms)),
                Value::Int4(new.settings.map(|s| s.lock_timeout_ms)),
                Value::text(new.parameters.to_string()),
                Value::Int8(rows_at_start),
                Value::int8(rows_total),
                Value::Text(upper_key),
                Value::text(new.target.rel.sql_name()),
                Value::text(caller),
                Value::Bool(new.settings.map(|s| s.adaptive)),
                Value::Int4(new.settings.map(|s| s.target_batch_ms)),
                lag,
                lag_bytes,
                xact_age,
                Value::Bool(Some(background)),
                Value::Oid(run_as.unwrap_or(pg_sys::InvalidOid)),
            ],
        )
    })?
    .ok_or_else(|| BackfillError::Internal("INSERT INTO runs returned no run_id".into()))
}

/// The unfinished run of committed batches of a target in this mode and
/// dry-run-ness (running with no process behind it, paused or failed), set running
/// again with the new settings and driver: a resumed run. None when there is none.
/// (The caller holds the target's run lock, so a `running` run here has no process.)
pub fn resume(
    target: &Target,
    mode: Mode,
    dry_run: bool,
    settings: BatchSettings,
    limits: &ThrottleLimits,
    driver: Driver,
) -> Result<Option<i64>> {
    let run_id = sql::select_value::<i64>(
        "SELECT r.run_id FROM tenant_backfill.runs r\n \
         WHERE r.target = $1::pg_catalog.oid::pg_catalog.regclass AND r.kind = 'run'\n   \
         AND r.status IN ('running', 'paused', 'failed') AND r.mode = $2 AND r.dry_run = $3\n \
         ORDER BY r.run_id DESC LIMIT 1",
        &[Value::Oid(target.rel.oid), Value::text(mode.as_str()), Value::Bool(Some(dry_run))],
    )?;
    match run_id {
        Some(run_id) => {
            restart(run_id, Some(settings), limits, driver)?;
            Ok(Some(run_id))
        }
        None => Ok(None),
    }
}

/// Sets a stopped run running again, driven by `driver`; with new settings and limits
/// when given (`CALL run`, `start`), else as it had them (`resume(run_id)`).
pub fn restart(run_id: i64, settings: Option<BatchSettings>, limits: &ThrottleLimits, driver: Driver) -> Result<()> {
    let [lag, lag_bytes, xact_age] = limits.values();
    let (background, run_as) = match driver {
        Driver::Foreground => (false, None),
        Driver::Background { run_as } => (true, Some(run_as)),
    };
    let renewed = settings.is_some();
    let settings = settings.unwrap_or(BatchSettings::DEFAULT);
    sql::as_extension_owner(|| {
        sql::execute(
        "UPDATE tenant_backfill.runs\n   \
         SET status = 'running', error = NULL, requested = NULL, throttled_by = NULL,\n       \
         walk_started_at = NULL, walk_rows_base = rows_done,\n       \
         background = $2, run_as = NULLIF($3::pg_catalog.oid, 0::pg_catalog.oid), pid = CASE WHEN $2 THEN NULL ELSE pg_catalog.pg_backend_pid() END,\n       \
         batch_size = CASE WHEN $4 THEN $5 ELSE batch_size END,\n       \
         adaptive_batch = CASE WHEN $4 THEN $6 ELSE adaptive_batch END,\n       \
         target_batch_ms = CASE WHEN $4 THEN $7 ELSE target_batch_ms END,\n       \
         pause_ms = CASE WHEN $4 THEN $8 ELSE pause_ms END,\n       \
         lock_timeout_ms = CASE WHEN $4 THEN $9 ELSE lock_timeout_ms END,\n       \
         max_replica_lag = CASE WHEN $4 THEN $10::pg_catalog.interval ELSE max_replica_lag END,\n       \
         max_replica_lag_bytes = CASE WHEN $4 THEN $11 ELSE max_replica_lag_bytes END,\n       \
         max_transaction_age = CASE WHEN $4 THEN $12::pg_catalog.interval ELSE max_transaction_age END,\n       \
         updated_at = pg_catalog.clock_timestamp()\n \
         WHERE run_id = $1",
        &[
            Value::int8(run_id),
            Value::Bool(Some(background)),
            Value::Oid(run_as.unwrap_or(pg_sys::InvalidOid)),
            Value::Bool(Some(renewed)),
            Value::Int4(Some(settings.batch_size)),
            Value::Bool(Some(settings.adaptive)),
            Value::Int4(Some(settings.target_batch_ms)),
            Value::Int4(Some(settings.pause_ms)),
            Value::Int4(Some(settings.lock_timeout_ms)),
            lag,
            lag_bytes,
            xact_age,
        ],
    )
    })?;
    Ok(())
}

/// One of the key ranges several workers share (run_parts).
#[derive(Clone, Debug)]
pub struct Part {
    pub part: i32,
    pub after_key: Option<String>,
    pub up_to_key: String,
    pub last_key: Option<String>,
    pub done: bool,
}

/// The parts of a run, in order; none for a run one process drives.
pub fn parts(run_id: i64) -> Result<Vec<Part>> {
    sql::select_rows(
        "SELECT part, after_key, up_to_key, last_key, done FROM tenant_backfill.run_parts WHERE run_id = $1 ORDER BY part",
        &[Value::int8(run_id)],
        |row| {
            Ok(Part {
                part: get_required(row, 1)?,
                after_key: get(row, 2)?,
                up_to_key: get_required(row, 3)?,
                last_key: get(row, 4)?,
                done: get_required(row, 5)?,
            })
        },
    )
}

/// Splits what is left of a run's first pass into (at most) `workers` parts of about as
/// many examined rows, and records how many workers share it. Returns the parts made:
/// fewer when the rows are few, none when there is nothing to split.
pub fn split(run_id: i64, target: &Target, mode: Mode, workers: i32) -> Result<usize> {
    let run = load(run_id)?;
    let Some(upper) = run.upper_key.clone() else { return Ok(0) };
    let (key, table) = (target.key.sql_name(), target.rel.sql_name());
    let examined = match mode {
        Mode::Fill => format!(" AND t.{} IS NULL", target.tenant.sql_name()),
        Mode::Reassign => String::new(),
    };
    let (after_sql, upper_sql) = (target.key.from_text("$1"), target.key.from_text("$2"));
    let crate::catalog::Ops { gt, le, lt, .. } = target.key.ops();
    // The keys at 1/N, 2/N, ... of the rows left: each part ends at one of them.
    let bounds = sql::select_rows(
        &format!(
            "SELECT DISTINCT b.k::text, b.k FROM pg_catalog.unnest((\n  \
             SELECT pg_catalog.percentile_disc($3::pg_catalog.text[]::pg_catalog.float8[]) WITHIN GROUP (ORDER BY t.{key})\n    \
             FROM {table} t\n   \
             WHERE ($1::pg_catalog.text IS NULL OR t.{key} {gt} {after_sql})\n     \
             AND t.{key} {le} {upper_sql}{examined})) b(k)\n \
             WHERE b.k {lt} {upper_sql}\n \
             ORDER BY b.k"
        ),
        // The fractions 1/N .. (N-1)/N, as a value: Citus cannot push down a subquery
        // in the target list of an aggregate over a distributed table.
        &[
            Value::Text(run.last_key.clone()),
            Value::text(upper.clone()),
            Value::TextArray((1..workers).map(|i| Some((f64::from(i) / f64::from(workers)).to_string())).collect()),
        ],
        |row| get_required::<String>(row, 1),
    )?;
    let mut ends = bounds;
    ends.push(upper);
    let mut after = run.last_key.clone();
    sql::as_extension_owner_checked(|| {
        for (part, end) in ends.iter().enumerate() {
            sql::execute(
                "INSERT INTO tenant_backfill.run_parts (run_id, target, part, after_key, up_to_key)\n\
                 VALUES ($1, $2::pg_catalog.oid::pg_catalog.regclass, $3, $4, $5)",
                &[
                    Value::int8(run_id),
                    Value::Oid(target.rel.oid),
                    Value::Int4(Some(part as i32)),
                    Value::Text(after.clone()),
                    Value::text(end.clone()),
                ],
            )?;
            after = Some(end.clone());
        }
        sql::execute(
            "UPDATE tenant_backfill.runs SET workers = $2 WHERE run_id = $1",
            &[Value::int8(run_id), Value::Int4(Some(ends.len() as i32))],
        )
    })?;
    Ok(ends.len())
}

/// Moves a part's cursor, and marks it done once it has walked all its keys.
pub fn record_part(run_id: i64, part: i32, last_key: Option<String>, done: bool) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.run_parts SET last_key = COALESCE($3, last_key), done = $4\n \
         WHERE run_id = $1 AND part = $2",
            &[Value::int8(run_id), Value::Int4(Some(part)), Value::Text(last_key), Value::Bool(Some(done))],
        )
    })?;
    Ok(())
}

/// Every part of the first pass is done: the run's own cursor stands at its end, and
/// the pass ends (later passes, over the rows a pass did not write, are one process's).
pub fn end_split_pass(run_id: i64) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs SET last_key = upper_key WHERE run_id = $1 AND pass = 1",
            &[Value::int8(run_id)],
        )
    })?;
    Ok(())
}

/// The highest key now, the table's row count, and how many rows a run in `mode`
/// examines (every row in reassign, the NULL ones in fill, none without a mode).
fn table_bounds(target: &Target, mode: Option<Mode>) -> Result<(Option<String>, i64, i64)> {
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
    let (rows, total) = sql::select_one_row(
        &format!("SELECT pg_catalog.count(*), {examined} FROM {table} t"),
        &[],
        "a run's row count",
        |row| Ok((get_required::<i64>(row, 1)?, get_required::<i64>(row, 2)?)),
    )?;
    Ok((upper, rows, total))
}

/// What one batch (or a one-statement write) did.
#[derive(Clone, Debug, Default)]
pub struct BatchCounts {
    /// The batch's highest key: where the next batch starts (None: keep the cursor).
    pub last_key: Option<String>,
    /// Rows the decision examined.
    pub scanned: i64,
    pub changed: i64,
    /// `{"1": 15, "override": 1}`: rows changed per phase, JSON text.
    pub by_phase: String,
    /// Rows to change that were not written (held by another session, or set meanwhile).
    pub skipped: i64,
    /// Rows left for a human: conflicts, unresolved, orphans.
    pub for_review: i64,
    /// How long the batch held its rows locked, in milliseconds.
    pub locked_ms: f64,
}

/// Adds a batch's counts to its run, with the size of its next batch (runs of committed
/// batches). Examined rows and
/// rows for review are counted in the first pass only: a later pass decides again keys
/// the first examined.
///
/// `next_size` is the size of the next batch of a run of committed batches. The end of
/// its first batch since it started or resumed starts the walk that `progress` rates:
/// the first batch, which warms the caches and plans the statements, would make an
/// early ETA too long.
pub fn record_batch(run_id: i64, batch: &BatchCounts, next_size: Option<i32>) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
        sql::fixed("UPDATE tenant_backfill.runs r SET\n       \
         rows_done = r.rows_done + CASE WHEN r.pass = 1 THEN $2 ELSE 0 END,\n       \
         rows_changed = r.rows_changed + $3,\n       \
         by_phase = (SELECT COALESCE(pg_catalog.jsonb_object_agg(e.key, e.n), '{}'::pg_catalog.jsonb)\n                     \
         FROM (SELECT x.key, pg_catalog.sum(x.value::pg_catalog.int8) AS n\n                             \
         FROM (SELECT * FROM pg_catalog.jsonb_each_text(r.by_phase)\n                                   \
         UNION ALL SELECT * FROM pg_catalog.jsonb_each_text($4::pg_catalog.text::pg_catalog.jsonb)) x\n                            \
         GROUP BY x.key) e),\n       \
         left_for_review = r.left_for_review + CASE WHEN r.pass = 1 THEN $5 ELSE 0 END,\n       \
         rows_skipped = r.rows_skipped + $6,\n       \
         batches = r.batches + 1,\n       \
         longest_batch_ms = GREATEST(r.longest_batch_ms, $7),\n       \
         last_key = COALESCE($8, r.last_key),\n       \
         batch_size = COALESCE($9, r.batch_size),\n       \
         walk_started_at = CASE WHEN $9 IS NULL THEN r.walk_started_at\n                                \
         ELSE COALESCE(r.walk_started_at, pg_catalog.clock_timestamp()) END,\n       \
         walk_rows_base = CASE WHEN $9 IS NOT NULL AND r.walk_started_at IS NULL\n                               \
         THEN r.rows_done + CASE WHEN r.pass = 1 THEN $2 ELSE 0 END ELSE r.walk_rows_base END,\n       \
         updated_at = pg_catalog.clock_timestamp()\n \
         WHERE r.run_id = $1"),
        &[
            Value::int8(run_id),
            Value::int8(batch.scanned),
            Value::int8(batch.changed),
            Value::text(batch.by_phase.clone()),
            Value::int8(batch.for_review),
            Value::int8(batch.skipped),
            // Microseconds are all a lock time needs (and all it stored before).
            Value::Float8(Some((batch.locked_ms * 1000.0).round() / 1000.0)),
            Value::Text(batch.last_key.clone()),
            Value::Int4(next_size),
        ],
    )
    })?;
    Ok(())
}

/// Up to `limit` of the keys pass `pass` of the run did not write, taken (deleted) for
/// a batch of the next pass, which records again those it does not write either. Taken
/// in no particular order: a pass only needs to take each once, and its decision puts
/// them in key order.
pub fn take_skipped(run_id: i64, pass: i32, limit: i32) -> Result<Vec<String>> {
    let keys = sql::as_extension_owner(|| {
        sql::select_value::<Vec<Option<String>>>(
            sql::fixed(
                "WITH taken AS (\n    DELETE FROM tenant_backfill.run_skipped s\n     \
                 WHERE s.run_id = $1 AND s.pass = $2\n       \
                 AND s.ctid IN (SELECT n.ctid FROM tenant_backfill.run_skipped n\n                         \
                 WHERE n.run_id = $1 AND n.pass = $2 LIMIT $3)\n    \
                 RETURNING s.row_key)\n\
                 SELECT pg_catalog.array_agg(t.row_key) FROM taken t",
            ),
            &[Value::int8(run_id), Value::Int4(Some(pass)), Value::Int4(Some(limit))],
        )
    })?;
    Ok(keys.unwrap_or_default().into_iter().flatten().collect())
}

/// Starts the run's next pass, over the rows its last pass did not write (`take_skipped`).
pub fn start_next_pass(run_id: i64) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs SET pass = pass + 1, last_key = NULL, rows_skipped = 0 WHERE run_id = $1",
            &[Value::int8(run_id)],
        )
    })?;
    Ok(())
}

/// Ends a run: done (planned for a dry run), or failed with the error.
pub fn finish(run_id: i64, dry_run: bool, error: Option<String>) -> Result<()> {
    let status = match (&error, dry_run) {
        (Some(_), _) => RunStatus::Failed,
        (None, true) => RunStatus::Planned,
        (None, false) => RunStatus::Done,
    };
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs\n   \
         SET status = $2, error = $3, pid = NULL, throttled_by = NULL, requested = NULL,\n       \
         finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()\n \
         WHERE run_id = $1 AND status = 'running'",
            &[Value::int8(run_id), Value::text(status.as_str()), Value::Text(error)],
        )
    })?;
    Ok(())
}

/// Stops a run of committed batches on request: paused (`resume` continues it) or
/// cancelled (for good). A running run is stopped by its driver between batches; one
/// with no process behind it, paused or failed, by `pause` or `cancel` directly.
///
/// `from` lists the statuses it may stop from; `only_without_process` (pause or cancel
/// of a run nothing drives) also leaves a run alone that a process drives meanwhile
/// (a resume that came first).
pub fn stop(run_id: i64, status: RunStatus, from: &[RunStatus], only_without_process: bool) -> Result<()> {
    let from: Vec<Option<String>> = from.iter().map(|s| Some(s.as_str().to_string())).collect();
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs\n   \
             SET status = $2, throttled_by = NULL, requested = NULL,\n       \
             finished_at = CASE WHEN $2 = 'cancelled' THEN pg_catalog.clock_timestamp() END,\n       \
             updated_at = pg_catalog.clock_timestamp()\n \
             WHERE run_id = $1 AND status = ANY ($3)\n   \
             AND NOT ($4 AND tenant_backfill_internal._run_alive(pid, target))",
            &[
                Value::int8(run_id),
                Value::text(status.as_str()),
                Value::TextArray(from),
                Value::Bool(Some(only_without_process)),
            ],
        )
    })?;
    Ok(())
}

/// The run has no process any more (its driver ended it).
pub fn detach(run_id: i64) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs SET pid = NULL, throttled_by = NULL WHERE run_id = $1",
            &[Value::int8(run_id)],
        )
    })?;
    Ok(())
}

/// Asks the process driving a run to pause or cancel it after its current batch.
pub fn request(run_id: i64, what: &str) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs SET requested = $2 WHERE run_id = $1 AND status = 'running'",
            &[Value::int8(run_id), Value::text(what)],
        )
    })?;
    Ok(())
}

/// Records the background worker that drives a run.
pub fn set_pid(run_id: i64, pid: i32) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs SET pid = $2 WHERE run_id = $1",
            &[Value::int8(run_id), Value::Int4(Some(pid))],
        )
    })?;
    Ok(())
}

/// Whether the process a running run names is working on it (sql/write_path.sql,
/// _run_alive: it holds the target's run lock, or it is a worker about to take it).
pub fn alive(run: &Run) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT tenant_backfill_internal._run_alive($1, $2::pg_catalog.oid::pg_catalog.regclass)",
        &[Value::Int4(run.pid), Value::Oid(run.target)],
    )?
    .unwrap_or(false))
}

/// Ends a run that wrote in one go (rollback, release_quarantine) with its counts:
/// `changed` rows, all of phase `phase`, and `skipped` rows it left alone, when it
/// counts those.
pub fn finish_with_counts(run_id: i64, changed: i64, skipped: Option<i64>, phase: &str) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs\n   \
         SET status = 'done', pid = NULL, rows_changed = $2, rows_done = $2 + COALESCE($3, 0),\n       \
         by_phase = pg_catalog.jsonb_build_object($4::pg_catalog.text, $2),\n       \
         parameters = CASE WHEN $3 IS NULL THEN parameters\n                         \
         ELSE parameters || pg_catalog.jsonb_build_object('skipped', $3) END,\n       \
         finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()\n \
         WHERE run_id = $1",
            &[Value::int8(run_id), Value::int8(changed), Value::Int8(skipped), Value::text(phase)],
        )
    })?;
    Ok(())
}

/// Marks a run undone by the rollback run `by`.
pub fn mark_rolled_back(run_id: i64, by: i64) -> Result<()> {
    sql::as_extension_owner(|| {
        sql::execute(
            "UPDATE tenant_backfill.runs\n   \
         SET status = 'rolled_back', rolled_back_by = $2, updated_at = pg_catalog.clock_timestamp()\n \
         WHERE run_id = $1",
            &[Value::int8(run_id), Value::int8(by)],
        )
    })?;
    Ok(())
}

/// A run's progress, for its NOTICE.
pub struct Progress {
    pub status: String,
    pub rows_done: i64,
    pub rows_total: i64,
    pub rows_changed: i64,
    pub left_for_review: i64,
    pub seconds: f64,
}

impl Progress {
    pub fn percent(&self) -> f64 {
        if self.rows_total > 0 {
            100.0 * self.rows_done as f64 / self.rows_total as f64
        } else {
            100.0
        }
    }

    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows_done as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub fn progress(run_id: i64) -> Result<Progress> {
    sql::select_one_row(
        "SELECT rows_done, rows_total, rows_changed, left_for_review,\n       \
         pg_catalog.date_part('epoch', updated_at - started_at)::pg_catalog.float8, status\n  \
         FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::int8(run_id)],
        "a run's progress",
        |row| {
            Ok(Progress {
                rows_done: get_required(row, 1)?,
                rows_total: get_required(row, 2)?,
                rows_changed: get_required(row, 3)?,
                left_for_review: get_required(row, 4)?,
                seconds: get_required(row, 5)?,
                status: get_required(row, 6)?,
            })
        },
    )
}

/// What `run_now` returns: (run_id, rows_changed, by_phase, left_for_review).
pub fn summary(run_id: i64) -> Result<(i64, i64, pgrx::JsonB, i64)> {
    sql::select_rows(
        "SELECT run_id, rows_changed, by_phase, left_for_review FROM tenant_backfill.runs WHERE run_id = $1",
        &[Value::int8(run_id)],
        |row| Ok((get_required(row, 1)?, get_required(row, 2)?, get_required(row, 3)?, get_required(row, 4)?)),
    )?
    .into_iter()
    .next()
    .ok_or(BackfillError::UnknownRun(run_id))
}
