//! The no-op path of a run with a digest file: ask the marker with what the file claims
//! while a blocking thread checks the directory against it, before any lock is taken.

use super::ready;
use crate::cmd::{Before, Outcome};
use crate::cmd::{MigrateConfig, Work};
use crate::db::{self, Conn};
use crate::digest;
use crate::error::{Error, Result};
use crate::lock::{self, Expected, Lock};
use crate::settings::Config;
use crate::signals::Signals;

/// Where waiting on a trusted digest file's claim ended.
pub(super) enum Claimed {
    /// Another run's marker for the claim landed.
    Done(Outcome),
    Held(Conn, Lock),
}

/// Take the lock, or leave at another run's marker for what the digest file claims (the
/// fast path already asked for it on `conn`).
pub(super) async fn lock_on_claim(
    conn: Conn,
    cfg: &Config,
    summary: &digest::Summary,
    signals: &mut Signals,
) -> Result<Claimed> {
    let version = summary.version.to_string();
    let claim = claimed(summary, &version);
    let before = tokio::select! {
        r = crate::cmd::lock_on(conn, cfg, Some(&claim), true) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    Ok(match before {
        Before::Done(message) => Claimed::Done(ready(version, 0, message)),
        Before::Locked(conn, lock) => Claimed::Held(conn, lock),
    })
}

/// What a trusted digest file claims (`version` is its version, as text), as the marker
/// for it would record it.
pub(super) fn claimed<'a>(summary: &'a digest::Summary, version: &'a str) -> Expected<'a> {
    Expected {
        version,
        digest: Some(&summary.digest),
        history: Some((summary.version, summary.count)),
        versions: None,
        foreign: None,
    }
}

/// What the digest file's fast path came to.
pub(super) enum Early {
    /// The marker for the digest file's version and digest is there: nothing to do.
    Done(String, String),
    /// Not done (or the digest file is stale): the connection, for the full path, and
    /// what the file says when it was trusted.
    Open(Conn, Option<digest::Summary>),
    /// No source, a dry run, or no digest file.
    NotTried,
}

/// With `DIR/.schemagate-digest` (`digest.rs`): ask the marker with what the file claims
/// while a blocking thread checks the directory against it, and believe the answer only
/// once that check has passed. The per-file work (a directory entry and a `statx` each)
/// runs beside the connection's start-up and the query, off the path every replica waits
/// on; no migration is read.
pub(super) async fn digest_fast_path(cfg: &Config, settings: &MigrateConfig) -> Result<Early> {
    let Work::Sql { dir, .. } = &settings.work else {
        return Ok(Early::NotTried);
    };
    let dir = dir.clone();
    if settings.dry_run {
        return Ok(Early::NotTried);
    }
    // Anything that changes how the source or its history is read (--ignore-missing, or
    // what `digest::may_stand_for` refuses) takes the full read.
    if settings.ignore_missing || !digest::may_stand_for(&dir)? {
        return Ok(Early::NotTried);
    }
    let Some(claim) = digest::read(&dir)? else {
        return Ok(Early::NotTried);
    };
    let summary = claim.summary.clone();
    let checked = tokio::task::spawn_blocking(move || match claim.check(&dir) {
        Ok(()) => true,
        Err(why) => {
            digest::ignore(&dir, &why);
            false
        }
    });
    let mut conn = db::connect(cfg).await?;
    let version = summary.version.to_string();
    let done = lock::is_done(&mut conn, cfg, &claimed(&summary, &version)).await?;
    if !checked.await.unwrap_or(false) {
        // Stale: what the marker said about the file's claim counts for nothing.
        return Ok(Early::Open(conn, None));
    }
    if !done {
        return Ok(Early::Open(conn, Some(summary)));
    }
    tracing::info!("schema version {version} is already applied; nothing to do");
    conn.close().await;
    let message = format!("schema version {version} already applied");
    Ok(Early::Done(version, message))
}
