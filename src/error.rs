//! The error type every command returns, and the one place that maps an outcome to an
//! exit code (the table in README.md and `--help`).

use crate::signals::Signal;

/// What went wrong, sorted by what the operator should do about it.
///
/// Messages are complete sentences fragments in lower case, already redacted, and name the
/// bad value; the cause chain is folded into the message where it is built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag, URL, source directory or credential: retrying will not help.
    #[error("{0}")]
    Config(String),
    /// A migration or external migrator failed, or another runtime error.
    #[error("{0}")]
    Failed(String),
    /// `wait`: the expected version is recorded as failed.
    #[error("{0}")]
    RecordedFailed(String),
    /// Applied migrations differ from the source, or the database is dirty.
    #[error("{0}")]
    Drift(String),
    /// A deadline passed: connect, lock or wait.
    #[error("{0}")]
    Timeout(String),
    /// The session holding the migration lock went away mid-run (exit 1, like `Failed`).
    #[error("{0}")]
    LockLost(String),
    /// `check`: findings that no allow comment accepts (the CI gate).
    #[error("{0}")]
    Findings(String),
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted by {0}")]
    Interrupted(Signal),
}

impl Error {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed(_) | Error::LockLost(_) => 1,
            Error::Config(_) => 2,
            Error::RecordedFailed(_) => 3,
            Error::Drift(_) => 4,
            Error::Findings(_) => 5,
            Error::Timeout(_) => 124,
            Error::Interrupted(Signal::Int) => 130,
            Error::Interrupted(Signal::Term) => 143,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Error::Failed(_) | Error::LockLost(_) => "failed",
            Error::Config(_) => "config",
            Error::RecordedFailed(_) => "recorded_failed",
            Error::Drift(_) => "drift",
            Error::Findings(_) => "findings",
            Error::Timeout(_) => "timeout",
            Error::Interrupted(_) => "interrupted",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
