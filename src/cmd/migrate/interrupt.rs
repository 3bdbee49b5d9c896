//! A signal while migrations are applied: cancel the statement from a side connection, read
//! what really committed, record that, and end the lock's session.

use std::time::Duration;

use super::record::{Ctx, Ran};
use crate::db::{self, Conn, Status};
use crate::error::{Error, Result};
use crate::lock::{self};

/// What `apply_pending` has got to, readable after it is cancelled.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) applied: usize,
    pub(super) current: Option<String>,
    /// The versions of the group in flight.
    pub(super) group: Vec<i64>,
}

/// A signal arrived while migrations (or the marker) were being applied. From a side
/// connection, while our session still holds the lock: cancel its statement and wait until
/// it settles, then read what really happened (the in-flight migration, or the marker,
/// may have committed before the cancel reached it), record that, and end our session.
///
/// When the `succeeded` marker committed, the run is done: exit 0 and no new marker.
pub(super) async fn interrupted(
    ctx: &Ctx<'_>,
    progress: &Progress,
    sig: crate::signals::Signal,
    session: Option<i64>,
) -> Result<Ran> {
    let current = progress.current.as_deref().unwrap_or("the marker");
    let mut short_cfg = ctx.cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    short_cfg.connect_limit = "the limit of a connection that records a failure";
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        let settled = match session {
            Some(id) => side.cancel_and_settle(id, Duration::from_secs(5)).await?,
            None => false,
        };
        if lock::is_done(&mut side, ctx.cfg, ctx.expected).await? {
            if let Some(id) = session {
                side.kill_session(id).await?;
            }
            side.close().await;
            return Ok(None);
        }
        let committed = committed_in_flight(&mut side, ctx, progress).await?;
        let detail = interruption_detail(sig, current, committed, settled);
        tracing::warn!("{detail}");
        let applied_count = progress.applied + committed;
        ctx.record_failure_from_side(
            &mut side,
            &ctx.marker(Status::Failed, applied_count, Some(&detail)),
        )
        .await?;
        if let Some(id) = session {
            side.kill_session(id).await?;
        }
        side.close().await;
        Ok::<_, Error>(Some(()))
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(None)) => {
            tracing::info!(
                "{sig} arrived after the marker for schema version {} committed: the run is \
                 done",
                ctx.expected.version
            );
            return Ok(Ran {
                applied: progress.applied,
                session_ended: true,
                ..Ran::default()
            });
        }
        Ok(Ok(Some(()))) => {}
        Ok(Err(e)) => tracing::warn!("could not record the interruption: {e:#}"),
        Err(_) => tracing::warn!("could not record the interruption in time"),
    }
    Err(Error::Interrupted(sig))
}

/// How many of the group in flight committed before the cancel reached it (read from a
/// side connection once the interrupted statement settled).
pub(super) async fn committed_in_flight(
    side: &mut Conn,
    ctx: &Ctx<'_>,
    progress: &Progress,
) -> Result<usize> {
    let (applied, dirty) = side.applied(&ctx.cfg.migrations_table).await?;
    Ok(progress
        .group
        .iter()
        .filter(|v| dirty != Some(**v) && applied.iter().any(|a| a.version == **v))
        .count())
}

/// The `failed` marker's detail for a run interrupted while applying `current`.
pub(super) fn interruption_detail(
    sig: crate::signals::Signal,
    current: &str,
    committed: usize,
    settled: bool,
) -> String {
    match (committed, settled) {
        (0, true) => format!("interrupted by {sig} while applying {current}; it did not commit"),
        (0, false) => format!("interrupted by {sig} while applying {current}"),
        (n, _) => format!(
            "interrupted by {sig} after applying {current}: {n} migration(s) of it committed \
             before the signal took effect"
        ),
    }
}
