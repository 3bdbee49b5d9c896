//! PostgreSQL: session advisory lock by key, the marker with NOTIFY, LISTEN for `wait`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, PgConnection};

use super::{Holder, Marker, NewMarker, Newest};
use crate::config::{Config, Table};

/// The channel `migrate` notifies in the marker's transaction, and `wait --listen` hears.
pub const CHANNEL: &str = "schemagate_marker";

fn options(cfg: &Config) -> Result<PgConnectOptions, sqlx::Error> {
    // application_name is limited to 63 bytes by the server.
    let mut name = cfg.application_name.clone();
    while name.len() > 63 {
        name.pop();
    }
    Ok(PgConnectOptions::from_str(&cfg.url)?
        .application_name(&name)
        .disable_statement_logging())
}

pub async fn connect(cfg: &Config) -> Result<PgConnection, sqlx::Error> {
    options(cfg)?.connect().await
}

pub async fn prepare_for_lock(c: &mut PgConnection) -> Result<(), sqlx::Error> {
    // If this process dies mid-statement, the server notices the closed socket within a
    // second and rolls back, instead of finishing a long statement while holding the lock.
    // (PostgreSQL 14+; older servers reject the setting, which only costs that speed-up.)
    if let Err(e) = sqlx::query("SET client_connection_check_interval = '1s'")
        .execute(&mut *c)
        .await
    {
        tracing::debug!("client_connection_check_interval not set: {e}");
    }
    Ok(())
}

// Poll pg_try_advisory_lock: a blocked pg_advisory_lock holds a snapshot that CREATE INDEX
// CONCURRENTLY in the holder's migration waits on: deadlock.
pub async fn try_lock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(c)
        .await
}

pub async fn unlock(c: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn holds_lock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() \
           AND locktype = 'advisory' AND granted AND objsubid = 1 \
           AND classid = (($1::int8 >> 32) & 4294967295)::oid \
           AND objid = ($1::int8 & 4294967295)::oid)",
    )
    .bind(key)
    .fetch_one(c)
    .await
}

pub async fn lock_holder(c: &mut PgConnection, key: i64) -> Result<Option<Holder>, sqlx::Error> {
    let row: Option<(i64, String, String, f64)> = sqlx::query_as(
        "SELECT a.pid::int8, coalesce(a.application_name, ''), \
                coalesce(host(a.client_addr), 'local socket'), \
                extract(epoch FROM clock_timestamp() - a.backend_start)::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = (($1::int8 >> 32) & 4294967295)::oid \
           AND l.objid = ($1::int8 & 4294967295)::oid \
         LIMIT 1",
    )
    .bind(key)
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

pub async fn session_id(c: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()::int8")
        .fetch_one(c)
        .await
}

pub async fn kill_session(c: &mut PgConnection, pid: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_terminate_backend($1::int4)")
        .bind(pid)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn ensure_marker_table(c: &mut PgConnection, t: &Table) -> Result<(), sqlx::Error> {
    let schema = t
        .schema
        .as_ref()
        .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"))
        .unwrap_or_default();
    let sql = format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {q} (
            id BIGSERIAL PRIMARY KEY,
            version TEXT NOT NULL,
            digest TEXT,
            status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
            action TEXT NOT NULL DEFAULT 'migrate',
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            applied INTEGER NOT NULL DEFAULT 0,
            runner TEXT NOT NULL,
            tool_version TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX IF NOT EXISTS {n}_version_idx ON {q} (version, id);",
        q = t.qualified,
        n = t.name,
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await?;
    Ok(())
}

pub async fn insert_marker(
    c: &mut PgConnection,
    t: &Table,
    m: &NewMarker<'_>,
) -> Result<(), sqlx::Error> {
    // One statement, so the row and the NOTIFY commit together: `wait --listen` wakes at
    // the commit that makes the marker visible.
    let sql = format!(
        "WITH ins AS (
            INSERT INTO {q} (version, digest, status, action, started_at, finished_at,
                             applied, runner, tool_version, detail)
            VALUES ($1, $2, $3, $4, clock_timestamp() - make_interval(secs => $5),
                    clock_timestamp(), $6, $7, $8, $9)
            RETURNING version)
         SELECT pg_notify('{CHANNEL}', version) FROM ins",
        q = t.qualified
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(m.version)
        .bind(m.digest)
        .bind(m.status.as_str())
        .bind(m.action)
        .bind(m.elapsed.as_secs_f64())
        .bind(i32::try_from(m.applied).unwrap_or(i32::MAX))
        .bind(m.runner)
        .bind(super::TOOL_VERSION)
        .bind(m.detail)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn newest_marker(
    c: &mut PgConnection,
    t: &Table,
    version: &str,
) -> Result<Option<Newest>, sqlx::Error> {
    let sql = format!(
        "SELECT version, status, digest, detail FROM {q} \
         WHERE version = $1 OR action = 'rollback' ORDER BY id DESC LIMIT 1",
        q = t.qualified
    );
    let row: Option<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(version)
            .fetch_optional(c)
            .await?;
    Ok(row.map(|(version, status, digest, detail)| Newest {
        version,
        status,
        digest,
        detail,
    }))
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

pub(super) fn marker_from_row(r: MarkerRow) -> Marker {
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

pub async fn markers(
    c: &mut PgConnection,
    t: &Table,
    limit: u32,
) -> Result<Vec<Marker>, sqlx::Error> {
    let sql = format!(
        "SELECT id, version, digest, status, action, \
           to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
           to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
           applied::int8, runner, tool_version, detail \
         FROM {q} ORDER BY id DESC LIMIT $1",
        q = t.qualified
    );
    let rows: Vec<MarkerRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(i64::from(limit))
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(marker_from_row).collect())
}

/// A LISTEN connection for `wait --listen`.
pub struct Listener(PgListener);

/// Why `Listener::wait` returned.
pub enum Wake {
    /// A marker was committed (or the connection was re-established and a NOTIFY may
    /// have been missed): check again.
    Check,
    /// Nothing arrived within the interval.
    Idle,
}

impl Listener {
    pub async fn connect(cfg: &Config) -> Result<Listener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options(cfg)?);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Listener(listener))
    }

    pub async fn wait(&mut self, interval: Duration) -> Result<Wake, sqlx::Error> {
        match tokio::time::timeout(interval, self.0.try_recv()).await {
            Err(_) => Ok(Wake::Idle),
            Ok(Ok(_)) => Ok(Wake::Check),
            Ok(Err(e)) => Err(e),
        }
    }
}
