//! The rehearsal on PostgreSQL, observed from the scratch database's own catalog and
//! sessions: the migrations of a SQL source one by one (`sql`), or an external migrator as
//! a whole (`external`). MySQL's and SQLite's is in `other.rs`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::Observed;
use super::guard::Fingerprint;
use super::outside::{self, Outside};
use super::pg::{self, Sampler, Scratch};
use crate::check;
use crate::db::db_err;
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Config, MigrationsTable, Table};
use crate::source::Source;

/// The history tables `migrate` keeps: its sqlx table (as configured) and the marker.
fn history_tables(marker: &Table, migrations: &MigrationsTable) -> [String; 2] {
    [migrations.qualified().to_owned(), marker.qualified.clone()]
}

/// The finding a change to the URL's database is: never accepted, check exits 1.
fn escaped(report: &mut check::MigrationReport, database: &str, changes: &[String], why: &str) {
    report.add(
        check::ESCAPED,
        format!("database {database}"),
        format!(
            "the database the URL names changed while {why}: {}",
            check::guard::list(changes, 8)
        ),
        &[],
    );
}

/// Say which of the server's roles changed while the rehearsal ran (a warning: roles are
/// shared by every database, and other sessions change them too).
fn warn_roles(roles: &[String]) {
    if !roles.is_empty() {
        tracing::warn!(
            "the server's roles changed while check ran: {}; roles are shared by every \
             database, so check cannot tell whether the rehearsal or another session did it",
            check::guard::list(roles, 8)
        );
    }
}

/// The baseline (migrations up to `since`), then each newer migration in a fresh session,
/// observed from its own backend before commit, each applied as `migrate` applies it
/// (history table included) minus the statements that act outside the scratch database,
/// which are findings. Long on purpose: the order of these steps is what makes the
/// observation true (snapshot, run, read pg_locks, commit, snapshot, compare the real
/// database).
pub async fn sql(
    c: &mut PgConnection,
    scratch: &mut Scratch,
    db: &Config,
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
    let (marker, migrations) = (&db.table, &db.migrations_table);
    let history = history_tables(marker, migrations);
    let hidden = [history[0].as_str(), history[1].as_str()];
    let guarded = scratch.guard(&history[0]).await?;
    pg::ensure_history(c, marker, migrations).await?;
    let mut skipped = Vec::new();
    check::baseline(source, &old, false, &mut skipped, async |m| {
        pg::apply_plain(c, migrations, m).await
    })
    .await?;
    if let Some(g) = &guarded {
        let (changes, roles) = scratch.changes(g).await?;
        warn_roles(&roles);
        if !changes.is_empty() {
            return Err(Error::Failed(format!(
                "the database the URL names ({}) changed while check applied the baseline \
                 to its scratch database: {}",
                g.database,
                check::guard::list(&changes, 8)
            )));
        }
    }
    let mut reports = Vec::new();
    for m in &new {
        let phase = m.phase;
        let m = &source.migration(m)?;
        let name = format!("{} {}", m.version, m.description);
        let outside = Outside::find(m, false, &mut skipped);
        let run = outside::runnable(m, &outside);
        let before = pg::snapshot(c, &hidden).await?;
        pg::clear_log(c, scratch).await?;
        let failed = |e: check::ApplyFailed| {
            Error::Failed(format!(
                "migration {name} failed on the scratch database: {e}{}",
                outside::hint(&skipped)
            ))
        };
        // A fresh session per migration: the statistics it reads (tables scanned) then
        // count this migration's work only, not what earlier statements left pending.
        let mut session = scratch.connect().await?;
        let observed = if m.no_tx {
            let sampler = Sampler::start(scratch, sample_interval).await?;
            let applied = pg::apply_no_tx(&mut session, migrations, &run).await;
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
            pg::apply_in_tx(&mut session, migrations, &run).await
        };
        let lock_timeout = pg::default_lock_timeout(&mut session).await;
        session.close().await.ok();
        let mut observed = observed.map_err(failed)?;
        if m.no_tx {
            observed.lock_timeout = lock_timeout;
        }
        pg::read_log(c, scratch, &mut observed).await?;
        let after = pg::snapshot(c, &hidden).await?;
        let mut allow = check::allows(m.sql.as_str());
        allow.extend(allowed.iter().cloned());
        let mut report = check::report(name, Some(m.version), &before, &after, observed, &allow);
        outside::report(&mut report, &outside, &allow);
        report.judge_phase(phase);
        // Checked after every migration: the first that reaches the real database stops
        // the rehearsal, before the next one can do more.
        if let Some(g) = &guarded {
            let (changes, roles) = scratch.changes(g).await?;
            warn_roles(&roles);
            if !changes.is_empty() {
                escaped(
                    &mut report,
                    &g.database,
                    &changes,
                    "this migration was rehearsed",
                );
                reports.push(report);
                break;
            }
        }
        reports.push(report);
    }
    let baseline = if old.is_empty() {
        "an empty database".to_owned()
    } else {
        format!("the migrations up to {since}")
    };
    Ok((baseline, reports))
}

/// An external migrator to rehearse: `check -- CMD`.
pub struct External<'a> {
    /// A shell command that brings the scratch database to the release still running.
    pub baseline: Option<&'a str>,
    pub command: &'a [String],
    /// How often its sessions are sampled while it runs.
    pub sample_interval: Duration,
}

/// The baseline command, then the migrator, observed from outside; then proof that it
/// migrated the scratch database and nothing else. Long on purpose: the steps of one
/// observation, in order.
pub async fn external(
    c: &mut PgConnection,
    scratch: &mut Scratch,
    db: &Config,
    ext: &External<'_>,
    allowed: &[(String, String)],
) -> Result<(String, Vec<check::MigrationReport>)> {
    let (baseline, command) = (ext.baseline, ext.command);
    let history = history_tables(&db.table, &db.migrations_table);
    let hidden = [history[0].as_str(), history[1].as_str()];
    let guarded = scratch.guard(&history[0]).await?;
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
        if let Some(g) = &guarded {
            let (changes, roles) = scratch.changes(g).await?;
            warn_roles(&roles);
            if !changes.is_empty() {
                return Err(Error::Failed(format!(
                    "the baseline command {} changed the database the URL names ({}), not \
                     (only) the scratch database in its DATABASE_URL: {}",
                    redact(baseline),
                    g.database,
                    check::guard::list(&changes, 8)
                )));
            }
        }
    }
    let name = redact(&command.join(" "));
    let before = pg::snapshot(c, &hidden).await?;
    let scratch_before = Fingerprint::take(c, &history[0])
        .await
        .map_err(|e| db_err("cannot read the scratch database's catalog", e))?;
    pg::clear_log(c, scratch).await?;
    let sampler = Sampler::start(scratch, ext.sample_interval).await?;
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
    let after = pg::snapshot(c, &hidden).await?;
    let scratch_after = Fingerprint::take(c, &history[0])
        .await
        .map_err(|e| db_err("cannot read the scratch database's catalog", e))?;
    let mut report = check::report(name.clone(), None, &before, &after, observed, allowed);
    let changes = match &guarded {
        Some(g) => {
            let (changes, roles) = scratch.changes(g).await?;
            warn_roles(&roles);
            changes
        }
        None => Vec::new(),
    };
    if let (Some(g), false) = (&guarded, changes.is_empty()) {
        escaped(
            &mut report,
            &g.database,
            &changes,
            &format!(
                "{name} ran: it did not (only) migrate the scratch database in its \
                 DATABASE_URL (a URL in its own configuration?)"
            ),
        );
    } else if scratch_after == scratch_before && sampled.sessions.is_empty() {
        // Exited 0, changed nothing, and never seen connected: it migrated some other
        // database (or nothing), and this report says nothing about the new release.
        report.add(
            check::UNTOUCHED,
            scratch.name.clone(),
            format!(
                "{name} exited 0, but changed nothing on the scratch database and was never \
                 seen connected to it ({} samples): it does not use DATABASE_URL (a URL in \
                 its own configuration?), so nothing was rehearsed",
                sampled.samples
            ),
            &[],
        );
    }
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
