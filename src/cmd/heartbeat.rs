//! `schemagate heartbeat`, and the heart `wait --release -- CMD` shares: an instance's row
//! in the release registry (`registry.rs`), written at start, renewed every third of its
//! TTL on a connection opened for each beat (no slot held between beats), removed on
//! SIGTERM.
//!
//! An instance that cannot renew its row stops counting as live once the row expires, on
//! the server's clock: the contract gate may then run a contract. So the heart gives up a
//! little *before* that: when no renewal has succeeded for `FENCE` of the TTL (measured
//! from when the last successful one was sent, which is before the server stamped it),
//! `Heart::lapsed` is true and its owner stops (the sidecar exits; the supervisor stops its
//! app). A partitioned instance is gone before its row is.

use std::time::{Duration, Instant};

use super::Outcome;
use super::{Expects, HeartbeatConfig, Registration};
use crate::db;
use crate::error::{Error, Result};
use crate::registry::{self, Me};
use crate::settings::Config;
use crate::signals::Signals;
use crate::source::Source;

/// The share of the TTL after the last successful renewal at which the heart gives up.
const FENCE: f64 = 0.8;

/// The version an instance expects, its source read when it names one.
pub(super) fn me(r: &Registration) -> Result<Me> {
    let expects = match &r.expects {
        Expects::Version(v) => v.clone(),
        Expects::Source(dir) => Source::load(dir)?.version(),
    };
    Ok(Me {
        instance: r.instance.clone(),
        release: r.release.clone(),
        expects,
        ttl: r.ttl,
    })
}

/// An instance's row, kept alive.
pub(super) struct Heart {
    cfg: Config,
    pub(super) me: Me,
    /// When the last successful write was sent.
    alive_since: Instant,
}

impl Heart {
    /// Register (`registry::register`: refused when a newer contract has run), retrying
    /// what is transient within --connect-timeout.
    pub(super) async fn start(cfg: &Config, me: Me) -> Result<Heart> {
        let mut cfg = cfg.clone();
        // `wait` opens SQLite read-only; the registry is written.
        cfg.read_only = false;
        let sent = Instant::now();
        let mut conn = db::connect(&cfg).await?;
        let r = registry::register(&mut conn, &cfg, &me).await;
        conn.close().await;
        r?;
        tracing::info!(
            "instance {} of release {} (expects schema version {}) registered in {}",
            me.instance,
            me.release,
            me.expects,
            registry::table(&cfg.table)
        );
        Ok(Heart {
            cfg,
            me,
            alive_since: sent,
        })
    }

    /// How long until the next beat.
    pub(super) fn period(&self) -> Duration {
        self.me.ttl / 3
    }

    /// The moment this instance must stop counting itself live.
    fn deadline(&self) -> Instant {
        self.alive_since + self.me.ttl.mul_f64(FENCE)
    }

    pub(super) fn lapsed(&self) -> bool {
        Instant::now() >= self.deadline()
    }

    /// Wait for the next beat, never past the deadline, then beat unless the deadline has
    /// come: a failed beat must not sleep a whole period past it (the row would expire
    /// before its owner sees `lapsed`).
    pub(super) async fn tick(&mut self) {
        let until_deadline = self.deadline().saturating_duration_since(Instant::now());
        tokio::time::sleep(self.period().min(until_deadline)).await;
        if !self.lapsed() {
            self.beat().await;
        }
    }

    /// Renew the row once, within a third of the TTL (and never past the deadline). A
    /// failure is logged; `lapsed` says when failures have lasted too long.
    pub(super) async fn beat(&mut self) {
        let sent = Instant::now();
        let limit = self
            .period()
            .min(self.deadline().saturating_duration_since(sent));
        let short = self
            .cfg
            .connect_within(limit.max(Duration::from_millis(100)), "a heartbeat");
        let attempt = async {
            let mut conn = db::connect(&short).await?;
            let r = registry::renew(&mut conn, &short, &self.me).await;
            conn.close().await;
            r
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(())) => self.alive_since = sent,
            Ok(Err(e)) => tracing::warn!("could not renew instance {}: {e:#}", self.me.instance),
            Err(_) => tracing::warn!(
                "could not renew instance {} within {limit:?}",
                self.me.instance
            ),
        }
    }

    /// The error that ends an instance whose row is about to expire.
    pub(super) fn lapsed_error(&self) -> Error {
        Error::Failed(format!(
            "instance {} could not renew its registry row for {:.0?} of its {:?} TTL: \
             stopping before the row expires, so that no contract migration runs while it is \
             still alive",
            self.me.instance,
            self.alive_since.elapsed(),
            self.me.ttl
        ))
    }

    /// Remove the row (SIGTERM, or the app ended): within a few seconds, best effort; an
    /// unreachable database leaves it to expire.
    pub(super) async fn stop(self) {
        let short = self
            .cfg
            .connect_within(Duration::from_secs(3), "the registry removal");
        let attempt = async {
            let mut conn = db::connect(&short).await?;
            let r = registry::remove(&mut conn, &short, &self.me.instance).await;
            conn.close().await;
            r
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => tracing::info!("instance {} removed from the registry", self.me.instance),
            Ok(Err(e)) => tracing::warn!(
                "could not remove instance {} ({e:#}); its row expires after {:?}",
                self.me.instance,
                self.me.ttl
            ),
            Err(_) => tracing::warn!(
                "could not remove instance {} in time; its row expires after {:?}",
                self.me.instance,
                self.me.ttl
            ),
        }
    }
}

pub async fn run(cfg: &HeartbeatConfig, mut signals: Signals) -> Result<Outcome> {
    let me = me(&cfg.me)?;
    let mut heart = tokio::select! {
        r = Heart::start(&cfg.db, me) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    loop {
        let signal = tokio::select! {
            () = heart.tick() => None,
            sig = signals.recv() => Some(sig),
        };
        if let Some(sig) = signal {
            heart.stop().await;
            return Err(Error::Interrupted(sig));
        }
        if heart.lapsed() {
            return Err(heart.lapsed_error());
        }
    }
}

/// After `wait` found the schema ready: with `--release`, announce this instance (refused,
/// exit 4, when a contract newer than its version has run). Without `-- CMD` the row lives
/// for its TTL, for a `heartbeat` sidecar to keep; with `-- CMD` the app runs as a child
/// (not exec'd) and this process keeps the row alive until the app exits: signals are
/// passed on to it, the row is removed when it ends, and when the row cannot be renewed the
/// app is stopped before the row expires.
pub async fn after_wait(
    cfg: &super::WaitConfig,
    outcome: Outcome,
    mut signals: Signals,
) -> Result<Outcome> {
    let Some(registration) = &cfg.registration else {
        return Ok(outcome);
    };
    let me = me(registration)?;
    let mut heart = tokio::select! {
        r = Heart::start(&cfg.db, me) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let Some(command) = outcome.exec.clone() else {
        return Ok(outcome);
    };
    let mut child = match tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            heart.stop().await;
            return Err(Error::Config(format!("cannot run {}: {e}", command[0])));
        }
    };
    let pid = child.id().unwrap_or_default() as i32;
    let name = command[0].clone();
    let status = loop {
        let event = tokio::select! {
            status = child.wait() => Ok(status),
            () = heart.tick() => Err(None),
            sig = signals.recv() => Err(Some(sig)),
        };
        match event {
            Ok(status) => break status,
            Err(Some(sig)) => {
                tracing::info!("{sig} received: passing it to {name}");
                // SAFETY: kill(2) on the child's pid, which we have not reaped yet.
                unsafe { libc::kill(pid, sig.number()) };
                let status = stop_within(&mut child, pid, Duration::from_secs(30)).await;
                heart.stop().await;
                return match status.ok().and_then(|s| s.code()) {
                    Some(0) => Ok(Outcome {
                        exec: None,
                        message: format!("{name} exited 0 after {sig}"),
                        ..outcome
                    }),
                    _ => Err(Error::Interrupted(sig)),
                };
            }
            Err(None) if heart.lapsed() => {
                let e = heart.lapsed_error();
                tracing::error!("{e}; stopping {name}");
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let _ = stop_within(&mut child, pid, Duration::from_secs(10)).await;
                return Err(e);
            }
            Err(None) => {}
        }
    };
    heart.stop().await;
    let status = status.map_err(|e| Error::Failed(format!("cannot wait for {name}: {e}")))?;
    match status.code() {
        Some(0) => Ok(Outcome {
            exec: None,
            message: format!("{name} exited 0"),
            ..outcome
        }),
        Some(code) => Err(Error::Exited(
            u8::try_from(code).unwrap_or(1),
            format!("{name} exited {code}"),
        )),
        None => Err(Error::Failed(format!(
            "{name} ended by a signal ({status})"
        ))),
    }
}

/// Wait for a child that was sent a signal, SIGKILL after `grace`.
async fn stop_within(
    child: &mut tokio::process::Child,
    pid: i32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: kill(2) on the child's pid, not reaped yet (the wait timed out).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            child.wait().await
        }
    }
}
