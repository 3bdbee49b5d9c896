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

use super::backend::{Backend, Boxed, Fut, Migrations, NewestAndApplied, Rows, decode};
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

// ----- the marker -----

pub async fn ensure_marker_table(c: &mut PgConnection, t: &Table) -> Result<(), sqlx::Error> {
    rows_creating(c, t.schema.as_deref(), &[&t.qualified], |e| {
        marker_table_sql(t, e.schema, e.tables[0])
    })
    .await
    .map(drop)
}

/// The migrations table as sqlx's own `ensure_migrations_table` creates it, then the
/// marker table, in one statement (one implicit transaction).
pub async fn ensure_tables(
    c: &mut PgConnection,
    t: &Table,
    migrations: &MigrationsTable,
) -> Result<(), sqlx::Error> {
    rows_creating(c, t.schema.as_deref(), &tables_of(t, migrations), |e| {
        tables_sql(t, migrations, e)
    })
    .await
    .map(drop)
}

/// The tables `tables_sql` creates, as `Existing::tables` reports them.
fn tables_of<'a>(t: &'a Table, migrations: &'a MigrationsTable) -> [&'a str; 2] {
    [migrations.qualified(), &t.qualified]
}

fn tables_sql(t: &Table, migrations: &MigrationsTable, e: &Existing) -> String {
    // The migrations table is created first: when it lives in the marker's schema, that
    // schema is created before it (`--table app.marker --migrations-table
    // app._sqlx_migrations` on a new database, or a fleet's schema per target).
    let same_schema = t.schema.as_deref().is_some_and(|s| {
        migrations
            .qualified()
            .split_once('.')
            .is_some_and(|(m, _)| m.eq_ignore_ascii_case(s))
    });
    let schema_first = !e.tables[0] && !e.schema && same_schema;
    let migrations = if e.tables[0] {
        String::new()
    } else {
        format!(
            "{}CREATE TABLE IF NOT EXISTS {} (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            success BOOLEAN NOT NULL,
            checksum BYTEA NOT NULL,
            execution_time BIGINT NOT NULL
        );",
            if schema_first {
                create_schema_sql(t)
            } else {
                String::new()
            },
            migrations
        )
    };
    format!(
        "{migrations}\n{}",
        marker_table_sql(t, e.schema || schema_first, e.tables[1])
    )
}

/// The marker table and its index, after its schema: what does not exist yet.
fn marker_table_sql(t: &Table, schema_exists: bool, table_exists: bool) -> String {
    if table_exists {
        return String::new();
    }
    let schema = if schema_exists {
        String::new()
    } else {
        create_schema_sql(t)
    };
    format!(
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
    )
}

/// The INSERT (and NOTIFY, where `engine` has it) for a marker row, as one statement:
/// `wait --listen` wakes at the commit that makes the row visible.
pub fn insert_marker_sql(t: &Table, m: &NewMarker<'_>, engine: Engine) -> String {
    insert_marker_sql_when(t, m, "", engine)
}

/// The marker INSERT, written only when `condition` (a `WHERE …` clause, or empty) holds
/// in the statement's own snapshot.
fn insert_marker_sql_when(t: &Table, m: &NewMarker<'_>, condition: &str, engine: Engine) -> String {
    let notify = if engine.notifies() {
        format!("SELECT pg_notify('{CHANNEL}', version) FROM ins")
    } else {
        "SELECT version FROM ins".to_owned()
    };
    format!(
        "WITH ins AS (
            INSERT INTO {q} (version, digest, status, action, started_at, finished_at,
                             applied, runner, tool_version, detail)
            SELECT {v}, {d}, '{s}', {a}, clock_timestamp() - make_interval(secs => {e}),
                    clock_timestamp(), {n}, {r}, {tv}, {det} {condition}
            RETURNING version)
         {notify}",
        q = t.qualified,
        v = lit(m.version),
        d = lit_opt(m.digest),
        s = m.status.as_str(),
        a = lit(m.action),
        e = m.elapsed.as_secs_f64(),
        n = i32::try_from(m.applied).unwrap_or(i32::MAX),
        r = lit(m.runner),
        tv = lit(super::TOOL_VERSION),
        det = lit_opt(m.detail),
    )
}

pub async fn insert_marker(
    c: &mut PgConnection,
    t: &Table,
    m: &NewMarker<'_>,
    fence: Option<&Fence>,
    engine: Engine,
) -> Result<(), sqlx::Error> {
    fenced(c, insert_marker_sql(t, m, engine), fence).await
}

/// A `failed` marker written from a side connection, unless the marker that decides the
/// version is already `succeeded`. Checked in the INSERT's own snapshot, which is taken
/// after the lease's fence (run first in the same transaction) waited for any transaction
/// of ours still in flight: a `succeeded` marker committing meanwhile is seen, and no
/// `failed` one lands after it.
pub async fn insert_marker_unless_done(
    c: &mut PgConnection,
    t: &Table,
    m: &NewMarker<'_>,
    fence: Option<&Fence>,
    engine: Engine,
) -> Result<(), sqlx::Error> {
    let condition = format!(
        "WHERE NOT EXISTS (SELECT 1 FROM (SELECT version, status FROM {q} \
           WHERE version = {v} OR action = 'rollback' ORDER BY id DESC LIMIT 1) AS decisive \
           WHERE decisive.version = {v} AND decisive.status = 'succeeded')",
        q = t.qualified,
        v = lit(m.version),
    );
    fenced(c, insert_marker_sql_when(t, m, &condition, engine), fence).await
}

pub async fn newest_marker<'c>(
    c: impl PgExecutor<'c>,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
    newest: bool,
) -> Result<Vec<super::NewestRow>, sqlx::Error> {
    rows(c, newest_marker_sql(t, migrations, version, upto, newest))
        .await?
        .iter()
        .map(newest_row)
        .collect()
}

fn newest_marker_sql(
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
    newest: bool,
) -> String {
    super::newest_marker_sql(t, migrations, &lit(version), "0::int8", upto, newest)
}

fn newest_row(r: &PgRow) -> Result<super::NewestRow, sqlx::Error> {
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
    ))
}

/// `ensure_tables`, then the marker that decides `version` (`newest_marker`) and what
/// the migrations table holds (`applied`), in one round trip and one transaction: what the
/// lock holder reads before it applies anything.
pub async fn ensure_tables_and_read(
    c: &mut PgConnection,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
) -> Result<NewestAndApplied, sqlx::Error> {
    let sql = |e: &Existing| {
        format!(
            "{}\n{};\n{}",
            tables_sql(t, migrations, e),
            newest_marker_sql(t, migrations, version, upto, false),
            applied_sql(migrations)
        )
    };
    // One statement's rows after the other's: told apart by their width.
    let (newest, applied): (Vec<PgRow>, Vec<PgRow>) =
        rows_creating(c, t.schema.as_deref(), &tables_of(t, migrations), sql)
            .await?
            .into_iter()
            .partition(|r| r.len() == 7);
    Ok((
        newest.iter().map(newest_row).collect::<Result<_, _>>()?,
        applied_from(applied)?,
    ))
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
         FROM {q} ORDER BY id DESC LIMIT {limit}",
        q = t.qualified
    );
    rows(c, sql)
        .await?
        .iter()
        .map(|r| {
            Ok(Marker {
                id: r.try_get(0)?,
                version: r.try_get(1)?,
                digest: r.try_get(2)?,
                status: r.try_get(3)?,
                action: r.try_get(4)?,
                started_at: r.try_get(5)?,
                finished_at: r.try_get(6)?,
                applied: r.try_get(7)?,
                runner: r.try_get(8)?,
                tool_version: r.try_get(9)?,
                detail: r.try_get(10)?,
            })
        })
        .collect()
}

/// Indexes left invalid (a failed `CREATE INDEX CONCURRENTLY`), as `schema.index`.
pub async fn invalid_indexes(c: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT n.nspname || '.' || i.relname FROM pg_index x \
               JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace \
               WHERE NOT x.indisvalid ORDER BY 1";
    rows(c, sql.into())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

// ----- migrations, in sqlx's _sqlx_migrations layout -----

/// This session's search_path, and the schemas holding a table named as the migrations
/// table.
pub async fn history_whereabouts<'c>(
    c: impl PgExecutor<'c>,
    migrations: &MigrationsTable,
) -> Result<super::Whereabouts, sqlx::Error> {
    let sql = format!(
        "SELECT current_setting('search_path'), coalesce((SELECT string_agg(n.nspname, ',' \
           ORDER BY n.nspname) FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
           WHERE t.relname = {} AND t.relkind IN ('r', 'p')), '')",
        lit(super::Whereabouts::bare_table(migrations))
    );
    let r = row(c, sql)
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no row from the catalog".into()))?;
    let found: String = r.try_get(1)?;
    Ok(super::Whereabouts {
        scope: "search_path".into(),
        current: r.try_get(0)?,
        found_in: found
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Applied migrations, in version order, and the first dirty one (`success = false`).
pub async fn applied<'c>(
    c: impl PgExecutor<'c>,
    table: &MigrationsTable,
) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
    applied_from(rows(c, applied_sql(table)).await?)
}

fn applied_sql(table: &MigrationsTable) -> String {
    format!("SELECT version, encode(checksum, 'hex'), success FROM {table} ORDER BY version")
}

fn applied_from(rs: Vec<PgRow>) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
    let mut applied = Vec::with_capacity(rs.len());
    let mut dirty = None;
    for r in rs {
        let version: i64 = r.try_get(0)?;
        let checksum: String = r.try_get(1)?;
        if !r.try_get::<bool, _>(2)? && dirty.is_none() {
            dirty = Some(version);
        }
        applied.push(AppliedMigration {
            version,
            checksum: unhex(&checksum).into(),
        });
    }
    Ok((applied, dirty))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn bookkeeping_sql(table: &MigrationsTable, m: &Migration, success: bool) -> String {
    // execution_time: nanoseconds since the transaction began (sqlx writes -1, then
    // updates it in another round trip).
    format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES ({v}, {d}, {success}, decode('{c}', 'hex'), \
           (extract(epoch FROM clock_timestamp() - now()) * 1e9)::int8)",
        v = m.version,
        d = lit(&m.description),
        c = hex(&m.checksum),
    )
}

/// The SQL that applies one transactional migration with its bookkeeping row in `table`,
/// without BEGIN/COMMIT (so several can share one transaction).
pub fn migration_in_tx_sql(table: &MigrationsTable, m: &Migration) -> String {
    // Newlines around the migration's SQL: it may end in a `--` comment.
    format!(
        "{}\n;\n{};\n",
        m.sql.as_str(),
        bookkeeping_sql(table, m, true)
    )
}

/// For the transaction it runs in: the server checks every second that the client is still
/// there (see `settings_sql`).
const CHECK_CONNECTION_LOCAL: &str = "SELECT set_config('client_connection_check_interval', \
     '1s', true) WHERE current_setting('server_version_num')::int >= 140000;\n";

fn settings_sql(opts: &ApplyOptions) -> String {
    // If this process dies, the server aborts the transaction within a second instead of
    // finishing it: a lease taken over after its TTL never overlaps a dead run's
    // migration. LOCAL, so it works through a transaction pooler too (PostgreSQL 14+).
    // Under the advisory lock the session is our own and `prepare_for_lock` set it for the
    // whole session: one statement less per migration.
    let mut s = String::new();
    if opts.fence.is_some() {
        s.push_str(CHECK_CONNECTION_LOCAL);
    }
    for set in timeout_settings(opts, "SET LOCAL") {
        s.push_str(&set);
        s.push('\n');
    }
    s
}

/// Migrations up to this size share the transaction's one query (one round trip). A larger
/// one is sent on its own, in pieces of its statements of about this size, so that memory
/// holds its text once, not twice more (a copy in the query, and sqlx's send buffer).
const INLINE_MAX: usize = super::PIECE;

/// Apply transactional migrations in one transaction, in one round trip unless they are
/// large (`INLINE_MAX`); on error the transaction is rolled back. Each migration is read as
/// `migrations` yields it and let go once sent.
pub async fn apply_in_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    migrations: impl Iterator<Item = crate::error::Result<Migration>>,
    opts: &ApplyOptions,
) -> Result<(), ApplyError> {
    let mut began = false;
    match send_in_tx(c, table, migrations, opts, &mut began).await {
        Ok(()) => Ok(()),
        Err(InTx::Db(e)) => {
            end_failed_transaction(c).await;
            Err(ApplyError::from_sqlx(&e))
        }
        Err(InTx::Unreadable(e)) => {
            // Everything sent so far succeeded: the transaction is open, and must end here.
            if began {
                let _ = exec(c, "ROLLBACK".into()).await;
            }
            Err(ApplyError::unreadable(&e))
        }
    }
}

/// Why `send_in_tx` stopped.
enum InTx {
    Db(sqlx::Error),
    Unreadable(crate::error::Error),
}

async fn send_in_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    migrations: impl Iterator<Item = crate::error::Result<Migration>>,
    opts: &ApplyOptions,
    began: &mut bool,
) -> Result<(), InTx> {
    let mut sql = format!("BEGIN;\n{}", settings_sql(opts));
    // The lease's fence: a run that lost its lease stops before any statement of the
    // migration; and the last statement before COMMIT renews the lease under a row lock,
    // so the migration commits only while the lease is ours. (Holding the row for the
    // whole migration would starve the heartbeat of a long one.)
    if let Some(fence) = &opts.fence {
        sql.push_str(&fence.check);
        sql.push_str(";\n");
    }
    for m in migrations {
        let m = m.map_err(InTx::Unreadable)?;
        let len = m.sql.as_str().len();
        if len <= INLINE_MAX && sql.len() + len <= INLINE_MAX {
            sql.push_str(&migration_in_tx_sql(table, &m));
            continue;
        }
        exec(c, std::mem::take(&mut sql)).await.map_err(InTx::Db)?;
        *began = true;
        if len <= INLINE_MAX {
            sql.push_str(&migration_in_tx_sql(table, &m));
            continue;
        }
        sql = format!("{};\n", bookkeeping_sql(table, &m, true));
        send_large(c, m.sql).await.map_err(InTx::Db)?;
    }
    if let Some(fence) = &opts.fence {
        sql.push_str(&fence.hold);
        sql.push_str(";\n");
    }
    sql.push_str("COMMIT;");
    exec(c, sql).await.map_err(InTx::Db)
}

/// Send a large migration's SQL inside the open transaction, in pieces of whole statements
/// of about `INLINE_MAX` (`sql::pieces`; as psql sends a file's statements one by one: the
/// same, inside a transaction block), so that memory holds the text and one piece. When one
/// statement alone is larger than that, the whole text is sent as one query, moved rather
/// than copied.
async fn send_large(c: &mut PgConnection, sql: SqlStr) -> Result<(), sqlx::Error> {
    let r = async {
        let pieces = crate::sql::pieces(sql.as_str(), INLINE_MAX);
        if pieces.iter().any(|p| p.len() > INLINE_MAX) {
            drop(pieces);
            return sqlx::raw_sql(sql).execute(&mut *c).await.map(|_| ());
        }
        for piece in pieces {
            exec(c, piece.to_owned()).await?;
        }
        Ok(())
    }
    .await;
    // sqlx's send buffer grew to the largest query: let it go.
    sqlx::Connection::shrink_buffers(c);
    r
}

/// After a failed batch: roll back if the session is still in the aborted transaction
/// block. A plain ROLLBACK when the server already ended it makes PostgreSQL warn "there
/// is no transaction in progress", a second, misleading line for one failure.
async fn end_failed_transaction(c: &mut PgConnection) {
    if let Err(sqlx::Error::Database(db)) = exec(c, "SELECT 1".into()).await
        && db.code().as_deref() == Some("25P02")
    {
        let _ = exec(c, "ROLLBACK".into()).await;
    }
}

/// Apply a `-- no-transaction` migration one statement at a time, as psql would (one
/// multi-statement query would be one implicit transaction, where `CREATE INDEX
/// CONCURRENTLY` refuses to run). On failure it is recorded dirty (`success = false`) only
/// when something took effect: a statement before the failing one, or a failed `CREATE
/// INDEX CONCURRENTLY`, which leaves an invalid index. Otherwise nothing happened and the
/// next run simply tries again.
///
/// Under the lease every statement is fenced (`fenced_statement`), and so is the
/// bookkeeping row, success or dirty: a run whose lease another run has taken over (it was
/// paused past the TTL) stops at its next statement and records nothing.
pub async fn apply_no_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    opts: &ApplyOptions,
) -> Result<(), NoTxError> {
    let fence = opts.fence.as_ref();
    // --ddl-lock-timeout / --statement-timeout: each statement is a transaction of its
    // own, so the limits are set for the session around the statements they bound, and
    // reset after. Not around a statement that leaves debris when it fails (`CREATE INDEX
    // CONCURRENTLY`, which waits for older transactions by design): cut short, it would
    // leave an invalid index and the migration dirty, a manual repair instead of a wait.
    // Under the lease (possibly behind a transaction pooler) the statements may each land
    // on another server session, where a session setting would not follow them (and would
    // linger for other clients): said, not pretended.
    let limits = session_limits_sql(opts);
    if limits.is_empty() {
        return run_no_tx(c, table, m, None, fence).await;
    }
    if fence.is_some() {
        tracing::warn!(
            "--ddl-lock-timeout and --statement-timeout do not apply to the -- no-transaction \
             migration {} under the lease: its statements may run on different server \
             sessions",
            m.version
        );
        return run_no_tx(c, table, m, None, fence).await;
    }
    let r = run_no_tx(c, table, m, Some(&limits), None).await;
    if let Err(e) = exec(c, RESET_LIMITS.into()).await {
        tracing::warn!("could not reset the session's timeouts: {e}");
    }
    r
}

const RESET_LIMITS: &str = "RESET lock_timeout; RESET statement_timeout";

/// The session-level form of `settings_sql`'s limits, for `-- no-transaction` migrations.
fn session_limits_sql(opts: &ApplyOptions) -> String {
    timeout_settings(opts, "SET").join(" ")
}

/// One `{set} <timeout> = <value>;` statement per timeout `opts` gives (`set`: `SET LOCAL`
/// for a transaction, `SET` for the session).
fn timeout_settings(opts: &ApplyOptions, set: &str) -> Vec<String> {
    [
        ("lock_timeout", opts.lock_timeout),
        ("statement_timeout", opts.statement_timeout),
    ]
    .iter()
    .filter_map(|(name, d)| d.map(|d| format!("{set} {name} = {};", timeout_ms(d))))
    .collect()
}

/// `apply_no_tx`'s statements and bookkeeping.
async fn run_no_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    limits: Option<&str>,
    fence: Option<&Fence>,
) -> Result<(), NoTxError> {
    let statements = crate::sql::split(m.sql.as_str());
    let n = statements.len();
    if let Err(stop) = run_statements(c, &statements, limits, fence).await {
        let record = if stop.took_effect() && !stop.lease_lost() {
            Some(fenced(c, bookkeeping_sql(table, m, false), fence).await)
        } else {
            None
        };
        if let Some(Err(e)) = &record {
            tracing::warn!(
                "could not record migration {} as dirty: {}",
                m.version,
                super::describe(e)
            );
        }
        return Err(stop.into_error(n, record));
    }
    fenced(c, bookkeeping_sql(table, m, true), fence)
        .await
        .map_err(|e| NoTxError {
            message: unrecorded(&e, table, n, m.version),
            took_effect: n > 0,
            dirty: false,
            error: e,
        })
}

/// Why the bookkeeping row of a `-- no-transaction` migration whose `n` statements all ran
/// could not be written: said as it is, never "nothing took effect".
fn unrecorded(e: &sqlx::Error, table: &MigrationsTable, n: usize, version: i64) -> String {
    let ran = all_ran(n);
    if super::is_lease_lost(e) {
        return format!(
            "{ran}, but the migration lease was taken over by another run before it was \
             recorded in {table}: it is not recorded"
        );
    }
    if matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505")) {
        return format!(
            "{ran}, but another run recorded migration {version} in {table} \
             meanwhile (duplicate key): both runs may have applied it"
        );
    }
    format!(
        "{ran}, but recording it in {table} failed: {}",
        super::describe(e)
    )
}

/// "All `n` statements took effect", as said of a migration without a transaction.
fn all_ran(n: usize) -> String {
    match n {
        0 => "it has no statement".to_owned(),
        1 => "its statement took effect".to_owned(),
        n => format!("all {n} of its statements took effect"),
    }
}

/// Where the statements of a migration without a transaction stopped.
struct Stopped {
    error: sqlx::Error,
    /// The failing statement: its index, and the line it starts on.
    index: usize,
    line: usize,
    /// The failing statement itself may have left something behind (it ran, and a failed
    /// `CREATE INDEX CONCURRENTLY` leaves an invalid index).
    debris: bool,
}

impl Stopped {
    fn lease_lost(&self) -> bool {
        super::is_lease_lost(&self.error)
    }

    /// Whether anything of the migration took effect: a statement before this one, or this
    /// one's debris.
    fn took_effect(&self) -> bool {
        self.index > 0 || self.debris
    }

    /// The error, saying what took effect; `record`: how writing the dirty row went, when
    /// it was tried.
    fn into_error(self, n: usize, record: Option<Result<(), sqlx::Error>>) -> NoTxError {
        let k = self.index + 1;
        let before = match self.index {
            0 => String::new(),
            1 => ", after statement 1 took effect".into(),
            i => format!(", after statements 1-{i} took effect"),
        };
        let took_effect = self.took_effect();
        let message = if self.lease_lost() {
            format!(
                "the migration lease was taken over by another run: stopped at statement {k} \
                 of {n} (line {}), which did not take effect{}",
                self.line,
                if self.index > 0 {
                    format!("{before}; they are not recorded")
                } else {
                    String::new()
                }
            )
        } else {
            let recorded = match &record {
                Some(Err(e)) if super::is_lease_lost(e) => {
                    "; it is not recorded as dirty: the migration lease was taken over by \
                     another run"
                        .to_owned()
                }
                Some(Err(e)) => {
                    format!("; recording it as dirty failed too: {}", super::describe(e))
                }
                _ => String::new(),
            };
            format!(
                "statement {k} of {n} (line {}){before}: {}{recorded}",
                self.line,
                super::describe(&self.error)
            )
        };
        NoTxError {
            message,
            took_effect,
            dirty: took_effect && matches!(record, Some(Ok(()))),
            error: self.error,
        }
    }
}

/// Run `statements` one by one, each a transaction of its own (fenced, under the lease).
/// With `limits`, the session's timeouts are set before each statement they may bound
/// and reset before one they must not (see `apply_no_tx`).
async fn run_statements(
    c: &mut PgConnection,
    statements: &[crate::sql::Statement<'_>],
    limits: Option<&str>,
    fence: Option<&Fence>,
) -> Result<(), Stopped> {
    let mut limited = false;
    for (i, st) in statements.iter().enumerate() {
        let debris = crate::sql::leaves_debris_on_failure(st.text);
        let mut ran = false;
        let mut result = Ok(());
        if let Some(limits) = limits
            && limited == debris
        {
            let sql = if debris { RESET_LIMITS } else { limits };
            result = exec(c, sql.to_owned()).await;
            limited = !debris;
        }
        if result.is_ok() {
            ran = true;
            result = match fence {
                Some(fence) => fenced_statement(c, st.text, fence).await,
                None => exec(c, st.text.to_owned()).await,
            };
        }
        if let Err(error) = result {
            let lost = super::is_lease_lost(&error);
            return Err(Stopped {
                error,
                index: i,
                line: st.line,
                debris: ran && debris && !lost,
            });
        }
    }
    Ok(())
}

/// One statement of a `-- no-transaction` migration under the lease. Where it may run in
/// a transaction block, the fence's check, the statement and the fence's hold are sent in
/// one query, which PostgreSQL runs as one implicit transaction: a run whose lease was
/// taken over runs nothing, and one deposed while the statement ran (paused past the TTL)
/// has it rolled back at the hold, as a transactional migration would. A statement that
/// must run outside a transaction block (`CREATE INDEX CONCURRENTLY`, `VACUUM`,
/// transaction control, or any the server refuses there) is sent alone right after the
/// check. That is all that can be done for it: once sent it cannot be recalled, so a run
/// paused after the check or during the statement lets it finish after the lease is lost;
/// the next statement's check (or the bookkeeping's fence) then stops the run.
async fn fenced_statement(
    c: &mut PgConnection,
    text: &str,
    fence: &Fence,
) -> Result<(), sqlx::Error> {
    if !crate::sql::runs_outside_transaction(text) {
        // Newlines around the statement: it may end in a `--` comment.
        let sql = format!(
            "{CHECK_CONNECTION_LOCAL}{};\n{text}\n;\n{};",
            fence.check, fence.hold
        );
        match exec(c, sql).await {
            // Refused in a transaction block (25001), or a procedure's COMMIT refused
            // there (2D000): raised before anything of it could commit. Send it alone.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("25001" | "2D000")) => {}
            r => return r,
        }
    }
    exec(c, fence.check.clone()).await?;
    exec(c, text.to_owned()).await
}

/// A `-- no-transaction` migration that failed: what it left behind, said in `message`.
pub struct NoTxError {
    pub error: sqlx::Error,
    /// The whole message: where it stopped, what took effect, the error.
    pub message: String,
    /// Something of it took effect (a statement ran before the failure, or the failure
    /// left debris, or every statement ran and the bookkeeping failed).
    pub took_effect: bool,
    /// It is recorded dirty.
    pub dirty: bool,
}

/// Undo a migration and delete its row, fenced by the lease when `fence` is given. A
/// `-- no-transaction` down migration runs as an up one does: statement by statement, each
/// fenced, and the row deleted in a fenced transaction; a failure says what took effect.
pub async fn revert(
    c: &mut PgConnection,
    table: &MigrationsTable,
    down: Migration,
    fence: Option<&Fence>,
) -> Result<(), NoTxError> {
    let delete = format!("DELETE FROM {table} WHERE version = {}", down.version);
    if down.no_tx {
        // One statement at a time, as for an up migration: one multi-statement query is an
        // implicit transaction, where `DROP INDEX CONCURRENTLY` refuses to run.
        let statements = crate::sql::split(down.sql.as_str());
        let n = statements.len();
        if let Err(stop) = run_statements(c, &statements, None, fence).await {
            return Err(stop.into_error(n, None));
        }
        return fenced(c, delete, fence).await.map_err(|e| NoTxError {
            message: unrecorded_revert(&e, table, n, down.version),
            took_effect: n > 0,
            dirty: false,
            error: e,
        });
    }
    let (check, hold) = fence
        .map(|f| (format!("{};\n", f.check), format!("{};\n", f.hold)))
        .unwrap_or_default();
    let r = if down.sql.as_str().len() > INLINE_MAX {
        // As in `apply_in_tx`: a large down migration is sent in batches, not copied whole.
        async {
            exec(c, format!("BEGIN;\n{check}")).await?;
            send_large(c, down.sql).await?;
            exec(c, format!("{delete};\n{hold}COMMIT;")).await
        }
        .await
    } else {
        exec(
            c,
            format!(
                "BEGIN;\n{check}{}\n;\n{delete};\n{hold}COMMIT;",
                down.sql.as_str()
            ),
        )
        .await
    };
    if r.is_err() {
        end_failed_transaction(c).await;
    }
    r.map_err(|e| NoTxError {
        message: super::describe(&e),
        took_effect: false,
        dirty: false,
        error: e,
    })
}

/// `unrecorded`, for a `-- no-transaction` down migration whose row could not be deleted.
fn unrecorded_revert(e: &sqlx::Error, table: &MigrationsTable, n: usize, version: i64) -> String {
    let ran = all_ran(n);
    if super::is_lease_lost(e) {
        format!(
            "{ran}, but the migration lease was taken over by another run before migration \
             {version} was deleted from {table}: it is still recorded as applied"
        )
    } else {
        format!(
            "{ran}, but deleting migration {version} from {table} failed: {}",
            super::describe(e)
        )
    }
}

/// Record a migration as applied without running it, or mark a dirty one done.
pub async fn stamp(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    fence: Option<&Fence>,
) -> Result<(), sqlx::Error> {
    fenced(
        c,
        format!(
            "{} ON CONFLICT (version) DO UPDATE SET success = TRUE, checksum = EXCLUDED.checksum",
            bookkeeping_sql(table, m, true)
        ),
        fence,
    )
    .await
}

/// Run `sql`, in one transaction after the lease's fence when there is one.
async fn fenced(
    c: &mut PgConnection,
    sql: String,
    fence: Option<&Fence>,
) -> Result<(), sqlx::Error> {
    let Some(fence) = fence else {
        return exec(c, sql).await;
    };
    let r = exec(c, format!("BEGIN;\n{};\n{sql};\nCOMMIT;", fence.hold)).await;
    if r.is_err() {
        end_failed_transaction(c).await;
    }
    r
}

// ----- LISTEN -----

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
    pub(crate) async fn connect(cfg: &Config) -> Result<Listener, sqlx::Error> {
        // Bounded as any connect of ours (the pool's own default is 30 s).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(cfg.connect_timeout)
            .connect_lazy_with(options(cfg)?);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Listener(listener))
    }

    /// The listening connection runs the checks too: `--listen` holds one connection. True
    /// beside the rows when the history was asked for but is missing (read as
    /// `Conn::newest_marker` reads it).
    pub async fn newest_marker(
        &mut self,
        t: &Table,
        migrations: &MigrationsTable,
        version: &str,
        upto: Option<i64>,
    ) -> Result<(Vec<super::NewestRow>, bool), sqlx::Error> {
        match newest_marker(
            &mut self.0,
            t,
            migrations,
            version,
            upto.map(super::Upto::Version),
            true,
        )
        .await
        {
            Err(e) if upto.is_some() && super::is_undefined_table(&e) => {
                match newest_marker(&mut self.0, t, migrations, version, None, true).await {
                    Ok(rows) => Ok((rows, true)),
                    Err(_) => Err(e),
                }
            }
            r => r.map(|rows| (rows, false)),
        }
    }

    pub async fn history_whereabouts(
        &mut self,
        migrations: &MigrationsTable,
    ) -> super::Whereabouts {
        history_whereabouts(&mut self.0, migrations)
            .await
            .unwrap_or_default()
    }

    pub async fn applied(
        &mut self,
        table: &MigrationsTable,
    ) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
        applied(&mut self.0, table).await
    }

    pub async fn wait(&mut self, interval: Duration) -> Result<Wake, sqlx::Error> {
        match tokio::time::timeout(interval, self.0.try_recv()).await {
            Err(_) => Ok(Wake::Idle),
            Ok(Ok(_)) => Ok(Wake::Check),
            Ok(Err(e)) => Err(e),
        }
    }
}

// ----- other migrators' history -----

/// `SELECT expr, age(xmin)` of another migrator's history table (`Conn::history_rows`).
pub async fn history_rows(
    c: &mut PgConnection,
    expr: &str,
    table: &str,
) -> Result<super::HistoryRows, sqlx::Error> {
    let sql = format!("SELECT {expr}, age(xmin)::int8 FROM {table}");
    let rows = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(&mut *c).await?;
    let mut out: super::HistoryRows = (Vec::new(), None);
    for r in rows {
        out.0.push(r.try_get(0)?);
        let age: i64 = r.try_get(1)?;
        out.1 = Some(out.1.map_or(age, |a| a.min(age)));
    }
    Ok(out)
}

/// `Conn::newest_marker_row`, with the row's `age(xmin)`.
pub async fn newest_marker_row(
    c: &mut PgConnection,
    t: &Table,
    version: &str,
) -> Result<Option<(String, Option<String>, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT status, detail, age(xmin)::int8 FROM {} WHERE version = {} \
         OR action = 'rollback' ORDER BY id DESC LIMIT 1",
        t.qualified,
        lit(version)
    );
    match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_optional(&mut *c)
        .await?
    {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
        None => Ok(None),
    }
}

/// `Conn::newest_succeeded_detail`.
pub async fn newest_succeeded_detail(
    c: &mut PgConnection,
    t: &Table,
    prefix: &str,
) -> Result<Option<String>, sqlx::Error> {
    let sql = format!(
        "SELECT detail FROM {} WHERE status = 'succeeded' AND detail LIKE {} \
         ORDER BY id DESC LIMIT 1",
        t.qualified,
        lit(&format!("{prefix}%"))
    );
    match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_optional(&mut *c)
        .await?
    {
        Some(r) => r.try_get(0),
        None => Ok(None),
    }
}

// ----- the backend -----

/// PostgreSQL's spelling of what portable statements need.
pub const DIALECT: Dialect = Dialect {
    key_text: "TEXT",
    int64: "BIGINT",
    now_ms: "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    backslash_escapes: false,
    e_strings: true,
    on_duplicate_key: false,
};

impl Backend for PgConnection {
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
        name.split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn migrate(&mut self) -> &mut dyn sqlx::migrate::Migrate {
        self
    }

    fn close(self: Box<Self>) -> Fut<'static, ()> {
        Box::pin(sqlx::Connection::close(*self))
    }

    fn shrink_buffers(&mut self) {
        sqlx::Connection::shrink_buffers(self)
    }

    fn as_pg(&mut self) -> Option<&mut PgConnection> {
        Some(self)
    }

    fn into_pg(self: Box<Self>) -> Option<PgConnection> {
        Some(*self)
    }

    fn execute(&mut self, sql: String) -> Fut<'_, u64> {
        Box::pin(async move {
            let done = sqlx::raw_sql(AssertSqlSafe(sql)).execute(self).await?;
            Ok(done.rows_affected())
        })
    }

    fn fetch(&mut self, sql: String, texts: usize, ints: usize) -> Fut<'_, Rows> {
        Box::pin(async move { decode(rows(self, sql).await?, texts, ints) })
    }

    fn prepare_for_lock(&mut self, busy: Option<(i64, i64)>) -> Fut<'_, Option<ServerInfo>> {
        Box::pin(async move { prepare_for_lock(self, busy).await.map(Some) })
    }

    fn try_lock<'a>(
        &'a mut self,
        lock: &'a LockConfig,
        token: &'a str,
        then_release: Option<i64>,
    ) -> Fut<'a, bool> {
        Box::pin(try_lock(self, lock.key, token, then_release))
    }

    fn unlock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(unlock(self, lock.key))
    }

    fn holds_lock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(holds_lock(self, lock.key))
    }

    fn lock_holder<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, Option<Holder>> {
        Box::pin(lock_holder(self, lock.key))
    }

    fn table_home<'a>(&'a mut self, table: &'a Table) -> Fut<'a, (Option<String>, Option<String>)> {
        Box::pin(async move {
            let schema = match &table.schema {
                Some(s) => Some(s.clone()),
                None => table_schema(self, &table.name.to_ascii_lowercase()).await?,
            };
            Ok((schema, Some("public".to_owned())))
        })
    }

    fn free_slots(&mut self) -> Fut<'_, Option<i64>> {
        Box::pin(free_slots(self))
    }

    fn session_id(&mut self) -> Fut<'_, i64> {
        Box::pin(session_id(self))
    }

    fn cancel_and_settle(&mut self, id: i64) -> Fut<'_, ()> {
        Box::pin(cancel_and_settle(self, id))
    }

    fn kill_session(&mut self, id: i64) -> Fut<'_, ()> {
        Box::pin(kill_session(self, id))
    }

    fn ensure_marker_table<'a>(&'a mut self, t: &'a Table) -> Fut<'a, ()> {
        Box::pin(ensure_marker_table(self, t))
    }

    fn ensure_tables<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
    ) -> Option<Fut<'a, ()>> {
        Some(Box::pin(ensure_tables(self, t, migrations)))
    }

    fn ensure_tables_and_read<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<super::Upto<'a>>,
    ) -> Option<Fut<'a, NewestAndApplied>> {
        Some(Box::pin(ensure_tables_and_read(
            self, t, migrations, version, upto,
        )))
    }

    fn insert_marker<'a>(
        &'a mut self,
        t: &'a Table,
        m: &'a NewMarker<'a>,
        fence: Option<&'a Fence>,
        engine: Engine,
        unless_done: bool,
    ) -> Fut<'a, ()> {
        if unless_done {
            Box::pin(insert_marker_unless_done(self, t, m, fence, engine))
        } else {
            Box::pin(insert_marker(self, t, m, fence, engine))
        }
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

    fn history_whereabouts<'a>(
        &'a mut self,
        migrations: &'a MigrationsTable,
    ) -> Fut<'a, super::Whereabouts> {
        Box::pin(history_whereabouts(self, migrations))
    }

    fn markers<'a>(&'a mut self, t: &'a Table, limit: u32) -> Fut<'a, Vec<Marker>> {
        Box::pin(markers(self, t, limit))
    }

    fn applied<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
    ) -> Boxed<'a, crate::error::Result<(Vec<AppliedMigration>, Option<i64>)>> {
        Box::pin(async move { super::settle_applied(applied(self, table).await) })
    }

    fn history_rows<'a>(
        &'a mut self,
        expr: &'a str,
        table: &'a str,
    ) -> Fut<'a, super::HistoryRows> {
        Box::pin(history_rows(self, expr, table))
    }

    fn newest_marker_row<'a>(
        &'a mut self,
        t: &'a Table,
        version: &'a str,
    ) -> Fut<'a, Option<(String, Option<String>, i64)>> {
        Box::pin(newest_marker_row(self, t, version))
    }

    fn newest_succeeded_detail<'a>(
        &'a mut self,
        t: &'a Table,
        prefix: &'a str,
    ) -> Fut<'a, Option<String>> {
        Box::pin(newest_succeeded_detail(self, t, prefix))
    }

    /// Transactional migrations together in one transaction; a `-- no-transaction` one
    /// alone, statement by statement.
    fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        mut migrations: Migrations<'a>,
        opts: &'a ApplyOptions,
    ) -> Boxed<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let Some(first) = migrations.next() else {
                return Ok(());
            };
            let first = first.map_err(|e| ApplyError::unreadable(&e))?;
            if !first.no_tx {
                let all = std::iter::once(Ok(first)).chain(migrations);
                return apply_in_tx(self, table, all, opts).await;
            }
            apply_no_tx(self, table, &first, opts)
                .await
                .map_err(ApplyError::from_no_tx)
        })
    }

    fn revert<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        down: Migration,
        fence: Option<&'a Fence>,
    ) -> Boxed<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            revert(self, table, down, fence)
                .await
                .map_err(ApplyError::from_no_tx)
        })
    }

    fn stamp<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        m: &'a Migration,
        fence: Option<&'a Fence>,
    ) -> Fut<'a, ()> {
        Box::pin(stamp(self, table, m, fence))
    }

    fn invalid_indexes(&mut self) -> Fut<'_, Vec<String>> {
        Box::pin(invalid_indexes(self))
    }

    fn catalog(&mut self) -> Fut<'_, crate::db::catalog::Snapshot> {
        Box::pin(catalog::take(self))
    }

    fn create_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(exec(self, format!("CREATE DATABASE {name}")))
    }

    fn drop_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(exec(
            self,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ))
    }

    fn prepare_scratch<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            super::stale::sweep_pg(self).await;
            super::stale::hold_pg(self, name).await
        })
    }

    fn mark_scratch<'a>(&'a mut self, name: &'a str, what: &'a str) -> Fut<'a, ()> {
        Box::pin(super::stale::mark_pg(self, name, what))
    }

    fn table_count(&mut self) -> Fut<'_, i64> {
        Box::pin(
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            )
            .fetch_one(self),
        )
    }
}

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
        assert_eq!(unhex("00ff10"), vec![0, 255, 16]);
    }
}
