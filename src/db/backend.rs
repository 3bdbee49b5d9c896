//! What a backend provides, as one trait object behind `Conn`: its SQL dialect, the
//! migration lock, the marker and history tables, applying migrations, scratch databases.
//! Each backend implements it in its own file (`postgres.rs`, `mysql.rs`, `sqlite.rs`) for
//! its sqlx connection type; `Conn` adds the error contexts, once for all of them. A new
//! backend is one more file here and one more arm in `connect.rs`.
//!
//! Methods return boxed futures (what `async fn` in a trait object needs; sqlx's own
//! `Migrate` trait does the same) and the driver's error, unless the backend decides more
//! than the driver says (applying migrations: `ApplyError`).

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use sqlx::migrate::{AppliedMigration, Migrate, Migration};

use super::catalog::Snapshot;
use super::dialect::Dialect;
use super::server::{Engine, ServerInfo};
use super::{ApplyError, ApplyOptions, Fence, HistoryRows, Holder, Marker, NewMarker};
use super::{NewestRow, Upto, Whereabouts};
use crate::error::Result;
use crate::settings::{LockConfig, MigrationsTable, Table};

/// A boxed future of the backend's work.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed future with the driver's error.
pub type Fut<'a, T> = Boxed<'a, Result<T, sqlx::Error>>;

/// Migrations read one at a time as they are applied (`Conn::apply`).
pub type Migrations<'a> = Box<dyn Iterator<Item = Result<Migration>> + Send + 'a>;

/// The marker rows that decide a version and the applied migrations, read together
/// (`Backend::ensure_tables_and_read`).
pub type NewestAndApplied = (Vec<NewestRow>, (Vec<AppliedMigration>, Option<i64>));

/// How a backend applies a migration too large for one query (`apply_each`).
pub type ApplyLarge<C> = for<'b> fn(
    &'b mut C,
    &'b str,
    &'b Migration,
) -> Boxed<'b, Result<(), sqlx::migrate::MigrateError>>;

/// How a backend records a failed `-- no-transaction` migration dirty (`apply_each`).
pub type RecordDirty<C> = for<'b> fn(&'b mut C, &'b MigrationsTable, &'b Migration) -> Fut<'b, ()>;

/// Text rows of another migrator's table, or of the release registry: `(texts, ints)` per
/// row, for `texts` text columns followed by `ints` 64-bit integer columns.
pub type Rows = Vec<(Vec<String>, Vec<i64>)>;

pub trait Backend: Send {
    // ----- the dialect -----

    /// How this backend spells what portable statements need.
    fn dialect(&self) -> &'static Dialect;

    /// `expr` as text.
    fn cast_text(&self, expr: &str) -> String;

    /// The text of `parts` joined.
    fn concat(&self, parts: &[&str]) -> String;

    /// A table name given by the user, quoted as this backend's migrators quote it.
    fn quote_table(&self, name: &str) -> String;

    // ----- the connection -----

    /// sqlx's migration operations on this connection.
    fn migrate(&mut self) -> &mut dyn Migrate;

    fn close(self: Box<Self>) -> Fut<'static, ()>;

    /// Let go of the memory a large query left in the connection's buffers.
    fn shrink_buffers(&mut self);

    /// The PostgreSQL connection, for what only PostgreSQL has (the lease, the probe,
    /// LISTEN, `check`'s lock observation).
    fn as_pg(&mut self) -> Option<&mut PgConnection> {
        None
    }

    /// The PostgreSQL connection itself (`check`'s admin connection).
    fn into_pg(self: Box<Self>) -> Option<PgConnection> {
        None
    }

    /// Run `sql` (one or more statements, no parameters); the rows it changed.
    fn execute(&mut self, sql: String) -> Fut<'_, u64>;

    /// Rows of `sql`: `texts` text columns, then `ints` integer columns.
    fn fetch(&mut self, sql: String, texts: usize, ints: usize) -> Fut<'_, Rows>;

    // ----- the migration lock -----

    /// Settings for the connection that holds the lock and runs migrations; with `busy`
    /// (the lock key and a probe key), whether the lock is held elsewhere (PostgreSQL).
    fn prepare_for_lock(&mut self, busy: Option<(i64, i64)>) -> Fut<'_, Option<ServerInfo>>;

    fn try_lock<'a>(
        &'a mut self,
        lock: &'a LockConfig,
        token: &'a str,
        then_release: Option<i64>,
    ) -> Fut<'a, bool>;

    /// Release the lock; false when this session did not hold it.
    fn unlock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool>;

    fn holds_lock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool>;

    fn lock_holder<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, Option<Holder>>;

    /// Where `table` lives as the server resolves its name, and where a name needs no
    /// qualifier (`Conn::table_home`).
    fn table_home<'a>(&'a mut self, table: &'a Table) -> Fut<'a, (Option<String>, Option<String>)>;

    // ----- sessions -----

    /// How many more connections the server would accept now, when it says.
    fn free_slots(&mut self) -> Fut<'_, Option<i64>>;

    fn session_id(&mut self) -> Fut<'_, i64>;

    /// Cancel the statement session `id` runs and return once it runs none.
    fn cancel_and_settle(&mut self, id: i64) -> Fut<'_, ()>;

    fn kill_session(&mut self, id: i64) -> Fut<'_, ()>;

    // ----- markers and history -----

    fn ensure_marker_table<'a>(&'a mut self, t: &'a Table) -> Fut<'a, ()>;

    /// The migrations table and the marker table in one statement, when the backend can
    /// (`None`: `Conn::ensure_tables` creates them one after the other).
    fn ensure_tables<'a>(
        &'a mut self,
        _t: &'a Table,
        _migrations: &'a MigrationsTable,
    ) -> Option<Fut<'a, ()>> {
        None
    }

    /// `ensure_tables` and the reads the lock holder needs next, in one round trip, when
    /// the backend can (`None`: ask separately).
    fn ensure_tables_and_read<'a>(
        &'a mut self,
        _t: &'a Table,
        _migrations: &'a MigrationsTable,
        _version: &'a str,
        _upto: Option<Upto<'a>>,
    ) -> Option<Fut<'a, NewestAndApplied>> {
        None
    }

    /// Append a marker row (`unless_done`: not when the version's deciding marker is
    /// `succeeded` by then, where the backend can tell in the same statement).
    fn insert_marker<'a>(
        &'a mut self,
        t: &'a Table,
        m: &'a NewMarker<'a>,
        fence: Option<&'a Fence>,
        engine: Engine,
        unless_done: bool,
    ) -> Fut<'a, ()>;

    fn newest_marker<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<Upto<'a>>,
        newest: bool,
    ) -> Fut<'a, Vec<NewestRow>>;

    /// Where this connection looks for the migrations table, and where it exists.
    fn history_whereabouts<'a>(
        &'a mut self,
        migrations: &'a MigrationsTable,
    ) -> Fut<'a, Whereabouts>;

    /// Marker history, newest first.
    fn markers<'a>(&'a mut self, t: &'a Table, limit: u32) -> Fut<'a, Vec<Marker>>;

    /// Applied migrations and the dirty version.
    fn applied<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
    ) -> Boxed<'a, Result<(Vec<AppliedMigration>, Option<i64>)>>;

    /// `SELECT expr FROM table` of another migrator's history table.
    fn history_rows<'a>(&'a mut self, expr: &'a str, table: &'a str) -> Fut<'a, HistoryRows>;

    /// The newest marker for `version` (or the newest rollback): status, detail and the
    /// age of its row where the backend keeps a write order (0 elsewhere).
    fn newest_marker_row<'a>(
        &'a mut self,
        t: &'a Table,
        version: &'a str,
    ) -> Fut<'a, Option<(String, Option<String>, i64)>>;

    /// The detail of the newest `succeeded` marker whose detail starts with `prefix`.
    fn newest_succeeded_detail<'a>(
        &'a mut self,
        t: &'a Table,
        prefix: &'a str,
    ) -> Fut<'a, Option<String>>;

    // ----- applying migrations -----

    /// Apply migrations (`Conn::apply`), recording them in `table`.
    fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        migrations: Migrations<'a>,
        opts: &'a ApplyOptions,
    ) -> Boxed<'a, Result<(), ApplyError>>;

    /// Run a down migration and delete its row from `table`.
    fn revert<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        down: Migration,
        fence: Option<&'a Fence>,
    ) -> Boxed<'a, Result<(), ApplyError>>;

    /// Record a migration as applied without running it (or mark a dirty one done).
    fn stamp<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        m: &'a Migration,
        fence: Option<&'a Fence>,
    ) -> Fut<'a, ()>;

    /// Indexes a failed `CREATE INDEX CONCURRENTLY` left invalid (none where there is no
    /// such statement).
    fn invalid_indexes(&mut self) -> Fut<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The catalog as `check` compares it.
    fn catalog(&mut self) -> Fut<'_, Snapshot>;

    // ----- scratch databases (smoke, check) -----

    /// Create database `name` (a plain identifier) on this server; nothing where a
    /// database is a file.
    fn create_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()>;

    /// Drop a database `create_database` made, ending its sessions.
    fn drop_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()>;

    /// How many tables the connected database holds.
    fn table_count(&mut self) -> Fut<'_, i64>;

    /// Before creating scratch database `name`: drop the stale ones, then take `name`'s
    /// lock on this connection, which stays open until `name` is dropped (`scratch.rs`).
    fn prepare_scratch<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()>;

    /// Mark `name`, just created, as `what`'s (`stale::mark`).
    fn mark_scratch<'a>(&'a mut self, name: &'a str, what: &'a str) -> Fut<'a, ()>;
}

/// MySQL and SQLite: applied migrations as sqlx's `Migrate` lists them (no table: none).
pub(super) fn applied_via_migrate<'a, C: Migrate + Send>(
    migrate: &'a mut C,
    table: &'a MigrationsTable,
) -> Boxed<'a, Result<(Vec<AppliedMigration>, Option<i64>)>> {
    Box::pin(async move {
        let applied = match migrate.list_applied_migrations(table.qualified()).await {
            Ok(a) => a,
            Err(sqlx::migrate::MigrateError::Execute(e)) if super::is_undefined_table(&e) => {
                return Ok((Vec::new(), None));
            }
            Err(e) => return Err(super::migrate_err("cannot list applied migrations", e)),
        };
        let dirty = migrate
            .dirty_version(table.qualified())
            .await
            .map_err(|e| super::migrate_err("cannot list applied migrations", e))?;
        Ok((applied, dirty))
    })
}

/// Rows of text then integer columns (`Backend::fetch`), from any backend's rows.
pub(super) fn decode<R>(rows: Vec<R>, texts: usize, ints: usize) -> Result<Rows, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            let t = (0..texts)
                .map(|i| r.try_get::<String, _>(i))
                .collect::<Result<Vec<_>, _>>()?;
            let n = (texts..texts + ints)
                .map(|i| r.try_get::<i64, _>(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((t, n))
        })
        .collect()
}
