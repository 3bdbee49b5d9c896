//! The databases: one `Conn` per connection, whichever backend the URL names, behind the
//! `Backend` trait each backend implements in its own file (`postgres/`, `mysql.rs`,
//! `sqlite.rs`) with its own SQL; connecting and classifying errors are `connect.rs`'s.
//! Migrations use sqlx's types, checksums and table layout everywhere (`_sqlx_migrations`,
//! or the `MigrationsTable` the config names, passed to each call); MySQL and SQLite apply
//! them through sqlx's `Migrate` trait, PostgreSQL through the simple query protocol.

/// The `Backend` methods every backend writes alike for its sqlx connection type: sqlx's
/// `Migrate`, closing, letting buffers go, and statements without parameters. Expanded
/// inside each `impl Backend`.
macro_rules! sqlx_connection_backend {
    () => {
        fn migrate(&mut self) -> &mut dyn sqlx::migrate::Migrate {
            self
        }

        fn close(self: Box<Self>) -> $crate::db::backend::Fut<'static, ()> {
            Box::pin(sqlx::Connection::close(*self))
        }

        fn shrink_buffers(&mut self) {
            sqlx::Connection::shrink_buffers(self)
        }

        fn execute(&mut self, sql: String) -> $crate::db::backend::Fut<'_, u64> {
            Box::pin(async move {
                let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(self)
                    .await?;
                Ok(done.rows_affected())
            })
        }

        fn fetch(
            &mut self,
            sql: String,
            texts: usize,
            ints: usize,
        ) -> $crate::db::backend::Fut<'_, $crate::db::backend::Rows> {
            Box::pin(async move {
                let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self)
                    .await?;
                $crate::db::backend::decode(rows, texts, ints)
            })
        }
    };
}

/// The `Backend` methods MySQL and SQLite share word for word (both bind with `?`, neither
/// marker table keeps a write order, both go through sqlx's `Migrate`): other migrators'
/// history, the newest marker for a version, the newest `succeeded` detail, the applied
/// migrations, reverting. Expanded inside each one's `impl Backend`.
macro_rules! question_mark_backend {
    () => {
        /// Another migrator's rows carry no write order here.
        fn history_rows<'a>(
            &'a mut self,
            expr: &'a str,
            table: &'a str,
        ) -> $crate::db::backend::Fut<'a, $crate::db::HistoryRows> {
            Box::pin(async move {
                let sql = format!("SELECT {expr} FROM {table}");
                let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut *self)
                    .await?;
                Ok((rows, None))
            })
        }

        /// No write order: 0.
        fn newest_marker_row<'a>(
            &'a mut self,
            t: &'a $crate::settings::Table,
            version: &'a str,
        ) -> $crate::db::backend::Fut<'a, Option<(String, Option<String>, i64)>> {
            Box::pin(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT status, detail, 0 FROM {} WHERE version = ? OR action = 'rollback' \
                     ORDER BY id DESC LIMIT 1",
                    t.qualified
                )))
                .bind(version)
                .fetch_optional(&mut *self),
            )
        }

        fn newest_succeeded_detail<'a>(
            &'a mut self,
            t: &'a $crate::settings::Table,
            prefix: &'a str,
        ) -> $crate::db::backend::Fut<'a, Option<String>> {
            Box::pin(async move {
                let detail: Option<Option<String>> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT detail FROM {} WHERE status = 'succeeded' AND detail LIKE ? \
                         ORDER BY id DESC LIMIT 1",
                        t.qualified
                    )))
                    .bind(format!("{prefix}%"))
                    .fetch_optional(&mut *self)
                    .await?;
                Ok(detail.flatten())
            })
        }

        fn applied<'a>(
            &'a mut self,
            table: &'a $crate::settings::MigrationsTable,
        ) -> $crate::db::backend::Boxed<
            'a,
            $crate::error::Result<(Vec<sqlx::migrate::AppliedMigration>, Option<i64>)>,
        > {
            $crate::db::backend::applied_via_migrate(self, table)
        }

        fn revert<'a>(
            &'a mut self,
            table: &'a $crate::settings::MigrationsTable,
            down: sqlx::migrate::Migration,
            _fence: Option<&'a $crate::db::Fence>,
        ) -> $crate::db::backend::Boxed<'a, Result<(), $crate::db::ApplyError>> {
            Box::pin($crate::db::revert_via_migrate(self, table, down))
        }
    };
}

mod backend;
pub mod catalog;
pub mod scratch;
mod stale;
pub use scratch::Scratch;
mod connect;
mod dialect;
mod mysql;
mod postgres;
mod protocol;
mod server;
mod sqlite;

use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::{AppliedMigration, Migrate, Migration};

use crate::error::{self, Error, Result};
use crate::redact::redact;
use crate::settings::{Config, MigrationsTable, Table};

pub use crate::marker::Upto;
pub use crate::marker::{Decisive, Marker, NewMarker, Status};
pub(crate) use crate::marker::{NewestRow, marker_from_row, newest_marker_sql};
use backend::Backend;
use connect::is_permission_error;
pub use connect::{Class, backoff, classify, connect, describe, dialect_of};
pub use dialect::Dialect;
pub use postgres::{Listener, Wake};
pub use server::{Engine, ServerInfo};

/// What only PostgreSQL has, on its typed connection: the lease and the probe (`lock/`),
/// LISTEN, and `check`'s rehearsal with its lock observation, which run migrate's own SQL
/// inside transactions they watch. Everything else reaches PostgreSQL through `Conn`.
pub(crate) mod pg {
    pub(crate) use crate::db::postgres::catalog::take as catalog;
    pub(crate) use crate::db::postgres::{
        Existing, advisory_held, apply_in_tx, apply_no_tx, create_schema_sql, ensure_tables, exec,
        held_here_sql, listen_for_markers, lit, lock_busy, migration_in_tx_sql, millis, row, rows,
        rows_creating, wait_for_marker,
    };
}
pub use sqlite::options as sqlite_options;

/// One open connection to whichever backend the URL names.
pub struct Conn(Box<dyn Backend>);

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
    /// `Class::Config` when retrying cannot help: the user lacks a privilege the migration
    /// needs (exit 2).
    pub class: error::Class,
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
            class: if is_permission_error(e) {
                error::Class::Config
            } else {
                error::Class::Runtime
            },
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
            class: e.class(),
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
                class: error::Class::Runtime,
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
            Class::Config => error::Class::Config,
            Class::Transient | Class::Other => error::Class::Runtime,
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
    pub(crate) fn new(backend: impl Backend + 'static) -> Conn {
        Conn(Box::new(backend))
    }

    fn backend(&mut self) -> &mut dyn Backend {
        &mut *self.0
    }

    /// sqlx's migration operations on this connection.
    pub fn migrate(&mut self) -> &mut dyn Migrate {
        self.0.migrate()
    }

    pub async fn close(self) {
        let _ = self.0.close().await;
    }

    /// The PostgreSQL connection, for what only PostgreSQL has (the lease, the probe).
    pub fn pg(&mut self) -> Option<&mut PgConnection> {
        self.0.as_pg()
    }

    /// The PostgreSQL connection itself, for what only PostgreSQL has (`pg`).
    pub fn into_pg(self) -> Option<PgConnection> {
        self.0.into_pg()
    }

    /// The catalog as `check` compares it (relations, columns, indexes, ...).
    pub async fn catalog(&mut self) -> Result<catalog::Snapshot, sqlx::Error> {
        self.0.catalog().await
    }

    /// Run `sql` (statements without parameters); the rows it changed.
    pub async fn execute(&mut self, sql: String) -> Result<u64, sqlx::Error> {
        self.0.execute(sql).await
    }

    /// Rows of `sql`: `texts` text columns, then `ints` 64-bit integer columns.
    pub async fn fetch(
        &mut self,
        sql: String,
        texts: usize,
        ints: usize,
    ) -> Result<backend::Rows, sqlx::Error> {
        self.0.fetch(sql, texts, ints).await
    }

    /// Settings for the connection that holds the lock and runs migrations. On PostgreSQL,
    /// returns what it learnt about the server (with `probe_key`, unless the lease was asked
    /// for: whether the lock is held by another session, and whether this one took the
    /// probe key or was refused it).
    pub async fn prepare_for_lock(
        &mut self,
        cfg: &Config,
        probe_key: Option<i64>,
    ) -> Result<Option<ServerInfo>> {
        let busy = probe_key
            .filter(|_| cfg.lock.mode != crate::settings::LockMode::Lease)
            .map(|p| (cfg.lock.key, p));
        self.0
            .prepare_for_lock(busy)
            .await
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
        self.0
            .try_lock(&cfg.lock, token, then_release)
            .await
            .map_err(|e| db_err("cannot take the migration lock", e))
    }

    /// Release the migration lock; false when this session did not hold it.
    pub async fn unlock(&mut self, cfg: &Config) -> Result<bool> {
        self.0
            .unlock(&cfg.lock)
            .await
            .map_err(|e| db_err("cannot release the migration lock", e))
    }

    /// Whether this connection still holds the migration lock; `Err` says why not.
    pub async fn lock_still_held(&mut self, cfg: &Config) -> Result<(), LockGone> {
        match self.0.holds_lock(&cfg.lock).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(LockGone::NotHeld),
            Err(e) => Err(LockGone::Connection(describe(&e))),
        }
    }

    pub async fn lock_holder(&mut self, cfg: &Config) -> Result<Option<Holder>> {
        self.0
            .lock_holder(&cfg.lock)
            .await
            .map_err(|e| db_err("cannot read the lock holder", e))
    }

    /// Where `table` lives as the server resolves its name, and where a name needs no
    /// qualifier (for the default lock's name, `LockConfig::resolved`). PostgreSQL: the
    /// table's schema (for an unqualified name, asked of the server) and `public`. MySQL:
    /// the table's database and the connection's (asked only for a qualified name).
    /// SQLite: the table's schema and `main`.
    pub async fn table_home(&mut self, table: &Table) -> Result<(Option<String>, Option<String>)> {
        self.0.table_home(table).await.map_err(|e| {
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
        self.0.free_slots().await.unwrap_or_else(|e| {
            tracing::debug!("cannot read the free connection slots: {}", describe(&e));
            None
        })
    }

    /// This session's id on the server (for killing it from another connection).
    pub async fn session_id(&mut self) -> Result<i64> {
        self.0
            .session_id()
            .await
            .map_err(|e| db_err("cannot read the session id", e))
    }

    /// Cancel the statement another session of ours runs, and wait (up to `limit`) until
    /// it is no longer running one: its transaction is then aborted or was committed, and
    /// the session still holds the lock. False when it did not settle in time.
    pub async fn cancel_and_settle(&mut self, id: i64, limit: Duration) -> Result<bool> {
        match tokio::time::timeout(limit, self.0.cancel_and_settle(id)).await {
            Ok(r) => r
                .map(|()| true)
                .map_err(|e| db_err("cannot cancel the interrupted statement", e)),
            Err(_) => Ok(false),
        }
    }

    /// End another session of ours: its transaction rolls back and its lock is released.
    pub async fn kill_session(&mut self, id: i64) -> Result<()> {
        self.0
            .kill_session(id)
            .await
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
        if let Some(migrations) = migrations {
            if let Some(both) = self.0.ensure_tables(table, migrations) {
                return both.await.map_err(|e| {
                    db_err(
                        &format!(
                            "cannot create {migrations} and the marker table {}",
                            table.qualified
                        ),
                        e,
                    )
                });
            }
            self.ensure_migrations_table(migrations).await?;
        }
        self.ensure_marker_table(table).await
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
        let Some(read) = self
            .0
            .ensure_tables_and_read(table, migrations, version, upto)
        else {
            return Ok(None);
        };
        let (newest, applied) = read.await.map_err(|e| {
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
        self.0.ensure_marker_table(table).await.map_err(|e| {
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
        self.0
            .insert_marker(table, &m, fence, engine, unless_done)
            .await
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
            .0
            .newest_marker(table, migrations, version, upto, newest)
            .await;
        match r {
            // Which table is missing: the marker's, or the history beside it? Asked for
            // `wait` (`newest`), which must say which; the migrate fast path takes either
            // as not done, without a second round trip on a database's first run.
            Err(e) if upto.is_some() && newest && is_undefined_table(&e) => {
                match self
                    .0
                    .newest_marker(table, migrations, version, None, newest)
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

    /// Where this connection looks for the migrations table, and where it exists (for a
    /// message when it is missing: `Decisive::history_missing`).
    pub async fn history_whereabouts(&mut self, migrations: &MigrationsTable) -> Whereabouts {
        self.0
            .history_whereabouts(migrations)
            .await
            .unwrap_or_default()
    }

    /// Marker history, newest first. Empty when the table does not exist.
    pub async fn markers(&mut self, table: &Table, limit: u32) -> Result<Vec<Marker>> {
        match self.0.markers(table, limit).await {
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
        self.0.applied(table).await
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
    pub async fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        migrations: impl IntoIterator<Item = Result<Migration>, IntoIter: Send + 'a>,
        opts: &'a ApplyOptions,
    ) -> Result<(), ApplyError> {
        let migrations = Box::new(migrations.into_iter());
        self.0.apply(table, migrations, opts).await
    }

    /// Run a down migration and delete its row from `table`.
    pub async fn revert(
        &mut self,
        table: &MigrationsTable,
        down: Migration,
        fence: Option<&Fence>,
    ) -> Result<(), ApplyError> {
        self.0.revert(table, down, fence).await
    }

    /// Record a migration as applied in `table` without running it (or mark a dirty one
    /// done).
    pub async fn stamp(
        &mut self,
        table: &MigrationsTable,
        m: &Migration,
        fence: Option<&Fence>,
    ) -> Result<()> {
        self.0.stamp(table, m, fence).await.map_err(|e| {
            db_err(
                &format!("cannot record migration {} as applied", m.version),
                e,
            )
        })
    }

    /// Create a database on this connection's server (smoke's scratch database). `name`
    /// must be a plain identifier.
    pub async fn create_database(&mut self, name: &str) -> Result<()> {
        self.0
            .create_database(name)
            .await
            .map_err(|e| db_err(&format!("cannot create the scratch database {name}"), e))
    }

    /// Drop a database created by `create_database`, ending its sessions.
    pub async fn drop_database(&mut self, name: &str) -> Result<()> {
        self.0
            .drop_database(name)
            .await
            .map_err(|e| db_err(&format!("cannot drop the scratch database {name}"), e))
    }

    /// How many tables the connected database holds (smoke refuses to rehearse on data).
    pub async fn table_count(&mut self) -> Result<i64> {
        self.0
            .table_count()
            .await
            .map_err(|e| db_err("cannot list the tables", e))
    }

    /// Indexes a failed `CREATE INDEX CONCURRENTLY` left invalid (PostgreSQL only).
    pub async fn invalid_indexes(&mut self) -> Result<Vec<String>> {
        self.0
            .invalid_indexes()
            .await
            .map_err(|e| db_err("cannot list invalid indexes", e))
    }

    /// How this backend spells what portable statements need.
    pub fn dialect(&self) -> &'static Dialect {
        self.0.dialect()
    }

    /// `expr` as text, in this backend's SQL.
    pub fn cast_text(&self, expr: &str) -> String {
        self.0.cast_text(expr)
    }

    /// The text of `parts` joined, in this backend's SQL.
    pub fn concat(&self, parts: &[&str]) -> String {
        self.0.concat(parts)
    }

    /// A table name given by the user, quoted as this backend's migrators quote it: on
    /// PostgreSQL `schema.table` is two identifiers, on MySQL and SQLite the whole name is
    /// one.
    pub fn quote_table(&self, name: &str) -> String {
        self.0.quote_table(name)
    }

    /// `SELECT expr FROM table` of another migrator's history table.
    pub async fn history_rows(
        &mut self,
        expr: &str,
        table: &str,
    ) -> Result<HistoryRows, sqlx::Error> {
        self.0.history_rows(expr, table).await
    }

    /// The newest marker for `version` (or the newest rollback): status, detail and, on
    /// PostgreSQL, `age(xmin)` (0 elsewhere).
    pub async fn newest_marker_row(
        &mut self,
        table: &Table,
        version: &str,
    ) -> Result<Option<(String, Option<String>, i64)>, sqlx::Error> {
        self.0.newest_marker_row(table, version).await
    }

    /// The detail of the newest `succeeded` marker whose detail starts with `prefix`.
    pub async fn newest_succeeded_detail(
        &mut self,
        table: &Table,
        prefix: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        self.0.newest_succeeded_detail(table, prefix).await
    }
}

/// MySQL and SQLite: each migration through sqlx's `Migrate` (SQLite's large ones in
/// pieces: `apply_large`), one at a time, its buffers let go after it; a failed
/// `-- no-transaction` one recorded dirty by `record_dirty`.
pub(super) async fn apply_each<C>(
    c: &mut C,
    table: &MigrationsTable,
    migrations: backend::Migrations<'_>,
    apply_large: Option<backend::ApplyLarge<C>>,
    record_dirty: Option<backend::RecordDirty<C>>,
) -> Result<(), ApplyError>
where
    C: Backend,
{
    for m in migrations {
        let m = m.map_err(|e| ApplyError::unreadable(&e))?;
        let large = apply_large.filter(|_| m.sql.as_str().len() > PIECE);
        let m = if large.is_some() { m } else { shared_sql(m) };
        let r = match large {
            Some(apply_large) => apply_large(c, table.qualified(), &m).await,
            None => c.migrate().apply(table.qualified(), &m).await.map(|_| ()),
        };
        // sqlx's send buffer grew to the migration's size: let it go.
        c.shrink_buffers();
        if let (Err(_), true, Some(record_dirty)) = (&r, m.no_tx, record_dirty)
            && let Err(record) = record_dirty(c, table, &m).await
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

/// MySQL and SQLite: a down migration through sqlx's `Migrate`.
pub(super) async fn revert_via_migrate<C: Backend>(
    c: &mut C,
    table: &MigrationsTable,
    down: Migration,
) -> Result<(), ApplyError> {
    let down = shared_sql(down);
    let r = c.migrate().revert(table.qualified(), &down).await;
    c.shrink_buffers();
    r.map(|_| ()).map_err(ApplyError::from_migrate)
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
