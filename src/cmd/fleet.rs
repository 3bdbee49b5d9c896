//! `schemagate fleet`: one ordinary `migrate` run per target (its own config, lock, marker
//! and history), at most `--parallel` at a time in this process, and a summary of every
//! target's state. No state is shared between targets: a rerun is the resume.

use std::time::Instant;

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Outcome;
use crate::config::{FleetConfig, MigrateConfig, Work};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::signals::Signals;

/// Where one target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// This run applied migrations (or ran the external migrator) and wrote the marker.
    Applied,
    /// The version was already recorded (or another run recorded it meanwhile).
    UpToDate,
    /// A dry run: what would be done was printed.
    DryRun,
    Failed,
    /// Never started (the fleet was stopped first).
    Skipped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::UpToDate => "up-to-date",
            State::DryRun => "dry-run",
            State::Failed => "failed",
            State::Skipped => "skipped",
        }
    }
}

/// One target's line in the summary.
#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Migrations this run applied to the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
    /// What `migrate` alone would have exited with, for a failed target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Why it failed, or was skipped (redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub elapsed_ms: u64,
}

/// The summary: counts, then every target in the order given.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    targets: usize,
    applied: usize,
    up_to_date: usize,
    failed: usize,
    skipped: usize,
    elapsed_ms: u64,
    /// Why targets were left unstarted, if they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
    results: &'a [TargetResult],
}

pub async fn run(cfg: &FleetConfig, signals: Signals) -> Result<Outcome> {
    // A run's future is not `Send` (sqlx's `dyn Migrate`): the targets are tasks of this
    // thread, as the whole runtime is.
    tokio::task::LocalSet::new()
        .run_until(run_all(cfg, signals))
        .await
}

async fn run_all(cfg: &FleetConfig, mut signals: Signals) -> Result<Outcome> {
    let started = Instant::now();
    let total = cfg.targets.len();
    let mut results: Vec<Option<TargetResult>> = (0..total).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut stopped: Option<String> = None;
    let mut interrupted = None;
    let mut next = 0;
    loop {
        // Start targets while there is room and nothing says stop.
        while interrupted.is_none() && next < total && running.len() < cfg.parallel {
            let target = &cfg.targets[next];
            let index = next;
            next += 1;
            let settings = match cfg.target_config(target) {
                Ok(s) => s,
                Err(e) => {
                    results[index] = Some(failed(&target.id, &e, Instant::now()));
                    continue;
                }
            };
            let span = tracing::info_span!("target", id = %target.id);
            let id = target.id.clone();
            let signals = signals.clone();
            running.spawn_local(
                async move { (index, run_one(id, settings, signals).await) }.instrument(span),
            );
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            done = running.join_next() => {
                let Some(done) = done else { break };
                let (index, result) = done.map_err(|e| Error::Failed(format!("a target's task failed: {e}")))?;
                if result.state == State::Failed {
                    tracing::error!(
                        "target {} failed: {}",
                        result.target,
                        result.reason.as_deref().unwrap_or_default()
                    );
                }
                results[index] = Some(result);
            }
            sig = signals.recv(), if interrupted.is_none() => {
                tracing::warn!(
                    "{sig} received: stopping the {} target(s) in flight; no new target is started",
                    running.len()
                );
                stopped = Some(format!("interrupted by {sig}"));
                interrupted = Some(sig);
            }
        }
    }
    let reason = stopped.clone().unwrap_or_default();
    let results: Vec<TargetResult> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| TargetResult {
                target: cfg.targets[i].id.clone(),
                state: State::Skipped,
                version: None,
                applied: None,
                exit_code: None,
                reason: Some(reason.clone()),
                elapsed_ms: 0,
            })
        })
        .collect();
    let count = |s: State| results.iter().filter(|r| r.state == s).count();
    let summary = Summary {
        targets: total,
        applied: count(State::Applied),
        up_to_date: count(State::UpToDate),
        failed: count(State::Failed),
        skipped: count(State::Skipped),
        elapsed_ms: started.elapsed().as_millis() as u64,
        stopped,
        results: &results,
    };
    print_summary(&summary, cfg.json);
    if let Some(sig) = interrupted {
        return Err(Error::Interrupted(sig));
    }
    let headline = format!(
        "{} target(s): {} applied, {} up to date, {} failed, {} skipped",
        summary.targets, summary.applied, summary.up_to_date, summary.failed, summary.skipped
    );
    if summary.failed + summary.skipped > 0 {
        return Err(Error::Failed(headline));
    }
    Ok(Outcome {
        message: headline,
        ..Outcome::default()
    })
}

/// One target's `migrate` run, as an entry of the summary.
async fn run_one(id: String, settings: MigrateConfig, signals: Signals) -> TargetResult {
    let started = Instant::now();
    let external = !matches!(settings.work, Work::Sql { .. });
    match super::migrate::run(&settings, signals).await {
        Ok(outcome) => {
            let applied = outcome.applied.unwrap_or(0);
            // Every path that runs under the lock ends in "ready"; the ones that find the
            // version recorded say "already applied" or "applied by another run".
            let ran = outcome.message.contains(" ready (");
            let state = if settings.dry_run {
                State::DryRun
            } else if applied > 0 || (external && ran) {
                State::Applied
            } else {
                State::UpToDate
            };
            TargetResult {
                target: id,
                state,
                version: outcome.version,
                applied: Some(applied),
                exit_code: None,
                reason: None,
                elapsed_ms: started.elapsed().as_millis() as u64,
            }
        }
        Err(e) => failed(&id, &e, started),
    }
}

fn failed(id: &str, e: &Error, started: Instant) -> TargetResult {
    TargetResult {
        target: id.to_owned(),
        state: State::Failed,
        version: None,
        applied: None,
        exit_code: Some(e.exit_code()),
        reason: Some(redact(&format!("{e:#}"))),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

fn print_summary(summary: &Summary<'_>, json: bool) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(summary).expect("the summary serializes")
        );
        return;
    }
    let width = summary
        .results
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = format!(
        "fleet: {} target(s): {} applied, {} up to date, {} failed, {} skipped in {:.1}s\n",
        summary.targets,
        summary.applied,
        summary.up_to_date,
        summary.failed,
        summary.skipped,
        summary.elapsed_ms as f64 / 1000.0
    );
    if let Some(why) = &summary.stopped {
        text.push_str(&format!("stopped: {why}\n"));
    }
    for r in summary.results {
        let detail = match r.state {
            State::Applied => format!(
                "{} migration(s), now at {}",
                r.applied.unwrap_or(0),
                r.version.as_deref().unwrap_or("?")
            ),
            State::UpToDate | State::DryRun => {
                format!("at {}", r.version.as_deref().unwrap_or("?"))
            }
            State::Failed => format!(
                "exit {}: {}",
                r.exit_code.unwrap_or(1),
                r.reason.as_deref().unwrap_or_default()
            ),
            State::Skipped => r.reason.clone().unwrap_or_default(),
        };
        text.push_str(&format!(
            "  {:<10}  {:<width$}  {detail}\n",
            r.state.name(),
            r.target
        ));
    }
    crate::stdout::print(&text);
}
