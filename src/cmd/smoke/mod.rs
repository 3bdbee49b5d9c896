//! `schemagate smoke`: rehearse a rollout on one database with N racing `migrate` and N
//! `wait` processes of this very binary, then check what a rollout must guarantee. With
//! down migrations in the source it also rehearses a rollback: down one version, then the
//! same race up again.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::task::JoinSet;

mod rolling;

use super::Outcome;
use super::SmokeConfig;
use crate::db::{self, Conn, Scratch};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Config, LockConfig, LockMode, MigrationsTable, Table};
use crate::signals::Signals;
use crate::source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Migrate,
    Wait,
}

/// What a rehearsed process's task returns: its role and index, pid, run time and output.
type Exited = (
    Role,
    u32,
    u32,
    Duration,
    std::io::Result<std::process::Output>,
);

struct Finished {
    role: Role,
    index: u32,
    /// The process id, as the marker's `runner` names it.
    pid: u32,
    code: Option<i32>,
    elapsed: Duration,
    stderr: String,
    /// For a waiter: whether the schema was complete when we saw it exit.
    complete_after_exit: Option<bool>,
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// Everything one race needs.
struct Rehearsal {
    exe: PathBuf,
    url: String,
    source_dir: PathBuf,
    replicas: u32,
    deadline: Duration,
    cfg: Config,
    source: Source,
}

pub async fn run(args: &SmokeConfig, mut signals: Signals) -> Result<Outcome> {
    if let Some(updates) = args.rolling {
        return rolling::run(args, updates, signals).await;
    }
    let started = Instant::now();
    let source = Source::load(&args.source)?;
    let version = source.version();
    let source_dir = std::fs::canonicalize(&args.source)
        .map_err(|e| Error::Config(format!("cannot resolve {}: {e}", args.source.display())))?;
    // The default: a throwaway SQLite file in a temp directory, locked while smoke runs
    // (so that a later run removes it when a SIGKILL left it behind: db/scratch.rs).
    let (url, _temp) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let temp = Scratch::file("smoke")?;
            (temp.url.clone(), Some(temp))
        }
    };
    // As `migrate --source` resolves it (smoke has no --migrations-table).
    let migrations_table = MigrationsTable::resolve(None, Some(&args.source))?;
    let given = config_for(&url, args, &migrations_table)?;
    let (scratch, cfg) = rehearsal_database(&given, args, &migrations_table).await?;
    // A signal stops the rehearsal (its processes are killed as their handles drop, and
    // check's own scratch database is dropped), and ours is dropped all the same.
    let result = rehearse(
        args,
        &cfg,
        source,
        source_dir,
        version,
        started,
        &mut signals,
    )
    .await;
    if let Some(scratch) = scratch {
        scratch.drop_it().await;
    }
    result
}

/// The rehearsal's own settings: the default marker table and lock, whatever the caller's
/// environment says (its children get a clean one too), and the source's migrations table.
fn config_for(url: &str, args: &SmokeConfig, migrations_table: &MigrationsTable) -> Result<Config> {
    let table = Table::parse(crate::settings::DEFAULT_TABLE)?;
    let lock = LockConfig::named(None, &table, LockMode::Auto);
    Config::new(
        url,
        "smoke",
        table,
        migrations_table.clone(),
        lock,
        Duration::from_secs(30),
        args.json_logs,
    )
}

/// A SQLite file given to smoke must be new or empty: its rollback rehearsal drops tables.
async fn refuse_sqlite_with_data(cfg: &Config) -> Result<()> {
    let file = db::sqlite_options(cfg)
        .map_err(|e| Error::Config(format!("invalid database URL: {}", db::describe(&e))))?;
    if !file.get_filename().exists() {
        return Ok(());
    }
    let mut conn = db::connect(cfg).await?;
    let tables = conn.table_count().await;
    conn.close().await;
    if tables? > 0 {
        return Err(Error::Config(format!(
            "smoke rehearses only on a new database, and {} holds tables: give a path that \
             does not exist yet (or omit --database-url for a throwaway file)",
            file.get_filename().display()
        )));
    }
    Ok(())
}

/// Where a rehearsal runs, and its config there. It never touches data it did not create:
/// on a server, it runs in a scratch database it creates here (the caller drops it at the
/// end); a SQLite file must hold no tables.
async fn rehearsal_database(
    given: &Config,
    args: &SmokeConfig,
    migrations_table: &MigrationsTable,
) -> Result<(Option<Scratch>, Config)> {
    if !given.backend.has_server() {
        refuse_sqlite_with_data(given).await?;
        return Ok((None, given.clone()));
    }
    let scratch = scratch(given).await?;
    let cfg = config_for(&scratch.url, args, migrations_table)?;
    Ok((Some(scratch), cfg))
}

/// smoke's own database on the server the URL names, dropped when the rehearsal ends.
async fn scratch(given: &Config) -> Result<Scratch> {
    let scratch = Scratch::create(given, "smoke", |name, e| {
        let e = db::db_err(&format!("cannot create the scratch database {name}"), e);
        Error::Config(format!(
            "smoke rehearses in a scratch database it creates and drops, so that it never \
             touches data: {e:#}; give a user that may create databases (or omit \
             --database-url for a throwaway SQLite file)"
        ))
    })
    .await?;
    outln!(
        "rehearsing in the scratch database {} (dropped afterwards); {} is not touched",
        scratch.name,
        given.display_url
    );
    Ok(scratch)
}

async fn rehearse(
    args: &SmokeConfig,
    cfg: &Config,
    source: Source,
    source_dir: PathBuf,
    version: String,
    started: Instant,
    signals: &mut Signals,
) -> Result<Outcome> {
    let cfg = cfg.clone();
    let url = cfg.url.clone();
    let n = args.replicas;
    outln!(
        "schemagate smoke: {n} migrate + {n} wait processes against {}",
        cfg.display_url
    );
    outln!(
        "source {} ({} migrations, newest {version})",
        args.source.display(),
        source.ups.len()
    );
    let rehearsal = Rehearsal {
        exe: std::env::current_exe()
            .map_err(|e| Error::Failed(format!("cannot find this executable: {e}")))?,
        url,
        source_dir,
        replicas: n,
        deadline: args.timeout,
        cfg,
        source,
    };
    let checks = rehearsal.phases(signals).await?;
    verdict(&checks, version, started)
}

/// A rehearsed process of `exe`, on `url`, as a plain `std::process::Command`.
fn std_command(exe: &std::path::Path, url: &str, cfg: &Config) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    // A clean, explicit environment: nothing of the caller's SCHEMAGATE_* (a table, a
    // log format, a lock mode) may change what the rehearsed processes do. The URL goes
    // through the environment, never argv (visible in `ps`).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCHEMAGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SCHEMAGATE_DATABASE_URL", url)
        .env("SCHEMAGATE_TABLE", &cfg.table.qualified)
        .env(
            "SCHEMAGATE_MIGRATIONS_TABLE",
            cfg.migrations_table.qualified(),
        )
        .env("SCHEMAGATE_LOG_FORMAT", "text")
        .env("SCHEMAGATE_LOG", "info,sqlx=warn")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Print the checks' table and turn it into the outcome.
fn verdict(checks: &[Check], version: String, started: Instant) -> Result<Outcome> {
    outln!();
    outln!("{:<66} result", "check");
    for c in checks {
        outln!(
            "{:<66} {}  {}",
            c.name,
            if c.ok { "ok  " } else { "FAIL" },
            c.detail
        );
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    outln!();
    if failed.is_empty() {
        outln!("smoke passed in {:.1?}", started.elapsed());
        Ok(Outcome {
            version: Some(version),
            applied: None,
            message: "smoke: every check passed".into(),
            exec: None,
        })
    } else {
        outln!(
            "smoke FAILED: {} check(s) in {:.1?}",
            failed.len(),
            started.elapsed()
        );
        Err(Error::Failed(format!(
            "smoke failed: {}",
            failed.join("; ")
        )))
    }
}

/// What `check` says about the migrations this rehearsal is about to apply (PostgreSQL):
/// the same summary, rehearsed on a scratch database of its own. Findings are shown, not
/// gated: smoke checks the rollout mechanics, `check` is the gate.
async fn check_summary(
    rehearsal: &Rehearsal,
    conn: &mut Conn,
    signals: &mut Signals,
) -> Result<()> {
    let (applied, _) = conn.applied(&rehearsal.cfg.migrations_table).await?;
    let since = applied.iter().map(|a| a.version).max().unwrap_or(0);
    outln!();
    match super::check::summary(&rehearsal.cfg, &rehearsal.source, since, signals).await {
        Ok(report) => crate::check::print_table(&report),
        Err(e @ Error::Interrupted(_)) => return Err(e),
        Err(e) => outln!("check: cannot rehearse the migrations: {e:#}"),
    }
    Ok(())
}

impl Rehearsal {
    /// `check`'s summary (PostgreSQL), then the races; a signal ends them.
    async fn phases(&self, signals: &mut Signals) -> Result<Vec<Check>> {
        let mut conn = db::connect(&self.cfg).await?;
        let result = async {
            if self.cfg.backend == crate::settings::Backend::Postgres {
                check_summary(self, &mut conn, signals).await?;
            }
            tokio::select! {
                r = self.races(&mut conn) => r,
                sig = signals.recv() => Err(Error::Interrupted(sig)),
            }
        }
        .await;
        conn.close().await;
        result
    }

    /// The rollout race, then (when the newest migration can be undone) down one version
    /// and the same race up again.
    async fn races(&self, conn: &mut Conn) -> Result<Vec<Check>> {
        let mut checks = self.race(conn, "rollout").await?;
        let newest = self
            .source
            .ups
            .last()
            .expect("a source is never empty")
            .version;
        if self.source.downs.contains_key(&newest) && checks.iter().all(|c| c.ok) {
            let previous = self.source.ups.iter().rev().nth(1).map_or(0, |m| m.version);
            outln!("\nrehearsing a rollback: down to {previous}, then the same race up again");
            checks.push(self.rollback(conn, previous).await?);
            checks.extend(self.race(conn, "up again").await?);
        }
        Ok(checks)
    }

    /// Start N `migrate` and N `wait` at once, wait for all, print their table, and check.
    async fn race(&self, conn: &mut Conn, phase: &str) -> Result<Vec<Check>> {
        let cfg = &self.cfg;
        let markers_before = conn
            .markers(&cfg.table, 1)
            .await?
            .first()
            .map_or(0, |m| m.id);
        let (applied_before, _) = conn.applied(&cfg.migrations_table).await?;
        let pending_before = self.source.compare(&applied_before).pending.len();
        let deadline = humantime::format_duration(self.deadline).to_string();
        let started = Instant::now();
        let running = self.start_all(&deadline)?;
        let mut finished = self.collect(conn, running, started, &deadline).await?;
        let markers = conn.markers(&cfg.table, 1000).await?;
        let (applied_after, dirty) = conn.applied(&cfg.migrations_table).await?;
        finished.sort_by_key(|f| (f.role == Role::Wait, f.index));
        print_processes(phase, &finished, &markers);
        Ok(self.check(
            phase,
            &finished,
            pending_before,
            markers_before,
            &markers,
            (applied_before.len(), applied_after.len()),
            dirty,
        ))
    }

    /// Start N `migrate` and N `wait` processes at once.
    fn start_all(&self, deadline: &str) -> Result<JoinSet<Exited>> {
        let mut running = JoinSet::new();
        let n = self.replicas;
        for (role, index) in (1..=n)
            .map(|i| (Role::Migrate, i))
            .chain((1..=n).map(|i| (Role::Wait, i)))
        {
            let mut cmd = self.command();
            match role {
                Role::Migrate => cmd.args(["migrate", "--lock-wait", deadline]),
                Role::Wait => cmd.args(["wait", "--interval", "50ms", "--timeout", deadline]),
            };
            cmd.arg("--source").arg(&self.source_dir);
            let t = Instant::now();
            let child = cmd
                .spawn()
                .map_err(|e| Error::Failed(format!("cannot start {}: {e}", self.exe.display())))?;
            let pid = child.id().unwrap_or(0);
            running.spawn(async move {
                let out = child.wait_with_output().await;
                (role, index, pid, t.elapsed(), out)
            });
        }
        Ok(running)
    }

    /// Wait for every process (showing progress), noting for each waiter that passed
    /// whether the schema was complete when it was seen to exit.
    async fn collect(
        &self,
        conn: &mut Conn,
        mut running: JoinSet<Exited>,
        started: Instant,
        deadline: &str,
    ) -> Result<Vec<Finished>> {
        let total = running.len();
        let mut finished: Vec<Finished> = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut shown = usize::MAX;
        let collect = async {
            loop {
                tokio::select! {
                    next = running.join_next() => {
                        let Some(joined) = next else { break };
                        let (role, index, pid, elapsed, out) = joined.map_err(|e| Error::Failed(format!("a rehearsal task failed: {e}")))?;
                        let out = out.map_err(|e| Error::Failed(format!("cannot wait for a child: {e}")))?;
                        // Seen exit first, schema second: a waiter that passed early fails this.
                        let complete_after_exit = match role {
                            Role::Wait if out.status.success() => Some(self.schema_complete(conn).await?),
                            _ => None,
                        };
                        finished.push(Finished {
                            role,
                            index,
                            pid,
                            code: out.status.code(),
                            elapsed,
                            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                            complete_after_exit,
                        });
                    }
                    _ = tick.tick() => progress(&finished, total, started, &mut shown),
                }
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(self.deadline + Duration::from_secs(10), collect).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "the rehearsal did not finish within {deadline}"
                )));
            }
        }
        progress(&finished, total, started, &mut shown);
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        Ok(finished)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::from(std_command(&self.exe, &self.url, &self.cfg));
        cmd.kill_on_drop(true);
        cmd
    }

    /// What `wait --source` accepts: a `succeeded` marker with this digest, or every
    /// migration applied unchanged.
    async fn schema_complete(&self, conn: &mut Conn) -> Result<bool> {
        let expected = crate::lock::Expected {
            version: &self.source.version(),
            digest: Some(&self.source.digest()),
            history: Some(self.source.history()),
            versions: None,
            foreign: None,
        };
        if crate::lock::is_done(conn, &self.cfg, &expected).await? {
            return Ok(true);
        }
        let (applied, _) = conn.applied(&self.cfg.migrations_table).await?;
        Ok(self.source.applied_unchanged(&applied))
    }

    async fn rollback(&self, conn: &mut Conn, to: i64) -> Result<Check> {
        let out = self
            .command()
            .args(["rollback", "--to", &to.to_string(), "--source"])
            .arg(&self.source_dir)
            .output()
            .await
            .map_err(|e| Error::Failed(format!("cannot run rollback: {e}")))?;
        let (applied, _) = conn.applied(&self.cfg.migrations_table).await?;
        let newest = applied.iter().map(|a| a.version).max().unwrap_or(0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok(Check {
            name: format!("rollback: down one version, to {to}"),
            ok: out.status.success() && newest == to,
            detail: if out.status.success() {
                format!("newest applied now {newest}")
            } else {
                redact(
                    stderr
                        .lines()
                        .rev()
                        .find(|l| l.contains("ERROR"))
                        .unwrap_or(""),
                )
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        phase: &str,
        finished: &[Finished],
        pending_before: usize,
        markers_before: i64,
        markers: &[db::Marker],
        (applied_before, applied_after): (usize, usize),
        dirty: Option<i64>,
    ) -> Vec<Check> {
        let version = self.source.version();
        // Counted from the database, never from the processes' logs: the new rows in
        // the history, and the markers (each names its runner's pid and what it applied).
        let new_markers: Vec<&db::Marker> =
            markers.iter().filter(|m| m.id > markers_before).collect();
        let appliers = new_markers.iter().filter(|m| m.applied > 0).count();
        let applying_lines: usize = new_markers.iter().map(|m| m.applied as usize).sum();
        let recorded_now = applied_after.saturating_sub(applied_before);
        let succeeded = new_markers
            .iter()
            .filter(|m| m.status == "succeeded" && m.version == version)
            .count();
        let expected_markers = usize::from(pending_before > 0);
        vec![
            exited_zero(phase, finished),
            Check {
                name: format!("{phase}: each migration applied exactly once"),
                ok: applying_lines == pending_before
                    && recorded_now == pending_before
                    && appliers <= 1
                    && applied_after >= self.source.ups.len()
                    && dirty.is_none(),
                detail: format!(
                    "{pending_before} pending before, {recorded_now} recorded in the history, \
                     {applying_lines} applied by {appliers} process(es) by their markers, \
                     {applied_after} recorded in all{}",
                    dirty.map(|v| format!(", {v} dirty")).unwrap_or_default()
                ),
            },
            Check {
                name: format!("{phase}: one succeeded marker"),
                ok: succeeded == expected_markers && new_markers.len() == expected_markers,
                detail: format!(
                    "{succeeded} succeeded marker(s) for {version} written, {} in all",
                    new_markers.len()
                ),
            },
            waiters_in_order(phase, finished),
        ]
    }
}

/// Every rehearsed process exited 0.
fn exited_zero(phase: &str, finished: &[Finished]) -> Check {
    let nonzero: Vec<String> = finished
        .iter()
        .filter(|f| f.code != Some(0))
        .map(|f| {
            format!(
                "{} exited {}",
                label(f),
                f.code.map_or("by a signal".into(), |c| c.to_string())
            )
        })
        .collect();
    Check {
        name: format!("{phase}: every process exited 0"),
        ok: nonzero.is_empty(),
        detail: if nonzero.is_empty() {
            format!("{} of {}", finished.len(), finished.len())
        } else {
            nonzero.join(", ")
        },
    }
}

/// No waiter passed before the schema was complete (checked when it was seen to exit).
fn waiters_in_order(phase: &str, finished: &[Finished]) -> Check {
    let early: Vec<String> = finished
        .iter()
        .filter(|f| f.complete_after_exit == Some(false))
        .map(label)
        .collect();
    Check {
        name: format!("{phase}: every waiter passed only once the schema was complete"),
        ok: early.is_empty(),
        detail: if early.is_empty() {
            "yes".into()
        } else {
            format!("early: {}", early.join(", "))
        },
    }
}

/// One progress line: redrawn in place on a terminal, else printed when it changes.
fn progress(finished: &[Finished], total: usize, started: Instant, shown: &mut usize) {
    let tty = std::io::stderr().is_terminal();
    if !tty && *shown == finished.len() {
        return;
    }
    *shown = finished.len();
    let done = |role| finished.iter().filter(|f| f.role == role).count();
    let half = total / 2;
    let line = format!(
        "[smoke] {:>7.1?}  migrate {}/{half} exited, wait {}/{half} exited",
        started.elapsed(),
        done(Role::Migrate),
        done(Role::Wait)
    );
    if tty {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{line}");
    }
}

fn label(f: &Finished) -> String {
    format!(
        "{} #{}",
        if f.role == Role::Migrate {
            "migrate"
        } else {
            "wait"
        },
        f.index
    )
}

/// The pid in a marker's `runner` ("host (pid N)").
fn runner_pid(runner: &str) -> Option<u32> {
    runner
        .rsplit_once("(pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
}

fn print_processes(phase: &str, finished: &[Finished], markers: &[db::Marker]) {
    outln!();
    outln!("{phase}:");
    outln!("{:<12} {:>5} {:>10}  note", "process", "exit", "time");
    for f in finished {
        let applied = markers
            .iter()
            .find(|m| m.applied > 0 && runner_pid(&m.runner) == Some(f.pid))
            .map(|m| m.applied);
        let note = if let Some(n) = applied {
            format!("applied {n}")
        } else if f.code == Some(0) {
            match f.role {
                Role::Migrate => "nothing to do".into(),
                Role::Wait => "ready".into(),
            }
        } else {
            // The last error line says why.
            redact(
                f.stderr
                    .lines()
                    .rev()
                    .find(|l| l.contains("ERROR"))
                    .unwrap_or(""),
            )
        };
        outln!(
            "{:<12} {:>5} {:>10}  {note}",
            label(f),
            f.code.map_or("sig".into(), |c| c.to_string()),
            format!("{:.1?}", f.elapsed)
        );
    }
}
