//! MySQL / MariaDB: `GET_LOCK(name, 0)` polled (released on disconnect); the same marker.
//! There is no NOTIFY, so `wait --listen` is refused before it gets here.

use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, MySqlConnection};

use super::{Holder, Marker, NewMarker};
use crate::settings::{Config, LockConfig, MigrationsTable, Table};

pub async fn connect(cfg: &Config) -> Result<MySqlConnection, sqlx::Error> {
    MySqlConnectOptions::from_str(&cfg.url)?
        .disable_statement_logging()
        .connect()
        .await
}

// GET_LOCK names are server-wide and at most 64 characters: scope the name to the current
// database and hash it to a fixed length.
const LOCK_NAME: &str = "CONCAT('schemagate:', LEFT(SHA2(CONCAT(DATABASE(), ':', ?), 256), 40))";

pub async fn try_lock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<bool, sqlx::Error> {
    let got: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({LOCK_NAME}, 0)")))
            .bind(&lock.name)
            .fetch_one(c)
            .await?;
    Ok(got == Some(1))
}

pub async fn unlock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({LOCK_NAME})")))
        .bind(&lock.name)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn holds_lock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<bool, sqlx::Error> {
    let held: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(IS_USED_LOCK({LOCK_NAME}) = CONNECTION_ID() AS SIGNED)"
    )))
    .bind(&lock.name)
    .fetch_one(c)
    .await?;
    Ok(held == Some(1))
}

pub async fn lock_holder(
    c: &mut MySqlConnection,
    lock: &LockConfig,
) -> Result<Option<Holder>, sqlx::Error> {
    let row: Option<(i64, String, String, f64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT CAST(p.ID AS SIGNED), CONCAT('user ', COALESCE(p.USER, '')), COALESCE(p.HOST, ''), \
                CAST(p.TIME AS DOUBLE) \
         FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK({LOCK_NAME})"
    )))
    .bind(&lock.name)
    .fetch_optional(c)
    .await?;
    Ok(
        row.map(|(pid, application_name, client, held_for_secs)| Holder {
            pid,
            application_name,
            client,
            held_for_secs,
        }),
    )
}

/// How many more connections could be opened now: `max_connections` less those open
/// (MariaDB's `information_schema.GLOBAL_STATUS`; MySQL 8 has it elsewhere: an error).
pub async fn free_slots(c: &mut MySqlConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(@@max_connections AS SIGNED) - CAST(VARIABLE_VALUE AS SIGNED) \
         FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED'",
    )
    .fetch_optional(c)
    .await
}

/// The connection's database (`DATABASE()`), if one is selected.
pub async fn current_database(c: &mut MySqlConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DATABASE()").fetch_one(c).await
}

pub async fn session_id(c: &mut MySqlConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(c)
        .await
}

pub async fn cancel_and_settle(c: &mut MySqlConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {id}")))
        .execute(&mut *c)
        .await?;
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE ID = ? AND COMMAND <> 'Sleep'",
        )
        .bind(id)
        .fetch_one(&mut *c)
        .await?;
        if busy == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn kill_session(c: &mut MySqlConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("KILL CONNECTION {id}")))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn ensure_marker_table(c: &mut MySqlConnection, t: &Table) -> Result<(), sqlx::Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {q} (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            version VARCHAR(255) NOT NULL,
            digest CHAR(64) NULL,
            status VARCHAR(16) NOT NULL,
            action VARCHAR(16) NOT NULL DEFAULT 'migrate',
            started_at DATETIME(6) NOT NULL,
            finished_at DATETIME(6) NOT NULL,
            applied INT NOT NULL DEFAULT 0,
            runner VARCHAR(255) NOT NULL,
            tool_version VARCHAR(64) NOT NULL,
            detail TEXT NULL,
            KEY {n}_version_idx (version, id)
        )",
        q = t.qualified,
        n = t.name,
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await?;
    Ok(())
}

pub async fn insert_marker(
    c: &mut MySqlConnection,
    t: &Table,
    m: &NewMarker<'_>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {q} (version, digest, status, action, started_at, finished_at, applied,
                          runner, tool_version, detail)
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6),
                 ?, ?, ?, ?)",
        q = t.qualified
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(m.version)
        .bind(m.digest)
        .bind(m.status.as_str())
        .bind(m.action)
        .bind(i64::try_from(m.elapsed.as_micros()).unwrap_or(i64::MAX))
        .bind(m.applied)
        .bind(m.runner)
        .bind(super::TOOL_VERSION)
        .bind(m.detail)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn newest_marker(
    c: &mut MySqlConnection,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
    newest: bool,
) -> Result<Vec<super::NewestRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(super::newest_marker_sql(
        t,
        migrations,
        "?",
        "CAST(0 AS SIGNED)",
        upto,
        newest,
    )))
    .bind(version)
    .fetch_all(c)
    .await
}

/// This session's database, and the databases holding a table named as the migrations
/// table.
pub async fn history_whereabouts(
    c: &mut MySqlConnection,
    migrations: &MigrationsTable,
) -> Result<super::Whereabouts, sqlx::Error> {
    let (current, found): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT DATABASE(), (SELECT GROUP_CONCAT(table_schema ORDER BY table_schema) \
         FROM information_schema.tables WHERE table_name = ?)",
    )
    .bind(super::Whereabouts::bare_table(migrations))
    .fetch_one(c)
    .await?;
    Ok(super::Whereabouts {
        scope: "database".into(),
        current: current.unwrap_or_default(),
        found_in: found
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

pub async fn markers(
    c: &mut MySqlConnection,
    t: &Table,
    limit: u32,
) -> Result<Vec<Marker>, sqlx::Error> {
    let sql = format!(
        "SELECT id, version, digest, status, action, \
           DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%s.%fZ'), \
           DATE_FORMAT(finished_at, '%Y-%m-%dT%H:%i:%s.%fZ'), \
           CAST(applied AS SIGNED), runner, tool_version, detail \
         FROM {q} ORDER BY id DESC LIMIT ?",
        q = t.qualified
    );
    let rows = sqlx::query_as(AssertSqlSafe(sql))
        .bind(i64::from(limit))
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(super::marker_from_row).collect())
}

/// Record a migration as applied in `table` without running it, or mark a dirty one done.
pub async fn stamp(
    c: &mut MySqlConnection,
    table: &MigrationsTable,
    m: &sqlx::migrate::Migration,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (?, ?, TRUE, ?, -1) \
         ON DUPLICATE KEY UPDATE success = TRUE, checksum = VALUES(checksum)"
    )))
    .bind(m.version)
    .bind(&*m.description)
    .bind(&*m.checksum)
    .execute(c)
    .await?;
    Ok(())
}

// ----- other migrators' history, and the marker reads MySQL shares with SQLite -----

question_mark_reads!(MySqlConnection);
