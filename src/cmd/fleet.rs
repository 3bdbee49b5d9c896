//! `schemagate fleet`: one ordinary `migrate` run per target (its own config, lock, marker
//! and history), at most `--parallel` at a time in this process, and a summary of every
//! target's state. No state is shared between targets: a rerun is the resume.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Outcome;
use super::{MigrateConfig, Work};
use crate::db::{self, Conn};
use crate::error::{Error, Result};
use crate::lock::{self, Choice};
use crate::redact::redact;
use crate::settings::{Backend, Config, LockMode};
use crate::signals::{Signal, Signals};

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
    /// `--shard I/N`: this run's targets are those of shard I.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
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
    let targets = tokio::select! {
        r = load_targets(cfg) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let proven = tokio::select! {
        r = prove_servers(cfg, &targets) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let total = targets.len();
    let tolerated = cfg.max_failed.map(|m| m.tolerated(total));
    let canary = cfg.canary.min(total);
    let mut canary_done = canary == 0;
    let mut results: Vec<Option<TargetResult>> = (0..total).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut stopped: Option<String> = None;
    let mut interrupted = None;
    let mut failures = 0;
    let mut next = 0;
    let mut progress = Progress::new(total);
    let mut ticker = tokio::time::interval(progress.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        // Start targets while there is room and nothing says stop; during the canary
        // wave, only the canaries.
        let end = if canary_done { total } else { canary };
        while stopped.is_none() && next < end && running.len() < cfg.parallel {
            let target = &targets[next];
            let index = next;
            next += 1;
            let mut settings = match cfg.target_config(target) {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    results[index] = Some(failed(&target.id, &e, Instant::now()));
                    continue;
                }
            };
            apply_proof(&mut settings, &proven);
            let span = tracing::info_span!("target", id = %target.id);
            let id = target.id.clone();
            let signals = signals.clone();
            let timeout = cfg.target_timeout;
            running.spawn_local(
                async move { (index, run_one(id, settings, signals, timeout).await) }
                    .instrument(span),
            );
        }
        if running.is_empty() {
            if !canary_done && stopped.is_none() {
                canary_done = true;
                if failures > 0 {
                    stopped = Some(format!(
                        "{failures} of the {canary} canary target(s) failed"
                    ));
                }
                continue;
            }
            break;
        }
        tokio::select! {
            done = running.join_next() => {
                let Some(done) = done else { break };
                let (index, result) = done.map_err(|e| Error::Failed(format!("a target's task failed: {e}")))?;
                if result.state == State::Failed {
                    failures += 1;
                    tracing::error!(
                        "target {} failed: {}",
                        result.target,
                        result.reason.as_deref().unwrap_or_default()
                    );
                    if let Some(max) = tolerated
                        && failures > max
                        && stopped.is_none()
                    {
                        let why = format!(
                            "--max-failed {max} crossed: {failures} of {total} target(s) failed"
                        );
                        tracing::warn!("{why}; no new target is started");
                        stopped = Some(why);
                    }
                }
                results[index] = Some(result);
            }
            _ = ticker.tick() => {
                let done = results.iter().filter(|r| r.is_some()).count();
                progress.show(done, failures, running.len());
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
    let done = results.iter().filter(|r| r.is_some()).count();
    progress.finish(done, failures);
    let reason = stopped.clone().unwrap_or_default();
    let results: Vec<TargetResult> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| TargetResult {
                target: targets[i].id.clone(),
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
        shard: cfg.shard.map(|(i, n)| format!("{i}/{n}")),
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

/// The targets, from the file, the command's output or the catalog query.
async fn load_targets(cfg: &FleetConfig) -> Result<Vec<Target>> {
    match &cfg.list {
        TargetList::File(path) => {
            let text = crate::files::read_small(path, 64 << 20).map_err(|e| {
                Error::Config(format!("cannot read --targets {}: {e}", path.display()))
            })?;
            cfg.parse_targets(&text, &format!("--targets {}", path.display()))
        }
        TargetList::Command(command) => {
            let out = tokio::process::Command::new("sh")
                .args(["-c", command])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .await
                .map_err(|e| Error::Failed(format!("cannot run --targets-cmd: {e}")))?;
            if !out.status.success() {
                return Err(Error::Failed(format!(
                    "--targets-cmd {} {}; no target was started",
                    redact(command),
                    crate::child::describe_status(&out.status)
                )));
            }
            cfg.parse_targets(&String::from_utf8_lossy(&out.stdout), "--targets-cmd")
        }
        TargetList::Query(catalog, sql) => {
            let mut conn = db::connect(catalog).await?;
            let names = query_column(&mut conn, sql).await;
            conn.close().await;
            let names = names.map_err(|e| {
                db::db_err(
                    &format!("--targets-query failed on {}", catalog.display_url),
                    e,
                )
            })?;
            cfg.parse_targets(&names.join("\n"), "--targets-query row")
        }
    }
}

/// The first column of every row of `sql`, as text.
async fn query_column(conn: &mut Conn, sql: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows = conn.fetch(sql.to_owned(), 1, 0).await?;
    Ok(rows.into_iter().flat_map(|(texts, _)| texts).collect())
}

/// The lock each PostgreSQL server's targets take, decided once per server (host and
/// port) before any target starts: with `--lock auto` every run that takes the lock would
/// otherwise prove the advisory lock on a second connection of its own, and N targets
/// applying at once would hold 2N connections. Keyed by server; the value is the lock
/// chosen and why.
async fn prove_servers(cfg: &FleetConfig, targets: &[Target]) -> Result<HashMap<String, Choice>> {
    let mut proven = HashMap::new();
    let mut tried = std::collections::HashSet::new();
    for target in targets {
        // One target's config per server, not one per target.
        let Some(server) = server_of(&cfg.plain_url(target)) else {
            continue;
        };
        if !tried.insert(server.clone()) {
            continue;
        }
        let Ok(settings) = cfg.target_config(target) else {
            continue;
        };
        let db = &settings.db;
        if db.backend != Backend::Postgres || db.lock.mode == LockMode::Lease || settings.dry_run {
            continue;
        }
        let choice = async {
            let mut conn = db::connect(db).await?;
            let choice = lock::choose(&mut conn, db).await;
            conn.close().await;
            choice
        };
        match choice.await {
            Ok(choice) => {
                proven.insert(server, choice);
            }
            // The targets of that server prove it themselves (and say what fails).
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => tracing::warn!("cannot decide the lock for {}: {e:#}", db.display_url),
        }
    }
    Ok(proven)
}

/// `scheme://host:port` of a URL: the server whose lock was proven.
fn server_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str()?,
        u.port().unwrap_or(0)
    ))
}

/// The lock decided for this target's server, if it was.
fn apply_proof(settings: &mut MigrateConfig, proven: &HashMap<String, Choice>) {
    let Some(choice) = server_of(&settings.db.url).and_then(|s| proven.get(&s)) else {
        return;
    };
    match choice.kind {
        "advisory" => settings.db.advisory_proven = Some(choice.reason.clone()),
        "lease" => settings.db.lock.mode = LockMode::Lease,
        _ => {}
    }
}

/// One target's `migrate` run, as an entry of the summary. Its run gets signals of its
/// own: the fleet's, passed on, and a SIGTERM of its own at `timeout`.
async fn run_one(
    id: String,
    settings: MigrateConfig,
    mut fleet_signals: Signals,
    timeout: Option<Duration>,
) -> TargetResult {
    let started = Instant::now();
    let external = !matches!(settings.work, Work::Sql { .. });
    let (signals, stop) = Signals::manual();
    let run = super::migrate::run(&settings, signals);
    tokio::pin!(run);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut timed_out = false;
    let result = tokio::select! {
        r = &mut run => r,
        sig = fleet_signals.recv() => {
            let _ = stop.send(Some(sig));
            run.await
        }
        () = deadline => {
            timed_out = true;
            let _ = stop.send(Some(Signal::Term));
            // As SIGTERM: the run records its failure, or ends at once if it held nothing.
            match tokio::time::timeout(STOP_GRACE + settings.grace, &mut run).await {
                Ok(r) => r,
                Err(_) => Err(Error::Failed("did not stop in time".into())),
            }
        }
    };
    match result {
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
        Err(e) if timed_out => {
            let limit = humantime::format_duration(timeout.unwrap_or_default());
            let e = match e {
                Error::Interrupted(_) => Error::Timeout(format!(
                    "--target-timeout {limit} passed; stopped as on SIGTERM"
                )),
                other => Error::Timeout(format!("--target-timeout {limit} passed: {other:#}")),
            };
            failed(&id, &e, started)
        }
        Err(e) => failed(&id, &e, started),
    }
}

/// How long a target stopped at its --target-timeout gets to record its failure (plus
/// --grace for an external migrator), before it is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(20);

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
    let shard = summary
        .shard
        .as_deref()
        .map(|s| format!(" (shard {s})"))
        .unwrap_or_default();
    let mut text = format!(
        "fleet{shard}: {} target(s): {} applied, {} up to date, {} failed, {} skipped in {:.1}s\n",
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
            State::UpToDate => format!("at {}", r.version.as_deref().unwrap_or("?")),
            State::DryRun => format!(
                "nothing changed; its plan for {} is printed above",
                r.version.as_deref().unwrap_or("?")
            ),
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

/// Where the fleet stands, on stderr: a line rewritten in place on a terminal (every
/// second), a JSON line otherwise (every 5 seconds, and once at the end), for whoever
/// watches a long run or collects its logs.
struct Progress {
    total: usize,
    started: Instant,
    tty: bool,
    every: Duration,
}

impl Progress {
    fn new(total: usize) -> Progress {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        Progress {
            total,
            started: Instant::now(),
            tty,
            every: Duration::from_secs(if tty { 1 } else { 5 }),
        }
    }

    fn show(&mut self, done: usize, failed: usize, running: usize) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let left = self.total - done;
        let eta = (rate > 0.0).then(|| Duration::from_secs((left as f64 / rate).ceil() as u64));
        let text = if self.tty {
            format!(
                "\r\x1b[Kfleet: {done}/{} done, {failed} failed, {running} running, {} pending, \
                 {rate:.1}/s, ETA {}",
                self.total,
                left - running,
                eta.map_or("?".into(), |d| humantime::format_duration(d).to_string())
            )
        } else {
            format!(
                "{}\n",
                serde_json::json!({
                    "event": "fleet.progress", "targets": self.total, "done": done,
                    "failed": failed, "running": running, "pending": left - running,
                    "rate_per_s": (rate * 10.0).round() / 10.0,
                    "eta_s": eta.map(|d| d.as_secs()),
                })
            )
        };
        use std::io::Write;
        let _ = std::io::stderr().write_all(text.as_bytes());
    }

    fn finish(&mut self, done: usize, failed: usize) {
        self.show(done, failed, 0);
        if self.tty {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n");
        }
    }
}

// ---- The fleet's configuration (its `from_args` is in config/fleet.rs, at the edge).

/// The placeholder a target's name fills.
pub const PLACEHOLDER: &str = "{schema}";
/// The placeholder an external migrator's arguments get the target's URL in.
pub const URL_PLACEHOLDER: &str = "{url}";

/// `schemagate fleet`.
#[derive(Debug)]
pub struct FleetConfig {
    /// Where the targets come from (read when the fleet starts: `TargetList`).
    pub list: TargetList,
    pub parallel: usize,
    /// The first K targets run (and must all succeed) before the others start.
    pub canary: usize,
    pub max_failed: Option<MaxFailed>,
    pub target_timeout: Option<Duration>,
    /// `--shard I/N`, or `--shards N` with I from JOB_COMPLETION_INDEX: (I, N).
    pub shard: Option<(u32, u32)>,
    pub json: bool,
    /// How a target becomes a run: made at the edge from the command line (config/fleet.rs).
    pub plan: Box<dyn Plan>,
}

/// `--targets FILE`, `--targets-cmd CMD` or `--targets-query SQL`.
#[derive(Debug)]
pub enum TargetList {
    File(PathBuf),
    Command(String),
    /// The query, and the catalog database it runs on.
    Query(Box<Config>, String),
}

/// One database or one schema.
#[derive(Debug, Clone)]
pub struct Target {
    /// How it is named in the summary and the logs: the name, or the URL with its
    /// password masked.
    pub id: String,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// A line holding a URL.
    Url(String),
    /// A line holding a name, for `{schema}`.
    Name(String),
}

/// How the fleet's targets become ordinary `migrate` runs. Made at the edge from the
/// command line (`config/fleet.rs`), which alone reads `migrate`'s flags.
pub trait Plan: std::fmt::Debug {
    /// The targets in `text` (the file, the command's output, the query's rows as lines),
    /// from `origin`: each line a URL or a name that fits where names live, none twice,
    /// and the first one's `migrate` options checked, all before anything runs.
    fn targets(&self, text: &str, origin: &str) -> Result<Vec<Target>>;
    /// The target's URL as given (a schema's: the database's): what `{url}` and an external
    /// migrator's DATABASE_URL get, and what names its server.
    fn plain_url(&self, target: &Target) -> String;
    /// The `migrate` run for one target: `{schema}` filled in, its own tables and lock.
    fn target_config(&self, target: &Target) -> Result<MigrateConfig>;
}

impl FleetConfig {
    /// The targets in `text` that are this shard's.
    pub fn parse_targets(&self, text: &str, origin: &str) -> Result<Vec<Target>> {
        let mut targets = self.plan.targets(text, origin)?;
        if let Some((i, n)) = self.shard {
            targets.retain(|t| shard_of(&t.id, n) == i);
        }
        Ok(targets)
    }

    pub fn plain_url(&self, target: &Target) -> String {
        self.plan.plain_url(target)
    }

    pub fn target_config(&self, target: &Target) -> Result<MigrateConfig> {
        self.plan.target_config(target)
    }
}

/// `--max-failed`: a count, or a share of the targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxFailed {
    Count(usize),
    Percent(f64),
}

impl MaxFailed {
    /// How many failures out of `total` targets are tolerated.
    pub fn tolerated(self, total: usize) -> usize {
        match self {
            MaxFailed::Count(n) => n,
            MaxFailed::Percent(p) => (total as f64 * p / 100.0).floor() as usize,
        }
    }
}

/// The shard of `n` a target belongs to: the first 8 bytes of the SHA-256 of its id, modulo
/// `n`. Stable across runs, machines and releases, so the pods of an Indexed Job (each
/// with its index) split the targets the same way every time.
pub fn shard_of(id: &str, n: u32) -> u32 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(id.as_bytes());
    (u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) % u64::from(n)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_cover_every_target_once() {
        // Pinned: a release that moved targets between shards would let two pods of one
        // Job (an old and a new image) both skip a target.
        assert_eq!(shard_of("tenant_1", 8), 1);
        assert_eq!(shard_of("t_a", 8), 4);
        let ids: Vec<String> = (0..1000).map(|i| format!("tenant_{i}")).collect();
        let mut sizes = [0usize; 8];
        for id in &ids {
            sizes[shard_of(id, 8) as usize] += 1;
        }
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.iter().all(|&n| (80..=170).contains(&n)), "{sizes:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }
}
