//! `#[pg_test]` units, one file per section of API.md: each runs in a transaction that
//! is rolled back, against the same fixtures the pg_regress suite and the demo load
//! (tests/fixtures/). `units` holds the plain `#[test]`s of pure helpers, which need no
//! Postgres.

mod support;

mod config;
mod engine;
mod guard;
#[cfg(test)]
mod units;
mod write_path;
