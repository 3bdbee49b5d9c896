//! The marker a run under the lock writes: what every step needs (`Ctx`), the check again
//! once the lock is held, and the `succeeded` or `failed` row, from a side connection when
//! the lock's own is busy or gone.

use std::time::{Duration, Instant};

use crate::db::{self, Conn, NewMarker, Status};
use crate::error::{Error, Result};
use crate::lock::{self, Expected, Lock};
use crate::settings::Config;

/// How a run under the lock ended, for the marker and the webhook.
#[derive(Default)]
pub(super) struct Ran {
    pub(super) applied: usize,
    /// Whether this run wrote a marker (and so has something to notify).
    pub(super) wrote_marker: bool,
    /// The lock's session was ended from a side connection (after a signal): there is
    /// nothing left to release.
    pub(super) session_ended: bool,
    /// `--phase expand` stopped before a contract migration: what it did instead of
    /// bringing the whole source (the run's message).
    pub(super) partial: Option<String>,
}

/// What every run under the lock needs.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a Config,
    pub(super) expected: &'a Expected<'a>,
    pub(super) started: Instant,
    pub(super) lock: &'a Lock,
    /// With a lease: the fence every schema change and marker write runs first.
    pub(super) fence: Option<db::Fence>,
}

impl Ctx<'_> {
    pub(super) fn marker<'m>(
        &'m self,
        status: Status,
        applied: usize,
        detail: Option<&'m str>,
    ) -> NewMarker<'m> {
        NewMarker {
            version: self.expected.version,
            digest: self.expected.digest,
            status,
            action: "migrate",
            elapsed: self.started.elapsed(),
            applied: applied as i64,
            runner: &self.cfg.runner,
            detail,
        }
    }

    /// Write a `failed` marker from a side connection: fenced, and not after a
    /// `succeeded` one for the version (see `Conn::insert_marker_unless_done`).
    pub(super) async fn record_failure_from_side(
        &self,
        side: &mut Conn,
        marker: &NewMarker<'_>,
    ) -> Result<()> {
        side.insert_marker_unless_done(
            &self.cfg.table,
            marker,
            self.fence.as_ref(),
            self.lock.engine(),
        )
        .await
    }

    /// Write a marker on `conn`, fenced by the lease when we hold one.
    pub(super) async fn record(&self, conn: &mut Conn, marker: &NewMarker<'_>) -> Result<()> {
        conn.insert_marker(
            &self.cfg.table,
            marker,
            self.fence.as_ref(),
            self.lock.engine(),
        )
        .await
    }
}

/// Tables first, then the check again: another run may have finished between our fast
/// path and taking the lock. `true` when there is nothing left to do.
pub(super) async fn prepare_under_lock(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    sqlx_table: bool,
) -> Result<bool> {
    let migrations = sqlx_table.then_some(&ctx.cfg.migrations_table);
    conn.ensure_tables(&ctx.cfg.table, migrations).await?;
    if lock::is_done(conn, ctx.cfg, ctx.expected).await? {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            ctx.expected.version
        );
        return Ok(true);
    }
    Ok(false)
}

/// Write the `succeeded` marker. When the connection dies with its commit in flight, a
/// side connection reads whether it landed; only when it did not is this a failure.
pub(super) async fn record_success(conn: &mut Conn, ctx: &Ctx<'_>, applied: usize) -> Result<()> {
    let marker = ctx.marker(Status::Succeeded, applied, None);
    if let Err(e) = ctx.record(conn, &marker).await {
        if matches!(e, Error::LockLost(_)) {
            return Err(e);
        }
        // The connection may have died with the commit in flight: see what landed.
        let detail = format!("every migration applied, but {e:#}");
        if record_from_side(ctx, applied, &detail, None).await {
            return Err(e);
        }
        tracing::info!("the marker committed before the connection was lost");
    }
    Ok(())
}

/// A migration failed for good: record the `failed` marker (from a fresh connection when
/// the lock's is gone, so waiters fail fast) and return the run's error. Logged once, by
/// main, with the exit code it leads to.
pub(super) async fn record_failed(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    e: &db::ApplyError,
    label: &str,
    attempt: u32,
    no_tx: bool,
    applied: usize,
) -> Error {
    let tries = if attempt > 0 {
        format!(" after {} tries", attempt + 1)
    } else {
        String::new()
    };
    let detail = format!("migration {label} failed{tries}: {}", e.message);
    let hint = if e.dirty {
        " It ran without a transaction and part of it took effect: it is recorded as dirty, \
         so the next run stops and says so instead of running it again."
    } else if e.took_effect {
        " It ran without a transaction and what is said above took effect, but it is not \
         recorded as dirty: check the database before it runs again."
    } else if no_tx {
        " It ran without a transaction; nothing of it took effect in this run, so the next \
         run tries it again."
    } else {
        ""
    };
    // A run that took over an expired lease cannot know what its predecessor, paused
    // rather than dead, still ran: a statement it had sent before it stopped.
    let predecessor = match ctx.lock.took_over_from() {
        Some(previous) if no_tx => format!(
            " This run took over the expired lease of {previous}: a statement that run had \
             already sent may have taken effect too."
        ),
        _ => String::new(),
    };
    let marker = ctx.marker(Status::Failed, applied, Some(&detail));
    if let Err(m) = ctx.record(conn, &marker).await {
        tracing::warn!("{m:#}; recording the failure from another connection");
        if !matches!(m, Error::LockLost(_)) {
            record_from_side(ctx, applied, &detail, None).await;
        }
    }
    let message = format!("{detail}{hint}{predecessor}");
    e.class.error(message)
}

/// Write a `failed` marker from a fresh connection (the lock connection is busy or gone),
/// unless the expected version is recorded as done (by us, with an acknowledgement lost in
/// transit, or by a run that took the lock since), then end the session that held the lock,
/// if given. Best effort: the database may be the reason we are stopping. Returns false
/// when the version turned out to be done.
pub(super) async fn record_from_side(
    ctx: &Ctx<'_>,
    applied: usize,
    detail: &str,
    end_session: Option<i64>,
) -> bool {
    let mut short_cfg = ctx.cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    short_cfg.connect_limit = "the limit of a connection that records a failure";
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        let done = lock::is_done(&mut side, ctx.cfg, ctx.expected).await?;
        if !done {
            ctx.record_failure_from_side(
                &mut side,
                &ctx.marker(Status::Failed, applied, Some(detail)),
            )
            .await?;
        }
        if let Some(session) = end_session {
            side.kill_session(session).await?;
        }
        side.close().await;
        Ok::<_, Error>(!done)
    };
    match tokio::time::timeout(Duration::from_secs(8), attempt).await {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(e)) => {
            tracing::warn!("could not record the failure: {e:#}");
            true
        }
        Err(_) => {
            tracing::warn!("could not record the failure in time");
            true
        }
    }
}
