//! One file per subcommand. Each takes a validated `Config` and returns an `Outcome` that
//! `main` turns into the exit code and the termination-log line.

pub mod check;
mod configs;
pub mod digest;
pub mod fleet;
pub mod heartbeat;
pub mod migrate;
pub mod rollback;
pub mod smoke;
pub mod stamp;
pub mod status;
pub mod wait;

use serde::Serialize;

pub use configs::{
    CheckConfig, CheckPlan, DdlTimeouts, Expects, HeartbeatConfig, MigrateConfig, Registration,
    RollbackConfig, SmokeConfig, StampConfig, StatusConfig, WaitConfig, WaitTarget, Work,
};

use crate::db::{self, Conn};
use crate::error::Result;
use crate::lock::{self, Acquired, Expected, Lock};
use crate::settings::Config;
use crate::source::{Entry, Source};

/// What a successful run did, for the termination log.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
    pub message: String,
    /// `wait -- CMD`: the command to replace this process with, once ready.
    #[serde(skip)]
    pub exec: Option<Vec<String>>,
}

/// How a locked command stands before it changes anything.
pub enum Before {
    /// Nothing to do (already applied, applied by another run, or a dry run).
    Done(String),
    /// We hold the lock on this connection.
    Locked(Conn, Lock),
}

/// Connect, take the fast path when `expected` is already recorded, else take the lock
/// (stopping early if another run records `expected` meanwhile).
pub async fn connect_and_lock(cfg: &Config, expected: Option<&Expected<'_>>) -> Result<Before> {
    lock_on(db::connect(cfg).await?, cfg, expected, false).await
}

/// `connect_and_lock` on a connection already open; `checked` when the fast path's query
/// for `expected` already ran on it (and found it not done).
pub async fn lock_on(
    mut conn: Conn,
    cfg: &Config,
    expected: Option<&Expected<'_>>,
    checked: bool,
) -> Result<Before> {
    if let Some(expected) = expected
        && !checked
        && lock::is_done(&mut conn, cfg, expected).await?
    {
        // The fast path every replica pays at every start: one query, no lock.
        tracing::info!(
            "schema version {} is already applied; nothing to do",
            expected.version
        );
        conn.close().await;
        return Ok(Before::Done(format!(
            "schema version {} already applied",
            expected.version
        )));
    }
    match lock::acquire(&mut conn, cfg, expected).await? {
        Acquired::AlreadyDone => {
            let version = expected.map_or("", |e| e.version);
            tracing::info!("schema version {version} was applied by another run; nothing to do");
            conn.close().await;
            Ok(Before::Done(format!(
                "schema version {version} applied by another run"
            )))
        }
        Acquired::Held(lock) => Ok(Before::Locked(conn, lock)),
    }
}

/// Connect, take the lock (nothing is expected, so there is no fast path), run `work` under
/// it, then release the lock and close the connection whatever `work` returned: the
/// sequence `rollback` and `stamp` share. (`migrate` keeps its own: a signal or a lost lock
/// abandons the lock instead of releasing it.)
pub async fn with_lock<T>(
    cfg: &Config,
    work: impl AsyncFnOnce(&mut Conn, &Lock) -> Result<T>,
) -> Result<T> {
    let (mut conn, lock) = match connect_and_lock(cfg, None).await? {
        Before::Locked(conn, lock) => (conn, lock),
        Before::Done(message) => {
            unreachable!("nothing was expected, so nothing is done before the lock: {message}")
        }
    };
    let result = work(&mut conn, &lock).await;
    let release = lock.release(&mut conn, cfg).await;
    conn.close().await;
    released(release);
    result
}

/// The lock could not be released: the work is done (and recorded) all the same, and the
/// lock ends with its connection, or the lease with its TTL. Say so; never fail the run
/// for it.
pub fn released(release: Result<()>) {
    if let Err(e) = release {
        tracing::warn!(
            "could not release the migration lock ({e:#}); it ends with the connection, or the \
             lease with its TTL"
        );
    }
}

/// PostgreSQL: a transactional migration (up or down) must not end the transaction it runs
/// in. A `COMMIT` in it would commit its first part early (left behind, unrecorded, when a
/// later statement fails), a `ROLLBACK` would undo it while it is recorded as done. Refused
/// before anything runs (each file read and let go in turn: one in memory at a time).
pub fn refuse_transaction_control<'m>(
    cfg: &Config,
    source: &Source,
    migrations: impl IntoIterator<Item = &'m Entry>,
) -> Result<()> {
    if cfg.backend != crate::settings::Backend::Postgres {
        return Ok(());
    }
    for m in migrations.into_iter().filter(|m| !m.no_tx) {
        if let Some((statement, line)) = crate::sql::transaction_control(&source.sql(m)?) {
            let kind = if m.migration_type.is_down_migration() {
                "down migration"
            } else {
                "migration"
            };
            return Err(crate::error::Error::Config(format!(
                "{kind} {} ({}) has `{statement}` at line {line}: schemagate runs each \
                 migration in a transaction of its own, which that statement would end. \
                 Remove BEGIN/COMMIT/ROLLBACK from the file, or make `-- no-transaction` its \
                 first line to run its statements one by one as written",
                m.version, m.description
            )));
        }
    }
    Ok(())
}
