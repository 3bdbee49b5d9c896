//! PostgreSQL: session advisory lock by key, the lease lock, the marker with NOTIFY,
//! LISTEN for `wait`, and the migration bookkeeping in sqlx's `_sqlx_migrations` layout
//! (in the table the config names).
//!
//! Every statement here uses the simple query protocol (values are quoted literals, never
//! bound parameters). Two reasons: it works through PgBouncer in transaction pooling mode,
//! where a prepared statement parsed on one server connection is gone on the next; and a
//! transactional migration with its bookkeeping row is one round trip.

pub(super) mod catalog;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{AppliedMigration, Migration};
use sqlx::postgres::{PgConnectOptions, PgExecutor, PgListener, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, PgConnection, Row, SqlStr};

use super::backend::{Backend, Boxed, Fut, Migrations, NewestAndApplied};
use super::dialect::Dialect;
use super::server::{Engine, ServerInfo};
use super::{ApplyError, ApplyOptions, Fence, Holder, Marker, NewMarker};
use crate::settings::{Config, LockConfig, MigrationsTable, Table};
use crate::source::hex;

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
        .statement_cache_capacity(0)
        .disable_statement_logging())
}

pub(crate) async fn connect(cfg: &Config) -> Result<PgConnection, sqlx::Error> {
    options(cfg)?.connect().await
}

/// A string as a PostgreSQL literal, safe whatever `standard_conforming_strings` says
/// (the quoting libpq's PQescapeLiteral does). NUL cannot be stored in text: dropped.
pub(crate) fn lit(s: &str) -> String {
    let s = s.replace('\0', "");
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn lit_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "NULL".to_owned(), lit)
}

pub(crate) fn millis(d: Duration) -> String {
    format!("'{}ms'", d.as_millis().max(1))
}

/// A `lock_timeout` / `statement_timeout` value: 0 keeps PostgreSQL's meaning, no limit.
fn timeout_ms(d: Duration) -> String {
    match d.as_millis() {
        0 if d.is_zero() => "0".into(),
        ms => format!("'{}ms'", ms.max(1)),
    }
}

pub(crate) async fn rows<'c>(
    c: impl PgExecutor<'c>,
    sql: String,
) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(c).await
}

pub(crate) async fn row<'c>(
    c: impl PgExecutor<'c>,
    sql: String,
) -> Result<Option<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_optional(c).await
}

pub(crate) async fn exec(c: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(c)
        .await
        .map(|_| ())
}

/// Settings for the lock connection, and what it learns about the server. With `busy`
/// (the run's key and its probe key), also whether another session holds the key now and,
/// when it is free, a try of the probe key: taken only on what the proof could accept (a
/// direct session, announced at startup with the pid it runs in, of an engine whose
/// advisory locks are real, as `Engine::from_version` tells), so that a pooled server
/// session is never left holding it.
pub async fn prepare_for_lock(
    c: &mut PgConnection,
    busy: Option<(i64, i64)>,
) -> Result<ServerInfo, sqlx::Error> {
    // If this process dies mid-statement, the server notices the closed socket within a
    // second and rolls back, instead of finishing a long statement while holding the lock.
    // (PostgreSQL 14+; other engines may reject the setting, which only costs that speed-up.)
    // The same round trip reads whether the lock is taken already (see `lock::acquire`).
    let startup = c.startup_backend_pid();
    let (free, probe) = busy.map_or_else(
        || ("true".to_owned(), "NULL::bool".to_owned()),
        |(key, probe)| {
            (
                format!("pg_try_advisory_xact_lock({key})"),
                format!(
                    "CASE WHEN free AND pid = {startup} AND {} \
                     THEN pg_try_advisory_lock({probe}) END",
                    Engine::not_postgres_sql("v")
                ),
            )
        },
    );
    let sql = format!(
        "WITH s AS MATERIALIZED (SELECT version() AS v, pg_backend_pid()::int8 AS pid, \
           {free} AS free) \
         SELECT v, pid, NOT free, {probe}, \
           CASE WHEN current_setting('server_version_num')::int >= 140000 \
           THEN set_config('client_connection_check_interval', '1s', false) END FROM s"
    );
    let r = match row(&mut *c, sql).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("client_connection_check_interval not set: {e}");
            if busy.is_some() {
                // A session-level lock taken in a statement that then failed stays held:
                // let go of the probe key, if it was taken (nothing else is held yet).
                let _ = exec(c, "SELECT pg_advisory_unlock_all()".into()).await;
            }
            row(
                &mut *c,
                "SELECT version(), pg_backend_pid()::int8, false, NULL::bool".into(),
            )
            .await?
        }
    };
    let (version, pid, advisory_held, probe) = match r {
        Some(r) => (
            r.try_get::<String, _>(0)?,
            r.try_get::<i64, _>(1)?,
            r.try_get::<bool, _>(2)?,
            r.try_get::<Option<bool>, _>(3)?,
        ),
        None => (String::new(), -1, false, None),
    };
    Ok(ServerInfo {
        version,
        pid,
        startup_pid: i64::from(startup),
        advisory_held,
        proving: probe == Some(false),
        probe_taken: probe == Some(true),
    })
}

/// Two columns: whether another session holds `key`, and `probe`. Asked with a
/// transaction-level try, which holds nothing past the statement (through a pooler too),
/// rather than from `pg_locks`, which copies the server's whole lock table each time (0.7 ms
/// of server time with max_locks_per_transaction = 1024, paid by every waiting run). A try
/// that collides with a real run's take can make that take fail; the run then waits and
/// polls, and the collider, which saw the key free, goes on to take it.
fn busy_sql(key: i64, probe: i64) -> String {
    format!("NOT pg_try_advisory_xact_lock({key}), NOT pg_try_advisory_xact_lock({probe})")
}

/// Whether another session holds `key`, and `probe`, now (see `busy_sql`).
pub async fn lock_busy(
    c: &mut PgConnection,
    key: i64,
    probe: i64,
) -> Result<(bool, bool), sqlx::Error> {
    let r = row(c, format!("SELECT {}", busy_sql(key, probe)))
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no row from the lock check".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// The `pg_locks` rows (aliased `l`) of the granted advisory lock `key`: a 64-bit key is
/// stored as classid (high half) and objid (low half), with objsubid 1.
fn advisory_lock_rows(key: i64) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.classid = (({key}::int8 >> 32) & 4294967295)::oid \
           AND l.objid = ({key}::int8 & 4294967295)::oid"
    )
}

/// A query for "this session holds the advisory lock `key`", from the server's own view
/// (`pg_catalog.pg_locks`, which a stub engine leaves empty).
pub(crate) fn held_here_sql(key: i64) -> String {
    format!(
        "SELECT 1 FROM pg_catalog.pg_locks l WHERE l.pid = pg_backend_pid() AND {}",
        advisory_lock_rows(key)
    )
}

/// A query for "some session of this database holds the advisory lock `key`".
fn advisory_held_sql(key: i64) -> String {
    format!(
        "SELECT 1 FROM pg_catalog.pg_locks l WHERE {} \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        advisory_lock_rows(key)
    )
}

/// Whether some session of this database holds the advisory lock `key` now, as the server's
/// lock table shows it (`pg_locks`: for the rare question, see `busy_sql`).
pub async fn advisory_held(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let r = row(c, format!("SELECT EXISTS ({})", advisory_held_sql(key))).await?;
    Ok(r.map(|r| r.try_get::<bool, _>(0))
        .transpose()?
        .unwrap_or(false))
}

/// LISTEN for markers on the lock connection, so that a run waiting for the lock leaves at
/// the marker's commit (`lock::acquire`). Notifications arriving during later queries on
/// this connection are kept for `wait_for_marker`, not taken for protocol errors.
pub async fn listen_for_markers(c: &mut PgConnection) -> Result<(), sqlx::Error> {
    c.keep_notifications();
    exec(c, format!("LISTEN {CHANNEL}")).await
}

/// Wait up to `limit` for a marker's NOTIFY on a connection that LISTENs: true when one
/// arrived (or arrived during an earlier query), false at the limit.
pub async fn wait_for_marker(c: &mut PgConnection, limit: Duration) -> Result<bool, sqlx::Error> {
    match tokio::time::timeout(limit, c.recv_notification()).await {
        Ok(r) => r.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// The session setting that names the run holding `key` on this server session.
fn owner_setting(key: i64) -> String {
    format!("schemagate.owner_{:016x}", key as u64)
}

// Poll pg_try_advisory_lock: a blocked pg_advisory_lock holds a snapshot that CREATE INDEX
// CONCURRENTLY in the holder's migration waits on: deadlock.
//
// The lock is also tagged with the run's token in a session setting, and refused when the
// session already carries another run's token. A session advisory lock is re-entrant, so
// two clients that a pooler puts on one server session would both "take" it; with the tag
// the second is refused. This is defence in depth: `lock::probe` already keeps runs behind
// a transaction pooler on the lease.
//
// `then_release`: a key this session holds (the probe key) to let go of right after the try,
// in the same statement.
pub async fn try_lock(
    c: &mut PgConnection,
    key: i64,
    token: &str,
    then_release: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let r = row(
        c,
        format!(
            "WITH t AS MATERIALIZED (SELECT CASE \
               WHEN coalesce(current_setting({o}, true), '') NOT IN ('', {t}) THEN false \
               WHEN pg_try_advisory_lock({key}) THEN set_config({o}, {t}, false) IS NOT NULL \
               ELSE false END AS taken) \
             SELECT taken{release} FROM t",
            o = lit(&owner_setting(key)),
            t = lit(token),
            release = then_release
                .map(|k| format!(", pg_advisory_unlock({k})"))
                .unwrap_or_default(),
        ),
    )
    .await?;
    Ok(r.map(|r| r.try_get::<bool, _>(0))
        .transpose()?
        .unwrap_or(false))
}

/// Release the lock and its tag; false when this session did not hold it.
pub async fn unlock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let r = row(
        c,
        format!(
            "SELECT pg_advisory_unlock({key}), set_config({}, '', false)",
            lit(&owner_setting(key))
        ),
    )
    .await?;
    Ok(r.map(|r| r.try_get::<bool, _>(0))
        .transpose()?
        .unwrap_or(false))
}

pub async fn holds_lock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let r = row(c, format!("SELECT EXISTS ({})", held_here_sql(key))).await?;
    Ok(r.map(|r| r.try_get::<bool, _>(0))
        .transpose()?
        .unwrap_or(false))
}

pub async fn lock_holder(c: &mut PgConnection, key: i64) -> Result<Option<Holder>, sqlx::Error> {
    let r = row(
        c,
        format!(
            "SELECT a.pid::int8, coalesce(a.application_name, ''), \
                coalesce(host(a.client_addr), 'local socket'), \
                extract(epoch FROM clock_timestamp() - a.backend_start)::float8 \
             FROM pg_catalog.pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE {} \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             LIMIT 1",
            advisory_lock_rows(key)
        ),
    )
    .await?;
    r.map(|r| {
        Ok(Holder {
            pid: r.try_get(0)?,
            application_name: r.try_get(1)?,
            client: r.try_get(2)?,
            held_for_secs: r.try_get(3)?,
        })
    })
    .transpose()
}

/// The schema an unqualified table name resolves to: the first schema on the search_path
/// that has the table, else `current_schema()`, where `CREATE TABLE` would put it. `None`
/// when the search_path names no schema that exists.
pub async fn table_schema(c: &mut PgConnection, name: &str) -> Result<Option<String>, sqlx::Error> {
    let r = row(
        c,
        format!(
            "SELECT coalesce((SELECT n.nspname::text FROM pg_catalog.pg_class r \
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
               WHERE r.oid = to_regclass({})), current_schema()::text)",
            lit(name)
        ),
    )
    .await?;
    Ok(r.map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()?
        .flatten())
}

/// How many more connections an ordinary user could open now: `max_connections` less the
/// slots reserved for superusers (and, from PostgreSQL 16, for `pg_use_reserved_
/// connections`) and the client sessions open.
pub async fn free_slots(c: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    let r = row(
        c,
        "SELECT current_setting('max_connections')::int8 \
           - current_setting('superuser_reserved_connections')::int8 \
           - coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int8 \
           - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            .into(),
    )
    .await?;
    r.map(|r| r.try_get::<i64, _>(0)).transpose()
}

pub async fn session_id(c: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let r = row(c, "SELECT pg_backend_pid()::int8".into()).await?;
    Ok(r.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0))
}

pub async fn cancel_and_settle(c: &mut PgConnection, pid: i64) -> Result<(), sqlx::Error> {
    exec(c, format!("SELECT pg_cancel_backend({pid}::int4)")).await?;
    loop {
        let active = row(
            &mut *c,
            format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"),
        )
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .unwrap_or(0);
        if active == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn kill_session(c: &mut PgConnection, pid: i64) -> Result<(), sqlx::Error> {
    exec(c, format!("SELECT pg_terminate_backend({pid}::int4)")).await
}

/// `CREATE SCHEMA IF NOT EXISTS` for a schema-qualified table, else nothing.
pub(crate) fn create_schema_sql(t: &Table) -> String {
    t.schema
        .as_ref()
        .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"))
        .unwrap_or_default()
}

/// What DDL may leave out because it exists already (see `rows_creating`): the schema, and
/// each of the tables asked about, in order.
pub(crate) struct Existing {
    pub schema: bool,
    pub tables: Vec<bool>,
}

/// Run `build(&Existing)`: DDL that creates what is missing of `schema` and `tables` (and
/// whatever follows it in the same round trip). PostgreSQL checks the privilege to create
/// before it looks whether the object exists: `CREATE SCHEMA IF NOT EXISTS` needs CREATE on
/// the whole database, `CREATE TABLE IF NOT EXISTS` CREATE on the schema, `CREATE INDEX IF
/// NOT EXISTS` ownership of the table. So a least-privilege role fails on what exists
/// already; on a privilege error, this asks what exists and runs again leaving it out.
/// Where the role may create, it stays one round trip.
pub(crate) async fn rows_creating(
    c: &mut PgConnection,
    schema: Option<&str>,
    tables: &[&str],
    build: impl Fn(&Existing) -> String,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let none = Existing {
        schema: false,
        tables: vec![false; tables.len()],
    };
    let first = rows(&mut *c, build(&none)).await;
    let Err(sqlx::Error::Database(e)) = &first else {
        return first;
    };
    if e.code().as_deref() != Some("42501") {
        return first;
    }
    let Ok(existing) = existing(c, schema, tables).await else {
        return first;
    };
    if !existing.schema && !existing.tables.contains(&true) {
        return first;
    }
    rows(c, build(&existing)).await
}

async fn existing(
    c: &mut PgConnection,
    schema: Option<&str>,
    tables: &[&str],
) -> Result<Existing, sqlx::Error> {
    let mut columns = vec![schema.map_or_else(
        || "false".to_owned(),
        |s| format!("to_regnamespace({}) IS NOT NULL", lit(s)),
    )];
    columns.extend(
        tables
            .iter()
            .map(|t| format!("to_regclass({}) IS NOT NULL", lit(t))),
    );
    let r = row(c, format!("SELECT {}", columns.join(", ")))
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no row from the catalog".into()))?;
    Ok(Existing {
        schema: r.try_get(0)?,
        tables: (1..=tables.len())
            .map(|i| r.try_get(i))
            .collect::<Result<_, _>>()?,
    })
}

mod apply;
mod backend;
mod history;
mod listen;
mod marker;

pub use apply::*;
pub use backend::DIALECT;
pub use history::*;
pub use listen::*;
pub use marker::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_are_told_apart_alike_in_rust_and_in_sql() {
        for (version, engine) in [
            (
                "PostgreSQL 15.20 (Debian 15.20-0+deb12u1) on x86_64",
                Engine::Postgres,
            ),
            (
                "CockroachDB CCL v23.1.11 (x86_64-pc-linux-gnu)",
                Engine::CockroachDb,
            ),
            (
                "PostgreSQL 11.2-YB-2.20.1.0-b0 on x86_64",
                Engine::YugabyteDb,
            ),
        ] {
            assert_eq!(Engine::from_version(version), engine, "{version}");
        }
        assert_eq!(
            Engine::not_postgres_sql("v"),
            "v NOT LIKE '%CockroachDB%' AND v NOT LIKE '%-YB-%' AND v NOT LIKE '%YugabyteDB%'"
        );
    }

    #[test]
    fn literals_are_quoted_whatever_the_content() {
        assert_eq!(lit("plain"), "'plain'");
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(lit("a\\b'c"), "E'a\\\\b''c'");
        assert_eq!(lit("nul\0byte"), "'nulbyte'");
        assert_eq!(apply::unhex("00ff10"), vec![0, 255, 16]);
    }
}
