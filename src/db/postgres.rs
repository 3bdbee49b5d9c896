//! PostgreSQL: session advisory lock by key, the lease lock, the marker with NOTIFY,
//! LISTEN for `wait`, and the migration bookkeeping in sqlx's `_sqlx_migrations` layout.
//!
//! Every statement here uses the simple query protocol (values are quoted literals, never
//! bound parameters). Two reasons: it works through PgBouncer in transaction pooling mode,
//! where a prepared statement parsed on one server connection is gone on the next; and a
//! transactional migration with its bookkeeping row is one round trip.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{AppliedMigration, Migration};
use sqlx::postgres::{PgConnectOptions, PgExecutor, PgListener, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, PgConnection, Row};

use super::{ApplyOptions, Holder, MIGRATIONS_TABLE, Marker, NewMarker, Newest};
use crate::config::{Config, Table};
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

pub async fn connect(cfg: &Config) -> Result<PgConnection, sqlx::Error> {
    options(cfg)?.connect().await
}

/// A string as a PostgreSQL literal, safe whatever `standard_conforming_strings` says
/// (the quoting libpq's PQescapeLiteral does). NUL cannot be stored in text: dropped.
pub fn lit(s: &str) -> String {
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

fn millis(d: Duration) -> String {
    format!("'{}ms'", d.as_millis().max(1))
}

/// A `lock_timeout` / `statement_timeout` value: 0 keeps PostgreSQL's meaning, no limit.
fn timeout_ms(d: Duration) -> String {
    match d.as_millis() {
        0 if d.is_zero() => "0".into(),
        ms => format!("'{}ms'", ms.max(1)),
    }
}

async fn rows<'c>(c: impl PgExecutor<'c>, sql: String) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(c).await
}

async fn row<'c>(c: impl PgExecutor<'c>, sql: String) -> Result<Option<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_optional(c).await
}

async fn exec(c: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(c)
        .await
        .map(|_| ())
}

pub async fn prepare_for_lock(c: &mut PgConnection) -> Result<(), sqlx::Error> {
    // If this process dies mid-statement, the server notices the closed socket within a
    // second and rolls back, instead of finishing a long statement while holding the lock.
    // (PostgreSQL 14+; older servers reject the setting, which only costs that speed-up.)
    if let Err(e) = exec(c, "SET client_connection_check_interval = '1s'".into()).await {
        tracing::debug!("client_connection_check_interval not set: {e}");
    }
    Ok(())
}

// Poll pg_try_advisory_lock: a blocked pg_advisory_lock holds a snapshot that CREATE INDEX
// CONCURRENTLY in the holder's migration waits on: deadlock.
pub async fn try_lock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let r = row(c, format!("SELECT pg_try_advisory_lock({key})")).await?;
    Ok(r.map(|r| r.try_get::<bool, _>(0))
        .transpose()?
        .unwrap_or(false))
}

pub async fn unlock(c: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
    exec(c, format!("SELECT pg_advisory_unlock({key})")).await
}

pub async fn holds_lock(c: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let r = row(
        c,
        format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() \
               AND locktype = 'advisory' AND granted AND objsubid = 1 \
               AND classid = (({key}::int8 >> 32) & 4294967295)::oid \
               AND objid = ({key}::int8 & 4294967295)::oid)"
        ),
    )
    .await?;
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
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = (({key}::int8 >> 32) & 4294967295)::oid \
               AND l.objid = ({key}::int8 & 4294967295)::oid \
             LIMIT 1"
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

pub async fn session_id(c: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let r = row(c, "SELECT pg_backend_pid()::int8".into()).await?;
    Ok(r.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0))
}

pub async fn kill_session(c: &mut PgConnection, pid: i64) -> Result<(), sqlx::Error> {
    exec(c, format!("SELECT pg_terminate_backend({pid}::int4)")).await
}

// ----- the lease lock (for transaction poolers, where session locks do not work) -----

/// `CREATE SCHEMA IF NOT EXISTS` for a schema-qualified table, else nothing.
fn create_schema_sql(t: &Table) -> String {
    t.schema
        .as_ref()
        .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"))
        .unwrap_or_default()
}

fn lease_table(t: &Table) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}_lease", t.name),
        None => format!("{}_lease", t.name),
    }
}

pub async fn ensure_lease_table(c: &mut PgConnection, t: &Table) -> Result<(), sqlx::Error> {
    let schema = create_schema_sql(t);
    let sql = format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {l} (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            token TEXT NOT NULL,
            acquired_at TIMESTAMPTZ NOT NULL,
            heartbeat_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        )",
        l = lease_table(t)
    );
    match exec(c, sql).await {
        // Racing creators: one wins, the others see the type or table appear.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("23505") | Some("42P07")) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Take the lease if it is free or expired. Returns the previous owner when we took over
/// an expired lease, `Err` … `Ok(None)` when someone else holds it.
pub async fn try_lease(
    c: &mut PgConnection,
    t: &Table,
    name: &str,
    owner: &str,
    token: &str,
    ttl: Duration,
) -> Result<Option<Option<String>>, sqlx::Error> {
    let l = lease_table(t);
    let sql = format!(
        "WITH prev AS (SELECT owner FROM {l} WHERE name = {n}) \
         INSERT INTO {l} AS cur (name, owner, token, acquired_at, heartbeat_at, expires_at) \
         VALUES ({n}, {o}, {tok}, clock_timestamp(), clock_timestamp(), clock_timestamp() + {ttl}::interval) \
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, token = EXCLUDED.token, \
           acquired_at = EXCLUDED.acquired_at, heartbeat_at = EXCLUDED.heartbeat_at, \
           expires_at = EXCLUDED.expires_at \
         WHERE cur.expires_at < clock_timestamp() \
         RETURNING (SELECT owner FROM prev)",
        n = lit(name),
        o = lit(owner),
        tok = lit(token),
        ttl = millis(ttl),
    );
    match row(c, sql).await? {
        Some(r) => Ok(Some(r.try_get::<Option<String>, _>(0)?)),
        None => Ok(None),
    }
}

/// Extend our lease; false when it is no longer ours.
pub async fn renew_lease(
    c: &mut PgConnection,
    t: &Table,
    name: &str,
    token: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE {l} SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + {ttl}::interval \
         WHERE name = {n} AND token = {tok} RETURNING 1",
        l = lease_table(t),
        n = lit(name),
        tok = lit(token),
        ttl = millis(ttl),
    );
    Ok(row(c, sql).await?.is_some())
}

pub async fn release_lease(
    c: &mut PgConnection,
    t: &Table,
    name: &str,
    token: &str,
) -> Result<(), sqlx::Error> {
    exec(
        c,
        format!(
            "DELETE FROM {} WHERE name = {} AND token = {}",
            lease_table(t),
            lit(name),
            lit(token)
        ),
    )
    .await
}

pub async fn lease_holder(
    c: &mut PgConnection,
    t: &Table,
    name: &str,
) -> Result<Option<Holder>, sqlx::Error> {
    let sql = format!(
        "SELECT owner, extract(epoch FROM clock_timestamp() - acquired_at)::float8, \
           extract(epoch FROM expires_at - clock_timestamp())::float8 \
         FROM {} WHERE name = {} AND expires_at > clock_timestamp()",
        lease_table(t),
        lit(name)
    );
    let r = match row(c, sql).await {
        Err(e) if super::is_undefined_table(&e) => return Ok(None),
        r => r?,
    };
    r.map(|r| {
        let owner: String = r.try_get(0)?;
        let expires_in: f64 = r.try_get(2)?;
        Ok(Holder {
            pid: owner
                .rsplit_once("(pid ")
                .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
                .unwrap_or(0),
            application_name: format!("{owner}, lease expires in {expires_in:.0}s"),
            client: "lease".into(),
            held_for_secs: r.try_get(1)?,
        })
    })
    .transpose()
}

// ----- the marker -----

pub async fn ensure_marker_table(c: &mut PgConnection, t: &Table) -> Result<(), sqlx::Error> {
    let schema = create_schema_sql(t);
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
    exec(c, sql).await
}

/// The INSERT (and NOTIFY) for a marker row, as one statement: `wait --listen` wakes at
/// the commit that makes the row visible.
pub fn insert_marker_sql(t: &Table, m: &NewMarker<'_>) -> String {
    format!(
        "WITH ins AS (
            INSERT INTO {q} (version, digest, status, action, started_at, finished_at,
                             applied, runner, tool_version, detail)
            VALUES ({v}, {d}, '{s}', {a}, clock_timestamp() - make_interval(secs => {e}),
                    clock_timestamp(), {n}, {r}, {tv}, {det})
            RETURNING version)
         SELECT pg_notify('{CHANNEL}', version) FROM ins",
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
) -> Result<(), sqlx::Error> {
    exec(c, insert_marker_sql(t, m)).await
}

pub async fn newest_marker<'c>(
    c: impl PgExecutor<'c>,
    t: &Table,
    version: &str,
) -> Result<Option<Newest>, sqlx::Error> {
    row(c, super::newest_marker_sql(t, &lit(version)))
        .await?
        .map(|r| {
            Ok(Newest {
                version: r.try_get(0)?,
                status: r.try_get(1)?,
                digest: r.try_get(2)?,
                detail: r.try_get(3)?,
            })
        })
        .transpose()
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

/// Applied migrations, in version order, and the first dirty one (`success = false`).
pub async fn applied<'c>(
    c: impl PgExecutor<'c>,
) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
    let rs = rows(
        c,
        format!("SELECT version, encode(checksum, 'hex'), success FROM {MIGRATIONS_TABLE} ORDER BY version"),
    )
    .await?;
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

fn bookkeeping_sql(m: &Migration, success: bool) -> String {
    // execution_time: nanoseconds since the transaction began (sqlx writes -1, then
    // updates it in another round trip).
    format!(
        "INSERT INTO {MIGRATIONS_TABLE} (version, description, success, checksum, execution_time) \
         VALUES ({v}, {d}, {success}, decode('{c}', 'hex'), \
           (extract(epoch FROM clock_timestamp() - now()) * 1e9)::int8)",
        v = m.version,
        d = lit(&m.description),
        c = hex(&m.checksum),
    )
}

/// The SQL that applies one transactional migration with its bookkeeping row, without
/// BEGIN/COMMIT (so several can share one transaction).
pub fn migration_in_tx_sql(m: &Migration) -> String {
    // Newlines around the migration's SQL: it may end in a `--` comment.
    format!("{}\n;\n{};\n", m.sql.as_str(), bookkeeping_sql(m, true))
}

fn settings_sql(opts: &ApplyOptions) -> String {
    // If this process dies, the server aborts the transaction within a second instead of
    // finishing it: a lease taken over after its TTL never overlaps a dead run's
    // migration. LOCAL, so it works through a transaction pooler too (PostgreSQL 14+).
    let mut s = String::from(
        "SELECT set_config('client_connection_check_interval', '1s', true) \
         WHERE current_setting('server_version_num')::int >= 140000;\n",
    );
    if let Some(d) = opts.lock_timeout {
        s.push_str(&format!("SET LOCAL lock_timeout = {};\n", timeout_ms(d)));
    }
    if let Some(d) = opts.statement_timeout {
        s.push_str(&format!(
            "SET LOCAL statement_timeout = {};\n",
            timeout_ms(d)
        ));
    }
    s
}

/// Apply transactional migrations in one transaction, in one round trip; on error the
/// transaction is rolled back.
pub async fn apply_in_tx(
    c: &mut PgConnection,
    migrations: &[&Migration],
    opts: &ApplyOptions,
) -> Result<(), sqlx::Error> {
    let mut sql = format!("BEGIN;\n{}", settings_sql(opts));
    for m in migrations {
        sql.push_str(&migration_in_tx_sql(m));
    }
    sql.push_str("COMMIT;");
    let r = exec(c, sql).await;
    if r.is_err() {
        end_failed_transaction(c).await;
    }
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

/// Apply a `-- no-transaction` migration. On failure it is recorded as dirty
/// (`success = false`): its statements may have partly taken effect, so the next run must
/// not silently run it again.
pub async fn apply_no_tx(c: &mut PgConnection, m: &Migration) -> Result<(), sqlx::Error> {
    match exec(c, m.sql.as_str().to_owned()).await {
        Ok(()) => exec(c, bookkeeping_sql(m, true)).await,
        Err(e) => {
            if let Err(record) = exec(c, bookkeeping_sql(m, false)).await {
                tracing::warn!(
                    "could not record migration {} as dirty: {record}",
                    m.version
                );
            }
            Err(e)
        }
    }
}

pub async fn revert(c: &mut PgConnection, down: &Migration) -> Result<(), sqlx::Error> {
    let delete = format!(
        "DELETE FROM {MIGRATIONS_TABLE} WHERE version = {}",
        down.version
    );
    if down.no_tx {
        exec(c, down.sql.as_str().to_owned()).await?;
        return exec(c, delete).await;
    }
    let r = exec(
        c,
        format!("BEGIN;\n{}\n;\n{delete};\nCOMMIT;", down.sql.as_str()),
    )
    .await;
    if r.is_err() {
        end_failed_transaction(c).await;
    }
    r
}

/// Record a migration as applied without running it, or mark a dirty one done.
pub async fn stamp(c: &mut PgConnection, m: &Migration) -> Result<(), sqlx::Error> {
    exec(
        c,
        format!(
            "{} ON CONFLICT (version) DO UPDATE SET success = TRUE, checksum = EXCLUDED.checksum",
            bookkeeping_sql(m, true)
        ),
    )
    .await
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
    pub async fn connect(cfg: &Config) -> Result<Listener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options(cfg)?);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Listener(listener))
    }

    /// The listening connection runs the checks too: `--listen` holds one connection.
    pub async fn newest_marker(
        &mut self,
        t: &Table,
        version: &str,
    ) -> Result<Option<Newest>, sqlx::Error> {
        newest_marker(&mut self.0, t, version).await
    }

    pub async fn applied(&mut self) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
        applied(&mut self.0).await
    }

    pub async fn wait(&mut self, interval: Duration) -> Result<Wake, sqlx::Error> {
        match tokio::time::timeout(interval, self.0.try_recv()).await {
            Err(_) => Ok(Wake::Idle),
            Ok(Ok(_)) => Ok(Wake::Check),
            Ok(Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_whatever_the_content() {
        assert_eq!(lit("plain"), "'plain'");
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(lit("a\\b'c"), "E'a\\\\b''c'");
        assert_eq!(lit("nul\0byte"), "'nulbyte'");
        assert_eq!(unhex("00ff10"), vec![0, 255, 16]);
    }
}
