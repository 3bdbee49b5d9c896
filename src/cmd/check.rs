//! `schemagate check`: rehearse a release's new migrations on a scratch database, observe
//! what they lock, scan and rewrite, diff the catalog against the release still running,
//! and fail (exit 5) on any finding no allow comment accepts. The scratch database is
//! dropped on every way out, a signal included.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::Outcome;
use crate::check::pg::{self, Sampler, Scratch};
use crate::check::{self, Observed, Report};
use crate::config::{Backend, CheckConfig, CheckPlan, Config, redact};
use crate::error::{Error, Result};
use crate::signals::Signals;
use crate::source::Source;

/// What to rehearse.
enum Plan {
    Sql {
        source: Source,
        since: i64,
    },
    External {
        baseline: Option<String>,
        command: Vec<String>,
    },
}

impl Plan {
    fn load(plan: &CheckPlan) -> Result<Plan> {
        Ok(match plan {
            CheckPlan::Sql { dir, since } => Plan::Sql {
                source: Source::load(dir)?,
                since: *since,
            },
            CheckPlan::External { baseline, command } => Plan::External {
                baseline: baseline.clone(),
                command: command.clone(),
            },
        })
    }
}

pub async fn run(args: &CheckConfig, mut signals: Signals) -> Result<Outcome> {
    let cfg = &args.db;
    let started = Instant::now();
    let plan = Plan::load(&args.plan)?;
    let allowed = &args.allowed;
    if cfg.backend != Backend::Postgres {
        return other_backend(cfg, &plan, args, allowed, started, signals).await;
    }
    let mut scratch = tokio::select! {
        s = Scratch::open(cfg, args.scratch_database.as_deref()) => s?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let result = tokio::select! {
        r = rehearse(&scratch, &plan, args, allowed) => r,
        sig = signals.recv() => Err(Error::Interrupted(sig)),
    };
    // Every way out passes here: the scratch database never outlives the check.
    scratch.close().await;
    let (baseline, migrations) = result?;
    finish(scratch.name.clone(), baseline, migrations, started, args)
}

/// MySQL/MariaDB and SQLite: the catalog diff for a SQL source (see check/other.rs).
async fn other_backend(
    cfg: &Config,
    plan: &Plan,
    args: &CheckConfig,
    allowed: &[(String, String)],
    started: Instant,
    mut signals: Signals,
) -> Result<Outcome> {
    let Plan::Sql { source, since } = plan else {
        unreachable!("config.rs refuses -- CMD on {}", cfg.backend.name())
    };
    let (name, baseline, migrations) = tokio::select! {
        r = check::other::rehearse(cfg, source, *since, allowed) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    finish(name, baseline, migrations, started, args)
}

/// Print the report and apply the gate.
fn finish(
    scratch_database: String,
    baseline: String,
    migrations: Vec<check::MigrationReport>,
    started: Instant,
    args: &CheckConfig,
) -> Result<Outcome> {
    let findings: Vec<&check::Finding> = migrations.iter().flat_map(|m| &m.findings).collect();
    let unaccepted = findings.iter().filter(|f| !f.accepted).count();
    let report = Report {
        scratch_database,
        baseline,
        findings: findings.len(),
        unaccepted,
        duration_ms: started.elapsed().as_millis(),
        migrations,
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        );
    } else {
        check::print_table(&report);
    }
    if unaccepted > 0 {
        let list: Vec<String> = report
            .migrations
            .iter()
            .flat_map(|m| &m.findings)
            .filter(|f| !f.accepted)
            .map(|f| format!("{} {}", f.kind, f.object))
            .collect();
        return Err(Error::Findings(format!(
            "check: {unaccepted} finding(s) not accepted: {}",
            list.join(", ")
        )));
    }
    Ok(Outcome {
        version: None,
        applied: Some(report.migrations.len()),
        message: format!("check: {} finding(s), all accepted", report.findings),
        exec: None,
    })
}

/// `smoke` on PostgreSQL: the same rehearsal for the migrations newer than `since` (the
/// ones smoke is about to apply), on a scratch database of its own; no gate.
pub async fn summary(
    cfg: &Config,
    source: &Source,
    since: i64,
    signals: &mut Signals,
) -> Result<Report> {
    let started = Instant::now();
    // Not raced with a signal: one that arrives while the database is created is seen
    // right after, and the database is dropped.
    let mut scratch = Scratch::open(cfg, None).await?;
    let work = async {
        let mut c = scratch.connect().await?;
        let r = rehearse_sql(
            &mut c,
            &scratch,
            source,
            since,
            Duration::from_millis(5),
            &[],
        )
        .await;
        c.close().await.ok();
        r
    };
    let result = tokio::select! {
        r = work => r,
        sig = signals.recv() => Err(Error::Interrupted(sig)),
    };
    // Every way out passes here, a signal included.
    scratch.close().await;
    let (baseline, migrations) = result?;
    let findings: Vec<&check::Finding> = migrations.iter().flat_map(|m| &m.findings).collect();
    Ok(Report {
        scratch_database: scratch.name.clone(),
        baseline,
        findings: findings.len(),
        unaccepted: findings.iter().filter(|f| !f.accepted).count(),
        duration_ms: started.elapsed().as_millis(),
        migrations,
    })
}

/// The baseline, then each new migration observed; returns what the catalog was compared
/// against and the per-migration reports.
async fn rehearse(
    scratch: &Scratch,
    plan: &Plan,
    args: &CheckConfig,
    allowed: &[(String, String)],
) -> Result<(String, Vec<check::MigrationReport>)> {
    let mut c = scratch.connect().await?;
    let r = match plan {
        Plan::Sql { source, since } => {
            rehearse_sql(
                &mut c,
                scratch,
                source,
                *since,
                args.sample_interval,
                allowed,
            )
            .await
        }
        Plan::External { baseline, command } => {
            rehearse_external(&mut c, scratch, baseline.as_deref(), command, args, allowed).await
        }
    };
    c.close().await.ok();
    r
}

/// The baseline (migrations up to `since`), then each newer migration in a fresh session,
/// observed from its own backend before commit. Long on purpose: the order of these steps
/// is what makes the observation true (snapshot, run, read pg_locks, commit, snapshot).
async fn rehearse_sql(
    c: &mut PgConnection,
    scratch: &Scratch,
    source: &Source,
    since: i64,
    sample_interval: Duration,
    allowed: &[(String, String)],
) -> Result<(String, Vec<check::MigrationReport>)> {
    let (old, new): (Vec<_>, Vec<_>) = source.ups.iter().partition(|m| m.version <= since);
    tracing::info!(
        "baseline: {} migration(s) up to {since}; checking {} newer one(s)",
        old.len(),
        new.len()
    );
    for m in &old {
        pg::apply_plain(c, &source.sql(m)?, m.no_tx)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "baseline migration {} failed on the scratch database: {e}",
                    m.version
                ))
            })?;
    }
    let mut reports = Vec::new();
    for m in &new {
        let name = format!("{} {}", m.version, m.description);
        let sql = source.sql(m)?;
        let before = pg::snapshot(c).await?;
        pg::clear_log(c, scratch).await?;
        let failed = |e: String| {
            Error::Failed(format!(
                "migration {name} failed on the scratch database: {e}"
            ))
        };
        // A fresh session per migration: the statistics it reads (tables scanned) then
        // count this migration's work only, not what earlier statements left pending.
        let mut session = scratch.connect().await?;
        let observed = if m.no_tx {
            let sampler = Sampler::start(scratch, sample_interval).await?;
            let applied = pg::apply_no_tx(&mut session, &sql).await;
            let sampled = sampler.finish().await?;
            applied.map(|duration| {
                let mut o = Observed {
                    duration,
                    rewrite_lock: Some("AccessExclusiveLock"),
                    ..Observed::default()
                };
                pg::merge_sampled(&mut o, &sampled, scratch.event_trigger);
                o
            })
        } else {
            pg::apply_in_tx(&mut session, &sql).await
        };
        let lock_timeout = pg::default_lock_timeout(&mut session).await;
        session.close().await.ok();
        let mut observed = observed.map_err(failed)?;
        if m.no_tx {
            observed.lock_timeout = lock_timeout;
        }
        pg::read_log(c, scratch, &mut observed).await?;
        let after = pg::snapshot(c).await?;
        let mut allow = check::allows(&sql);
        allow.extend(allowed.iter().cloned());
        reports.push(check::report(
            name,
            Some(m.version),
            &before,
            &after,
            observed,
            &allow,
        ));
    }
    let baseline = if old.is_empty() {
        "an empty database".to_owned()
    } else {
        format!("the migrations up to {since}")
    };
    Ok((baseline, reports))
}

async fn rehearse_external(
    c: &mut PgConnection,
    scratch: &Scratch,
    baseline: Option<&str>,
    command: &[String],
    args: &CheckConfig,
    allowed: &[(String, String)],
) -> Result<(String, Vec<check::MigrationReport>)> {
    if let Some(baseline) = baseline {
        let shell = vec!["sh".to_owned(), "-c".to_owned(), baseline.to_owned()];
        let status = run_child(&shell, scratch).await?;
        if !status.success() {
            return Err(Error::Failed(format!(
                "the baseline command {} {} on the scratch database",
                redact(baseline),
                crate::child::describe_status(&status)
            )));
        }
    }
    let name = redact(&command.join(" "));
    let before = pg::snapshot(c).await?;
    pg::clear_log(c, scratch).await?;
    let sampler = Sampler::start(scratch, args.sample_interval).await?;
    let started = Instant::now();
    let status = run_child(command, scratch).await;
    let duration = started.elapsed();
    let sampled = sampler.finish().await?;
    let status = status?;
    if !status.success() {
        return Err(Error::Failed(format!(
            "{name} {} on the scratch database",
            crate::child::describe_status(&status)
        )));
    }
    let mut observed = Observed {
        duration,
        lock_timeout: pg::default_lock_timeout(c).await,
        rewrite_lock: Some("AccessExclusiveLock"),
        ..Observed::default()
    };
    pg::merge_sampled(&mut observed, &sampled, scratch.event_trigger);
    pg::read_log(c, scratch, &mut observed).await?;
    let after = pg::snapshot(c).await?;
    let report = check::report(name, None, &before, &after, observed, allowed);
    Ok((
        baseline.map_or("an empty database".into(), |b| {
            format!("the database `{}` leaves", redact(b))
        }),
        vec![report],
    ))
}

/// Run a command against the scratch database: DATABASE_URL points there; each line it
/// writes is logged as `[name] line` with any password masked (stdout stays the report's).
/// Killed if the check is interrupted; the scratch database is then dropped with its
/// sessions.
async fn run_child(command: &[String], scratch: &Scratch) -> Result<std::process::ExitStatus> {
    use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

    async fn relay(pipe: impl AsyncRead + Unpin, name: String) {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!("[{name}] {}", redact(&line));
        }
    }

    let program = crate::child::resolve(&command[0])?;
    let name = program
        .file_name()
        .map_or_else(|| command[0].clone(), |n| n.to_string_lossy().into_owned());
    tracing::info!(
        "running {} on the scratch database",
        redact(&command.join(" "))
    );
    let mut child = tokio::process::Command::new(program)
        .args(&command[1..])
        .env("DATABASE_URL", &scratch.url)
        .env("SCHEMAGATE_DATABASE_URL", &scratch.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Config(format!("cannot run {}: {e}", command[0])))?;
    let out = child
        .stdout
        .take()
        .map(|p| tokio::spawn(relay(p, name.clone())));
    let err = child
        .stderr
        .take()
        .map(|p| tokio::spawn(relay(p, name.clone())));
    let status = child
        .wait()
        .await
        .map_err(|e| Error::Failed(format!("cannot wait for {}: {e}", command[0])))?;
    for relay in [out, err].into_iter().flatten() {
        // A grandchild may hold the pipe open: do not wait for it for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), relay).await;
    }
    Ok(status)
}
