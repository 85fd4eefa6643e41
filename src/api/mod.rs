//! The SQL functions, one file per section of API.md. Each checks its arguments and
//! the caller's rights, then works through the core above it in README.md's layout
//! (catalog, engine, batch, writer, runs, locks, checks, the guard trigger and its
//! queue); no file here imports another.

mod audit;
mod config;
mod decisions;
mod finalize;
mod guard;
mod operate;
mod reports;
mod run;
mod verify;
