//! The per-target run lock: one run of a target at a time. It is an advisory lock on
//! (`LOCK_CLASS`, the target's OID), so it shows in `pg_locks` with the pid that holds
//! it, and dies with that backend.
//!
//! - `CALL run` holds it at session level, across the commits of its batches, and
//!   releases it on every way out of the procedure (`release_session`), an error that
//!   ends the procedure outside its blocks included (`release_session_in_abort`).
//! - `run_now` and `rollback` hold it at transaction level: it conflicts with a run's
//!   session lock and ends with the transaction, whatever happens. (`apply_decisions`,
//!   `soft_delete_orphans` and `release_quarantine` write rows a run does not decide
//!   the same way, and take no run lock: their guarded UPDATE leaves a row alone when
//!   a run set it first.)

use crate::catalog::Relation;
use crate::error::{BackfillError, Result};
use crate::sql::{self, Value};
use pgrx::pg_sys;

/// First key of the advisory lock ('tenb'); the second is the target's OID.
const LOCK_CLASS: i32 = 0x7465_6e62;

/// First key of the advisory lock a session holds (shared, for its transaction) while
/// it waits for a run in `wait` ('tenq'; the second key is the target's OID). The
/// throttle does not count such a session's open transaction as pressure: it waits for
/// the run, which must not wait for it in turn.
pub const WAITER_CLASS: i32 = 0x7465_6e71;

/// Marks this session as waiting for a run of the target until its transaction ends.
pub fn mark_waiting(target: pg_sys::Oid) -> Result<()> {
    sql::execute(
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(WAITER_CLASS)), Value::Oid(target)],
    )?;
    Ok(())
}

/// The lock of one part of a run several workers share: (`PART_CLASS` + part, run id).
/// The process that holds it walks that part; a part whose lock is free (its worker is
/// gone) is taken over by the run's lead.
const PART_CLASS: i32 = 0x7465_6f00;

fn part_keys(run_id: i64, part: i32) -> [Value; 2] {
    [Value::Int4(Some(PART_CLASS + part)), Value::Int4(Some(run_id as i32))]
}

/// Takes a part's lock for the session if it is free (or this session holds it).
pub fn try_take_part(run_id: i64, part: i32) -> Result<bool> {
    if part_held_by(run_id, part, None)? {
        return Ok(true);
    }
    Ok(sql::select_value::<bool>("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", &part_keys(run_id, part))?
        .unwrap_or(false))
}

/// Releases a part's lock, if this session holds it.
pub fn release_part(run_id: i64, part: i32) -> Result<()> {
    if part_held_by(run_id, part, None)? {
        sql::execute("SELECT pg_catalog.pg_advisory_unlock($1, $2)", &part_keys(run_id, part))?;
    }
    Ok(())
}

/// Whether backend `pid` (None: this one) holds a part's lock.
pub fn part_held_by(run_id: i64, part: i32, pid: Option<i32>) -> Result<bool> {
    let [class, key] = part_keys(run_id, part);
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l\n \
         WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid\n   \
         AND l.objid = $2::pg_catalog.int4::pg_catalog.oid AND l.objsubid = 2 AND l.granted\n   \
         AND l.pid = COALESCE($3, pg_catalog.pg_backend_pid()))",
        ),
        &[class, key, Value::Int4(pid)],
    )?
    .unwrap_or(false))
}

/// What the caller wanted the lock for, which says what to do when it is taken.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Run,
    Rollback,
}

/// First key of the advisory lock the helper workers of a run hold, shared, on its
/// target ('tenh'): whoever takes the run lock (a CALL run, run_now, a rollback) must
/// also find it free, so nothing else writes the target while a helper finishes a batch.
const HELPER_CLASS: i32 = 0x7465_6e68;

/// A helper worker joins its run's target.
pub fn join_as_helper(target: pg_sys::Oid) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock_shared($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(HELPER_CLASS)), Value::Oid(target)],
    )?
    .unwrap_or(false))
}

/// Whether no helper worker holds the target.
pub fn no_helpers(target: pg_sys::Oid) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2::pg_catalog.oid::pg_catalog.int4)\n   \
         AND pg_catalog.pg_advisory_unlock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(HELPER_CLASS)), Value::Oid(target)],
    )?
    .unwrap_or(false))
}

/// Takes the target's run lock for the session, unless this session holds it already.
pub fn take_for_session(target: &Relation) -> Result<()> {
    if held_here(target.oid)? {
        return Ok(());
    }
    let taken = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.oid)],
    )?
    .unwrap_or(false);
    if taken && !no_helpers(target.oid)? {
        // The helpers of a run whose lead is gone are finishing their batches.
        release_session(target.oid)?;
        return Err(busy(target, Purpose::Run)?);
    }
    if taken {
        Ok(())
    } else {
        Err(busy(target, Purpose::Run)?)
    }
}

/// Fails with 55P03, as `take_for_session` would, when another process runs the target
/// now. Takes nothing: `start` and `resume` leave the lock to their worker.
pub fn require_free(target: &Relation) -> Result<()> {
    let free = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2::pg_catalog.oid::pg_catalog.int4)\n   \
         AND pg_catalog.pg_advisory_unlock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.oid)],
    )?
    .unwrap_or(false)
        && no_helpers(target.oid)?;
    if free {
        Ok(())
    } else {
        Err(busy(target, Purpose::Run)?)
    }
}

/// Takes the target's run lock for the session if it is free: a background worker's
/// first step.
pub fn try_take_for_session(target: pg_sys::Oid) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target)],
    )?
    .unwrap_or(false))
}

/// Whether backend `pid` holds the target's run lock.
pub fn held_by(target: pg_sys::Oid, pid: i32) -> Result<bool> {
    Ok(sql::select_value::<bool>(
        sql::fixed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l\n \
         WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid\n   \
         AND l.objid = $2::pg_catalog.oid AND l.objsubid = 2 AND l.granted AND l.pid = $3)",
        ),
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target), Value::Int4(Some(pid))],
    )?
    .unwrap_or(false))
}

/// Takes the target's run lock until the end of the transaction.
pub fn take_for_transaction(target: &Relation, purpose: Purpose) -> Result<()> {
    // The helpers' lock too, for the transaction: no helper of a run may be writing.
    let taken = sql::select_value::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2::pg_catalog.oid::pg_catalog.int4)\n   \
         AND pg_catalog.pg_try_advisory_xact_lock($3, $2::pg_catalog.oid::pg_catalog.int4)",
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target.oid), Value::Int4(Some(HELPER_CLASS))],
    )?
    .unwrap_or(false);
    if taken {
        Ok(())
    } else {
        Err(busy(target, purpose)?)
    }
}

/// Releases the session's run lock of the target, if this session holds it.
pub fn release_session(target: pg_sys::Oid) -> Result<()> {
    if held_here(target)? {
        sql::execute(
            "SELECT pg_catalog.pg_advisory_unlock($1, $2::pg_catalog.oid::pg_catalog.int4)",
            &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target)],
        )?;
    }
    Ok(())
}

/// Releases the session's run lock of the target, if this session holds it, without
/// SQL: for a transaction that is aborting, where no statement can run. The lock is the
/// one `pg_try_advisory_lock(LOCK_CLASS, oid)` takes (advisory.c's two-int4 key).
pub fn release_session_in_abort(target: pg_sys::Oid) {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: the backend's database, set before any session can run SQL.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.into(),
        locktag_field2: LOCK_CLASS as u32,
        locktag_field3: target.into(),
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let mode = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: reads this backend's own lock table, then releases a lock it holds.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let held = pg_sys::LockHeldByMe(&tag, mode);
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        let held = pg_sys::LockHeldByMe(&tag, mode, false);
        if held {
            pg_sys::LockRelease(&tag, mode, true);
        }
    }
}

/// Releases the session's run lock of the target when the transaction ends: the end of
/// a run is recorded in this transaction, and until it commits the run must still read
/// as alive (a transaction-level hold of the same lock bridges the gap).
pub fn release_session_at_commit(target: pg_sys::Oid) -> Result<()> {
    if held_here(target)? {
        sql::execute(
            "SELECT pg_catalog.pg_advisory_xact_lock($1, $2::pg_catalog.oid::pg_catalog.int4),\n       \
             pg_catalog.pg_advisory_unlock($1, $2::pg_catalog.oid::pg_catalog.int4)",
            &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target)],
        )?;
    }
    Ok(())
}

/// The backend holding a target's granted run lock in `pg_locks` (advisory locks on two
/// int4 keys show with `objsubid` 2): this one (`here`) or another.
fn holder(target: pg_sys::Oid, here: bool) -> Result<Option<i32>> {
    sql::select_value::<i32>(
        sql::fixed(
            "SELECT l.pid FROM pg_catalog.pg_locks l\n \
             WHERE l.locktype = 'advisory' AND l.classid = $1::pg_catalog.int4::pg_catalog.oid\n   \
             AND l.objid = $2::pg_catalog.oid AND l.objsubid = 2 AND l.granted\n   \
             AND (l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) OPERATOR(pg_catalog.=) $3::pg_catalog.bool\n \
             LIMIT 1",
        ),
        &[Value::Int4(Some(LOCK_CLASS)), Value::Oid(target), Value::Bool(Some(here))],
    )
}

/// Whether this session holds the target's run lock (as the `CALL run` that took it does).
pub fn held_here(target: pg_sys::Oid) -> Result<bool> {
    Ok(holder(target, true)?.is_some())
}

/// The 55P03 for a lock another backend holds, naming it.
fn busy(target: &Relation, purpose: Purpose) -> Result<BackfillError> {
    let pid = holder(target.oid, false)?;
    Ok(match purpose {
        Purpose::Run => BackfillError::Busy(
            format!("another run of {} is in progress", target.display),
            format!(
                "One run per target at a time{}: wait for it (SELECT * FROM tenant_backfill.progress) or stop it.",
                pid.map(|p| format!(" (it is backend pid {p})")).unwrap_or_default()
            ),
        ),
        Purpose::Rollback => BackfillError::Busy(
            format!("a run of {} is in progress", target.display),
            "Wait for it to finish (SELECT * FROM tenant_backfill.progress), then roll back.".into(),
        ),
    })
}

/// How long this transaction's statements wait for a lock from now on, at least 1 ms
/// (0 would be no limit at all).
pub fn set_lock_timeout(ms: i32) -> Result<()> {
    sql::execute("SELECT pg_catalog.set_config('lock_timeout', $1, true)", &[Value::text(format!("{}ms", ms.max(1)))])?;
    Ok(())
}
