//! SQLite: WAL and a busy timeout so racing processes wait instead of failing; the lock is
//! an OS file lock beside the database (lock.rs), so nothing here takes it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migration};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AssertSqlSafe, ConnectOptions, Row, SqliteConnection};

use super::backend::{Backend, Boxed, Fut, Migrations};
use super::catalog::{Column, Relation, Snapshot, id};
use super::dialect::Dialect;
use super::{Engine, Fence, Holder, Marker, NewMarker, ServerInfo};
use crate::settings::{Config, LockConfig, MigrationsTable, Table};
use crate::signals;

pub fn options(cfg: &Config) -> Result<SqliteConnectOptions, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(&cfg.url)?
        .busy_timeout(Duration::from_secs(30))
        .disable_statement_logging();
    if cfg.read_only {
        // `wait` and `status` never create the file, nor switch its journal mode: a
        // typo'd path is "not reachable", and a read-only file can still be read.
        return Ok(options.read_only(true).create_if_missing(false));
    }
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal))
}

pub async fn prepare_for_lock(c: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = c.lock_handle().await?;
    // The running statement stops at its next progress check once a signal came
    // (signals::stop_local_statements), so its transaction rolls back.
    handle.set_progress_handler(10_000, || !signals::local_statements_stopped());
    Ok(())
}

pub async fn connect(cfg: &Config) -> Result<SqliteConnection, sqlx::Error> {
    let options = options(cfg)?;
    if cfg.read_only && !options.get_filename().exists() {
        // SQLite's own "unable to open database file" does not say which.
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "the SQLite database file {} does not exist",
                options.get_filename().display()
            ),
        )));
    }
    options.connect().await
}

pub async fn ensure_marker_table(c: &mut SqliteConnection, t: &Table) -> Result<(), sqlx::Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {q} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            version TEXT NOT NULL,
            digest TEXT,
            status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
            action TEXT NOT NULL DEFAULT 'migrate',
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            applied INTEGER NOT NULL DEFAULT 0,
            runner TEXT NOT NULL,
            tool_version TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX IF NOT EXISTS {n}_version_idx ON {n} (version, id);",
        q = t.qualified,
        n = t.name,
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await?;
    Ok(())
}

pub async fn insert_marker(
    c: &mut SqliteConnection,
    t: &Table,
    m: &NewMarker<'_>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {q} (version, digest, status, action, started_at, finished_at, applied,
                          runner, tool_version, detail)
         VALUES (?1, ?2, ?3, ?4,
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ?5 || ' seconds'),
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?6, ?7, ?8, ?9)",
        q = t.qualified
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(m.version)
        .bind(m.digest)
        .bind(m.status.as_str())
        .bind(m.action)
        .bind(format!("{:.3}", m.elapsed.as_secs_f64()))
        .bind(m.applied)
        .bind(m.runner)
        .bind(super::TOOL_VERSION)
        .bind(m.detail)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn newest_marker(
    c: &mut SqliteConnection,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
    newest: bool,
) -> Result<Vec<super::NewestRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(super::newest_marker_sql(
        t, migrations, "?1", "0", upto, newest,
    )))
    .bind(version)
    .fetch_all(c)
    .await
}

pub async fn markers(
    c: &mut SqliteConnection,
    t: &Table,
    limit: u32,
) -> Result<Vec<Marker>, sqlx::Error> {
    let sql = format!(
        "SELECT id, version, digest, status, action, started_at, finished_at, applied, runner, \
           tool_version, detail FROM {q} ORDER BY id DESC LIMIT ?1",
        q = t.qualified
    );
    let rows = sqlx::query_as(AssertSqlSafe(sql))
        .bind(i64::from(limit))
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(super::marker_from_row).collect())
}

/// Apply a migration as sqlx's `Migrate::apply` does (its SQL and its bookkeeping row in
/// one transaction unless `-- no-transaction`, then its execution time), its SQL run in
/// pieces of whole statements (`sql::pieces`): sqlx keeps every statement of one query
/// prepared, each holding a copy of its text, until the query ends, so a 200 MB migration
/// run as one query takes several times its size. For migrations larger than `piece`.
pub async fn apply_in_pieces(
    c: &mut SqliteConnection,
    table: &str,
    m: &sqlx::migrate::Migration,
    piece: usize,
) -> Result<(), MigrateError> {
    use sqlx::Connection;
    let started = std::time::Instant::now();
    let pieces = crate::sql::pieces(m.sql.as_str(), piece);
    let record = format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (?1, ?2, TRUE, ?3, -1)"
    );
    let record = sqlx::query(AssertSqlSafe(record))
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum);
    if m.no_tx {
        run_pieces(c, &pieces, m.version).await?;
        record.execute(&mut *c).await?;
    } else {
        let mut tx = c.begin().await?;
        run_pieces(&mut tx, &pieces, m.version).await?;
        record.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET execution_time = ?1 WHERE version = ?2"
    )))
    .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
    .bind(m.version)
    .execute(c)
    .await?;
    Ok(())
}

async fn run_pieces(
    c: &mut SqliteConnection,
    pieces: &[&str],
    version: i64,
) -> Result<(), MigrateError> {
    for piece in pieces {
        sqlx::raw_sql(AssertSqlSafe(*piece))
            .execute(&mut *c)
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, version))?;
    }
    Ok(())
}

/// Record a migration as applied in `table` without running it, or mark a dirty one done.
pub async fn stamp(
    c: &mut SqliteConnection,
    table: &MigrationsTable,
    m: &sqlx::migrate::Migration,
) -> Result<(), sqlx::Error> {
    record(c, table, m, true).await
}

/// A `-- no-transaction` migration failed part-way: record it dirty in `table`.
pub async fn record_dirty(
    c: &mut SqliteConnection,
    table: &MigrationsTable,
    m: &sqlx::migrate::Migration,
) -> Result<(), sqlx::Error> {
    record(c, table, m, false).await
}

async fn record(
    c: &mut SqliteConnection,
    table: &MigrationsTable,
    m: &sqlx::migrate::Migration,
    success: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (?1, ?2, ?3, ?4, -1) \
         ON CONFLICT (version) DO UPDATE SET success = excluded.success, checksum = excluded.checksum"
    )))
    .bind(m.version)
    .bind(&*m.description)
    .bind(success)
    .bind(&*m.checksum)
    .execute(c)
    .await?;
    Ok(())
}

// ----- the backend -----

/// SQLite's spelling of what portable statements need.
pub const DIALECT: Dialect = Dialect {
    key_text: "TEXT",
    int64: "BIGINT",
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    backslash_escapes: false,
    e_strings: false,
    on_duplicate_key: false,
};

/// `apply_each`'s way with a large migration: in pieces of whole statements.
fn apply_large<'b>(
    c: &'b mut SqliteConnection,
    table: &'b str,
    m: &'b Migration,
) -> Boxed<'b, Result<(), MigrateError>> {
    Box::pin(apply_in_pieces(c, table, m, super::PIECE))
}

/// `apply_each`'s way with a failed `-- no-transaction` migration.
fn dirty<'b>(
    c: &'b mut SqliteConnection,
    table: &'b MigrationsTable,
    m: &'b Migration,
) -> Fut<'b, ()> {
    Box::pin(record_dirty(c, table, m))
}

impl Backend for SqliteConnection {
    sqlx_connection_backend!();
    question_mark_backend!();

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    fn cast_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }

    fn concat(&self, parts: &[&str]) -> String {
        parts.join(" || ")
    }

    fn quote_table(&self, name: &str) -> String {
        format!("\"{name}\"")
    }

    fn prepare_for_lock(&mut self, _busy: Option<(i64, i64)>) -> Fut<'_, Option<ServerInfo>> {
        Box::pin(async move { prepare_for_lock(self).await.map(|()| None) })
    }

    // SQLite's lock is a file lock taken in lock/file.rs, held as long as this process:
    // the connection holds nothing.
    fn try_lock<'a>(
        &'a mut self,
        _lock: &'a LockConfig,
        _token: &'a str,
        _then_release: Option<i64>,
    ) -> Fut<'a, bool> {
        Box::pin(async { Ok(true) })
    }

    fn unlock<'a>(&'a mut self, _lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(async { Ok(true) })
    }

    fn holds_lock<'a>(&'a mut self, _lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(async { Ok(true) })
    }

    fn lock_holder<'a>(&'a mut self, _lock: &'a LockConfig) -> Fut<'a, Option<Holder>> {
        Box::pin(async { Ok(None) })
    }

    fn table_home<'a>(&'a mut self, table: &'a Table) -> Fut<'a, (Option<String>, Option<String>)> {
        Box::pin(async move { Ok((table.schema.clone(), Some("main".to_owned()))) })
    }

    // One process, no server: no slots to count, no other session to cancel or end.
    fn free_slots(&mut self) -> Fut<'_, Option<i64>> {
        Box::pin(async { Ok(None) })
    }

    fn session_id(&mut self) -> Fut<'_, i64> {
        Box::pin(async { Ok(0) })
    }

    fn cancel_and_settle(&mut self, _id: i64) -> Fut<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn kill_session(&mut self, _id: i64) -> Fut<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn ensure_marker_table<'a>(&'a mut self, t: &'a Table) -> Fut<'a, ()> {
        Box::pin(ensure_marker_table(self, t))
    }

    fn insert_marker<'a>(
        &'a mut self,
        t: &'a Table,
        m: &'a NewMarker<'a>,
        _fence: Option<&'a Fence>,
        _engine: Engine,
        _unless_done: bool,
    ) -> Fut<'a, ()> {
        Box::pin(insert_marker(self, t, m))
    }

    fn newest_marker<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<super::Upto<'a>>,
        newest: bool,
    ) -> Fut<'a, Vec<super::NewestRow>> {
        Box::pin(newest_marker(self, t, migrations, version, upto, newest))
    }

    // A file has one schema that matters: nothing to say where else the table is.
    fn history_whereabouts<'a>(
        &'a mut self,
        _migrations: &'a MigrationsTable,
    ) -> Fut<'a, super::Whereabouts> {
        Box::pin(async { Ok(super::Whereabouts::default()) })
    }

    fn markers<'a>(&'a mut self, t: &'a Table, limit: u32) -> Fut<'a, Vec<Marker>> {
        Box::pin(markers(self, t, limit))
    }

    fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        migrations: Migrations<'a>,
        _opts: &'a super::ApplyOptions,
    ) -> Boxed<'a, Result<(), super::ApplyError>> {
        Box::pin(super::apply_each(
            self,
            table,
            migrations,
            Some(apply_large),
            Some(dirty),
        ))
    }

    fn stamp<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        m: &'a Migration,
        _fence: Option<&'a Fence>,
    ) -> Fut<'a, ()> {
        Box::pin(stamp(self, table, m))
    }

    // A SQLite database is its file: a scratch one is a new file, made by connecting.
    fn catalog(&mut self) -> Fut<'_, crate::db::catalog::Snapshot> {
        Box::pin(catalog(self))
    }

    fn create_database<'a>(&'a mut self, _name: &'a str) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn drop_database<'a>(&'a mut self, _name: &'a str) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    // A scratch file's directory is held by a file lock instead (`scratch::lock_dir`).
    fn prepare_scratch<'a>(&'a mut self, _name: &'a str) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn mark_scratch<'a>(&'a mut self, _name: &'a str, _what: &'a str) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn table_count(&mut self) -> Fut<'_, i64> {
        Box::pin(
            sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_one(self),
        )
    }
}

// ----- the catalog (`check`) -----

/// SQLite's catalog as a `Snapshot` (`Conn::catalog`).
async fn catalog(c: &mut SqliteConnection) -> Result<Snapshot, sqlx::Error> {
    let mut s = Snapshot {
        by_name: true,
        ..Snapshot::default()
    };
    let rels = sqlx::query(
        "SELECT name, type, coalesce(rootpage, 0) FROM sqlite_master \
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *c)
    .await?;
    for r in rels {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        let oid = id(&name);
        s.relations.insert(
            oid,
            Relation {
                schema: "public".into(),
                name: name.clone(),
                kind: if kind == "view" { 'v' } else { 'r' },
                filenode: r.try_get(2)?,
            },
        );
        let cols = sqlx::query(
            "SELECT cid, name, type, \"notnull\", dflt_value IS NOT NULL OR pk > 0 \
             FROM pragma_table_info(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *c)
        .await?;
        let mut map = BTreeMap::new();
        for col in cols {
            let cid: i64 = col.try_get(0)?;
            map.insert(
                cid as i32,
                Column {
                    name: col.try_get(1)?,
                    type_name: col.try_get::<String, _>(2)?.to_lowercase(),
                    not_null: col.try_get::<i64, _>(3)? != 0,
                    has_default: col.try_get::<bool, _>(4)?,
                },
            );
        }
        s.columns.insert(oid, map);
        let unique = sqlx::query("SELECT name FROM pragma_index_list(?1) WHERE \"unique\"")
            .bind(&name)
            .fetch_all(&mut *c)
            .await?;
        for u in unique {
            s.unique.insert((oid, u.try_get(0)?));
        }
    }
    Ok(s)
}
