//! `migrate -- CMD`: run an external migrator while holding the lock. The lock is
//! checked while it runs (a lost lock stops it), signals are passed on to its whole
//! process group with a grace period, and its outcome becomes the marker. With another
//! migrator's directory as the source, its own history decides whether it needs to run,
//! and whether it did what it said.

use std::time::Duration;

use super::phased::{Gate, admit};
use super::record::{Ctx, Ran, prepare_under_lock, record_from_side};
use crate::child;
use crate::db::{Conn, Status};
use crate::error::{Error, Result};
use crate::formats::{Foreign, Format, Item, Standing, history};
use crate::phase::{Mode, Phase};
use crate::signals::Signals;

/// How often the lock connection is checked while an external migrator runs.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn run_external(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    command: &[String],
    foreign: Option<&Foreign>,
    (grace, phase): (Duration, (Mode, Option<Duration>)),
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
    let mut env = vec![
        ("SCHEMAGATE_VERSION", ctx.expected.version.to_owned()),
        ("SCHEMAGATE_LOCK_KEY", ctx.lock.key().to_string()),
    ];
    let mut plan = None;
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
        match phased_plan(conn, ctx, f, &standing, phase, &command[0]).await? {
            Planned::Run(p) => {
                env.extend(p.env(f));
                plan = Some(p);
            }
            Planned::Done(ran) => return Ok(ran),
        }
    }
    env.extend(ctx.cfg.child_env.iter().cloned());
    let mut running = child::spawn(command, &env, ctx.cfg.json_logs)?;
    let status = supervise(conn, ctx, &mut running, grace, signals).await?;
    finish(
        conn,
        ctx,
        &mut running,
        status,
        foreign.map(|f| (f, plan)),
        manifest.as_deref(),
    )
    .await
}

/// What a run of another migrator's command is for: its phase, and the migrations the
/// history showed pending before it ran, by phase.
struct Plan {
    mode: Mode,
    /// Pending expand migrations (the ids).
    expands: Vec<String>,
    /// Pending contract migrations, and those of them the gate admitted.
    contracts: Vec<String>,
    admitted: Vec<String>,
}

enum Planned {
    Run(Plan),
    /// Nothing for this phase to run (`--phase expand` with only contracts pending).
    Done(Ran),
}

impl Plan {
    /// The phase, for the command: `SCHEMAGATE_PHASE`, `SCHEMAGATE_TARGETS` (what the
    /// expand phase upgrades to, for Alembic and Django), and GitLab's
    /// `SKIP_POST_DEPLOYMENT_MIGRATIONS=true` for a Rails expand.
    fn env(&self, f: &Foreign) -> Vec<(&'static str, String)> {
        let mut env = vec![("SCHEMAGATE_PHASE", self.mode_name().to_owned())];
        if self.mode == Mode::Expand {
            env.push(("SCHEMAGATE_TARGETS", f.expand_targets().join(" ")));
            if f.format == Format::Rails {
                env.push(("SKIP_POST_DEPLOYMENT_MIGRATIONS", "true".into()));
            }
        }
        env
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Expand => "expand",
            Mode::Contract => "contract",
        }
    }
}

/// The pending migrations whose expand part is pending, and those whose contract part is:
/// by each migration's phase, or for Reshape (every migration has both) the ones not yet
/// started, and every pending one.
async fn parts(
    conn: &mut Conn,
    f: &Foreign,
    pending: &[&Item],
) -> Result<(Vec<String>, Vec<String>)> {
    let ids = |phase: Option<Phase>, skip: &[String]| -> Vec<String> {
        pending
            .iter()
            .filter(|i| phase.is_none_or(|p| i.phase == p) && !skip.contains(&i.id))
            .map(|i| i.id.clone())
            .collect()
    };
    if f.format == Format::Reshape {
        let started = history::reshape_in_progress(conn).await?;
        return Ok((ids(None, &started), ids(None, &[])));
    }
    Ok((
        ids(Some(Phase::Expand), &[]),
        ids(Some(Phase::Contract), &[]),
    ))
}

/// The phase of each pending migration decides what the command may do. `--phase expand`:
/// run it when an expand is pending, a contract only when an expand needs it and the gate
/// admits it. `--phase contract` (and no `--phase`): the gate must admit every pending
/// contract first (exit 75 naming the releases, or `--wait-for-drain`).
async fn phased_plan(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    f: &Foreign,
    standing: &Standing,
    (mode, wait_for_drain): (Mode, Option<Duration>),
    program: &str,
) -> Result<Planned> {
    let pending = f.pending_items(standing);
    let (expands, contracts) = parts(conn, f, &pending).await?;
    if f.format == Format::Reshape {
        let started: Vec<&str> = pending
            .iter()
            .map(|i| i.id.as_str())
            .filter(|id| !expands.iter().any(|e| e == id))
            .collect();
        // `start` refuses while a migration is in progress. (The contract phase gates every
        // pending one: `start --complete` runs both parts.)
        let refusal = match mode {
            Mode::Expand if !expands.is_empty() && !started.is_empty() => Some(format!(
                "reshape has migration(s) {} started and not completed: complete them first \
                 (`migrate --phase contract -- reshape migration complete`), then start {}",
                started.join(", "),
                expands.join(", ")
            )),
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(Error::Failed(why));
        }
    }
    let gated: Vec<&Item> = match mode {
        Mode::Expand if expands.is_empty() => {
            let message = format!(
                "expand phase done: no expand migration pending, {program} not run; left for \
                 `migrate --phase contract`: {}",
                contracts.join(", ")
            );
            tracing::info!("{message}");
            return Ok(Planned::Done(Ran {
                partial: Some(message),
                ..Ran::default()
            }));
        }
        Mode::Expand => f.contracts_below_expands(&pending),
        Mode::Contract => pending
            .iter()
            .filter(|i| contracts.contains(&i.id))
            .copied()
            .collect(),
    };
    let mut admitted = Vec::new();
    if !gated.is_empty() {
        let names: Vec<&str> = gated.iter().map(|i| i.id.as_str()).collect();
        let what = format!(
            "{} contract migration{} {}",
            f.format.name(),
            if gated.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
        let knows = |e: &str| gated.iter().all(|c| f.knows(e, c));
        let gate = Gate {
            what: what.clone(),
            barrier: f.barrier(&gated),
            knows: &knows,
        };
        if let Err(why) = admit(conn, ctx, &gate, wait_for_drain).await? {
            let hint = match mode {
                Mode::Expand => {
                    "; the pending expand migrations descend from it: roll out the release \
                     that brings it first, or wait until the older release is gone \
                     (--wait-for-drain)"
                }
                Mode::Contract => {
                    "; run again once the older release is gone, or pass --wait-for-drain \
                     DURATION"
                }
            };
            return Err(Error::Gated(format!("{what} cannot run yet: {why}{hint}")));
        }
        admitted = names.iter().map(|n| n.to_string()).collect();
    }
    Ok(Planned::Run(Plan {
        mode,
        expands,
        contracts,
        admitted,
    }))
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
/// not enough: its history must show this image applied, or for `--phase expand` every
/// expand applied and no contract the gate did not admit.
async fn finish(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    running: &mut child::Running,
    status: std::process::ExitStatus,
    foreign: Option<(&Foreign, Option<Plan>)>,
    manifest: Option<&str>,
) -> Result<Ran> {
    let name = running.name().to_owned();
    if status.success() {
        if let Some((f, plan)) = foreign {
            // CMD exiting 0 is not enough: its history must now show this image applied
            // (a wrong working directory or settings module migrates something else).
            let standing = f.standing(&history::read(conn, f).await?.rows);
            if let Some(plan) = plan.filter(|p| p.mode == Mode::Expand) {
                let (expands, _) = parts(conn, f, &f.pending_items(&standing)).await?;
                return expand_finished(conn, ctx, f, &plan, (&standing, &expands), &name).await;
            }
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

/// `--phase expand` ran the command: every expand must now be applied, and no contract
/// the gate did not admit. A contract applied anyway is reported (the command did not
/// honour the phase: a Rails app that adds `db/post_migrate` whatever
/// SKIP_POST_DEPLOYMENT_MIGRATIONS says), never hidden. No marker is written for the
/// version: it is not reached until the contract phase.
async fn expand_finished(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    f: &Foreign,
    plan: &Plan,
    (standing, expands_left): (&Standing, &[String]),
    name: &str,
) -> Result<Ran> {
    let still: std::collections::HashSet<&str> =
        standing.pending.iter().map(String::as_str).collect();
    let ran_contracts: Vec<&str> = plan
        .contracts
        .iter()
        .map(String::as_str)
        .filter(|c| !still.contains(c) && !plan.admitted.iter().any(|a| a == c))
        .collect();
    let left_expands: Vec<&str> = plan
        .expands
        .iter()
        .map(String::as_str)
        .filter(|e| expands_left.iter().any(|l| l == e))
        .collect();
    let problem = if !ran_contracts.is_empty() {
        Some(format!(
            "{name} applied contract migration(s) {} during the expand phase (the gate did \
             not admit them): the command must apply expand migrations only ({})",
            ran_contracts.join(", "),
            match f.format {
                Format::Rails => {
                    "it must leave db/post_migrate out when SKIP_POST_DEPLOYMENT_MIGRATIONS \
                     is set"
                }
                Format::Reshape => "`reshape migration start` without --complete",
                _ => "upgrade to $SCHEMAGATE_TARGETS, or to the expand branch's head",
            }
        ))
    } else if !left_expands.is_empty() {
        Some(format!(
            "{name} exited 0, but {} does not show expand migration(s) {} applied",
            f.history_table(),
            left_expands.join(", ")
        ))
    } else {
        None
    };
    if let Some(detail) = problem {
        ctx.record(conn, &ctx.marker(Status::Failed, 0, Some(&detail)))
            .await?;
        return Err(Error::Failed(detail));
    }
    let left: Vec<&str> = plan
        .contracts
        .iter()
        .map(String::as_str)
        .filter(|c| still.contains(c))
        .collect();
    let message = format!(
        "expand phase done ({} expand migration(s) applied by {name}); left for `migrate \
         --phase contract`: {}",
        plan.expands.len(),
        if left.is_empty() {
            "nothing".to_owned()
        } else {
            left.join(", ")
        }
    );
    tracing::info!("{message}");
    Ok(Ran {
        applied: 0,
        wrote_marker: false,
        partial: Some(message),
        ..Ran::default()
    })
}
