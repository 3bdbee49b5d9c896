//! The migration lock: acquire by polling (never blocking), report who holds it while we
//! wait, and stop waiting as soon as another run's marker says the work is done.
//!
//! PostgreSQL: a session advisory lock; MySQL: `GET_LOCK`; both die with the connection,
//! so a crashed migrator leaves no stale lock. SQLite: an OS file lock on a file beside the
//! database, released by the kernel when the process dies.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use crate::config::{Backend, Config};
use crate::db::{self, Conn, Holder};
use crate::error::{Error, Result};

/// What waiting for the lock ended in.
pub enum Acquired {
    /// We hold the lock (until `Lock::release` or the connection / process ends).
    Held(Lock),
    /// Another run recorded the expected marker while we waited: nothing to do.
    AlreadyDone,
}

/// Proof that we hold the lock. For SQLite it owns the locked file.
pub struct Lock {
    file: Option<File>,
}

/// The marker that makes waiting for the lock pointless.
pub struct Expected<'a> {
    pub version: &'a str,
    pub digest: Option<&'a str>,
}

const HOLDER_LOG_EVERY: Duration = Duration::from_secs(5);

pub async fn acquire(
    conn: &mut Conn,
    cfg: &Config,
    wait: Duration,
    expected: &Expected<'_>,
) -> Result<Acquired> {
    let started = Instant::now();
    let polling = async {
        let mut delays = db::backoff(Duration::from_millis(20), Duration::from_millis(500)).build();
        let mut last_log: Option<Instant> = None;
        loop {
            if let Some(lock) = try_acquire(conn, cfg).await? {
                if last_log.is_some() {
                    tracing::info!("took the migration lock after {:.1?}", started.elapsed());
                }
                return Ok(Acquired::Held(lock));
            }
            if is_done(conn, cfg, expected).await? {
                return Ok(Acquired::AlreadyDone);
            }
            if last_log.is_none_or(|t| t.elapsed() >= HOLDER_LOG_EVERY) {
                let who = match holder(conn, cfg).await {
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
            let delay = delays.next().unwrap_or(Duration::from_millis(500));
            tokio::time::sleep(delay).await;
        }
    };
    match tokio::time::timeout(wait, polling).await {
        Ok(r) => r,
        Err(_) => {
            let who = holder(conn, cfg)
                .await
                .ok()
                .flatten()
                .map(|h| format!(", held by {h}"))
                .unwrap_or_default();
            Err(Error::Timeout(format!(
                "could not take the migration lock {:?} within {} (--lock-wait){who}",
                cfg.lock.name,
                humantime::format_duration(wait)
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

async fn try_acquire(conn: &mut Conn, cfg: &Config) -> Result<Option<Lock>> {
    if conn.backend() != Backend::Sqlite {
        return Ok(conn.try_lock(cfg).await?.then_some(Lock { file: None }));
    }
    let Some(path) = sqlite_lock_path(cfg) else {
        // An in-memory database is private to this process.
        return Ok(Some(Lock { file: None }));
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
            Ok(Some(Lock { file: Some(file) }))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

impl Lock {
    pub async fn release(self, conn: &mut Conn, cfg: &Config) -> Result<()> {
        match self.file {
            Some(file) => {
                let _ = file.set_len(0);
                drop(file);
                Ok(())
            }
            None => conn.unlock(cfg).await,
        }
    }
}

/// Who holds the lock now, if anyone.
pub async fn holder(conn: &mut Conn, cfg: &Config) -> Result<Option<Holder>> {
    if conn.backend() != Backend::Sqlite {
        return conn.lock_holder(cfg).await;
    }
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
