//! `migrate -- CMD`: run an external migrator while holding the lock. The lock is
//! checked while it runs (a lost lock stops it), signals are passed on to its whole
//! process group with a grace period, and its outcome becomes the marker. With another
//! migrator's directory as the source, its own history decides whether it needs to run,
//! and whether it did what it said.

use std::time::Duration;

use super::record::{Ctx, Ran, prepare_under_lock, record_from_side};
use crate::child;
use crate::db::{Conn, Status};
use crate::error::{Error, Result};
use crate::formats::{Foreign, history};
use crate::signals::Signals;

/// How often the lock connection is checked while an external migrator runs.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn run_external(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    command: &[String],
    foreign: Option<&Foreign>,
    grace: Duration,
    signals: &mut Signals,
) -> Result<Ran> {
    if prepare_under_lock(conn, ctx, false).await? {
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
            ..Ran::default()
        });
    }
    let manifest = foreign.map(Foreign::manifest);
    if let Some(f) = foreign {
        history::check_unmodified(conn, &ctx.cfg.table, f).await?;
        // The migrations may have been applied some other way (a pipeline step, a manual
        // run): the migrator's own history says so, and CMD need not run.
        let standing = f.standing(&history::read(conn, f).await?.rows);
        if standing.ready() {
            ctx.record(conn, &ctx.marker(Status::Succeeded, 0, manifest.as_deref()))
                .await?;
            tracing::info!(
                "{}; schema version {} recorded without running {}",
                standing.describe(f),
                ctx.expected.version,
                command[0]
            );
            return Ok(Ran {
                applied: 0,
                wrote_marker: true,
                ..Ran::default()
            });
        }
    }
    let mut env = vec![
        ("SCHEMAGATE_VERSION", ctx.expected.version.to_owned()),
        ("SCHEMAGATE_LOCK_KEY", ctx.lock.key().to_string()),
    ];
    env.extend(ctx.cfg.child_env.iter().cloned());
    let mut running = child::spawn(command, &env, ctx.cfg.json_logs)?;
    let status = supervise(conn, ctx, &mut running, grace, signals).await?;
    finish(
        conn,
        ctx,
        &mut running,
        status,
        foreign,
        manifest.as_deref(),
    )
    .await
}

/// Wait for the migrator while checking the lock every `LOCK_CHECK_EVERY` and passing
/// signals on. A lost lock or a signal stops it and ends the run here.
async fn supervise(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    running: &mut child::Running,
    grace: Duration,
    signals: &mut Signals,
) -> Result<std::process::ExitStatus> {
    let name = running.name().to_owned();
    let mut check = tokio::time::interval(LOCK_CHECK_EVERY);
    check.tick().await;
    let status = loop {
        tokio::select! {
            status = running.wait() => break status.map_err(|e| Error::Failed(format!("cannot wait for {name}: {e}")))?,
            _ = check.tick() => {
                if let Err(why) = ctx.lock.check(conn, ctx.cfg).await {
                    let msg = format!("lost the migration lock while {name} ran ({why}); stopping it");
                    tracing::error!("{msg}");
                    let ended = running.stop(libc::SIGTERM, grace).await;
                    let detail = format!(
                        "{msg}; {name} {}",
                        ended.map(|s| child::describe_status(&s)).unwrap_or_else(|e| e.to_string())
                    );
                    record_from_side(ctx, 0, &detail, None).await;
                    return Err(Error::LockLost(detail));
                }
            }
            sig = signals.recv() => {
                tracing::warn!("{sig} received: passing it to {name}, which has {grace:?} to exit");
                let ended = running.stop(sig.number(), grace).await;
                let detail = format!(
                    "interrupted by {sig}; {name} {}",
                    ended.map(|s| child::describe_status(&s)).unwrap_or_else(|e| e.to_string())
                );
                // We still hold the lock: record it on our own connection, then let go.
                if let Err(e) = ctx.record(conn, &ctx.marker(Status::Failed, 0, Some(&detail))).await {
                    tracing::warn!("could not record the interruption: {e:#}");
                }
                return Err(Error::Interrupted(sig));
            }
        }
    };
    Ok(status)
}

/// The migrator exited: record what it did. With another migrator's directory, exit 0 is
/// not enough: its history must show this image applied.
async fn finish(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    running: &mut child::Running,
    status: std::process::ExitStatus,
    foreign: Option<&Foreign>,
    manifest: Option<&str>,
) -> Result<Ran> {
    let name = running.name().to_owned();
    if status.success() {
        if let Some(f) = foreign {
            // CMD exiting 0 is not enough: its history must now show this image applied
            // (a wrong working directory or settings module migrates something else).
            let standing = f.standing(&history::read(conn, f).await?.rows);
            if !standing.ready() {
                let detail = format!("{name} exited 0, but {}", standing.describe(f));
                ctx.record(conn, &ctx.marker(Status::Failed, 0, Some(&detail)))
                    .await?;
                return Err(Error::Failed(detail));
            }
        }
        ctx.record(conn, &ctx.marker(Status::Succeeded, 0, manifest))
            .await?;
        tracing::info!(
            "{name} finished; schema version {} recorded in {:.1?}",
            ctx.expected.version,
            ctx.started.elapsed()
        );
        return Ok(Ran {
            applied: 0,
            wrote_marker: true,
            ..Ran::default()
        });
    }
    let tail = running.stderr_tail().await;
    let detail = format!(
        "{name} {}{}",
        child::describe_status(&status),
        if tail.is_empty() {
            String::new()
        } else {
            format!("; last stderr lines:\n{tail}")
        }
    );
    ctx.record(conn, &ctx.marker(Status::Failed, 0, Some(&detail)))
        .await?;
    Err(Error::Failed(format!(
        "{name} {}",
        child::describe_status(&status)
    )))
}
