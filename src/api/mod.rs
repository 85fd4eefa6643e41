//! The SQL functions, one file per section of API.md. Each checks its arguments and
//! the caller's rights, then works through the core below it (catalog, engine, batch,
//! writer, runs, locks, checks); no file here imports another.

mod config;
mod decisions;
mod finalize;
mod guard;
mod reports;
mod run;
mod verify;
