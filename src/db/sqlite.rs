//! SQLite: WAL and a busy timeout so racing processes wait instead of failing; the lock is
//! an OS file lock beside the database (lock.rs), so nothing here takes it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AssertSqlSafe, ConnectOptions, SqliteConnection};

use super::{Marker, NewMarker};
use crate::settings::{Config, MigrationsTable, Table};
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

// ----- other migrators' history, and the marker reads SQLite shares with MySQL -----

question_mark_reads!(SqliteConnection);
