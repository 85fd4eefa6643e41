//! tenant_backfill: infer each row's tenant from related tables, back it up, audit it,
//! prove it, undo it, and keep it fixed. See README.md and API.md for the SQL interface.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

/// Settings always; shared memory and the violations writer when preloaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guard::init();
    throttle::init();
    rejections::init();
}

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
// plan, the procedures and the event triggers call the Rust functions by name, so they come last.
extension_sql_file!("../sql/procedures.sql", name = "procedures", finalize);

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
        vec!["shared_preload_libraries = 'tenant_backfill'"]
    }
}
