//! The three SQL types of the API that pgrx does not map the way the API needs:
//! `regclass` for tables and `name` for columns, thin wrappers so that
//! `\df tenant_backfill.*` shows exactly the signatures of API.md and a caller can pass
//! `'customers'` or `'"ShiftTypes"'` and get Postgres' own lookup (and its 42P01 for an
//! unknown table); and `jsonb` handed over as the datum Postgres built (`RawJsonb`).

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::{FromDatum, IntoDatum};
use std::ffi::CStr;

/// A table argument or result, as its OID (`regclass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegClass(pub pg_sys::Oid);

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null {
            None
        } else {
            // SAFETY: a regclass datum is an OID passed by value.
            unsafe { pg_sys::Oid::from_datum(datum, false) }.map(RegClass)
        }
    }
}

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        self.0.into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // pgrx declares a function STRICT when no argument is an Option, so a NULL
        // never reaches a non-Option RegClass; InvalidOid is the harmless fallback.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(RegClass(pg_sys::InvalidOid))
    }
}

unsafe impl BoxRet for RegClass {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");

/// A column argument or result (`name`), kept exactly as written: no case folding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlName(pub String);

impl SqlName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromDatum for SqlName {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null {
            return None;
        }
        let ptr = datum.cast_mut_ptr::<std::ffi::c_char>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: a `name` datum points at a NUL-terminated NameData.
        let text = unsafe { CStr::from_ptr(ptr) };
        Some(SqlName(text.to_string_lossy().into_owned()))
    }
}

impl IntoDatum for SqlName {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let bytes = self.0.as_bytes();
        let len = bytes.len().min(pg_sys::NAMEDATALEN as usize - 1);
        // SAFETY: palloc0 gives NAMEDATALEN zeroed bytes; we copy at most NAMEDATALEN-1,
        // so the result stays NUL-terminated as NameData must be.
        unsafe {
            let ptr = pg_sys::palloc0(pg_sys::NAMEDATALEN as usize).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, len);
            Some(pg_sys::Datum::from(ptr))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::NAMEOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for SqlName {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(SqlName(String::new()))
    }
}

unsafe impl BoxRet for SqlName {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(SqlName, "name");

/// A `jsonb` result handed over as the datum Postgres built, without a detour through
/// serde (pgrx's `JsonB` prints and parses the value again).
#[derive(Clone, Copy, Debug)]
pub struct RawJsonb(pub pg_sys::Datum);

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");
