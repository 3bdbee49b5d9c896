//! The migration lock: acquire by polling (never blocking), report who holds it while we
//! wait, and stop waiting as soon as another run's marker says the work is done.
//!
//! - PostgreSQL `advisory`: a session advisory lock; MySQL: `GET_LOCK`. Both die with the
//!   connection, so a crashed migrator leaves no stale lock.
//! - PostgreSQL `lease`: a row with an owner and an expiry, renewed by a heartbeat on its
//!   own connection and taken over only once expired. Works through transaction poolers.
//! - SQLite: an OS file lock on a file beside the database, released by the kernel when
//!   the process dies.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use crate::cli::{LockArgs, LockMode};
use crate::config::{Backend, Config};
use crate::db::{self, Conn, Holder};
use crate::error::{Error, Result};

/// What waiting for the lock ended in.
pub enum Acquired {
    /// We hold the lock (until `Lock::release`, or the connection / process ends).
    Held(Lock),
    /// Another run recorded the expected marker while we waited: nothing to do.
    AlreadyDone,
}

/// Proof that we hold the lock.
pub struct Lock {
    kind: Kind,
}

enum Kind {
    Session,
    File(File),
    Lease(Lease),
}

struct Lease {
    token: String,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The marker that makes waiting for the lock pointless.
pub struct Expected<'a> {
    pub version: &'a str,
    pub digest: Option<&'a str>,
}

const HOLDER_LOG_EVERY: Duration = Duration::from_secs(5);
const BRISK_FOR: Duration = Duration::from_secs(10);

/// Refuse lock settings the backend cannot honour, before connecting.
pub fn validate(cfg: &Config, args: &LockArgs) -> Result<()> {
    if args.lock == LockMode::Lease && cfg.backend != Backend::Postgres {
        return Err(Error::Config(format!(
            "--lock lease is for PostgreSQL behind a transaction pooler; {} uses its own lock",
            cfg.backend.name()
        )));
    }
    if args.lease_ttl < Duration::from_secs(3) {
        return Err(Error::Config("--lease-ttl must be at least 3s".into()));
    }
    Ok(())
}

pub async fn acquire(
    conn: &mut Conn,
    cfg: &Config,
    args: &LockArgs,
    expected: Option<&Expected<'_>>,
) -> Result<Acquired> {
    let started = Instant::now();
    let token = token();
    if args.lock == LockMode::Lease {
        conn.ensure_lease_table(&cfg.table).await?;
    }
    let polling = async {
        let mut delays = db::backoff(Duration::from_millis(10), Duration::from_secs(1)).build();
        let mut last_log: Option<Instant> = None;
        loop {
            if let Some(lock) = try_acquire(conn, cfg, args, &token).await? {
                if last_log.is_some() {
                    tracing::info!("took the migration lock after {:.1?}", started.elapsed());
                }
                return Ok(Acquired::Held(lock));
            }
            if let Some(expected) = expected
                && is_done(conn, cfg, expected).await?
            {
                return Ok(Acquired::AlreadyDone);
            }
            if last_log.is_none_or(|t| t.elapsed() >= HOLDER_LOG_EVERY) {
                let who = match holder(conn, cfg, args.lock).await {
                    Ok(Some(h)) => h.to_string(),
                    Ok(None) => "a session that just let go".into(),
                    Err(e) => format!("unknown ({e})"),
                };
                tracing::info!(
                    "waiting for the migration lock {:?} (key {}), held by {who}",
                    cfg.lock.name,
                    cfg.lock.key
                );
                last_log = Some(Instant::now());
            }
            // Briskly at first: most waits are for a short migration, and a waiter should
            // leave as soon as its marker lands. Then gently, to spare the server during a
            // long one.
            let cap = if started.elapsed() < BRISK_FOR {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            tokio::time::sleep(delays.next().unwrap_or(cap).min(cap)).await;
        }
    };
    match tokio::time::timeout(args.lock_wait, polling).await {
        Ok(r) => r,
        Err(_) => {
            let who = holder(conn, cfg, args.lock)
                .await
                .ok()
                .flatten()
                .map(|h| format!(", held by {h}"))
                .unwrap_or_default();
            Err(Error::Timeout(format!(
                "could not take the migration lock {:?} within {} (--lock-wait){who}",
                cfg.lock.name,
                humantime::format_duration(args.lock_wait)
            )))
        }
    }
}

/// Whether the newest marker for the expected version says it succeeded (same digest).
pub async fn is_done(conn: &mut Conn, cfg: &Config, expected: &Expected<'_>) -> Result<bool> {
    Ok(conn
        .newest_marker(&cfg.table, expected.version)
        .await?
        .is_some_and(|m| m.status == "succeeded" && m.digest.as_deref() == expected.digest))
}

async fn try_acquire(
    conn: &mut Conn,
    cfg: &Config,
    args: &LockArgs,
    token: &str,
) -> Result<Option<Lock>> {
    match (conn.backend(), args.lock) {
        (Backend::Sqlite, _) => try_file_lock(cfg),
        (_, LockMode::Lease) => {
            let Some(previous) = conn.try_lease(cfg, token, args.lease_ttl).await? else {
                return Ok(None);
            };
            if let Some(previous) = previous {
                tracing::warn!("took over an expired lease from {previous}");
            }
            Ok(Some(Lock {
                kind: Kind::Lease(start_heartbeat(cfg, token, args.lease_ttl)),
            }))
        }
        (_, LockMode::Advisory) => {
            if !conn.try_lock(cfg).await? {
                return Ok(None);
            }
            // Behind a transaction pooler the next statement may run in another server
            // session, where our session lock does not exist: the lock would protect
            // nothing. Say so instead of pretending.
            if conn.lock_still_held(cfg).await.is_err() {
                let _ = conn.unlock(cfg).await;
                return Err(Error::Config(
                    "took the advisory lock, but the next statement ran in another server \
                     session: this connection goes through a transaction pooler (PgBouncer \
                     pool_mode = transaction?), where session locks do not work. Use \
                     --lock lease"
                        .into(),
                ));
            }
            Ok(Some(Lock {
                kind: Kind::Session,
            }))
        }
    }
}

fn try_file_lock(cfg: &Config) -> Result<Option<Lock>> {
    let Some(path) = sqlite_lock_path(cfg) else {
        // An in-memory database is private to this process.
        return Ok(Some(Lock {
            kind: Kind::Session,
        }));
    };
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Say who holds it, for `status` and for the runs that wait.
            let _ = file.set_len(0);
            let _ = write!(file, "{}\n{}\n", cfg.runner, now_unix());
            Ok(Some(Lock {
                kind: Kind::File(file),
            }))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Renew the lease every third of its TTL on a connection of its own; flag it lost when it
/// is no longer ours, or when a TTL passes without a successful renewal.
fn start_heartbeat(cfg: &Config, token: &str, ttl: Duration) -> Lease {
    let lost = Arc::new(AtomicBool::new(false));
    let (cfg, token_owned, flag) = (cfg.clone(), token.to_owned(), lost.clone());
    let heartbeat = tokio::spawn(async move {
        let mut conn: Option<Conn> = None;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            if conn.is_none() {
                let mut short = cfg.clone();
                short.connect_timeout = ttl / 3;
                conn = db::connect(&short).await.ok();
            }
            let outcome = match conn.as_mut() {
                Some(c) => c.renew_lease(&cfg, &token_owned, ttl).await,
                None => Err(Error::Failed("no connection".into())),
            };
            match outcome {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::error!("the lease is no longer ours");
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    tracing::warn!("could not renew the lease: {e}");
                    conn = None;
                    if renewed.elapsed() >= ttl {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    });
    Lease {
        token: token.to_owned(),
        lost,
        heartbeat,
    }
}

impl Lock {
    /// Whether we can no longer be sure we hold the lock (the lease lapsed or was taken).
    /// Session and file locks are checked on their connection (`Conn::lock_still_held`).
    pub fn lease_lost(&self) -> bool {
        matches!(&self.kind, Kind::Lease(l) if l.lost.load(Ordering::SeqCst))
    }

    pub fn is_lease(&self) -> bool {
        matches!(self.kind, Kind::Lease(_))
    }

    /// Check the lock while a long step runs; `Err` says why it is gone.
    pub async fn check(&self, conn: &mut Conn, cfg: &Config) -> Result<(), String> {
        match &self.kind {
            Kind::Lease(l) if l.lost.load(Ordering::SeqCst) => {
                Err("the lease lapsed or was taken over".into())
            }
            Kind::Lease(_) | Kind::File(_) => Ok(()),
            Kind::Session => conn.lock_still_held(cfg).await,
        }
    }

    pub async fn release(self, conn: &mut Conn, cfg: &Config) -> Result<()> {
        match self.kind {
            Kind::File(file) => {
                let _ = file.set_len(0);
                drop(file);
                Ok(())
            }
            Kind::Session => conn.unlock(cfg).await,
            Kind::Lease(lease) => {
                lease.heartbeat.abort();
                conn.release_lease(cfg, &lease.token).await
            }
        }
    }

    /// Leave the lock to expire (a lease) or to the process's end: used when the run was
    /// interrupted and its last transaction may still be rolling back on the server.
    pub fn abandon(self) {
        if let Kind::Lease(lease) = self.kind {
            lease.heartbeat.abort();
        }
    }
}

/// Who holds the lock now, if anyone.
pub async fn holder(conn: &mut Conn, cfg: &Config, mode: LockMode) -> Result<Option<Holder>> {
    if conn.backend() == Backend::Sqlite {
        return file_holder(cfg);
    }
    if mode == LockMode::Lease {
        return conn.lease_holder(cfg).await;
    }
    conn.lock_holder(cfg).await
}

fn file_holder(cfg: &Config) -> Result<Option<Holder>> {
    let Some(path) = sqlite_lock_path(cfg) else {
        return Ok(None);
    };
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    if file.try_lock_shared().is_ok() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines = text.lines();
    let runner = lines.next().unwrap_or("unknown").to_owned();
    let since: f64 = lines
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now_unix());
    Ok(Some(Holder {
        pid: runner
            .rsplit_once("(pid ")
            .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
            .unwrap_or(0),
        application_name: runner,
        client: "this host".into(),
        held_for_secs: (now_unix() - since).max(0.0),
    }))
}

/// `<database file>.schemagate-lock`, or `None` for an in-memory database.
pub fn sqlite_lock_path(cfg: &Config) -> Option<PathBuf> {
    let opts = db::sqlite_options(cfg).ok()?;
    let file = opts.get_filename();
    let s = file.to_string_lossy();
    if s.is_empty() || s == ":memory:" || s.starts_with("file::memory:") {
        return None;
    }
    let mut lock = file.as_os_str().to_owned();
    lock.push(".schemagate-lock");
    Some(PathBuf::from(lock))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A random token that names this run's lease.
fn token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one((std::process::id(), Instant::now()));
    let b = RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}
