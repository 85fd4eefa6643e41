//! The one error type of the extension. Every variant carries its SQLSTATE (API.md's
//! conventions) and a message that says what was wrong; `detail` says what to do.
//! Errors are raised only through [`BackfillError::raise`], so no Rust panic text ever
//! reaches a DBA.

use pgrx::prelude::*;

pub type Result<T> = std::result::Result<T, BackfillError>;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// 42P01: a table OID that no longer exists (a dropped table still named by the configuration).
    #[error("table {0} does not exist")]
    UnknownTable(String),

    /// 42809: something that is not an ordinary or partitioned table.
    #[error("{relation} is not a table")]
    NotATable { relation: String },

    /// 42703
    #[error("column \"{column}\" of {table} does not exist")]
    UnknownColumn { table: String, column: String },

    /// 23502: the guard rejected a row without a tenant.
    #[error("{message}")]
    NullTenant { message: String, detail: String },

    /// 42703: soft_delete_orphans on a target without its soft-delete column.
    #[error("{table} has no soft-delete column \"{column}\"")]
    NoSoftDeleteColumn { table: String, column: String },

    /// 42804
    #[error("{0}")]
    TypeMismatch(String, String),

    /// 42501
    #[error("permission denied: {0}")]
    NotAllowed(String, String),

    /// 22P02: a key or tenant given as text that does not cast to its column's type.
    #[error("invalid value \"{value}\" for column {column} of type {type_name}")]
    InvalidValue { value: String, column: String, type_name: String },

    /// 22023
    #[error("{0}")]
    BadArgument(String, String),

    /// 42704: a target that was never defined.
    #[error("{0} is not a tenant_backfill target")]
    NotDefined(String),

    /// 42704: a run id that does not exist.
    #[error("run {0} does not exist")]
    UnknownRun(i64),

    /// 55P03: another run holds the target, or locks could not be had in time.
    #[error("{0}")]
    Busy(String, String),

    /// XX000: SPI failed in a way Postgres itself did not report.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<pgrx::spi::SpiError> for BackfillError {
    fn from(err: pgrx::spi::SpiError) -> Self {
        BackfillError::Internal(err.to_string())
    }
}

impl BackfillError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            BackfillError::UnknownTable(_) => ERRCODE_UNDEFINED_TABLE,
            BackfillError::NotATable { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            BackfillError::UnknownColumn { .. } | BackfillError::NoSoftDeleteColumn { .. } => {
                ERRCODE_UNDEFINED_COLUMN
            }
            BackfillError::TypeMismatch(..) => ERRCODE_DATATYPE_MISMATCH,
            BackfillError::NullTenant { .. } => ERRCODE_NOT_NULL_VIOLATION,
            BackfillError::NotAllowed(..) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            BackfillError::InvalidValue { .. } => ERRCODE_INVALID_TEXT_REPRESENTATION,
            BackfillError::BadArgument(..) => ERRCODE_INVALID_PARAMETER_VALUE,
            BackfillError::NotDefined(_) => ERRCODE_UNDEFINED_OBJECT,
            BackfillError::UnknownRun(_) => ERRCODE_UNDEFINED_OBJECT,
            BackfillError::Busy(..) => ERRCODE_LOCK_NOT_AVAILABLE,
            BackfillError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// What to do about it, shown as the error's DETAIL.
    pub fn detail(&self) -> Option<String> {
        match self {
            BackfillError::UnknownTable(_) => {
                Some("The configuration names a table that was dropped; define the target again.".into())
            }
            BackfillError::NotATable { .. } => {
                Some("Only ordinary and partitioned tables can be targets, sources or override tables.".into())
            }
            BackfillError::UnknownColumn { .. } => {
                Some("Column names are matched exactly as written, case included, without quotes.".into())
            }
            BackfillError::NoSoftDeleteColumn { .. } => Some(
                "Name the column that marks a row deleted: define(target, tenant_column, soft_delete_column => ...).".into(),
            ),
            BackfillError::NullTenant { detail, .. } => Some(detail.clone()),
            BackfillError::TypeMismatch(_, todo)
            | BackfillError::NotAllowed(_, todo)
            | BackfillError::BadArgument(_, todo)
            | BackfillError::Busy(_, todo) => Some(todo.clone()),
            BackfillError::UnknownRun(_) => Some("SELECT * FROM tenant_backfill.runs lists the runs.".into()),
            BackfillError::InvalidValue { .. } => {
                Some("Keys and tenants cross the API as text and must cast to the column's type.".into())
            }
            BackfillError::NotDefined(_) => {
                Some("Call tenant_backfill.define(target, tenant_column) first.".into())
            }
            BackfillError::Internal(_) => None,
        }
    }

    /// Raises the error as a Postgres ERROR; never returns.
    pub fn raise(self) -> ! {
        let code = self.sqlstate();
        let message = self.to_string();
        match self.detail() {
            Some(detail) => {
                ereport!(ERROR, code, message, detail);
            }
            None => {
                ereport!(ERROR, code, message);
            }
        }
    }
}

/// Ends a SQL-facing function: the value, or the error raised with its SQLSTATE.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(err) => err.raise(),
        }
    }
}
