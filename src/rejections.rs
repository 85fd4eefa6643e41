//! Durable records of rejected writes. In `reject` mode the guard aborts the writer's
//! statement, so a row it wrote to `violations` would vanish with it. When the library is
//! in `shared_preload_libraries`, each rejection goes into a bounded shared-memory queue
//! instead, and a background worker writes the queue to `violations` about every 250 ms.
//! The writer only takes a lightweight lock for a few instructions and never waits for the
//! worker; when the queue is full, the rejection is counted as dropped. Without
//! preloading, rejections are written to the server log at LOG level.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, GucContext, GucFlags, GucRegistry, GucSetting, PGRXSharedMemory, PgLwLock};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How many rejections wait for the worker at most.
const QUEUE_CAPACITY: usize = 1024;
/// Text fields are cut to this many bytes (NAMEDATALEN for names; keys and
/// application names longer than this are rare and only informative here).
const FIELD: usize = 64;

/// Set in the postmaster when the library is preloaded; backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// The database the worker writes `violations` in.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

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
    dropped: u64,
    items: [Rejection; QUEUE_CAPACITY],
}

impl Default for RejectionQueue {
    fn default() -> Self {
        RejectionQueue { len: 0, dropped: 0, items: [Rejection::EMPTY; QUEUE_CAPACITY] }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for RejectionQueue {}

static QUEUE: PgLwLock<RejectionQueue> = unsafe { PgLwLock::new(c"tenant_backfill_rejections") };

/// Called from `_PG_init`: only when preloaded do we get shared memory and a worker.
pub fn init() {
    GucRegistry::define_string_guc(
        c"tenant_backfill.database",
        c"Database whose tenant_backfill.violations the background worker writes rejected writes to.",
        c"Only used when tenant_backfill is in shared_preload_libraries; read when the worker starts.",
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
    BackgroundWorkerBuilder::new("tenant_backfill violations writer")
        .set_type("tenant_backfill")
        .set_function("tenant_backfill_violations_worker")
        .set_library("tenant_backfill")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Records one rejected write, durably: into the queue when preloaded, else the server log.
pub fn record(target: pg_sys::Oid, table: &str, column: &str, key: &str, operation: &str, role: &str, application: &str) {
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
        queue.items[at] = rejection;
        queue.len += 1;
    } else {
        queue.dropped += 1;
    }
}

/// (waiting, dropped) of the queue, or None without preloading.
pub fn queue_state() -> Option<(i64, i64)> {
    if !preloaded() {
        return None;
    }
    let queue = QUEUE.share();
    Some((queue.len as i64, queue.dropped as i64))
}

/// The state of the rejection queue: whether rejected writes are recorded in
/// `violations` (preloaded) or in the server log, how many wait, how many were dropped.
#[pg_extern]
fn rejection_queue() -> TableIterator<
    'static,
    (name!(preloaded, bool), name!(waiting, Option<i64>), name!(dropped, Option<i64>)),
> {
    let state = queue_state();
    TableIterator::once((preloaded(), state.map(|s| s.0), state.map(|s| s.1)))
}

/// The background worker: wakes about every 250 ms and moves queued rejections into
/// `violations` with one INSERT.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn tenant_backfill_violations_worker(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = DATABASE.get().and_then(|d| d.into_string().ok()).unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: set once connected.
    let my_database = u32::from(unsafe { pg_sys::MyDatabaseId });
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
        let installed = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'tenant_backfill')")
                .ok()
                .flatten()
                .unwrap_or(false)
        });
        if !installed {
            continue;
        }
        // Copy, write, and only then remove: if writing fails (the worker exits on an
        // error and is restarted), the rejections are still queued for the next try.
        let batch: Vec<Rejection> = {
            let queue = QUEUE.share();
            queue.items[..queue.len].to_vec()
        };
        if batch.is_empty() {
            continue;
        }
        let taken = batch.len();
        let (here, elsewhere): (Vec<Rejection>, Vec<Rejection>) =
            batch.into_iter().partition(|r| r.database == my_database);
        write_violations(&here);
        {
            let mut queue = QUEUE.exclusive();
            let len = queue.len;
            queue.items.copy_within(taken..len, 0);
            queue.len = len - taken;
            queue.dropped += elsewhere.len() as u64;
        }
        if !elsewhere.is_empty() {
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "tenant_backfill: {} rejected writes in other databases than {database} were not recorded",
                    elsewhere.len()
                ),
                "Set tenant_backfill.database to the database where tenant_backfill is used."
            );
        }
    }
}

/// One INSERT for a batch of rejections, from arrays.
const INSERT_VIOLATIONS: &str = "INSERT INTO tenant_backfill.violations \
         (occurred_at, target, row_key, column_name, role, application_name, mode, action, operation) \
     SELECT pg_catalog.to_timestamp(v.at), v.target::pg_catalog.oid::pg_catalog.regclass, v.key, \
            v.col::pg_catalog.name, v.role::pg_catalog.name, v.app, 'reject', 'rejected', v.op \
       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.float8[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                       pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), \
                       pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::text[])) \
            AS v(at, target, key, col, role, app, op)";

fn write_violations(rows: &[Rejection]) {
    if rows.is_empty() {
        return;
    }
    let at: Vec<f64> = rows.iter().map(|r| r.at_us as f64 / 1_000_000.0).collect();
    let target: Vec<i64> = rows.iter().map(|r| i64::from(r.target)).collect();
    let key: Vec<String> = rows.iter().map(|r| r.key.as_string()).collect();
    let column: Vec<String> = rows.iter().map(|r| r.column.as_string()).collect();
    let role: Vec<String> = rows.iter().map(|r| r.role.as_string()).collect();
    let application: Vec<String> = rows.iter().map(|r| r.application.as_string()).collect();
    let operation: Vec<String> =
        rows.iter().map(|r| if r.operation == b'U' { "UPDATE".to_string() } else { "INSERT".to_string() }).collect();
    // A Postgres error here ends the worker; the postmaster restarts it and the
    // rejections, still queued, are written then.
    let result = BackgroundWorker::transaction(|| {
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
    if let Err(err) = result {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("tenant_backfill: could not record {} rejected writes: {err}", rows.len())
        );
    }
}
