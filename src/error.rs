//! The error type every command returns, and the one place that maps an outcome to an
//! exit code (the table in README.md and `--help`).

use std::fmt;

use crate::signals::Signal;

/// What went wrong, sorted by what the operator should do about it.
///
/// Messages are sentence fragments in lower case, already redacted, that name the bad value.
/// A database error keeps the driver's error as its `source()`: `{}` shows what was being
/// done, `{:#}` adds the cause chain, as the one line `main` prints (and a marker records).
#[derive(Debug)]
pub enum Error {
    /// A bad flag, URL, source directory or credential: retrying will not help.
    Config(String),
    /// A migration or external migrator failed, or another runtime error.
    Failed(String),
    /// `wait`: the expected version is recorded as failed.
    RecordedFailed(String),
    /// Applied migrations differ from the source, or the database is dirty.
    Drift(String),
    /// A deadline passed: connect, lock or wait.
    Timeout(String),
    /// The session holding the migration lock went away mid-run (exit 1, like `Failed`).
    LockLost(String),
    /// `check`: findings that no allow comment accepts (the CI gate).
    Findings(String),
    /// `migrate`: a contract migration may not run yet (an instance of an older release is
    /// live): try again later.
    Gated(String),
    /// `wait --release -- CMD`: the app exited with this non-zero code (passed on).
    Exited(u8, String),
    /// SIGINT or SIGTERM arrived.
    Interrupted(Signal),
    /// A database operation failed: `context` says what was being done, and the driver's
    /// error stays the cause, with its SQLSTATE, DETAIL and HINT (for the message) and its
    /// class (for the exit code: `Class::Config` exits 2, `Class::Runtime` 1).
    /// `described`: the driver's error as printed, with everything the server said, redacted
    /// (made by the `db` layer, which knows each backend's error; `db::db_err`).
    Database {
        context: String,
        class: Class,
        source: sqlx::Error,
        described: String,
    },
}

/// What retrying can do about a database error, decided by the backend that saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retrying will not help: authentication, a missing privilege, bad options (exit 2).
    Config,
    /// Anything else (exit 1).
    Runtime,
}

impl Error {
    /// Whether retrying cannot help: a configuration error (exit 2), of ours or the server's.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Database {
                    class: Class::Config,
                    ..
                }
        )
    }

    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed(_) | Error::LockLost(_) => 1,
            Error::Config(_) => 2,
            Error::RecordedFailed(_) => 3,
            Error::Drift(_) => 4,
            Error::Findings(_) => 5,
            Error::Gated(_) => 75,
            Error::Exited(code, _) => *code,
            Error::Timeout(_) => 124,
            Error::Interrupted(Signal::Int) => 130,
            Error::Interrupted(Signal::Term) => 143,
            Error::Database {
                class: Class::Config,
                ..
            } => 2,
            Error::Database {
                class: Class::Runtime,
                ..
            } => 1,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Error::Failed(_) | Error::LockLost(_) => "failed",
            Error::Config(_) => "config",
            Error::RecordedFailed(_) => "recorded_failed",
            Error::Drift(_) => "drift",
            Error::Findings(_) => "findings",
            Error::Gated(_) => "gated",
            Error::Exited(..) => "exited",
            Error::Timeout(_) => "timeout",
            Error::Interrupted(_) => "interrupted",
            Error::Database {
                class: Class::Config,
                ..
            } => "config",
            Error::Database {
                class: Class::Runtime,
                ..
            } => "failed",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m)
            | Error::Failed(m)
            | Error::RecordedFailed(m)
            | Error::Drift(m)
            | Error::Timeout(m)
            | Error::LockLost(m)
            | Error::Findings(m)
            | Error::Gated(m)
            | Error::Exited(_, m) => f.write_str(m)?,
            Error::Interrupted(signal) => write!(f, "interrupted by {signal}")?,
            Error::Database { context, .. } => f.write_str(context)?,
        }
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(c) = cause {
                // The driver's error, described once with everything the server said (and
                // redacted); its own sources are what that description already holds.
                if c.downcast_ref::<sqlx::Error>().is_some()
                    && let Error::Database { described, .. } = self
                {
                    return write!(f, ": {described}");
                }
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
