//! The one error type of the extension. Every variant carries its SQLSTATE (API.md's
//! conventions), a message that says what was wrong, facts in DETAIL where there are
//! some, and what to do in HINT (the line clients and ORMs show as the advice). Errors
//! are raised only through [`BackfillError::raise`], so no Rust panic text ever reaches
//! a DBA.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pub type Result<T> = std::result::Result<T, BackfillError>;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// 42P01: a table OID that no longer exists (a dropped table still named by the configuration).
    #[error("table {0} does not exist")]
    UnknownTable(String),

    /// 42809: something that is not an ordinary or partitioned table of the user's.
    #[error("{relation} is not a table{why}")]
    NotATable { relation: String, why: String },

    /// 42703
    #[error("column \"{column}\" of {table} does not exist")]
    UnknownColumn { table: String, column: String },

    /// 23502: the guard rejected a row without a tenant, or NULL rows remain.
    #[error("{message}")]
    NullTenant { message: String, detail: String, hint: Option<String> },

    /// 22004: a NULL where a value is needed.
    #[error("{argument} must not be NULL")]
    NullArgument { argument: String, hint: String },

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

    /// 22P02: a source tenant that does not cast to the target's tenant type.
    #[error("source {table} holds {column} = \"{value}\" for key {key} of {target}, which is not a valid {type_name}")]
    BadSourceValue {
        table: String,
        column: String,
        key: String,
        value: String,
        target: String,
        type_name: String,
        /// How many such values the statement's rows have.
        count: i64,
    },

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

    /// 0A000: something the extension does not do (message, detail, hint).
    #[error("{0}")]
    Unsupported(String, String, String),

    /// 55000: the database is not in a state where this can be done (message, detail, hint).
    #[error("{0}")]
    WrongState(String, String, String),

    /// 25001 inside a transaction block, 2D000 in another context that cannot commit
    /// (a function, a CALL from one): a procedure that commits between its steps.
    #[error("{procedure} cannot run inside {context}")]
    CannotCommit { procedure: String, context: &'static str, in_block: bool },

    /// 39P01: the trigger function called as a plain function.
    #[error("tenant_backfill.guard() is a trigger function and can only be called as a trigger")]
    NotCalledAsTrigger,

    /// An error Postgres raised, caught where nothing can raise it on (a background
    /// worker's transaction), to be recorded on the run.
    #[error("{1}")]
    Caught(PgSqlErrorCode, String),

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
            BackfillError::UnknownColumn { .. } | BackfillError::NoSoftDeleteColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            BackfillError::TypeMismatch(..) => ERRCODE_DATATYPE_MISMATCH,
            BackfillError::NullTenant { .. } => ERRCODE_NOT_NULL_VIOLATION,
            BackfillError::NullArgument { .. } => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            BackfillError::NotAllowed(..) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            BackfillError::InvalidValue { .. } | BackfillError::BadSourceValue { .. } => {
                ERRCODE_INVALID_TEXT_REPRESENTATION
            }
            BackfillError::BadArgument(..) => ERRCODE_INVALID_PARAMETER_VALUE,
            BackfillError::NotDefined(_) => ERRCODE_UNDEFINED_OBJECT,
            BackfillError::UnknownRun(_) => ERRCODE_UNDEFINED_OBJECT,
            BackfillError::Busy(..) => ERRCODE_LOCK_NOT_AVAILABLE,
            BackfillError::WrongState(..) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            BackfillError::Unsupported(..) => ERRCODE_FEATURE_NOT_SUPPORTED,
            BackfillError::CannotCommit { in_block: true, .. } => ERRCODE_ACTIVE_SQL_TRANSACTION,
            BackfillError::CannotCommit { in_block: false, .. } => ERRCODE_INVALID_TRANSACTION_TERMINATION,
            BackfillError::NotCalledAsTrigger => ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            BackfillError::Caught(code, _) => *code,
            BackfillError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// The SQLSTATE as its five characters (`55P03`), as a run records it.
    pub fn sqlstate_text(&self) -> String {
        let code = self.sqlstate() as i32;
        // Postgres packs each character in six bits, counted from '0' (MAKE_SQLSTATE).
        (0..5).map(|i| char::from(((code >> (6 * i)) & 0x3F) as u8 + b'0')).collect()
    }

    /// Facts about the error, shown as its DETAIL.
    pub fn detail(&self) -> Option<String> {
        match self {
            BackfillError::NullTenant { detail, .. } => Some(detail.clone()),
            BackfillError::WrongState(_, detail, _) | BackfillError::Unsupported(_, detail, _) => Some(detail.clone()),
            BackfillError::BadSourceValue { count, .. } => Some(format!(
                "{count} related {} of these target rows {} such a value. Nothing was written.",
                if *count == 1 { "row" } else { "rows" },
                if *count == 1 { "holds" } else { "hold" }
            )),
            BackfillError::CannotCommit { .. } => Some(
                "It commits after each step, which is not possible there. Nothing was started and no lock is held."
                    .into(),
            ),
            _ => None,
        }
    }

    /// What to do about it, shown as the error's HINT.
    pub fn hint(&self) -> Option<String> {
        match self {
            BackfillError::UnknownTable(_) => {
                Some("The configuration names a table that was dropped; define the target again.".into())
            }
            BackfillError::NotATable { .. } => {
                Some("Only your own ordinary and partitioned tables can be targets, sources or override tables.".into())
            }
            BackfillError::UnknownColumn { .. } => {
                Some("Column names are matched exactly as written, case included, without quotes.".into())
            }
            BackfillError::NoSoftDeleteColumn { .. } => Some(
                "Name the column that marks a row deleted: define(target, tenant_column, soft_delete_column => ...)."
                    .into(),
            ),
            BackfillError::NullTenant { hint, .. } => hint.clone(),
            BackfillError::NullArgument { hint, .. } => Some(hint.clone()),
            BackfillError::TypeMismatch(_, todo)
            | BackfillError::NotAllowed(_, todo)
            | BackfillError::BadArgument(_, todo)
            | BackfillError::Busy(_, todo)
            | BackfillError::WrongState(_, _, todo)
            | BackfillError::Unsupported(_, _, todo) => Some(todo.clone()),
            BackfillError::UnknownRun(_) => Some("SELECT * FROM tenant_backfill.runs lists the runs.".into()),
            BackfillError::InvalidValue { .. } => {
                Some("Keys and tenants cross the API as text and must cast to the column's type.".into())
            }
            BackfillError::NotDefined(_) => Some("Call tenant_backfill.define(target, tenant_column) first.".into()),
            BackfillError::BadSourceValue { .. } => Some(
                "Correct those values in the source (or set them NULL, which is no evidence); \
                 tenant_backfill.preflight(target) lists every source that has some."
                    .into(),
            ),
            BackfillError::CannotCommit { .. } => Some(
                "Call it on its own, with autocommit: in psql outside BEGIN and not among other statements of one -c \
                 string; in Alembic inside op.get_context().autocommit_block(); in Django in a migration with \
                 atomic = False; in Rails after disable_ddl_transaction!. In a transaction, \
                 tenant_backfill.run_now(target) does the same work without committing."
                    .into(),
            ),
            BackfillError::NotCalledAsTrigger => {
                Some("tenant_backfill.enforce(target) installs it as the guard trigger of a target.".into())
            }
            BackfillError::Caught(..) | BackfillError::Internal(_) => None,
        }
    }

    /// Raises the error as a Postgres ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "tenant_backfill");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

/// A NOTICE or WARNING with what to do about it as its HINT.
pub fn report_with_hint(level: PgLogLevel, message: String, hint: String) {
    let code = if level == PgLogLevel::WARNING {
        PgSqlErrorCode::ERRCODE_WARNING
    } else {
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION
    };
    ErrorReport::new(code, message, "tenant_backfill").set_hint(hint).report(level);
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

/// An argument that must not be NULL: its value, or a 22004 naming it.
pub fn required<T>(value: Option<T>, argument: &str) -> Result<T> {
    value.ok_or_else(|| BackfillError::NullArgument {
        argument: argument.into(),
        hint: format!("Pass a value for {argument}; \\df tenant_backfill.* shows every signature."),
    })
}
