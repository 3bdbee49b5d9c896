//! `migrate --phase`: the pending migrations walked in order, never reordered, each
//! contract migration admitted by the gate before it runs (`docs/src/phases.md`).
//!
//! The gate, under the migration lock: raise the registry's barrier to the contract's
//! version, *then* read the live instances (`registry.rs` says why in that order). The
//! contract may run when no live instance was built for an older version than the
//! contract's own: every instance still running knows of it. Otherwise the barrier goes
//! back down (the older release may start again: the rollout may be rolled back), and the
//! run exits 75, or with `--wait-for-drain` polls again until the deadline (124).

use std::time::{Duration, Instant};

use super::interrupt::Progress;
use super::record::{Ctx, Ran};
use crate::db::{Conn, NewMarker, Status};
use crate::error::{Error, Result};
use crate::phase::{Mode, Phase};
use crate::registry;
use crate::source::{Entry, Source};

/// How often `--wait-for-drain` asks the registry again.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Why a phased run stopped before the end of the pending list: at `pending[at]`, a
/// contract it leaves (`Ok`) or one the gate refused (`Err`).
pub(super) struct Stop {
    at: usize,
    refused: Option<Error>,
}

/// Apply the pending migrations in order, asking the gate before each contract. `None`:
/// all of them are applied; else where and why it stopped.
/// `apply` applies a run of pending migrations in their groups (`apply.rs`).
pub(super) async fn walk(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    (mode, wait_for_drain): (Mode, Option<Duration>),
    pending: &[&Entry],
    progress: &mut Progress,
    mut apply: impl AsyncFnMut(&mut Conn, &[&Entry], &mut Progress) -> Result<()>,
) -> Result<Option<Stop>> {
    let mut from = 0;
    loop {
        let next = next(pending, from, mode);
        let upto = match next {
            Next::End => pending.len(),
            Next::Leave { at } | Next::Gate { at, .. } => at,
        };
        apply(conn, &pending[from..upto], progress).await?;
        let (at, blocked) = match next {
            Next::End => return Ok(None),
            Next::Leave { at } => return Ok(Some(Stop { at, refused: None })),
            Next::Gate { at, blocked } => (at, blocked),
        };
        let contract = pending[at];
        progress.current = Some(format!(
            "the gate of contract migration {} ({})",
            contract.version, contract.description
        ));
        let version = contract.version;
        let gate = Gate {
            what: format!(
                "contract migration {} ({})",
                contract.version, contract.description
            ),
            barrier: Some(version),
            knows: &|e: &str| e.parse::<i64>().is_ok_and(|e| e >= version),
        };
        let admitted = match admit(conn, ctx, &gate, wait_for_drain).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(refused(contract, blocked, &why.0, mode)),
            Err(e) => Err(e),
        };
        if let Err(e) = admitted {
            progress.current = None;
            return Ok(Some(Stop {
                at,
                refused: Some(e),
            }));
        }
        apply(conn, &pending[at..=at], progress).await?;
        from = at + 1;
    }
}

/// One gate question: may `what` run now?
pub(super) struct Gate<'a> {
    /// The contract(s), as messages name them: `contract migration 5 (drop_x)`.
    pub(super) what: String,
    /// The number the registry's barrier is raised to while the registry is read; `None`
    /// when the contract has no number the instances could compare (Alembic, Django).
    pub(super) barrier: Option<i64>,
    /// Whether an instance built for `expects` has the contract(s) in its source.
    pub(super) knows: &'a dyn Fn(&str) -> bool,
}

crate::error::reason! {
    /// Which live releases keep a contract from running (`registry::holding_back_unless`).
    pub(super) struct HeldBack;
}

/// Whether the gate's contract may run now (see the module comment); with
/// `--wait-for-drain`, poll until it may or the deadline passes (exit 124). `Ok(Err(why))`:
/// refused now, `why` names the releases holding it back.
pub(super) async fn admit(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    gate: &Gate<'_>,
    wait_for_drain: Option<Duration>,
) -> Result<std::result::Result<(), HeldBack>> {
    let cfg = ctx.cfg;
    let started = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        let before = match gate.barrier {
            Some(v) => Some(registry::raise_barrier(conn, cfg, v).await?),
            None => None,
        };
        let live = registry::live(conn, cfg).await?;
        let Some(why) = registry::holding_back_unless(&live, gate.knows) else {
            tracing::info!(
                "{} may run: no live instance was built before it ({} live)",
                gate.what,
                live.len()
            );
            return Ok(Ok(()));
        };
        if let (Some(v), Some(before)) = (gate.barrier, before) {
            registry::lower_barrier(conn, cfg, v, before).await?;
        }
        let Some(limit) = wait_for_drain else {
            return Ok(Err(HeldBack(why)));
        };
        if started.elapsed() >= limit {
            return Err(Error::Timeout(format!(
                "{} still may not run after {} (--wait-for-drain): {why}",
                gate.what,
                humantime::format_duration(limit)
            )));
        }
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::info!(
                "waiting for the older release to drain before {}: {why}",
                gate.what
            );
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(DRAIN_POLL.min(limit.saturating_sub(started.elapsed()))).await;
    }
}

/// A phased run stopped at `stop`: record how far the database now is (a `succeeded`
/// marker with action `expand` for the newest migration before the contract, when this
/// run applied any), then end as the stop says.
pub(super) async fn stopped(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    pending: &[&Entry],
    progress: &Progress,
    stop: Stop,
) -> Result<Ran> {
    let contract = pending[stop.at];
    let reached = source
        .ups
        .iter()
        .take_while(|m| m.version < contract.version)
        .last()
        .map(|m| m.version);
    let mut wrote_marker = false;
    if let Some(v) = reached
        && progress.applied > 0
    {
        let version = v.to_string();
        let digest = source.digest_upto(Some(v));
        let detail = format!(
            "expand phase applied; contract migration {} ({}) is pending",
            contract.version, contract.description
        );
        let marker = NewMarker {
            version: &version,
            digest: Some(&digest),
            action: "expand",
            detail: Some(&detail),
            ..ctx.marker(Status::Succeeded, progress.applied, None)
        };
        ctx.record(conn, &marker).await?;
        wrote_marker = true;
    }
    if let Some(e) = stop.refused {
        return Err(e);
    }
    let left: Vec<String> = pending[stop.at..]
        .iter()
        .map(|m| format!("{} ({})", m.version, m.phase))
        .collect();
    let message = format!(
        "expand phase done ({} applied); left for `migrate --phase contract`: {}",
        progress.applied,
        left.join(", ")
    );
    tracing::info!("{message}");
    Ok(Ran {
        applied: progress.applied,
        wrote_marker,
        partial: Some(message),
        ..Ran::default()
    })
}

/// Where a phased run stops in the pending list: it applies `pending[..at]`, and then
/// either stops there having done its phase, or must ask the gate for `pending[at]` (a
/// contract) before going on.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Everything left is applied.
    End,
    /// `pending[at]` is a contract that this phase leaves for `--phase contract`: no
    /// expand comes after it.
    Leave { at: usize },
    /// `pending[at]` is a contract this run needs: in `--phase expand`, `blocked` is the
    /// expand after it that it holds up.
    Gate { at: usize, blocked: Option<i64> },
}

/// From `from` on in `pending` (in order), where a run in `mode` must stop or ask the gate.
fn next(pending: &[&Entry], from: usize, mode: Mode) -> Next {
    let Some(offset) = pending[from..]
        .iter()
        .position(|m| m.phase == Phase::Contract)
    else {
        return Next::End;
    };
    let at = from + offset;
    match mode {
        Mode::Contract => Next::Gate { at, blocked: None },
        Mode::Expand => match pending[at..].iter().find(|m| m.phase == Phase::Expand) {
            Some(e) => Next::Gate {
                at,
                blocked: Some(e.version),
            },
            None => Next::Leave { at },
        },
    }
}

/// The error a contract the gate refuses ends the run with (exit 75: try again later).
fn refused(contract: &Entry, blocked: Option<i64>, why: &str, mode: Mode) -> Error {
    let what = match blocked {
        Some(e) => format!(
            "contract migration {} ({}) must run before expand migration {e}, which comes \
             after it (migrations are never reordered), and it cannot run yet",
            contract.version, contract.description
        ),
        None => format!(
            "contract migration {} ({}) cannot run yet",
            contract.version, contract.description
        ),
    };
    let hint = match (mode, blocked) {
        (Mode::Expand, Some(_)) => {
            "; this release skips the one that brings that contract: roll out that release \
             first, or wait until the older release is gone (--wait-for-drain)"
        }
        _ => "; run again once the older release is gone, or pass --wait-for-drain DURATION",
    };
    Error::Gated(format!("{what}: {why}{hint}"))
}
