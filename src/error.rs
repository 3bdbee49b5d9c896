//! The error type every command returns, and the one place that maps an outcome to an
//! exit code (the table in README.md and `--help`).

use std::fmt;
use std::path::PathBuf;

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
    Drift(Drift),
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

impl Class {
    /// The error a failure of this class is, with `message`: `Config` (exit 2) or
    /// `Failed` (exit 1).
    pub fn error(self, message: String) -> Error {
        match self {
            Class::Config => Error::Config(message),
            Class::Runtime => Error::Failed(message),
        }
    }
}

/// How what is applied differs from the source (exit 4), with what the message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A migration failed part-way on a previous run; `table` records it.
    Dirty { version: i64, table: String },
    /// An applied migration the source directory `dir` does not have.
    Missing { version: i64, dir: PathBuf },
    /// An applied migration whose file changed: the checksums' first bytes, in hex.
    Modified {
        version: i64,
        description: String,
        applied: String,
        on_disk: String,
    },
    /// A migration not applied while newer ones the source lacks (`ahead`) are.
    Skipped {
        version: i64,
        description: String,
        ahead: Vec<i64>,
    },
    /// Another migrator's files (`file (id)`) changed since its newest `succeeded` marker.
    FilesModified {
        format: &'static str,
        files: Vec<String>,
    },
    /// `stamp UPTO` over `version`, applied with another checksum or missing from `dir`.
    Stamp {
        upto: i64,
        version: i64,
        dir: PathBuf,
    },
    /// A release built for `expects` registering after contract migration `barrier` ran.
    Superseded {
        release: String,
        instance: String,
        expects: String,
        barrier: i64,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Dirty { version: v, table } => write!(
                f,
                "migration {v} is dirty: it failed part-way on a previous run (it ran without a \
                 transaction, or its DDL committed implicitly) and some of its statements may \
                 have taken effect. Repair by hand: either undo what it did and `DELETE FROM \
                 {table} WHERE version = {v}` to run it again, or finish it and run \
                 `schemagate stamp {v} --source DIR` to mark it done"
            ),
            Drift::Missing { version, dir } => write!(
                f,
                "migration {version} was applied to the database but is missing from {}",
                dir.display()
            ),
            Drift::Modified {
                version,
                description,
                applied,
                on_disk,
            } => write!(
                f,
                "migration {version} ({description}) was previously applied but has been \
                 modified: checksum {applied} in the database, {on_disk} on disk"
            ),
            Drift::Skipped {
                version,
                description,
                ahead,
            } => write!(
                f,
                "migration {version} ({description}) is not applied, but newer migrations this \
                 source does not have are ({}): the database has moved on without it",
                ahead
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Drift::FilesModified { format, files } => write!(
                f,
                "{format} migration file(s) modified since they were applied: {}; a migrator \
                 does not run an applied migration again, so the database does not have what \
                 the file now says. Restore the file, or write a new migration",
                files.join(", ")
            ),
            Drift::Stamp { upto, version, dir } => write!(
                f,
                "cannot stamp {upto}: migration {version} is applied with another checksum than \
                 in {}, or is missing from it; nothing was recorded. Run `schemagate status \
                 --source {}` to see the difference",
                dir.display(),
                dir.display()
            ),
            Drift::Superseded {
                release,
                instance,
                expects,
                barrier,
            } => write!(
                f,
                "release {release} (instance {instance}, built for schema version {expects}) can \
                 no longer start: contract migration {barrier} has run or is running, and this \
                 release was built before it"
            ),
        }
    }
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

    /// What retrying can do about this error: `Class::Config` exactly when `is_config`.
    pub fn class(&self) -> Class {
        if self.is_config() {
            Class::Config
        } else {
            Class::Runtime
        }
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
            | Error::Timeout(m)
            | Error::LockLost(m)
            | Error::Findings(m)
            | Error::Gated(m)
            | Error::Exited(_, m) => f.write_str(m)?,
            Error::Drift(drift) => write!(f, "{drift}")?,
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

/// Declares a reason type: why a value or a step was refused, as a sentence fragment
/// (already redacted, naming the bad value) that the caller puts in its own message
/// (`{origin} line {n}: {why}`) or turns into an [`Error`]. A type per use, named after
/// what it says, instead of a bare `String`.
macro_rules! reason {
    ($(#[$meta:meta])* $vis:vis struct $name:ident;) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}
pub(crate) use reason;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_becomes_the_error_of_its_exit_code() {
        for (class, code, kind) in [(Class::Config, 2, "config"), (Class::Runtime, 1, "failed")] {
            let e = class.error("migration 2 (b) failed".into());
            assert_eq!((e.exit_code(), e.kind()), (code, kind));
            assert_eq!(e.class(), class);
            assert_eq!(e.to_string(), "migration 2 (b) failed");
        }
    }

    reason! {
        /// A reason for the test below.
        struct Why;
    }

    #[test]
    fn a_reason_prints_its_text_and_is_an_error() {
        let why: Box<dyn std::error::Error + Send + Sync> = Box::new(Why("it is 3 bytes".into()));
        assert_eq!(why.to_string(), "it is 3 bytes");
        assert!(why.source().is_none());
    }
}
