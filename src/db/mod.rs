//! The few operations whose SQL differs by backend (connecting and classifying errors:
//! `connect.rs`). Each backend file holds its SQL; this file dispatches with a `match`
//! and holds what they share. Migrations use sqlx's types, checksums and table layout
//! everywhere (`_sqlx_migrations`, or the `MigrationsTable` the config names, passed to
//! each call); MySQL and SQLite apply them through sqlx's `Migrate` trait, PostgreSQL
//! through the simple query protocol (see postgres.rs).

/// The reads MySQL and SQLite share word for word (both bind with `?`, and neither marker
/// table keeps a write order): other migrators' history, the newest marker for a version,
/// the newest `succeeded` detail. One body, expanded in each backend's file for its
/// connection type.
macro_rules! question_mark_reads {
    ($conn:ty) => {
        /// `SELECT expr` of another migrator's history table (`Conn::history_rows`): its rows carry
        /// no write order.
        pub async fn history_rows(
            c: &mut $conn,
            expr: &str,
            table: &str,
        ) -> Result<$crate::db::HistoryRows, sqlx::Error> {
            let rows =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {expr} FROM {table}")))
                    .fetch_all(&mut *c)
                    .await?;
            Ok((rows, None))
        }

        /// `Conn::newest_marker_row` (no write order: 0).
        pub async fn newest_marker_row(
            c: &mut $conn,
            t: &$crate::settings::Table,
            version: &str,
        ) -> Result<Option<(String, Option<String>, i64)>, sqlx::Error> {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT status, detail, 0 FROM {} WHERE version = ? OR action = 'rollback' \
                 ORDER BY id DESC LIMIT 1",
                t.qualified
            )))
            .bind(version)
            .fetch_optional(&mut *c)
            .await
        }

        /// `Conn::newest_succeeded_detail`.
        pub async fn newest_succeeded_detail(
            c: &mut $conn,
            t: &$crate::settings::Table,
            prefix: &str,
        ) -> Result<Option<String>, sqlx::Error> {
            let detail: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT detail FROM {} WHERE status = 'succeeded' AND detail LIKE ? \
                 ORDER BY id DESC LIMIT 1",
                t.qualified
            )))
            .bind(format!("{prefix}%"))
            .fetch_optional(&mut *c)
            .await?;
            Ok(detail.flatten())
        }
    };
}

mod connect;
mod mysql;
pub(crate) mod postgres;
mod protocol;
mod sqlite;

use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{AppliedMigration, Migrate, Migration};
use sqlx::{MySqlConnection, PgConnection, SqliteConnection};

use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Config, MigrationsTable, Table};

pub use crate::marker::Upto;
pub use crate::marker::{Decisive, Marker, NewMarker, Status};
pub(crate) use crate::marker::{NewestRow, marker_from_row, newest_marker_sql};
use connect::is_permission_error;
pub use connect::{Class, backoff, classify, connect, describe};
pub use postgres::{Engine, Listener, Wake};
pub use sqlite::options as sqlite_options;

/// One open connection to whichever backend the URL names.
pub enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
    Lite(SqliteConnection),
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
    /// Part of it took effect and was not rolled back (a migration without a transaction:
    /// a statement ran before the failure, or every one ran and recording it failed).
    /// Whether or not it is recorded dirty, nothing may say that nothing took effect.
    pub took_effect: bool,
    /// Retrying cannot help: the user lacks a privilege the migration needs (exit 2).
    pub config: bool,
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
            took_effect: false,
            config: is_permission_error(e),
        }
    }

    /// A PostgreSQL migration run statement by statement (or a down migration): its
    /// message already says where it stopped and what took effect.
    fn from_no_tx(e: postgres::NoTxError) -> ApplyError {
        ApplyError {
            message: e.message,
            dirty: e.dirty,
            took_effect: e.took_effect,
            ..ApplyError::from_sqlx(&e.error)
        }
    }

    /// A migration whose file could not be read (or changed since the plan was made):
    /// nothing of it ran.
    pub fn unreadable(e: &Error) -> ApplyError {
        ApplyError {
            message: format!("{e:#}"),
            retryable: false,
            lease_lost: false,
            dirty: false,
            took_effect: false,
            config: e.is_config(),
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
                took_effect: false,
                config: false,
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

/// A migration larger than this is run in pieces of whole statements of about this size
/// (PostgreSQL, SQLite), never held twice over in one query.
const PIECE: usize = 1 << 20;

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

/// Where a connection looks for the migrations table (`scope`: PostgreSQL's search_path, or
/// MySQL's database), and the schemas or databases where a table of that name exists.
#[derive(Debug, Clone, Default)]
pub struct Whereabouts {
    pub scope: String,
    pub current: String,
    pub found_in: Vec<String>,
}

impl Whereabouts {
    /// `table` without its schema, as the catalog names it.
    fn bare_table(table: &MigrationsTable) -> &str {
        let name = table.qualified();
        name.rsplit('.').next().unwrap_or(name)
    }
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

/// A sqlx migration error: a database error inside is described and classified as one.
fn migrate_err(context: &str, e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(inner) | M::ExecuteMigration(inner, _) => db_err(context, inner),
        other => Error::Failed(format!("{context}: {}", redact(&other.to_string()))),
    }
}

pub fn db_err(context: &str, e: sqlx::Error) -> Error {
    if is_lease_lost(&e) {
        return Error::LockLost(format!(
            "{context}: another run has taken the migration lease over"
        ));
    }
    Error::Database {
        context: context.to_owned(),
        class: match classify(&e) {
            Class::Config => crate::error::Class::Config,
            Class::Transient | Class::Other => crate::error::Class::Runtime,
        },
        described: describe(&e),
        source: e,
    }
}

/// Why the migration lock is no longer ours (`Lock::check`, while an external migrator
/// runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockGone {
    /// The lease lapsed, or another run took it over.
    Lapsed,
    /// The session lock is no longer held by this session.
    NotHeld,
    /// The lock's connection failed: the driver's error, described.
    Connection(String),
}

impl std::fmt::Display for LockGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockGone::Lapsed => f.write_str("the lease lapsed or was taken over"),
            LockGone::NotHeld => f.write_str("the lock is no longer held by this session"),
            LockGone::Connection(why) => write!(f, "the lock connection failed: {why}"),
        }
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
    /// returns what it learnt about the server (with `probe_key`, unless the lease was asked
    /// for: whether the lock is held by another session, and whether this one took the
    /// probe key or was refused it).
    pub async fn prepare_for_lock(
        &mut self,
        cfg: &Config,
        probe_key: Option<i64>,
    ) -> Result<Option<postgres::ServerInfo>> {
        let busy = probe_key
            .filter(|_| cfg.lock.mode != crate::settings::LockMode::Lease)
            .map(|p| (cfg.lock.key, p));
        match self {
            Conn::Pg(c) => postgres::prepare_for_lock(c, busy).await.map(Some),
            Conn::Lite(c) => sqlite::prepare_for_lock(c).await.map(|()| None),
            Conn::My(_) => Ok(None),
        }
        .map_err(|e| db_err("cannot prepare the lock connection", e))
    }

    /// Try once to take the migration lock for the run named by `token`; true when this
    /// connection now holds it.
    /// `then_release` (PostgreSQL): the probe key, let go of in the same statement.
    pub async fn try_lock(
        &mut self,
        cfg: &Config,
        token: &str,
        then_release: Option<i64>,
    ) -> Result<bool> {
        match self {
            Conn::Pg(c) => postgres::try_lock(c, cfg.lock.key, token, then_release).await,
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
    pub async fn lock_still_held(&mut self, cfg: &Config) -> Result<(), LockGone> {
        let held = match self {
            Conn::Pg(c) => postgres::holds_lock(c, cfg.lock.key).await,
            Conn::My(c) => mysql::holds_lock(c, &cfg.lock).await,
            // The file lock lives as long as this process.
            Conn::Lite(_) => Ok(true),
        };
        match held {
            Ok(true) => Ok(()),
            Ok(false) => Err(LockGone::NotHeld),
            Err(e) => Err(LockGone::Connection(describe(&e))),
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

    /// Where `table` lives as the server resolves its name, and where a name needs no
    /// qualifier (for the default lock's name, `LockConfig::resolved`). PostgreSQL: the
    /// table's schema (for an unqualified name, asked of the server: `postgres::
    /// table_schema`) and `public`. MySQL: the table's database and the connection's
    /// (asked only for a qualified name). SQLite: the table's schema and `main`.
    pub async fn table_home(&mut self, table: &Table) -> Result<(Option<String>, Option<String>)> {
        let r = match (self, &table.schema) {
            (Conn::Pg(_), Some(s)) => Ok((Some(s.clone()), Some("public".to_owned()))),
            (Conn::Pg(c), None) => postgres::table_schema(c, &table.name.to_ascii_lowercase())
                .await
                .map(|s| (s, Some("public".to_owned()))),
            (Conn::My(c), Some(s)) => mysql::current_database(c)
                .await
                .map(|home| (Some(s.clone()), home)),
            (Conn::My(_), None) => Ok((None, None)),
            (Conn::Lite(_), schema) => Ok((schema.clone(), Some("main".to_owned()))),
        };
        r.map_err(|e| {
            db_err(
                &format!("cannot resolve the marker table {}", table.qualified),
                e,
            )
        })
    }

    /// How many more connections the server would accept now, when it says (PostgreSQL,
    /// MariaDB; `None` on SQLite, or when it cannot be read): `wait` polls less often when
    /// few are left, so that the migrator gets one.
    pub async fn free_slots(&mut self) -> Option<i64> {
        let r = match self {
            Conn::Pg(c) => postgres::free_slots(c).await,
            Conn::My(c) => mysql::free_slots(c).await,
            Conn::Lite(_) => Ok(None),
        };
        r.unwrap_or_else(|e| {
            tracing::debug!("cannot read the free connection slots: {}", describe(&e));
            None
        })
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

    /// The marker table, and with `migrations` that table first: on PostgreSQL in one
    /// statement, so one round trip and one commit (the path every first run of a release
    /// waits on).
    pub async fn ensure_tables(
        &mut self,
        table: &Table,
        migrations: Option<&MigrationsTable>,
    ) -> Result<()> {
        match (self, migrations) {
            (Conn::Pg(c), Some(migrations)) => postgres::ensure_tables(c, table, migrations)
                .await
                .map_err(|e| {
                    db_err(
                        &format!(
                            "cannot create {migrations} and the marker table {}",
                            table.qualified
                        ),
                        e,
                    )
                }),
            (conn, migrations) => {
                if let Some(migrations) = migrations {
                    conn.ensure_migrations_table(migrations).await?;
                }
                conn.ensure_marker_table(table).await
            }
        }
    }

    /// On PostgreSQL, `ensure_tables` (both) and, in the same round trip, the marker that
    /// decides `version` and what is applied: the lock holder's first step, one round trip
    /// instead of three. `None` on the other backends (ask separately).
    pub async fn ensure_tables_and_read(
        &mut self,
        table: &Table,
        migrations: &MigrationsTable,
        version: &str,
        upto: Option<Upto<'_>>,
    ) -> Result<Option<(Decisive, (Vec<AppliedMigration>, Option<i64>))>> {
        let Conn::Pg(c) = self else {
            return Ok(None);
        };
        let (newest, applied) =
            postgres::ensure_tables_and_read(c, table, migrations, version, upto)
                .await
                .map_err(|e| {
                    db_err(
                        &format!(
                            "cannot create or read {migrations} and the marker table {}",
                            table.qualified
                        ),
                        e,
                    )
                })?;
        Ok(Some((settle_newest(Ok(newest), table, version)?, applied)))
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

    /// Append a marker row (and, on PostgreSQL, NOTIFY in the same transaction where the
    /// `engine` the lock found has it), in one transaction with the lease's fence when
    /// given: a run whose lease another run has taken never writes a marker
    /// (`Error::LockLost`).
    pub async fn insert_marker(
        &mut self,
        table: &Table,
        m: &NewMarker<'_>,
        fence: Option<&Fence>,
        engine: Engine,
    ) -> Result<()> {
        self.write_marker(table, m, fence, engine, false).await
    }

    /// As `insert_marker`, for a `failed` marker written from a side connection: on
    /// PostgreSQL not when the version's deciding marker is `succeeded` by then (see
    /// `postgres::insert_marker_unless_done`); elsewhere the caller's check stands.
    pub async fn insert_marker_unless_done(
        &mut self,
        table: &Table,
        m: &NewMarker<'_>,
        fence: Option<&Fence>,
        engine: Engine,
    ) -> Result<()> {
        self.write_marker(table, m, fence, engine, true).await
    }

    async fn write_marker(
        &mut self,
        table: &Table,
        m: &NewMarker<'_>,
        fence: Option<&Fence>,
        engine: Engine,
        unless_done: bool,
    ) -> Result<()> {
        let detail = m.detail.map(|d| clip(&redact(d), MAX_DETAIL));
        let runner = clip(m.runner, MAX_VERSION);
        let m = NewMarker {
            detail: detail.as_deref(),
            runner: &runner,
            ..m.clone()
        };
        match self {
            Conn::Pg(c) if unless_done => {
                postgres::insert_marker_unless_done(c, table, &m, fence, engine).await
            }
            Conn::Pg(c) => postgres::insert_marker(c, table, &m, fence, engine).await,
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
    /// With `upto`, the same query also counts what `migrations` shows (see
    /// `Newest::applied_upto`): the fast path cross-checks the marker against the history
    /// in one round trip, so a revert made by another tool sends it down the slow path.
    /// With `newest`, also the newest `succeeded` marker (`Decisive::newest_succeeded`), the
    /// newest of all, and whether the history is missing beside an existing marker table
    /// (`Decisive::history_missing`).
    pub async fn newest_marker(
        &mut self,
        table: &Table,
        migrations: &MigrationsTable,
        version: &str,
        upto: Option<Upto<'_>>,
        newest: bool,
    ) -> Result<Decisive> {
        let r = self
            .newest_rows(table, migrations, version, upto, newest)
            .await;
        match r {
            // Which table is missing: the marker's, or the history beside it? Asked for
            // `wait` (`newest`), which must say which; the migrate fast path takes either
            // as not done, without a second round trip on a database's first run.
            Err(e) if upto.is_some() && newest && is_undefined_table(&e) => {
                match self
                    .newest_rows(table, migrations, version, None, newest)
                    .await
                {
                    Ok(rows) => Ok(Decisive {
                        history_missing: true,
                        ..settle_newest(Ok(rows), table, version)?
                    }),
                    Err(_) => settle_newest(Err(e), table, version),
                }
            }
            r => settle_newest(r, table, version),
        }
    }

    async fn newest_rows(
        &mut self,
        table: &Table,
        migrations: &MigrationsTable,
        version: &str,
        upto: Option<Upto<'_>>,
        newest: bool,
    ) -> Result<Vec<NewestRow>, sqlx::Error> {
        match self {
            Conn::Pg(c) => {
                postgres::newest_marker(c, table, migrations, version, upto, newest).await
            }
            Conn::My(c) => mysql::newest_marker(c, table, migrations, version, upto, newest).await,
            Conn::Lite(c) => {
                sqlite::newest_marker(c, table, migrations, version, upto, newest).await
            }
        }
    }

    /// Where this connection looks for the migrations table, and where it exists (for a
    /// message when it is missing: `Decisive::history_missing`).
    pub async fn history_whereabouts(&mut self, migrations: &MigrationsTable) -> Whereabouts {
        let r = match self {
            Conn::Pg(c) => postgres::history_whereabouts(c, migrations).await,
            Conn::My(c) => mysql::history_whereabouts(c, migrations).await,
            Conn::Lite(_) => return Whereabouts::default(),
        };
        r.unwrap_or_default()
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

    /// Applied migrations and the dirty version, or empty when the table is missing.
    pub async fn applied(
        &mut self,
        table: &MigrationsTable,
    ) -> Result<(Vec<AppliedMigration>, Option<i64>)> {
        if let Conn::Pg(c) = self {
            return settle_applied(postgres::applied(c, table).await);
        }
        let migrate = self.migrate();
        let applied = match migrate.list_applied_migrations(table.qualified()).await {
            Ok(a) => a,
            Err(sqlx::migrate::MigrateError::Execute(e)) if is_undefined_table(&e) => {
                return Ok((Vec::new(), None));
            }
            Err(e) => return Err(migrate_err("cannot list applied migrations", e)),
        };
        let dirty = migrate
            .dirty_version(table.qualified())
            .await
            .map_err(|e| migrate_err("cannot list applied migrations", e))?;
        Ok((applied, dirty))
    }

    pub async fn ensure_migrations_table(&mut self, table: &MigrationsTable) -> Result<()> {
        self.migrate()
            .ensure_migrations_table(table.qualified())
            .await
            .map_err(|e| migrate_err(&format!("cannot create {table}"), e))
    }

    /// Apply transactional migrations together in one transaction (PostgreSQL), or one
    /// migration on any backend, recording them in `table`. A failed `-- no-transaction`
    /// migration is recorded dirty. Each migration is read as `migrations` yields it and let
    /// go once applied: one is in memory at a time. One that cannot be read fails the group,
    /// before it commits.
    pub async fn apply(
        &mut self,
        table: &MigrationsTable,
        migrations: impl IntoIterator<Item = Result<Migration>>,
        opts: &ApplyOptions,
    ) -> Result<(), ApplyError> {
        let mut migrations = migrations.into_iter();
        match self {
            Conn::Pg(c) => {
                let Some(first) = migrations.next() else {
                    return Ok(());
                };
                let first = first.map_err(|e| ApplyError::unreadable(&e))?;
                if !first.no_tx {
                    let all = std::iter::once(Ok(first)).chain(migrations);
                    return postgres::apply_in_tx(c, table, all, opts).await;
                }
                postgres::apply_no_tx(c, table, &first, opts)
                    .await
                    .map_err(ApplyError::from_no_tx)
            }
            Conn::My(_) | Conn::Lite(_) => {
                for m in migrations {
                    let m = m.map_err(|e| ApplyError::unreadable(&e))?;
                    let in_pieces = matches!(self, Conn::Lite(_)) && m.sql.as_str().len() > PIECE;
                    let m = if in_pieces { m } else { shared_sql(m) };
                    let r = match &mut *self {
                        Conn::Lite(c) if in_pieces => {
                            sqlite::apply_in_pieces(c, table.qualified(), &m, PIECE).await
                        }
                        _ => self
                            .migrate()
                            .apply(table.qualified(), &m)
                            .await
                            .map(|_| ()),
                    };
                    // sqlx's send buffer grew to the migration's size: let it go.
                    self.shrink_buffers();
                    if let (Err(_), true, Conn::Lite(c)) = (&r, m.no_tx, &mut *self)
                        && let Err(record) = sqlite::record_dirty(c, table, &m).await
                    {
                        tracing::warn!(
                            "could not record migration {} as dirty: {record}",
                            m.version
                        );
                    }
                    r.map_err(|e| ApplyError {
                        dirty: m.no_tx,
                        took_effect: m.no_tx,
                        ..ApplyError::from_migrate(e)
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Let go of the memory a large query left in the connection's buffers.
    fn shrink_buffers(&mut self) {
        use sqlx::Connection;
        match self {
            Conn::Pg(c) => c.shrink_buffers(),
            Conn::My(c) => c.shrink_buffers(),
            Conn::Lite(c) => c.shrink_buffers(),
        }
    }

    /// Run a down migration and delete its row from `table`.
    pub async fn revert(
        &mut self,
        table: &MigrationsTable,
        down: Migration,
        fence: Option<&Fence>,
    ) -> Result<(), ApplyError> {
        match self {
            Conn::Pg(c) => postgres::revert(c, table, down, fence)
                .await
                .map_err(ApplyError::from_no_tx),
            _ => {
                let down = shared_sql(down);
                let r = self.migrate().revert(table.qualified(), &down).await;
                self.shrink_buffers();
                r.map(|_| ()).map_err(ApplyError::from_migrate)
            }
        }
    }

    /// Record a migration as applied in `table` without running it (or mark a dirty one
    /// done).
    pub async fn stamp(
        &mut self,
        table: &MigrationsTable,
        m: &Migration,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let r = match self {
            Conn::Pg(c) => postgres::stamp(c, table, m, fence).await,
            Conn::My(c) => mysql::stamp(c, table, m).await,
            Conn::Lite(c) => sqlite::stamp(c, table, m).await,
        };
        r.map_err(|e| {
            db_err(
                &format!("cannot record migration {} as applied", m.version),
                e,
            )
        })
    }

    /// Create a database on this connection's server (smoke's scratch database). `name`
    /// must be a plain identifier.
    pub async fn create_database(&mut self, name: &str) -> Result<()> {
        let sql = format!("CREATE DATABASE {name}");
        let r = match self {
            Conn::Pg(c) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|_| ()),
            Conn::My(c) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|_| ()),
            Conn::Lite(_) => Ok(()),
        };
        r.map_err(|e| db_err(&format!("cannot create the scratch database {name}"), e))
    }

    /// Drop a database created by `create_database`, ending its sessions.
    pub async fn drop_database(&mut self, name: &str) -> Result<()> {
        let r = match self {
            Conn::Pg(c) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(c)
            .await
            .map(|_| ()),
            Conn::My(c) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(c)
            .await
            .map(|_| ()),
            Conn::Lite(_) => Ok(()),
        };
        r.map_err(|e| db_err(&format!("cannot drop the scratch database {name}"), e))
    }

    /// How many tables the connected database holds (smoke refuses to rehearse on data).
    pub async fn table_count(&mut self) -> Result<i64> {
        let r = match self {
            Conn::Pg(c) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_tables \
                     WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                )
                .fetch_one(c)
                .await
            }
            Conn::My(c) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM information_schema.tables \
                     WHERE table_schema = DATABASE()",
                )
                .fetch_one(c)
                .await
            }
            Conn::Lite(c) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_one(c)
                .await
            }
        };
        r.map_err(|e| db_err("cannot list the tables", e))
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

/// `m` with its SQL shared rather than owned: sqlx's `Migrate` clones it to run it, which
/// copies an owned text (one more copy of a migration of any size) but not a shared one.
fn shared_sql(m: Migration) -> Migration {
    let sql: std::sync::Arc<str> = m.sql.as_str().into();
    Migration {
        sql: sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        ..m
    }
}

/// What another migrator's history table holds: one text id per applied migration and, on
/// PostgreSQL, `age(xmin)` of the most recently written row (smaller is newer).
pub type HistoryRows = (Vec<String>, Option<i64>);

impl Conn {
    /// `expr` as text, in this backend's SQL.
    pub fn cast_text(&self, expr: &str) -> String {
        match self {
            Conn::My(_) => format!("CAST({expr} AS CHAR)"),
            Conn::Pg(_) | Conn::Lite(_) => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// The text of `parts` joined, in this backend's SQL.
    pub fn concat(&self, parts: &[&str]) -> String {
        match self {
            Conn::My(_) => format!("CONCAT({})", parts.join(", ")),
            Conn::Pg(_) | Conn::Lite(_) => parts.join(" || "),
        }
    }

    /// A table name given by the user, quoted as this backend's migrators quote it: on
    /// PostgreSQL `schema.table` is two identifiers, on MySQL and SQLite the whole name is
    /// one.
    pub fn quote_table(&self, name: &str) -> String {
        match self {
            Conn::Pg(_) => name
                .split('.')
                .map(|part| format!("\"{part}\""))
                .collect::<Vec<_>>()
                .join("."),
            Conn::My(_) => format!("`{name}`"),
            Conn::Lite(_) => format!("\"{name}\""),
        }
    }

    /// `SELECT expr FROM table` of another migrator's history table.
    pub async fn history_rows(
        &mut self,
        expr: &str,
        table: &str,
    ) -> Result<HistoryRows, sqlx::Error> {
        match self {
            Conn::Pg(c) => postgres::history_rows(c, expr, table).await,
            Conn::My(c) => mysql::history_rows(c, expr, table).await,
            Conn::Lite(c) => sqlite::history_rows(c, expr, table).await,
        }
    }

    /// The newest marker for `version` (or the newest rollback): status, detail and, on
    /// PostgreSQL, `age(xmin)` (0 elsewhere).
    pub async fn newest_marker_row(
        &mut self,
        table: &Table,
        version: &str,
    ) -> Result<Option<(String, Option<String>, i64)>, sqlx::Error> {
        match self {
            Conn::Pg(c) => postgres::newest_marker_row(c, table, version).await,
            Conn::My(c) => mysql::newest_marker_row(c, table, version).await,
            Conn::Lite(c) => sqlite::newest_marker_row(c, table, version).await,
        }
    }

    /// The detail of the newest `succeeded` marker whose detail starts with `prefix`.
    pub async fn newest_succeeded_detail(
        &mut self,
        table: &Table,
        prefix: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        match self {
            Conn::Pg(c) => postgres::newest_succeeded_detail(c, table, prefix).await,
            Conn::My(c) => mysql::newest_succeeded_detail(c, table, prefix).await,
            Conn::Lite(c) => sqlite::newest_succeeded_detail(c, table, prefix).await,
        }
    }
}

/// The rows `newest_marker_sql` reads, as `Conn::newest_marker` reports them: no table
/// means none yet; otherwise the marker's rule decides (`marker::settle`).
pub(crate) fn settle_newest(
    r: Result<Vec<NewestRow>, sqlx::Error>,
    table: &Table,
    version: &str,
) -> Result<Decisive> {
    match r {
        Err(e) if is_undefined_table(&e) => Ok(Decisive::default()),
        Err(e) => Err(db_err(
            &format!("cannot read the marker from {}", table.qualified),
            e,
        )),
        Ok(rows) => Ok(crate::marker::settle(rows, version)),
    }
}

/// Applied migrations as `Conn::applied` reports them: no table means none.
pub fn settle_applied(
    r: Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error>,
) -> Result<(Vec<AppliedMigration>, Option<i64>)> {
    match r {
        Err(e) if is_undefined_table(&e) => Ok((Vec::new(), None)),
        r => r.map_err(|e| db_err("cannot list applied migrations", e)),
    }
}

/// The version of schemagate, recorded in each marker.
pub const TOOL_VERSION: &str = concat!("schemagate ", env!("CARGO_PKG_VERSION"));
