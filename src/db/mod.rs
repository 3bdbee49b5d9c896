//! Connecting (with retry inside a wall-clock deadline) and the few operations whose SQL
//! differs by backend. Each backend file holds its SQL; this file dispatches with a `match`
//! and holds what they share. Migrations use sqlx's types, checksums and
//! `_sqlx_migrations` table everywhere; MySQL and SQLite apply them through sqlx's
//! `Migrate` trait, PostgreSQL through the simple query protocol (see postgres.rs).

mod mysql;
pub(crate) mod postgres;
mod sqlite;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;
use sqlx::migrate::{AppliedMigration, Migrate, Migration};
use sqlx::{AssertSqlSafe, MySqlConnection, PgConnection, SqliteConnection};

use crate::config::{Backend, Config, Table, redact};
use crate::error::{Error, Result};

pub use postgres::{Listener, Wake};
pub use sqlite::options as sqlite_options;

/// One open connection to whichever backend the URL names.
pub enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
    Lite(SqliteConnection),
}

/// A marker row as read back, timestamps as RFC 3339 text in UTC.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Marker {
    pub id: i64,
    pub version: String,
    pub digest: Option<String>,
    pub status: String,
    pub action: String,
    pub started_at: String,
    pub finished_at: String,
    pub applied: i64,
    pub runner: String,
    pub tool_version: String,
    pub detail: Option<String>,
}

/// A marker row to write.
#[derive(Debug, Clone)]
pub struct NewMarker<'a> {
    pub version: &'a str,
    pub digest: Option<&'a str>,
    pub status: Status,
    pub action: &'a str,
    /// Seconds between the start of the run and now.
    pub elapsed: Duration,
    pub applied: i64,
    pub runner: &'a str,
    pub detail: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// The newest marker that decides readiness for a version: `status`, `digest`, and
/// whether it is a later rollback to another version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub version: String,
    pub status: String,
    pub digest: Option<String>,
    pub detail: Option<String>,
    /// Read in the same query when asked (`newest_marker`'s `upto`): how many migrations
    /// up to that version `_sqlx_migrations` records as applied, and how many as dirty.
    pub applied_upto: i64,
    pub dirty: i64,
}

/// Per-migration settings (PostgreSQL): `SET LOCAL` inside each migration's transaction.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    /// The lease's fence (`lock::Lock::fence`), run in each migration's transaction.
    pub fence: Option<Fence>,
}

/// The lease's fence: SQL that raises `LEASE_LOST` unless this run still owns the lease.
#[derive(Debug, Clone)]
pub struct Fence {
    /// A plain check, run first: a deposed run stops before any statement of a migration.
    pub check: String,
    /// Renews the lease and locks its row until the transaction ends, run last before
    /// COMMIT: the commit and the ownership are one.
    pub hold: String,
}

/// The text of the error the lease's fence raises (a failed cast, so that it needs no
/// procedural language: it works on every Postgres-compatible engine).
pub const LEASE_LOST: &str = "schemagate fence: the migration lease is no longer ours";

/// Whether an error is the lease's fence saying that another run took the lease over.
pub fn is_lease_lost(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains(LEASE_LOST))
}

/// A migration that failed, and whether trying again may help (it hit a lock or
/// statement timeout).
#[derive(Debug)]
pub struct ApplyError {
    pub message: String,
    pub retryable: bool,
    /// The lease's fence refused: another run owns the lease now. Nothing of this
    /// migration ran, and this run must not write a marker.
    pub lease_lost: bool,
    /// A migration without a transaction failed after part of it took effect, and is
    /// recorded dirty.
    pub dirty: bool,
}

impl ApplyError {
    fn from_sqlx(e: &sqlx::Error) -> ApplyError {
        let retryable = matches!(
            e,
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("55P03") | Some("57014"))
        );
        ApplyError {
            message: describe(e),
            retryable,
            lease_lost: is_lease_lost(e),
            dirty: false,
        }
    }

    fn from_migrate(e: sqlx::migrate::MigrateError) -> ApplyError {
        match e {
            sqlx::migrate::MigrateError::ExecuteMigration(inner, _)
            | sqlx::migrate::MigrateError::Execute(inner) => ApplyError::from_sqlx(&inner),
            other => ApplyError {
                message: redact(&other.to_string()),
                retryable: false,
                lease_lost: false,
                dirty: false,
            },
        }
    }
}

/// Who holds the migration lock.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    pub pid: i64,
    pub application_name: String,
    pub client: String,
    pub held_for_secs: f64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({:?}) from {}, for {:.0}s",
            self.pid, self.application_name, self.client, self.held_for_secs
        )
    }
}

/// The longest marker `version` (and `runner`) every backend stores: MySQL's column is
/// VARCHAR(255). Checked before anything runs.
pub const MAX_VERSION: usize = 255;

/// Marker `detail` is cut to this many bytes (MySQL's TEXT holds 65,535): a migrator that
/// prints a huge line must not cost the `failed` marker.
const MAX_DETAIL: usize = 16 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, saying how much was cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let note = format!(" … [{} bytes cut]", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
}

/// The sqlx table that records applied migrations (shared with sqlx-cli).
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// How a failed operation should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying: refused, reset, server starting or shutting down, too many clients.
    Transient,
    /// Retrying will not help: authentication, unknown database, bad options.
    Config,
    Other,
}

pub fn classify(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => {
            Class::Transient
        }
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => Class::Config,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                // PostgreSQL: cannot_connect_now (starting up), too_many_connections,
                // admin/crash shutdown, connection exceptions.
                "57P03" | "53300" | "57P01" | "57P02" | "08000" | "08003" | "08006" | "08001"
                | "08004" => Class::Transient,
                // MySQL: too many connections, user has too many connections, server shutdown.
                "1040" | "1203" | "1226" | "1053" | "08S01" => Class::Transient,
                // SQLite: busy / locked.
                "5" | "6" | "261" | "517" => Class::Transient,
                // PostgreSQL auth / unknown database; MySQL access denied / unknown database;
                // SQLite cannot open.
                "28P01" | "28000" | "3D000" | "1045" | "1044" | "1049" | "14" => Class::Config,
                _ if code.starts_with("28") => Class::Config,
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

/// A driver error as text, redacted.
pub fn describe(e: &sqlx::Error) -> String {
    redact(&e.to_string())
}

/// Connect, retrying transient errors with jittered backoff until `cfg.connect_timeout`.
pub async fn connect(cfg: &Config) -> Result<Conn> {
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let attempt = || async {
        match cfg.backend {
            Backend::Postgres => postgres::connect(cfg).await.map(Conn::Pg),
            Backend::MySql => mysql::connect(cfg).await.map(Conn::My),
            Backend::Sqlite => sqlite::connect(cfg).await.map(Conn::Lite),
        }
    };
    let retrying = attempt
        .retry(backoff(Duration::from_millis(50), Duration::from_secs(2)))
        .sleep(tokio::time::sleep)
        .when(|e| classify(e) == Class::Transient)
        .notify(|e, delay| {
            let msg = describe(e);
            tracing::warn!(
                "cannot connect to {} yet ({msg}); retrying in {delay:.1?}",
                cfg.display_url
            );
            *last_error.lock().expect("last_error") = Some(msg);
        });
    match tokio::time::timeout(cfg.connect_timeout, retrying).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let msg = format!("cannot connect to {}: {}", cfg.display_url, describe(&e));
            Err(match classify(&e) {
                Class::Config => Error::Config(msg),
                _ => Error::Failed(msg),
            })
        }
        Err(_) => {
            let last = last_error.lock().expect("last_error").clone();
            Err(Error::Timeout(format!(
                "cannot connect to {} within {} (--connect-timeout){}",
                cfg.display_url,
                humantime::format_duration(cfg.connect_timeout),
                last.map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )))
        }
    }
}

/// Exponential backoff with jitter and no limit on tries: callers bound it with a deadline.
pub fn backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}

/// Whether an error means "this table does not exist" (so: not migrated yet).
pub fn is_undefined_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("42P01") | Some("1146") | Some("42S02")
            ) || (db.message().starts_with("no such table"))
        }
        _ => false,
    }
}

fn db_err(context: &str, e: sqlx::Error) -> Error {
    if is_lease_lost(&e) {
        return Error::LockLost(format!(
            "{context}: another run has taken the migration lease over"
        ));
    }
    let msg = format!("{context}: {}", describe(&e));
    match classify(&e) {
        Class::Config => Error::Config(msg),
        _ => Error::Failed(msg),
    }
}

impl Conn {
    /// sqlx's migration operations on this connection.
    pub fn migrate(&mut self) -> &mut dyn Migrate {
        match self {
            Conn::Pg(c) => c,
            Conn::My(c) => c,
            Conn::Lite(c) => c,
        }
    }

    pub async fn close(self) {
        use sqlx::Connection;
        let _ = match self {
            Conn::Pg(c) => c.close().await,
            Conn::My(c) => c.close().await,
            Conn::Lite(c) => c.close().await,
        };
    }

    /// The PostgreSQL connection, for what only PostgreSQL has (the lease, the probe).
    pub fn pg(&mut self) -> Option<&mut PgConnection> {
        match self {
            Conn::Pg(c) => Some(c),
            _ => None,
        }
    }

    /// Settings for the connection that holds the lock and runs migrations. On PostgreSQL,
    /// returns what it learnt about the server.
    pub async fn prepare_for_lock(&mut self, cfg: &Config) -> Result<Option<postgres::ServerInfo>> {
        match self {
            Conn::Pg(c) => postgres::prepare_for_lock(c, cfg.lock.key).await.map(Some),
            Conn::Lite(c) => sqlite::prepare_for_lock(c).await.map(|()| None),
            Conn::My(_) => Ok(None),
        }
        .map_err(|e| db_err("cannot prepare the lock connection", e))
    }

    /// Try once to take the migration lock for the run named by `token`; true when this
    /// connection now holds it.
    pub async fn try_lock(&mut self, cfg: &Config, token: &str) -> Result<bool> {
        match self {
            Conn::Pg(c) => postgres::try_lock(c, cfg.lock.key, token).await,
            Conn::My(c) => mysql::try_lock(c, &cfg.lock).await,
            // SQLite's lock is a file lock taken in lock/file.rs.
            Conn::Lite(_) => Ok(true),
        }
        .map_err(|e| db_err("cannot take the migration lock", e))
    }

    /// Release the migration lock; false when this session did not hold it.
    pub async fn unlock(&mut self, cfg: &Config) -> Result<bool> {
        match self {
            Conn::Pg(c) => postgres::unlock(c, cfg.lock.key).await,
            Conn::My(c) => mysql::unlock(c, &cfg.lock).await.map(|()| true),
            Conn::Lite(_) => Ok(true),
        }
        .map_err(|e| db_err("cannot release the migration lock", e))
    }

    /// Whether this connection still holds the migration lock; `Err` says why not.
    pub async fn lock_still_held(&mut self, cfg: &Config) -> Result<(), String> {
        let held = match self {
            Conn::Pg(c) => postgres::holds_lock(c, cfg.lock.key).await,
            Conn::My(c) => mysql::holds_lock(c, &cfg.lock).await,
            // The file lock lives as long as this process.
            Conn::Lite(_) => Ok(true),
        };
        match held {
            Ok(true) => Ok(()),
            Ok(false) => Err("the lock is no longer held by this session".into()),
            Err(e) => Err(format!("the lock connection failed: {}", describe(&e))),
        }
    }

    pub async fn lock_holder(&mut self, cfg: &Config) -> Result<Option<Holder>> {
        match self {
            Conn::Pg(c) => postgres::lock_holder(c, cfg.lock.key).await,
            Conn::My(c) => mysql::lock_holder(c, &cfg.lock).await,
            Conn::Lite(_) => Ok(None),
        }
        .map_err(|e| db_err("cannot read the lock holder", e))
    }

    /// This session's id on the server (for killing it from another connection).
    pub async fn session_id(&mut self) -> Result<i64> {
        match self {
            Conn::Pg(c) => postgres::session_id(c).await,
            Conn::My(c) => mysql::session_id(c).await,
            Conn::Lite(_) => Ok(0),
        }
        .map_err(|e| db_err("cannot read the session id", e))
    }

    /// Cancel the statement another session of ours runs, and wait (up to `limit`) until
    /// it is no longer running one: its transaction is then aborted or was committed, and
    /// the session still holds the lock. False when it did not settle in time.
    pub async fn cancel_and_settle(&mut self, id: i64, limit: Duration) -> Result<bool> {
        let settle = async {
            match self {
                Conn::Pg(c) => postgres::cancel_and_settle(c, id).await,
                Conn::My(c) => mysql::cancel_and_settle(c, id).await,
                Conn::Lite(_) => Ok(()),
            }
        };
        match tokio::time::timeout(limit, settle).await {
            Ok(r) => r
                .map(|()| true)
                .map_err(|e| db_err("cannot cancel the interrupted statement", e)),
            Err(_) => Ok(false),
        }
    }

    /// End another session of ours: its transaction rolls back and its lock is released.
    pub async fn kill_session(&mut self, id: i64) -> Result<()> {
        match self {
            Conn::Pg(c) => postgres::kill_session(c, id).await,
            Conn::My(c) => mysql::kill_session(c, id).await,
            Conn::Lite(_) => Ok(()),
        }
        .map_err(|e| db_err("cannot end the interrupted session", e))
    }

    pub async fn ensure_marker_table(&mut self, table: &Table) -> Result<()> {
        match self {
            Conn::Pg(c) => postgres::ensure_marker_table(c, table).await,
            Conn::My(c) => mysql::ensure_marker_table(c, table).await,
            Conn::Lite(c) => sqlite::ensure_marker_table(c, table).await,
        }
        .map_err(|e| {
            db_err(
                &format!("cannot create the marker table {}", table.qualified),
                e,
            )
        })
    }

    /// Append a marker row (and, on PostgreSQL, NOTIFY in the same transaction), in one
    /// transaction with the lease's fence when given: a run
    /// whose lease another run has taken never writes a marker (`Error::LockLost`).
    pub async fn insert_marker(
        &mut self,
        table: &Table,
        m: &NewMarker<'_>,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let detail = m.detail.map(|d| clip(&redact(d), MAX_DETAIL));
        let runner = clip(m.runner, MAX_VERSION);
        let m = NewMarker {
            detail: detail.as_deref(),
            runner: &runner,
            ..m.clone()
        };
        match self {
            Conn::Pg(c) => postgres::insert_marker(c, table, &m, fence).await,
            Conn::My(c) => mysql::insert_marker(c, table, &m).await,
            Conn::Lite(c) => sqlite::insert_marker(c, table, &m).await,
        }
        .map_err(|e| {
            if is_lease_lost(&e) {
                return Error::LockLost(format!(
                    "not recording a {} marker: another run has taken the migration lease over",
                    m.status.as_str()
                ));
            }
            db_err(
                &format!("cannot write the marker to {}", table.qualified),
                e,
            )
        })
    }

    /// The marker that decides `version`: the newest row for it, unless a rollback to
    /// another version came later. `None` when there is none (or no table yet).
    ///
    /// With `upto`, the same query also counts what `_sqlx_migrations` shows (see
    /// `Newest::applied_upto`): the fast path cross-checks the marker against the history
    /// in one round trip, so a revert made by another tool sends it down the slow path.
    pub async fn newest_marker(
        &mut self,
        table: &Table,
        version: &str,
        upto: Option<i64>,
    ) -> Result<Option<Newest>> {
        let r = match self {
            Conn::Pg(c) => postgres::newest_marker(c, table, version, upto).await,
            Conn::My(c) => mysql::newest_marker(c, table, version, upto).await,
            Conn::Lite(c) => sqlite::newest_marker(c, table, version, upto).await,
        };
        settle_newest(r, table, version)
    }

    /// The version of the newest `succeeded` marker, of any action (`None` without one, or
    /// without the table).
    pub async fn newest_succeeded_version(&mut self, table: &Table) -> Result<Option<String>> {
        let sql = newest_succeeded_sql(table);
        let r = match self {
            Conn::Pg(c) => postgres::newest_succeeded_version(c, sql).await,
            Conn::My(c) => {
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_optional(c)
                    .await
            }
            Conn::Lite(c) => {
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_optional(c)
                    .await
            }
        };
        match r {
            Err(e) if is_undefined_table(&e) => Ok(None),
            r => r.map_err(|e| db_err("cannot read the markers", e)),
        }
    }

    /// Marker history, newest first. Empty when the table does not exist.
    pub async fn markers(&mut self, table: &Table, limit: u32) -> Result<Vec<Marker>> {
        let r = match self {
            Conn::Pg(c) => postgres::markers(c, table, limit).await,
            Conn::My(c) => mysql::markers(c, table, limit).await,
            Conn::Lite(c) => sqlite::markers(c, table, limit).await,
        };
        match r {
            Err(e) if is_undefined_table(&e) => Ok(Vec::new()),
            r => r.map_err(|e| {
                db_err(
                    &format!("cannot read the markers from {}", table.qualified),
                    e,
                )
            }),
        }
    }

    /// Applied migrations and the dirty version, or empty when sqlx's table is missing.
    pub async fn applied(&mut self) -> Result<(Vec<AppliedMigration>, Option<i64>)> {
        let fail =
            |e: String| Error::Failed(format!("cannot list applied migrations: {}", redact(&e)));
        if let Conn::Pg(c) = self {
            return settle_applied(postgres::applied(c).await);
        }
        let migrate = self.migrate();
        let applied = match migrate.list_applied_migrations(MIGRATIONS_TABLE).await {
            Ok(a) => a,
            Err(sqlx::migrate::MigrateError::Execute(e)) if is_undefined_table(&e) => {
                return Ok((Vec::new(), None));
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let dirty = migrate
            .dirty_version(MIGRATIONS_TABLE)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok((applied, dirty))
    }

    pub async fn ensure_migrations_table(&mut self) -> Result<()> {
        self.migrate()
            .ensure_migrations_table(MIGRATIONS_TABLE)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot create {MIGRATIONS_TABLE}: {}",
                    redact(&e.to_string())
                ))
            })
    }

    /// Apply transactional migrations together in one transaction (PostgreSQL), or one
    /// migration on any backend. A failed `-- no-transaction` migration is recorded dirty.
    pub async fn apply(
        &mut self,
        migrations: &[&Migration],
        opts: &ApplyOptions,
    ) -> Result<(), ApplyError> {
        match self {
            Conn::Pg(c) => match migrations {
                [m] if m.no_tx => postgres::apply_no_tx(c, m, opts).await.map_err(|e| {
                    let base = ApplyError::from_sqlx(&e.error);
                    ApplyError {
                        message: format!("{}{}", e.context, base.message),
                        dirty: e.dirty,
                        ..base
                    }
                }),
                ms => postgres::apply_in_tx(c, ms, opts)
                    .await
                    .map_err(|e| ApplyError::from_sqlx(&e)),
            },
            Conn::My(_) | Conn::Lite(_) => {
                for m in migrations {
                    let r = self.migrate().apply(MIGRATIONS_TABLE, m).await;
                    if let (Err(_), true, Conn::Lite(c)) = (&r, m.no_tx, &mut *self)
                        && let Err(record) = sqlite::record_dirty(c, m).await
                    {
                        tracing::warn!(
                            "could not record migration {} as dirty: {record}",
                            m.version
                        );
                    }
                    r.map_err(|e| ApplyError {
                        dirty: m.no_tx,
                        ..ApplyError::from_migrate(e)
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Run a down migration and delete its row.
    pub async fn revert(
        &mut self,
        down: &Migration,
        fence: Option<&Fence>,
    ) -> Result<(), ApplyError> {
        match self {
            Conn::Pg(c) => postgres::revert(c, down, fence)
                .await
                .map_err(|e| ApplyError::from_sqlx(&e)),
            _ => self
                .migrate()
                .revert(MIGRATIONS_TABLE, down)
                .await
                .map(|_| ())
                .map_err(ApplyError::from_migrate),
        }
    }

    /// Record a migration as applied without running it (or mark a dirty one done).
    pub async fn stamp(&mut self, m: &Migration, fence: Option<&Fence>) -> Result<()> {
        let r = match self {
            Conn::Pg(c) => postgres::stamp(c, m, fence).await,
            Conn::My(c) => mysql::stamp(c, m).await,
            Conn::Lite(c) => sqlite::stamp(c, m).await,
        };
        r.map_err(|e| {
            db_err(
                &format!("cannot record migration {} as applied", m.version),
                e,
            )
        })
    }

    /// Indexes a failed `CREATE INDEX CONCURRENTLY` left invalid (PostgreSQL only).
    pub async fn invalid_indexes(&mut self) -> Result<Vec<String>> {
        match self {
            Conn::Pg(c) => postgres::invalid_indexes(c)
                .await
                .map_err(|e| db_err("cannot list invalid indexes", e)),
            _ => Ok(Vec::new()),
        }
    }
}

/// A marker read as `Conn::newest_marker` reports it: no table means none yet, and a later
/// rollback to another version means this one is no longer current.
pub fn settle_newest(
    r: Result<Option<Newest>, sqlx::Error>,
    table: &Table,
    version: &str,
) -> Result<Option<Newest>> {
    match r {
        Err(e) if is_undefined_table(&e) => Ok(None),
        Ok(Some(m)) if m.version != version => Ok(None),
        r => r.map_err(|e| {
            db_err(
                &format!("cannot read the marker from {}", table.qualified),
                e,
            )
        }),
    }
}

/// Applied migrations as `Conn::applied` reports them: no table means none.
pub fn settle_applied(
    r: Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error>,
) -> Result<(Vec<AppliedMigration>, Option<i64>)> {
    match r {
        Err(e) if is_undefined_table(&e) => Ok((Vec::new(), None)),
        r => r.map_err(|e| {
            Error::Failed(format!("cannot list applied migrations: {}", describe(&e)))
        }),
    }
}

pub(crate) fn newest_succeeded_sql(t: &Table) -> String {
    format!(
        "SELECT version FROM {} WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1",
        t.qualified
    )
}

/// The row `newest_marker` reads (MySQL and SQLite; PostgreSQL quotes its literal).
type NewestRow = (String, String, Option<String>, Option<String>, i64, i64);

/// The marker that decides `version`: its own newest row, or a later rollback. `param` is
/// the backend's placeholder for the version; `zero` its 64-bit integer zero. With `upto`,
/// two more columns count the history in `_sqlx_migrations`.
fn newest_marker_sql(t: &Table, param: &str, zero: &str, upto: Option<i64>) -> String {
    let history = match upto {
        Some(v) => format!(
            "(SELECT COUNT(*) FROM {MIGRATIONS_TABLE} WHERE version <= {v} AND success), \
             (SELECT COUNT(*) FROM {MIGRATIONS_TABLE} WHERE NOT success)"
        ),
        None => format!("{zero}, {zero}"),
    };
    format!(
        "SELECT version, status, digest, detail, {history} FROM {} \
         WHERE version = {param} OR action = 'rollback' ORDER BY id DESC LIMIT 1",
        t.qualified
    )
}

fn newest_from_row((version, status, digest, detail, applied_upto, dirty): NewestRow) -> Newest {
    Newest {
        version,
        status,
        digest,
        detail,
        applied_upto,
        dirty,
    }
}

type MarkerRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
);

fn marker_from_row(r: MarkerRow) -> Marker {
    Marker {
        id: r.0,
        version: r.1,
        digest: r.2,
        status: r.3,
        action: r.4,
        started_at: r.5,
        finished_at: r.6,
        applied: r.7,
        runner: r.8,
        tool_version: r.9,
        detail: r.10,
    }
}

/// Stop the statement running on this process's lock connection, where the server cannot
/// be asked to (SQLite runs in-process).
pub fn interrupt_local() {
    sqlite::interrupt();
}

/// The version of schemagate, recorded in each marker.
pub const TOOL_VERSION: &str = concat!("schemagate ", env!("CARGO_PKG_VERSION"));
