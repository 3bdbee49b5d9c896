//! The lease lock (PostgreSQL): a row `<table>_lease` with an owner, a token and an expiry,
//! renewed by a heartbeat on a connection of its own, taken over only once expired, and
//! checked by the fence in every migration transaction. Its SQL works through transaction
//! poolers and on engines whose advisory locks are not real (plain tables, `INSERT … ON
//! CONFLICT`, no advisory function, no procedural language, no NOTIFY). The fence, and what
//! it cannot stop: `docs/src/how-it-works.md#the-lease-and-fencing`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, Row};

use crate::db::pg::{Existing, create_schema_sql, exec, lit, millis, row, rows_creating};
use crate::db::{self, Fence, Holder, LEASE_LOST};
use crate::error::{Error, Result};
use crate::settings::{Config, Table};

fn table(t: &Table) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}_lease", t.name),
        None => format!("{}_lease", t.name),
    }
}

pub async fn ensure_table(c: &mut PgConnection, t: &Table) -> Result<()> {
    let l = table(t);
    // Only what is missing, for a role that may not create what exists (`rows_creating`).
    let sql = |e: &Existing| match (e.schema, e.tables[0]) {
        (_, true) => "SELECT 1".to_owned(),
        (schema_exists, false) => format!(
            "{schema}
            CREATE TABLE IF NOT EXISTS {l} (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                token TEXT NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL,
                heartbeat_at TIMESTAMPTZ NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            )",
            schema = if schema_exists {
                String::new()
            } else {
                create_schema_sql(t)
            },
        ),
    };
    match rows_creating(c, t.schema.as_deref(), &[&l], sql)
        .await
        .map(drop)
    {
        // Racing creators: one wins, the others see the type or table appear.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("23505" | "42P07" | "42710")) =>
        {
            Ok(())
        }
        r => r.map_err(|e| super::read_err("cannot create the lease table", e)),
    }
}

/// Take the lease if it is free or expired: `Some(previous owner of an expired lease)`
/// when taken, `None` when another run holds it.
///
/// The row is locked first (`FOR UPDATE`), and the previous owner is the owner of the row
/// so locked: a lease its holder released meanwhile (the row deleted after this
/// statement's snapshot was taken) is found gone, not taken over. Reading it in the
/// INSERT's own snapshot named the owner of a lease released a moment before, as if it
/// had expired.
pub async fn try_take(
    c: &mut PgConnection,
    cfg: &Config,
    token: &str,
    ttl: Duration,
) -> Result<Option<Option<String>>> {
    let l = table(&cfg.table);
    let n = lit(&cfg.lock.name);
    // A run inside a fenced migration holds the row locked: give up after a moment
    // instead of queueing behind it (the holder is alive, the lease is not free).
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '200ms';
         SELECT owner, 0 FROM {l} WHERE name = {n} FOR UPDATE;
         INSERT INTO {l} AS cur (name, owner, token, acquired_at, heartbeat_at, expires_at) \
         VALUES ({n}, {o}, {tok}, clock_timestamp(), clock_timestamp(), clock_timestamp() + {ttl}::interval) \
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, token = EXCLUDED.token, \
           acquired_at = EXCLUDED.acquired_at, heartbeat_at = EXCLUDED.heartbeat_at, \
           expires_at = EXCLUDED.expires_at \
         WHERE cur.expires_at < clock_timestamp() \
         RETURNING 1;
         COMMIT;",
        o = lit(&cfg.runner),
        tok = lit(token),
        ttl = millis(ttl),
    );
    match db::pg::rows(&mut *c, sql).await {
        Ok(rows) => {
            // The locked row (two columns), then the INSERT's (one column) when it took the
            // lease: told apart by their width.
            let (locked, taken): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.len() == 2);
            if taken.is_empty() {
                return Ok(None);
            }
            let previous = match locked.first() {
                Some(r) => Some(
                    r.try_get::<String, _>(0)
                        .map_err(|e| super::read_err("cannot take the lease", e))?,
                ),
                None => None,
            };
            Ok(Some(previous))
        }
        Err(e) => {
            let _ = exec(c, "ROLLBACK".into()).await;
            match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03") => Ok(None),
                _ => Err(super::read_err("cannot take the lease", e)),
            }
        }
    }
}

/// Extend our lease; false when it is no longer ours.
pub async fn renew(c: &mut PgConnection, cfg: &Config, token: &str, ttl: Duration) -> Result<bool> {
    let sql = format!(
        "UPDATE {l} SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + {ttl}::interval \
         WHERE name = {n} AND token = {tok} RETURNING 1",
        l = table(&cfg.table),
        n = lit(&cfg.lock.name),
        tok = lit(token),
        ttl = millis(ttl),
    );
    Ok(row(c, sql)
        .await
        .map_err(|e| super::read_err("cannot renew the lease", e))?
        .is_some())
}

/// The fence (`docs/src/how-it-works.md#the-lease-and-fencing`). Both statements check the
/// token, not the expiry: a lease that lapsed while nobody took it is still ours, and `hold`
/// renews it under the row lock, so a takeover waits for our commit. The error is a failed
/// cast of a text that depends on the row count, so PostgreSQL cannot fold it into a
/// constant and raise it when the lease is fine.
pub fn fence(cfg: &Config, token: &str, ttl: Duration) -> Fence {
    let raise = |rows: &str| {
        format!(
            "SELECT CASE WHEN count(*) = 1 THEN 0 \
               ELSE ({lost} || ' (' || count(*) || ')')::int END FROM {rows}",
            lost = lit(LEASE_LOST)
        )
    };
    let (l, n, tok) = (table(&cfg.table), lit(&cfg.lock.name), lit(token));
    Fence {
        check: raise(&format!(
            "(SELECT 1 FROM {l} WHERE name = {n} AND token = {tok}) AS fence"
        )),
        hold: format!(
            "WITH fence AS (UPDATE {l} SET heartbeat_at = clock_timestamp(), \
               expires_at = clock_timestamp() + {ttl}::interval \
               WHERE name = {n} AND token = {tok} RETURNING 1) {}",
            raise("fence"),
            ttl = millis(ttl),
        ),
    }
}

pub async fn release(c: &mut PgConnection, cfg: &Config, token: &str) -> Result<()> {
    let sql = format!(
        "DELETE FROM {} WHERE name = {} AND token = {}",
        table(&cfg.table),
        lit(&cfg.lock.name),
        lit(token)
    );
    exec(c, sql)
        .await
        .map_err(|e| super::read_err("cannot release the lease", e))
}

/// The live lease's holder, if any (none when the table does not exist yet).
/// Whether the lease table exists (asked of the catalog: a query on a missing table would
/// put an error in the server's log, and most databases never have a lease table).
pub async fn exists(c: &mut PgConnection, cfg: &Config) -> Result<bool> {
    Ok(row(
        c,
        format!(
            "SELECT to_regclass({}) IS NOT NULL",
            lit(&table(&cfg.table))
        ),
    )
    .await
    .map_err(|e| super::read_err("cannot read the lease", e))?
    .map(|r| r.try_get::<bool, _>(0))
    .transpose()
    .map_err(|e| super::read_err("cannot read the lease", e))?
    .unwrap_or(false))
}

pub async fn holder(c: &mut PgConnection, cfg: &Config) -> Result<Option<Holder>> {
    if !exists(&mut *c, cfg).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT owner, extract(epoch FROM clock_timestamp() - acquired_at)::float8, \
           extract(epoch FROM expires_at - clock_timestamp())::float8 \
         FROM {} WHERE name = {} AND expires_at > clock_timestamp()",
        table(&cfg.table),
        lit(&cfg.lock.name)
    );
    let r = match row(c, sql).await {
        Err(e) if db::is_undefined_table(&e) => return Ok(None),
        r => r.map_err(|e| super::read_err("cannot read the lease", e))?,
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
    .map_err(|e: sqlx::Error| super::read_err("cannot read the lease", e))
}

/// A lease we hold: its token, and the heartbeat that renews it.
pub struct Held {
    pub token: String,
    pub ttl: Duration,
    pub lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Renew the lease every third of its TTL on a connection of its own; flag it lost
    /// when it is no longer ours, or when a TTL passes without a successful renewal.
    pub fn start(cfg: &Config, token: &str, ttl: Duration) -> Held {
        let lost = Arc::new(AtomicBool::new(false));
        let (cfg, token_owned, flag) = (cfg.clone(), token.to_owned(), lost.clone());
        let heartbeat = tokio::spawn(async move {
            let mut conn: Option<db::Conn> = None;
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                if conn.is_none() {
                    let mut short = cfg.clone();
                    short.connect_timeout = ttl / 3;
                    conn = db::connect(&short).await.ok();
                }
                let outcome = match conn.as_mut().and_then(db::Conn::pg) {
                    Some(c) => renew(c, &cfg, &token_owned, ttl).await,
                    None => Err(Error::Failed("no connection".into())),
                };
                match outcome {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        tracing::error!("the lease is no longer ours: another run took it over");
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("could not renew the lease: {e:#}");
                        conn = None;
                        if renewed.elapsed() >= ttl {
                            flag.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        });
        Held {
            token: token.to_owned(),
            ttl,
            lost,
            heartbeat,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn stop_heartbeat(&self) {
        self.heartbeat.abort();
    }
}
