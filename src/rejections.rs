//! Durable records of rejected writes. In `reject` mode the guard aborts the writer's
//! statement, so a row it wrote to `violations` would vanish with it. When the library is
//! in `shared_preload_libraries`, each rejection goes into a bounded shared-memory queue
//! instead, with the database it happened in, and reaches that database's `violations`
//! within about a second:
//!
//! - a launcher (a background worker started with the server, connected to no database)
//!   looks at the queue every 250 ms and starts a writer for each database that has
//!   rejections waiting and no writer yet (a dynamic background worker, connected to it);
//! - a writer moves its database's rejections into `violations` with one INSERT, and
//!   stops once its database has had none for a while. In a database without the
//!   extension they are dropped, counted, with one WARNING in the server log.
//!
//! The rejecting backend only takes a lightweight lock for a few instructions and never
//! waits for a worker; when the queue is full, the rejection is counted as dropped. No
//! setting names a database, so none can name a wrong one. Without preloading,
//! rejections are written to the server log at LOG level.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, GucContext, GucFlags, GucRegistry, GucSetting, PGRXSharedMemory, PgLwLock};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many rejections wait for the worker at most.
const QUEUE_CAPACITY: usize = 1024;
/// Text fields are cut to this many bytes (NAMEDATALEN for names; keys and
/// application names longer than this are rare and only informative here).
const FIELD: usize = 64;

/// Set in the postmaster when the library is preloaded; backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Kept so a postgresql.conf that still sets it loads cleanly; nothing reads it.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// A writer stops after this long without rejections for its database (connected, it
/// would hold up a DROP DATABASE and a worker slot).
const WRITER_IDLE: Duration = Duration::from_secs(2);
/// A rejection that this many writers tried to write and did not (their INSERT kept
/// failing) is given up by the launcher, so that one database cannot fill the queue
/// for all the others.
const MAX_ATTEMPTS: u8 = 3;
/// First key of the advisory lock a writer holds for its database ('tenw'): one writer
/// per database, also across a launcher restart.
const WRITER_LOCK_CLASS: i32 = 0x7465_6e77;
/// The launcher starts a writer for a database at most this often (a writer that keeps
/// failing is not restarted in a loop).
const WRITER_RESTART: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
#[repr(C)]
struct Text {
    len: u8,
    bytes: [u8; FIELD],
}

impl Text {
    const EMPTY: Text = Text { len: 0, bytes: [0; FIELD] };

    fn from(value: &str) -> Text {
        let mut out = Text::EMPTY;
        // Cut on a character boundary so the stored text stays valid UTF-8.
        let mut end = value.len().min(FIELD);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        out.bytes[..end].copy_from_slice(&value.as_bytes()[..end]);
        out.len = end as u8;
        out
    }

    fn as_string(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len as usize]).into_owned()
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Rejection {
    /// Unique in the queue: what a writer removes once it has written the rejection.
    id: u64,
    /// How many writers set out to write it.
    attempts: u8,
    database: u32,
    target: u32,
    /// Microseconds since the Unix epoch.
    at_us: i64,
    operation: u8,
    key: Text,
    column: Text,
    role: Text,
    application: Text,
}

impl Rejection {
    const EMPTY: Rejection = Rejection {
        id: 0,
        attempts: 0,
        database: 0,
        target: 0,
        at_us: 0,
        operation: 0,
        key: Text::EMPTY,
        column: Text::EMPTY,
        role: Text::EMPTY,
        application: Text::EMPTY,
    };
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct RejectionQueue {
    len: usize,
    next_id: u64,
    /// Rejections the full queue could not keep.
    dropped: u64,
    /// Rejections in databases without the extension (or dropped meanwhile).
    unrecorded: u64,
    items: [Rejection; QUEUE_CAPACITY],
}

impl Default for RejectionQueue {
    fn default() -> Self {
        RejectionQueue { len: 0, next_id: 1, dropped: 0, unrecorded: 0, items: [Rejection::EMPTY; QUEUE_CAPACITY] }
    }
}

impl RejectionQueue {
    fn waiting(&self) -> &[Rejection] {
        &self.items[..self.len]
    }

    /// Removes the rejections `keep` refuses, keeping the others in order.
    fn retain(&mut self, keep: impl Fn(&Rejection) -> bool) -> usize {
        let mut kept = 0;
        for i in 0..self.len {
            if keep(&self.items[i]) {
                self.items[kept] = self.items[i];
                kept += 1;
            }
        }
        let removed = self.len - kept;
        self.len = kept;
        removed
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for RejectionQueue {}

static QUEUE: PgLwLock<RejectionQueue> = unsafe { PgLwLock::new(c"tenant_backfill_rejections") };

/// Called from `_PG_init`: only when preloaded do we get shared memory and a worker.
pub fn init() {
    GucRegistry::define_string_guc(
        c"tenant_backfill.database",
        c"No longer used: rejected writes are recorded in the violations table of their own database.",
        c"Kept so that a configuration that still sets it loads without a warning.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: read once, in the postmaster, while it loads preloaded libraries.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(QUEUE);
    BackgroundWorkerBuilder::new("tenant_backfill rejections launcher")
        .set_type("tenant_backfill launcher")
        .set_function("tenant_backfill_rejections_launcher")
        .set_library(crate::LIBRARY)
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Records one rejected write, durably: into the queue when preloaded, else the server log.
pub fn record(
    target: pg_sys::Oid,
    table: &str,
    column: &str,
    key: &str,
    operation: &str,
    role: &str,
    application: &str,
) {
    if !preloaded() {
        ereport!(
            LOG,
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            format!(
                "tenant_backfill: rejected {operation} of {table} with NULL {column}, key {key}, role {role}, application_name \"{application}\""
            )
        );
        return;
    }
    let rejection = Rejection {
        id: 0,
        attempts: 0,
        // SAFETY: MyDatabaseId is set for every backend connected to a database.
        database: u32::from(unsafe { pg_sys::MyDatabaseId }),
        target: u32::from(target),
        at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
        operation: if operation == "UPDATE" { b'U' } else { b'I' },
        key: Text::from(key),
        column: Text::from(column),
        role: Text::from(role),
        application: Text::from(application),
    };
    let mut queue = QUEUE.exclusive();
    if queue.len < QUEUE_CAPACITY {
        let at = queue.len;
        let id = queue.next_id;
        queue.items[at] = Rejection { id, ..rejection };
        queue.next_id += 1;
        queue.len += 1;
    } else {
        queue.dropped += 1;
    }
}

/// (waiting, dropped) of the queue, or None without preloading. Dropped counts the
/// rejections the full queue could not keep and those of databases without the
/// extension, since the server started.
pub fn queue_state() -> Option<(i64, i64)> {
    if !preloaded() {
        return None;
    }
    let queue = QUEUE.share();
    Some((queue.len as i64, (queue.dropped + queue.unrecorded) as i64))
}

/// The state of the rejection queue: whether rejected writes are recorded in
/// `violations` (preloaded) or in the server log, how many wait, how many were dropped.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn rejection_queue(
) -> TableIterator<'static, (name!(preloaded, bool), name!(waiting, Option<i64>), name!(dropped, Option<i64>))> {
    let state = queue_state();
    TableIterator::once((preloaded(), state.map(|s| s.0), state.map(|s| s.1)))
}

/// The launcher: connected to no database, it starts a writer for every database with
/// rejections waiting (and forgets those of a database dropped meanwhile).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn tenant_backfill_rejections_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut writers: Vec<(u32, DynamicBackgroundWorker, Instant)> = Vec::new();
    let mut last_start: Vec<(u32, Instant)> = Vec::new();
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
        // A writer that stopped (idle, or failed) is forgotten; a new one starts if needed.
        writers.retain(|(_, worker, _)| worker.pid().is_ok());
        // Rejections that writers kept failing to write, of a database without a writer now.
        let given_up = {
            let mut queue = QUEUE.exclusive();
            let live: Vec<u32> = writers.iter().map(|(db, _, _)| *db).collect();
            let given_up = queue.retain(|r| r.attempts < MAX_ATTEMPTS || live.contains(&r.database));
            queue.unrecorded += given_up as u64;
            given_up
        };
        if given_up > 0 {
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("tenant_backfill: {given_up} rejected writes were given up: {MAX_ATTEMPTS} writers failed to record them"),
                "The server log has each writer's error; monitor counts them in rejections_dropped."
            );
        }
        let mut waiting: Vec<u32> = QUEUE.share().waiting().iter().map(|r| r.database).collect();
        waiting.sort_unstable();
        waiting.dedup();
        for database in waiting {
            if writers.iter().any(|(db, _, _)| *db == database) {
                continue;
            }
            if last_start.iter().any(|(db, at)| *db == database && at.elapsed() < WRITER_RESTART) {
                continue;
            }
            if !database_exists(database) {
                let mut queue = QUEUE.exclusive();
                let forgotten = queue.retain(|r| r.database != database);
                queue.unrecorded += forgotten as u64;
                continue;
            }
            last_start.retain(|(db, _)| *db != database);
            last_start.push((database, Instant::now()));
            match start_writer(database) {
                Ok(worker) => writers.push((database, worker, Instant::now())),
                Err(err) => ereport!(
                    WARNING,
                    PgSqlErrorCode::ERRCODE_WARNING,
                    format!("tenant_backfill: could not start a writer for the rejected writes of database {database}: {err:?}"),
                    "Raise max_worker_processes; the rejections wait in the queue meanwhile."
                ),
            }
        }
    }
    // Stopped by SIGTERM: at shutdown that is the end, but after a pg_terminate_backend a
    // worker that exits with 0 is never started again. Exiting with 1 lets the postmaster
    // restart it (a shutting-down postmaster restarts nothing).
    // SAFETY: ends this background worker process.
    unsafe { pg_sys::proc_exit(1) }
}

/// Whether a database (by OID) still exists: the launcher reads the shared catalog.
fn database_exists(database: u32) -> bool {
    BackgroundWorker::transaction(|| {
        // SAFETY: a catalog lookup inside a transaction; NULL when there is no such database.
        !unsafe { pg_sys::get_database_name(pg_sys::Oid::from(database)) }.is_null()
    })
}

fn start_writer(database: u32) -> Result<DynamicBackgroundWorker, pgrx::bgworkers::DynamicBackgroundWorkerLoadError> {
    BackgroundWorkerBuilder::new("tenant_backfill violations writer")
        .set_type("tenant_backfill writer")
        .set_function("tenant_backfill_violations_writer")
        .set_library(crate::LIBRARY)
        .set_argument(Some(pg_sys::Datum::from(database as usize)))
        .enable_spi_access()
        .set_restart_time(None)
        // SAFETY: the launcher's pid, so it hears when the writer starts and stops.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
}

/// A writer: connected to one database, it moves that database's rejections into its
/// `violations` about every 250 ms, and stops after `WRITER_IDLE` without any.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn tenant_backfill_violations_writer(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = arg.value() as u32;
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    // One writer per database: a second one (a launcher that restarted and does not know
    // the first) would write the same rejections twice.
    let alone = pinned_transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_lock($1)",
            &[((i64::from(WRITER_LOCK_CLASS) << 32) | i64::from(database)).into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    });
    if !alone {
        return;
    }
    let mut idle_since = Instant::now();
    let mut warned = false;
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
        // Copy, write, and only then remove: if writing fails (the writer exits on an
        // error and the launcher starts another), the rejections are still queued.
        let batch: Vec<Rejection> =
            QUEUE.share().waiting().iter().filter(|r| r.database == database).copied().collect();
        if batch.is_empty() {
            if idle_since.elapsed() > WRITER_IDLE {
                return;
            }
            continue;
        }
        idle_since = Instant::now();
        let installed = pinned_transaction(|| {
            Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'tenant_backfill')",
            )
            .ok()
            .flatten()
            .unwrap_or(false)
        });
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        if installed {
            let mut queue = QUEUE.exclusive();
            let len = queue.len;
            for r in queue.items[..len].iter_mut().filter(|r| ids.contains(&r.id)) {
                r.attempts = r.attempts.saturating_add(1);
            }
        }
        if installed && !write_violations(&batch) {
            // Kept in the queue, counted as tried: the launcher starts another writer
            // after a pause, and gives the rejections up after MAX_ATTEMPTS.
            return;
        }
        if !installed && !warned {
            warned = true;
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "tenant_backfill: {} rejected writes in database {} were not recorded: the extension is not installed there",
                    batch.len(),
                    pinned_transaction(|| Spi::get_one::<String>("SELECT pg_catalog.current_database()::text")
                        .ok()
                        .flatten()
                        .unwrap_or_default())
                ),
                "CREATE EXTENSION tenant_backfill in that database to record them in its tenant_backfill.violations."
            );
        }
        let mut queue = QUEUE.exclusive();
        queue.retain(|r| !ids.contains(&r.id));
        if !installed {
            queue.unrecorded += ids.len() as u64;
        }
    }
}

/// A transaction of a writer, with `search_path` pinned for it: a worker runs as the
/// bootstrap superuser, and a database's own setting (`ALTER DATABASE ... SET
/// search_path`), which its owner controls, must not decide what its statements resolve.
fn pinned_transaction<R>(work: impl FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe) -> R {
    BackgroundWorker::transaction(|| {
        // A failure here surfaces in the statements after it.
        let _ = Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)");
        work()
    })
}

/// One INSERT for a batch of rejections, from arrays.
const INSERT_VIOLATIONS: &str = "INSERT INTO tenant_backfill.violations \
         (occurred_at, target, row_key, column_name, role, application_name, mode, action, operation) \
     SELECT pg_catalog.to_timestamp(v.at), v.target::pg_catalog.oid::pg_catalog.regclass, v.key, \
            v.col::pg_catalog.name, v.role::pg_catalog.name, v.app, 'reject', 'rejected', v.op \
       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.float8[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                       pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.text[]), \
                       pg_catalog.unnest($6::pg_catalog.text[]), pg_catalog.unnest($7::pg_catalog.text[])) \
            AS v(at, target, key, col, role, app, op)";

/// Writes rejections to `violations`; whether they were written.
fn write_violations(rows: &[Rejection]) -> bool {
    if rows.is_empty() {
        return true;
    }
    let at: Vec<f64> = rows.iter().map(|r| r.at_us as f64 / 1_000_000.0).collect();
    let target: Vec<i64> = rows.iter().map(|r| i64::from(r.target)).collect();
    let key: Vec<String> = rows.iter().map(|r| r.key.as_string()).collect();
    let column: Vec<String> = rows.iter().map(|r| r.column.as_string()).collect();
    let role: Vec<String> = rows.iter().map(|r| r.role.as_string()).collect();
    let application: Vec<String> = rows.iter().map(|r| r.application.as_string()).collect();
    let operation: Vec<String> =
        rows.iter().map(|r| if r.operation == b'U' { "UPDATE".to_string() } else { "INSERT".to_string() }).collect();
    // A Postgres error here ends the writer; the launcher starts another, and the
    // rejections, still queued, are written then.
    let result = pinned_transaction(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    INSERT_VIOLATIONS,
                    None,
                    &[
                        at.clone().into(),
                        target.clone().into(),
                        key.clone().into(),
                        column.clone().into(),
                        role.clone().into(),
                        application.clone().into(),
                        operation.clone().into(),
                    ],
                )
                .map(|_| ())
        })
    });
    if let Err(err) = &result {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("tenant_backfill: could not record {} rejected writes: {err}", rows.len())
        );
    }
    result.is_ok()
}
