//! tenant_backfill: infer each row's tenant from related tables, back it up, audit it,
//! prove it, undo it, and keep it fixed. See README.md and API.md for the SQL interface.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

/// The shared library's name: versioned, so that installing a new release leaves the
/// library of the old one in place under the objects its SQL created, until
/// `ALTER EXTENSION tenant_backfill UPDATE` moves them to this one (README, "Upgrading").
/// cargo pgrx installs it under this name because the control file has no module_pathname.
pub const LIBRARY: &str = concat!("tenant_backfill-", env!("CARGO_PKG_VERSION"));

/// Settings always; shared memory and the violations writer when preloaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if another_release_loaded() {
        return;
    }
    SETTINGS_DEFINED_HERE.store(true, std::sync::atomic::Ordering::Relaxed);
    guard::init();
    throttle::init();
    batch::init();
    rejections::init();
}

/// Whether this library defined the settings (and so its statics follow them).
static SETTINGS_DEFINED_HERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An integer setting: from this library's static when it defined the setting, else (the
/// library of another release did, see another_release_loaded) read by name.
pub fn int_setting(name: &std::ffi::CStr, defined_here: impl FnOnce() -> i32, default: i32) -> i32 {
    if SETTINGS_DEFINED_HERE.load(std::sync::atomic::Ordering::Relaxed) {
        return defined_here();
    }
    // SAFETY: a lookup by name, missing_ok; the text is copied before anything else runs.
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return default;
    }
    // SAFETY: GetConfigOption returns a NUL-terminated string it owns.
    unsafe { std::ffi::CStr::from_ptr(value) }.to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether the library of another release already defined the settings in this backend:
/// a session that used the extension and then ran `ALTER EXTENSION tenant_backfill UPDATE`
/// loads both. Defining a setting twice is an ERROR, so this library leaves them (and the
/// preloaded machinery) to the one loaded first, for the rest of that session only; the
/// README tells to reconnect after an update.
fn another_release_loaded() -> bool {
    // An integer setting: GetConfigOption gives NULL for a string one that is unset (15).
    let name = c"tenant_backfill.max_workers";
    // SAFETY: lookups by name; missing_ok, so an unknown name gives NULL rather than an ERROR.
    let (value, flags) = unsafe {
        (pg_sys::GetConfigOption(name.as_ptr(), true, false), pg_sys::GetConfigOptionFlags(name.as_ptr(), true))
    };
    // A placeholder (a SET before any library defined it) is replaced by the definition.
    !value.is_null() && flags & pg_sys::GUC_CUSTOM_PLACEHOLDER as i32 == 0
}

/// The schema of the functions only the extension's own SQL calls (sql/schema.sql creates
/// it first; this declares it to pgrx for their `schema = "tenant_backfill_internal"`).
#[pg_schema]
mod tenant_backfill_internal {}

// The core, bottom up: errors and types, SQL text and SPI, the catalog, the decision
// engine; then the write path (writer, batch) and a run's bookkeeping (runs, locks).
mod batch;
mod catalog;
mod checks;
mod engine;
mod error;
mod evidence;
mod job;
mod locks;
mod runs;
mod sql;
mod types;
mod writer;
// A run of committed batches: its steps, its throttle, and the worker of a background run.
mod committed;
mod throttle;
mod worker;
// The SQL functions, one file per API section; the guard trigger and its queue.
mod api;
mod guard;
mod rejections;
mod trigger;

// The configuration tables and hand-written helpers come first: every function reads them.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/write_path.sql", name = "write_path", requires = ["schema"]);
extension_sql_file!("../sql/guard.sql", name = "guard_tables", requires = ["write_path"]);
extension_sql_file!("../sql/access.sql", name = "access", requires = ["guard_tables"]);
// plan, the procedures and the event triggers call the Rust functions by name, so they come after those.
extension_sql_file!(
    "../sql/procedures.sql",
    name = "procedures",
    requires = [
        "access",
        api::reports::_plan_statement,
        api::run::_run_begin,
        api::run::_run_throttle,
        api::run::_run_batch,
        api::run::_run_end,
        api::finalize::_finalize_check,
        api::finalize::_finalize_step,
        api::finalize::_finalize_abort,
        guard::_guard_inheritors
    ]
);
// The COMMENTs on every public object, once all of them exist (pg_regress 14_described).
extension_sql_file!("../sql/comments.sql", name = "comments", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Preloaded, so the guard's rejections go through shared memory and a writer
        // of the test database into its violations.
        vec![concat!("shared_preload_libraries = 'tenant_backfill-", env!("CARGO_PKG_VERSION"), "'")]
    }
}
