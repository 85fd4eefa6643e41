//! Evidence as jsonb, parsed once per distinct text.
//!
//! The engine yields each row's evidence as JSON text (`{"appointments": {"7": 3}}`);
//! `plan`, the review reports and the audit log hand it out as jsonb. Parsing it,
//! `jsonb_in` at about 5,500 instructions a row, was the largest single cost of a
//! whole-table `plan` beyond the grouped query itself (BENCHMARKS.md), yet the texts
//! repeat: every row of tenant 7 with 3 related rows has the same one. So this backend
//! keeps the parsed bytes of each text it has seen and hands out copies: the result
//! is what `::jsonb` gives, byte for byte, because it is what `jsonb_in` gave.

use crate::error::{BackfillError, OrRaise, Result};
use crate::types::RawJsonb;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

/// The cache starts over when it holds this many texts or bytes: conflicts, whose
/// evidence counts several tenants, can be many and varied, and a cache that only
/// grows would hold them all for the life of the backend.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Cache {
    /// Evidence text → the jsonb varlena `jsonb_in` made of it, header included.
    parsed: HashMap<Box<str>, Box<[u8]>>,
    bytes: usize,
}

thread_local! {
    // A backend runs SQL on one thread; a parallel worker is a process of its own.
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// `evidence::jsonb`, remembered per backend.
#[pg_extern(immutable, strict, parallel_safe, schema = "tenant_backfill_internal")]
fn _evidence_jsonb(evidence: &str) -> RawJsonb {
    evidence_jsonb(evidence).or_raise()
}

fn evidence_jsonb(evidence: &str) -> Result<RawJsonb> {
    let cached = CACHE.with(|cache| cache.borrow().parsed.get(evidence).map(|bytes| copy_to_palloc(bytes)));
    if let Some(datum) = cached {
        return Ok(RawJsonb(datum));
    }
    let text = CString::new(evidence).map_err(|_| BackfillError::Internal("evidence text holds a NUL byte".into()))?;
    // SAFETY: jsonb_in takes one cstring argument and returns a jsonb datum palloc'd in
    // the current memory context, or raises an error (invalid JSON) like the cast does.
    let datum = unsafe { pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[text.as_c_str().into_datum()]) }
        .ok_or_else(|| BackfillError::Internal("jsonb_in returned NULL".into()))?;
    // SAFETY: a jsonb datum points at a varlena of varsize_any bytes.
    let bytes: Box<[u8]> = unsafe {
        let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
        std::slice::from_raw_parts(ptr.cast::<u8>(), pgrx::varsize_any(ptr)).into()
    };
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let entry_bytes = evidence.len() + bytes.len();
        if cache.parsed.len() >= MAX_ENTRIES || cache.bytes + entry_bytes > MAX_BYTES {
            *cache = Cache::default();
        }
        cache.bytes += entry_bytes;
        cache.parsed.insert(evidence.into(), bytes);
    });
    Ok(RawJsonb(datum))
}

/// A palloc'd copy of `bytes` in the current memory context, as a datum: each result
/// is the caller's to keep or free, never shared with the cache.
fn copy_to_palloc(bytes: &[u8]) -> pg_sys::Datum {
    // SAFETY: palloc returns at least bytes.len() writable bytes (or raises ERROR).
    unsafe {
        let ptr = pg_sys::palloc(bytes.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
        pg_sys::Datum::from(ptr)
    }
}
