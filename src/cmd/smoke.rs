//! `schemagate smoke`: rehearse a rollout on one database with N racing `migrate` and N
//! `wait` processes of this very binary, then check what a rollout must guarantee.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::task::JoinSet;

use super::Outcome;
use crate::cli::{ConnectArgs, SmokeArgs};
use crate::config::Config;
use crate::db;
use crate::error::{Error, Result};
use crate::source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Migrate,
    Wait,
}

struct Finished {
    role: Role,
    index: u32,
    code: Option<i32>,
    elapsed: Duration,
    stderr: String,
    /// For a waiter: whether the marker was there when we saw it exit.
    marker_seen_after_exit: Option<bool>,
}

/// A temp directory removed on drop (the default throwaway SQLite database).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: &SmokeArgs) -> Result<Outcome> {
    let source = Source::load(&args.source)?;
    let version = source.version();
    let source_dir = std::fs::canonicalize(&args.source)
        .map_err(|e| Error::Config(format!("cannot resolve {}: {e}", args.source.display())))?;
    let (url, _temp) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("schemagate-smoke-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
            (
                format!("sqlite://{}/smoke.db", dir.display()),
                Some(TempDir(dir)),
            )
        }
    };
    let cfg = Config::from_args(
        &ConnectArgs {
            database_url: Some(url.clone()),
            database_url_file: None,
            table: "schemagate_marker".into(),
            lock_name: None,
            connect_timeout: Duration::from_secs(30),
            log_format: args.log_format,
            termination_log: None,
        },
        "smoke",
    )?;
    let n = args.replicas;
    println!(
        "schemagate smoke: {n} migrate + {n} wait processes against {}",
        cfg.display_url
    );
    println!(
        "source {} ({} migrations, newest {version})",
        args.source.display(),
        source.ups.len()
    );

    let mut conn = db::connect(&cfg).await?;
    let markers_before = conn
        .markers(&cfg.table, 1)
        .await?
        .first()
        .map_or(0, |m| m.id);
    let (applied_before, _) = conn.applied().await?;
    let pending_before = source
        .ups
        .iter()
        .filter(|m| !applied_before.iter().any(|a| a.version == m.version))
        .count();

    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find this executable: {e}")))?;
    let deadline = humantime::format_duration(args.timeout).to_string();
    let started = Instant::now();
    let mut running = JoinSet::new();
    for (role, index) in (1..=n)
        .map(|i| (Role::Migrate, i))
        .chain((1..=n).map(|i| (Role::Wait, i)))
    {
        let mut cmd = Command::new(&exe);
        match role {
            Role::Migrate => cmd.args(["migrate", "--lock-wait", &deadline]),
            Role::Wait => cmd.args(["wait", "--interval", "50ms", "--timeout", &deadline]),
        };
        cmd.arg("--source")
            .arg(&source_dir)
            // The URL goes through the environment, never argv (visible in `ps`).
            .env("SCHEMAGATE_DATABASE_URL", &url)
            .env_remove("DATABASE_URL")
            .env_remove("SCHEMAGATE_TERMINATION_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let t = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Error::Failed(format!("cannot start {}: {e}", exe.display())))?;
        running.spawn(async move {
            let out = child.wait_with_output().await;
            (role, index, t.elapsed(), out)
        });
    }

    let total = running.len();
    let mut finished: Vec<Finished> = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shown = usize::MAX;
    let rehearsal = async {
        loop {
            tokio::select! {
                next = running.join_next() => {
                    let Some(joined) = next else { break };
                    let (role, index, elapsed, out) = joined.map_err(|e| Error::Failed(format!("a rehearsal task failed: {e}")))?;
                    let out = out.map_err(|e| Error::Failed(format!("cannot wait for a child: {e}")))?;
                    // Seen exit first, marker second: a waiter that passed early fails this.
                    let marker_seen_after_exit = match role {
                        Role::Wait if out.status.success() => Some(
                            lock_free_marker_check(&mut conn, &cfg, &version, &source).await?,
                        ),
                        _ => None,
                    };
                    finished.push(Finished {
                        role,
                        index,
                        code: out.status.code(),
                        elapsed,
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                        marker_seen_after_exit,
                    });
                }
                _ = tick.tick() => progress(&finished, total, started, &mut shown),
            }
        }
        Ok::<_, Error>(())
    };
    match tokio::time::timeout(args.timeout + Duration::from_secs(10), rehearsal).await {
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

    let markers = conn.markers(&cfg.table, 1000).await?;
    let (applied_after, dirty) = conn.applied().await?;
    conn.close().await;
    finished.sort_by_key(|f| (f.role == Role::Wait, f.index));
    let report = check(
        &finished,
        &source,
        &version,
        pending_before,
        markers_before,
        &markers,
        applied_after.len(),
        dirty,
    );
    print_summary(&finished, &report, started.elapsed());
    let failed: Vec<&str> = report.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    if failed.is_empty() {
        Ok(Outcome {
            version: Some(version),
            applied: Some(pending_before),
            message: "smoke: every check passed".into(),
            exec: None,
        })
    } else {
        Err(Error::Failed(format!(
            "smoke failed: {}",
            failed.join("; ")
        )))
    }
}

/// Whether a `succeeded` marker for the version is there now (read, not locked).
async fn lock_free_marker_check(
    conn: &mut db::Conn,
    cfg: &Config,
    version: &str,
    source: &Source,
) -> Result<bool> {
    let newest = conn.newest_marker(&cfg.table, version).await?;
    if newest
        .is_some_and(|m| m.status == "succeeded" && m.digest.as_deref() == Some(&source.digest()))
    {
        return Ok(true);
    }
    // `wait --source` also passes when every migration is applied; that counts too.
    let (applied, _) = conn.applied().await?;
    Ok(source.ups.iter().all(|m| {
        applied
            .iter()
            .any(|a| a.version == m.version && *a.checksum == *m.checksum)
    }))
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

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[allow(clippy::too_many_arguments)]
fn check(
    finished: &[Finished],
    source: &Source,
    version: &str,
    pending_before: usize,
    markers_before: i64,
    markers: &[db::Marker],
    applied_after: usize,
    dirty: Option<i64>,
) -> Vec<Check> {
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
    let appliers = finished
        .iter()
        .filter(|f| f.stderr.contains("INFO applying "))
        .count();
    let applying_lines: usize = finished
        .iter()
        .map(|f| f.stderr.matches("INFO applying ").count())
        .sum();
    let new_markers: Vec<&db::Marker> = markers.iter().filter(|m| m.id > markers_before).collect();
    let succeeded = new_markers
        .iter()
        .filter(|m| m.status == "succeeded" && m.version == version)
        .count();
    let expected_markers = usize::from(pending_before > 0);
    let early: Vec<String> = finished
        .iter()
        .filter(|f| f.marker_seen_after_exit == Some(false))
        .map(label)
        .collect();
    vec![
        Check {
            name: "every process exited 0",
            ok: nonzero.is_empty(),
            detail: if nonzero.is_empty() {
                format!("{} of {}", finished.len(), finished.len())
            } else {
                nonzero.join(", ")
            },
        },
        Check {
            name: "each migration applied exactly once",
            ok: applying_lines == pending_before
                && appliers <= 1
                && applied_after >= source.ups.len()
                && dirty.is_none(),
            detail: format!(
                "{pending_before} pending before, {applying_lines} applied by {appliers} process(es), \
                 {applied_after} recorded{}",
                dirty.map(|v| format!(", {v} dirty")).unwrap_or_default()
            ),
        },
        Check {
            name: "one succeeded marker",
            ok: succeeded == expected_markers && new_markers.len() == expected_markers,
            detail: format!(
                "{succeeded} succeeded marker(s) for {version} written, {} in all",
                new_markers.len()
            ),
        },
        Check {
            name: "every waiter passed only once the schema was complete",
            ok: early.is_empty(),
            detail: if early.is_empty() {
                "yes".into()
            } else {
                format!("early: {}", early.join(", "))
            },
        },
    ]
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

fn print_summary(finished: &[Finished], checks: &[Check], took: Duration) {
    println!();
    println!("{:<12} {:>5} {:>10}  note", "process", "exit", "time");
    for f in finished {
        let note = if f.stderr.contains("INFO applying ") {
            format!("applied {}", f.stderr.matches("INFO applied ").count())
        } else if f.code == Some(0) {
            match f.role {
                Role::Migrate => "nothing to do".into(),
                Role::Wait => "ready".into(),
            }
        } else {
            // The last error line says why.
            f.stderr
                .lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("")
                .to_owned()
        };
        println!(
            "{:<12} {:>5} {:>10}  {note}",
            label(f),
            f.code.map_or("sig".into(), |c| c.to_string()),
            format!("{:.1?}", f.elapsed)
        );
    }
    println!();
    println!("{:<50} result", "check");
    for c in checks {
        println!(
            "{:<50} {}  {}",
            c.name,
            if c.ok { "ok  " } else { "FAIL" },
            c.detail
        );
    }
    println!();
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("smoke passed in {took:.1?}");
    } else {
        println!("smoke FAILED: {failed} check(s) in {took:.1?}");
    }
}
