//! `schemagate check`: rehearse a release's new migrations on a scratch database, observe
//! what they lock, scan and rewrite, diff the catalog against the release still running,
//! and fail (exit 5) on any finding no allow comment accepts. The scratch database is
//! dropped on every way out, a signal included.

use std::time::{Duration, Instant};

use sqlx::Connection;

use super::Outcome;
use super::{CheckConfig, CheckPlan};
use crate::check::pg::Scratch;
use crate::check::{self, Report};
use crate::error::{Error, Result};
use crate::settings::{Backend, Config};
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
        r = rehearse(&mut scratch, &plan, args, allowed) => r,
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
    let escaped: Vec<String> = report
        .migrations
        .iter()
        .flat_map(|m| &m.findings)
        .filter(|f| !check::Finding::acceptable(&f.kind))
        .map(|f| format!("{} {} ({})", f.kind, f.object, f.migration))
        .collect();
    if !escaped.is_empty() {
        return Err(Error::Failed(format!(
            "check: the rehearsal did not stay on its scratch database: {}; its report cannot \
             be trusted",
            escaped.join(", ")
        )));
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
        let r = check::rehearse::sql(
            &mut c,
            &mut scratch,
            cfg,
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
    scratch: &mut Scratch,
    plan: &Plan,
    args: &CheckConfig,
    allowed: &[(String, String)],
) -> Result<(String, Vec<check::MigrationReport>)> {
    let mut c = scratch.connect().await?;
    let r = match plan {
        Plan::Sql { source, since } => {
            check::rehearse::sql(
                &mut c,
                scratch,
                &args.db,
                source,
                *since,
                args.sample_interval,
                allowed,
            )
            .await
        }
        Plan::External { baseline, command } => {
            let external = check::rehearse::External {
                baseline: baseline.as_deref(),
                command,
                sample_interval: args.sample_interval,
            };
            check::rehearse::external(&mut c, scratch, &args.db, &external, allowed).await
        }
    };
    c.close().await.ok();
    r
}
