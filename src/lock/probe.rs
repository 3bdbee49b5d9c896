//! `--lock auto` on PostgreSQL: use the session advisory lock only when this connection is
//! proven to be a server session of its own whose advisory lock excludes other sessions
//! (`version()`, the pid announced at startup, a second connection refused the probe key);
//! otherwise the lease. What is trusted, and why, and what the proof costs:
//! `docs/src/how-it-works.md#choosing-the-lock`.

use std::time::Duration;

use sqlx::{PgConnection, Row};

use crate::db::pg::{advisory_held, held_here_sql, row};
use crate::db::{self, Conn};
use crate::db::{Engine, ServerInfo};
use crate::error::Result;
use crate::settings::Config;

/// What the probe found: whether the advisory lock can be trusted here, and why.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub advisory_ok: bool,
    /// One sentence naming what was detected (or proven).
    pub reason: String,
    /// Detected a transaction pooler (as opposed to an advisory lock that does not
    /// exclude, or an engine without one).
    pub pooler: bool,
}

impl Verdict {
    fn no(pooler: bool, reason: String) -> Verdict {
        Verdict {
            advisory_ok: false,
            reason,
            pooler,
        }
    }
}

/// The key `migrate` proves on: the run's lock key with fixed bits flipped (no run locks it).
pub fn probe_key(lock_key: i64) -> i64 {
    lock_key ^ 0x5052_4f42_455f_6b65
}

/// Decide on the lock connection `conn`, about whose server `info` tells, proving on
/// `probe_key` (see the module), or on a random key when `None`. `Ok(None)`: another
/// session holds `probe_key`, proving now. When the advisory lock is proven on `probe_key`,
/// that key is still held on return: the caller lets it go with its try of the real key,
/// so that no other run starts a proof in between. Long on purpose: the proof's three
/// conditions and what each refusal says, in the order they are checked.
pub async fn prove(
    conn: &mut Conn,
    cfg: &Config,
    info: &ServerInfo,
    probe_key: Option<i64>,
    taken: bool,
) -> Result<Option<Verdict>> {
    match Engine::from_version(&info.version) {
        Engine::CockroachDb => {
            return Ok(Some(Verdict::no(
                false,
                "the server is CockroachDB, whose pg_try_advisory_lock is a stub that always \
                 succeeds"
                    .into(),
            )));
        }
        Engine::YugabyteDb => {
            return Ok(Some(Verdict::no(
                false,
                "the server is YugabyteDB, whose advisory locks are off unless enabled".into(),
            )));
        }
        Engine::Postgres => {}
    }
    if info.pid != info.startup_pid {
        return Ok(Some(Verdict::no(
            true,
            format!(
                "a connection pooler or proxy sits between this connection and the server: \
                 statements run in server session {}, but the connection was announced \
                 backend {} at startup (PgBouncer, Supavisor, Neon's pooler and RDS Proxy \
                 announce their own)",
                info.pid, info.startup_pid
            ),
        )));
    }
    let Some(c) = conn.pg() else {
        unreachable!("the probe runs on PostgreSQL only")
    };
    let key = probe_key.unwrap_or_else(random_key);
    // Taken already when the connection was prepared (`postgres::prepare_for_lock`).
    let mut taken = if taken && probe_key.is_some() {
        Ok(Some(info.pid))
    } else {
        take(c, key).await
    };
    if probe_key.is_some() && matches!(taken, Ok(None)) {
        // Refused the run's probe key: another run is proving, if the server's lock table
        // shows it held. If not (it may have just let go), once more: a server that
        // refuses every key is told apart here. (A wrong "no" only costs the lease.)
        if advisory_held(c, key).await.map_err(probe_err)? {
            return Ok(None);
        }
        taken = take(c, key).await;
    }
    let ours = match taken {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            return Ok(Some(Verdict::no(
                false,
                "an advisory lock on an unused key was refused".into(),
            )));
        }
        Err(e) => {
            return Ok(Some(Verdict::no(
                false,
                format!("the server rejects advisory locks ({})", db::describe(&e)),
            )));
        }
    };
    let keep = probe_key.is_some();
    let mut released = false;
    let verdict = check(c, connect_other(cfg).await, key, ours, !keep, &mut released).await;
    let kept = keep && verdict.as_ref().is_ok_and(|v| v.advisory_ok);
    if !released && !kept {
        // Leave nothing behind on our session.
        let _ = row(
            c,
            format!(
                "SELECT pg_advisory_unlock({key}) WHERE EXISTS ({})",
                held_here_sql(key)
            ),
        )
        .await;
    }
    verdict.map(Some)
}

/// Open the second connection, with a short deadline.
async fn connect_other(cfg: &Config) -> Result<Conn> {
    let short = cfg.connect_within(Duration::from_secs(5), "the lock probe's limit");
    db::connect(&short).await
}

async fn check(
    c: &mut PgConnection,
    other: Result<Conn>,
    key: i64,
    ours: i64,
    release: bool,
    released: &mut bool,
) -> Result<Verdict> {
    let mut other = match other {
        Ok(other) => other,
        Err(e) => {
            return Ok(Verdict::no(
                false,
                format!(
                    "could not open a second connection to prove that the advisory lock \
                     excludes other sessions ({e:#})"
                ),
            ));
        }
    };
    let verdict = second_connection_refused(
        c,
        other.pg().expect("same URL"),
        key,
        ours,
        release,
        released,
    )
    .await;
    other.close().await;
    verdict
}

/// The second connection tries the key: it must run in another server session and be
/// refused, and `pg_locks` must show our session holding it (then, with `release`, it is
/// released in the same statement: `released`).
async fn second_connection_refused(
    c: &mut PgConnection,
    other: &mut PgConnection,
    key: i64,
    ours: i64,
    release: bool,
    released: &mut bool,
) -> Result<Verdict> {
    let Ok(answer) = tokio::time::timeout(OTHER_WAIT, try_other(other, key)).await else {
        return Ok(Verdict::no(
            false,
            format!(
                "a second connection got no answer within {OTHER_WAIT:?}, so the advisory \
                 lock could not be proven"
            ),
        ));
    };
    let (their_pid, granted) = answer.map_err(probe_err)?;
    if their_pid == ours {
        return Ok(Verdict::no(
            true,
            format!(
                "a connection pooler: a second connection ran on the same server session \
                 (pid {ours}) as this one"
            ),
        ));
    }
    if granted {
        return Ok(Verdict::no(
            false,
            format!(
                "the advisory lock does not exclude: a second session (pid {their_pid}) took \
                 the key this session (pid {ours}) held"
            ),
        ));
    }
    *released = release;
    if let Some(moved) = moved(c, key, ours, release).await? {
        return Ok(moved);
    }
    Ok(Verdict {
        advisory_ok: true,
        reason: format!(
            "a direct server session (pid {ours}, as announced at startup): a second \
             connection was refused the advisory lock it held"
        ),
        pooler: false,
    })
}

/// How long the second connection may wait for a server session.
const OTHER_WAIT: Duration = Duration::from_secs(5);

/// `Some(verdict)` when our statement no longer runs on server session `ours`, or the lock
/// is not there. With `release`, the key is released where it is held.
async fn moved(
    c: &mut PgConnection,
    key: i64,
    ours: i64,
    release: bool,
) -> Result<Option<Verdict>> {
    let (now, held) = still_ours(c, key, release).await.map_err(probe_err)?;
    if now == ours && held {
        return Ok(None);
    }
    if now == ours {
        return Ok(Some(Verdict::no(
            false,
            format!(
                "the advisory lock does not exclude: it was granted, but the server's \
                 pg_locks does not show this session (pid {ours}) holding it"
            ),
        )));
    }
    Ok(Some(Verdict::no(
        true,
        format!(
            "a connection pooler: this connection's statements moved from server session \
             {ours} to {now}{}",
            if held {
                ""
            } else {
                ", where the advisory lock is not held"
            }
        ),
    )))
}

fn probe_err(e: sqlx::Error) -> crate::error::Error {
    crate::error::Error::Failed(format!(
        "cannot probe the advisory lock: {}",
        db::describe(&e)
    ))
}

/// Take the probe key: `Some(our pid)` when granted.
async fn take(c: &mut PgConnection, key: i64) -> Result<Option<i64>, sqlx::Error> {
    let r = row(
        c,
        format!("SELECT pg_try_advisory_lock({key}), pg_backend_pid()::int8"),
    )
    .await?;
    match r {
        Some(r) if r.try_get::<bool, _>(0)? => Ok(Some(r.try_get(1)?)),
        _ => Ok(None),
    }
}

/// From the second connection: its pid, and whether it was granted the key (then
/// released in the same statement, on the same session).
async fn try_other(c: &mut PgConnection, key: i64) -> Result<(i64, bool), sqlx::Error> {
    let r = row(
        c,
        format!(
            "WITH p AS MATERIALIZED (SELECT pg_backend_pid()::int8 AS pid, \
               pg_try_advisory_lock({key}) AS granted) \
             SELECT pid, granted, \
               CASE WHEN granted AND EXISTS ({held}) THEN pg_advisory_unlock({key}) END FROM p",
            held = held_here_sql(key)
        ),
    )
    .await?
    .ok_or_else(|| sqlx::Error::Protocol("no row from the probe".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// Our pid now, and whether `pg_locks` shows this session holding the key; then, with
/// `release`, the key is released if it was held (one round trip, one read of `pg_locks`).
async fn still_ours(
    c: &mut PgConnection,
    key: i64,
    release: bool,
) -> Result<(i64, bool), sqlx::Error> {
    let r = row(
        c,
        format!(
            "WITH s AS MATERIALIZED (SELECT pg_backend_pid()::int8 AS pid, EXISTS ({}) AS held) \
             SELECT pid, held, CASE WHEN held AND {release} THEN pg_advisory_unlock({key}) END \
             FROM s",
            held_here_sql(key)
        ),
    )
    .await?
    .ok_or_else(|| sqlx::Error::Protocol("no row from the probe".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// A key no real lock uses (the real ones are SHA-256 of a name).
fn random_key() -> i64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), std::time::Instant::now())) as i64
}
