//! `schemagate migrate`: the fast path, the lock, then either the pending SQL migrations on
//! the lock-holding connection or an external migrator kept under the lock, and the marker.

mod apply;
mod external;
mod fast;
mod interrupt;
mod phased;
mod record;

use std::time::Instant;

use super::{Before, Outcome};
use super::{MigrateConfig, Work};
use crate::db::{self, Conn};
use crate::digest;
use crate::error::{Error, Result};
use crate::formats::{self, Foreign, Format};
use crate::http;
use crate::lock::{self, Expected, Lock};
use crate::redact::redact;
use crate::settings::{Config, MigrationsTable};
use crate::signals::Signals;
use crate::source::{Entry, Plan, Source};
use apply::apply_sql;
use fast::{Claimed, Early, digest_fast_path, lock_on_claim};
use record::{Ctx, Ran};

/// What this run applies.
enum Job {
    Sql(Source),
    External {
        version: String,
        command: Vec<String>,
        /// `--source DIR --format F`: the migrator's files, its version and digest.
        foreign: Option<Foreign>,
    },
}

impl Job {
    /// Read what `work` names: the SQL migrations, or the other migrator's files.
    fn load(cfg: &MigrateConfig) -> Result<Job> {
        Ok(match &cfg.work {
            Work::Sql { dir, detect } => {
                if *detect {
                    match formats::resolve(dir, None)? {
                        Format::Sqlx => {}
                        format => return Err(formats::needs_command(dir, format)),
                    }
                }
                let mut source = Source::load(dir)?;
                source.ignore_missing = cfg.ignore_missing;
                Job::Sql(source)
            }
            Work::External { version, command } => Job::External {
                version: version.clone(),
                command: command.clone(),
                foreign: None,
            },
            Work::Foreign { spec, command } => {
                let foreign = Foreign::load(spec)?;
                Job::External {
                    version: foreign.version(),
                    command: command.clone(),
                    foreign: Some(foreign),
                }
            }
        })
    }

    /// With `--ignore-missing`, the source's versions: another track shares the history,
    /// so its check counts only these (`Expected::versions`).
    fn own_versions(&self) -> Option<Vec<i64>> {
        match self {
            Job::Sql(source) if source.ignore_missing => {
                Some(source.ups.iter().map(|m| m.version).collect())
            }
            _ => None,
        }
    }

    fn expected(&self) -> (String, Option<String>, Option<(i64, usize)>) {
        match self {
            Job::Sql(source) => (
                source.version(),
                Some(source.digest()),
                Some(source.history()),
            ),
            Job::External {
                version, foreign, ..
            } => (version.clone(), foreign.as_ref().map(Foreign::digest), None),
        }
    }
}

pub async fn run(settings: &MigrateConfig, mut signals: Signals) -> Result<Outcome> {
    let cfg = &settings.db;
    let started = Instant::now();
    // The no-op path with a build-time digest: no migration is read.
    let early = tokio::select! {
        r = digest_fast_path(cfg, settings) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let (mut conn, recorded) = match early {
        Early::Done(version, message) => return Ok(ready(version, 0, message)),
        Early::Open(conn, recorded) => (Some(conn), recorded),
        Early::NotTried => (None, None),
    };
    // With a trusted digest file, its claim is all that a run waiting for another run's
    // marker needs: such a run never reads a migration, whatever their number. The source
    // is read once the lock is ours.
    let mut held = None;
    if let Some(summary) = &recorded
        && let Some(c) = conn.take()
    {
        match lock_on_claim(c, cfg, summary, &mut signals).await? {
            Claimed::Done(outcome) => return Ok(outcome),
            Claimed::Held(c, lock) => held = Some((c, lock)),
        }
    }
    // Read the source and check the command: bad input is a usage error, found before the
    // lock is taken, or with nothing done under it (the lock is let go).
    let job = match Job::load(settings) {
        Ok(job) => job,
        Err(e) => {
            if let Some((c, lock)) = held {
                let _ = end_lock(c, lock, cfg, Ok(Ran::default())).await;
            }
            return Err(e);
        }
    };
    let (version, digest, history) = job.expected();
    let versions = job.own_versions();
    let expected = Expected {
        version: &version,
        digest: digest.as_deref(),
        history,
        versions: versions.as_deref(),
        foreign: match &job {
            Job::External { foreign, .. } => foreign.as_ref(),
            Job::Sql(_) => None,
        },
    };
    let checked = digest_agrees(recorded.as_ref(), &job, &expected);
    let done = |message: String, applied| ready(version.clone(), applied, message);

    // Until we hold the lock nothing is ours to record: a signal just ends the run.
    let (mut conn, lock) = match held {
        Some(held) => held,
        None => tokio::select! {
            r = connect_and_lock(cfg, settings, &job, &expected, conn.map(|c| (c, checked))) => match r? {
                Before::Done(message) => return Ok(done(message, 0)),
                Before::Locked(conn, lock) => (conn, lock),
            },
            sig = signals.recv() => return Err(Error::Interrupted(sig)),
        },
    };

    let ctx = Ctx {
        cfg,
        expected: &expected,
        started,
        lock: &lock,
        fence: lock.fence(cfg),
    };
    let result = run_locked(&mut conn, &ctx, &job, settings, &mut signals).await;
    let result = end_lock(conn, lock, cfg, result).await;
    notify(settings, &version, started, &result).await;
    let ran = result?;
    let message = ran
        .partial
        .unwrap_or_else(|| format!("schema version {version} ready ({} applied)", ran.applied));
    Ok(done(message, ran.applied))
}

/// The digest file's fast path already asked for exactly this marker when the file agrees
/// with the migrations: no need to ask again before taking the lock. When it does not
/// agree, say so: the file is stale.
fn digest_agrees(recorded: Option<&digest::Summary>, job: &Job, expected: &Expected<'_>) -> bool {
    let agrees = recorded.is_some_and(|s| {
        Some(s.digest.as_str()) == expected.digest
            && Some((s.version, s.count)) == expected.history
            && s.version.to_string() == expected.version
    });
    if let (Some(recorded), Job::Sql(source)) = (recorded, job)
        && !agrees
    {
        tracing::warn!(
            "{} records digest {}, but the migrations hash to {}: it was edited, or a \
             migration was changed without changing its size or time. Ignored; run \
             `schemagate digest --source {}` again",
            source.dir.join(digest::FILE).display(),
            recorded.digest,
            expected.digest.unwrap_or_default(),
            source.dir.display()
        );
    }
    agrees
}

/// The work itself, with the lock held: the SQL migrations, or the external migrator.
async fn run_locked(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    job: &Job,
    settings: &MigrateConfig,
    signals: &mut Signals,
) -> Result<Ran> {
    match job {
        Job::Sql(source) => apply_sql(conn, ctx, source, settings, signals).await,
        Job::External {
            command, foreign, ..
        } => {
            external::run_external(
                conn,
                ctx,
                command,
                foreign.as_ref(),
                (settings.grace, (settings.phase, settings.wait_for_drain)),
                signals,
            )
            .await
        }
    }
}

/// Release the lock and close its connection, unless the session that held it is gone
/// (killed, or the server went away) or a transaction may still be rolling back: then the
/// lock is left to end with that session.
async fn end_lock(mut conn: Conn, lock: Lock, cfg: &Config, result: Result<Ran>) -> Result<Ran> {
    match result {
        Err(e @ (Error::Interrupted(_) | Error::LockLost(_))) => {
            lock.abandon();
            Err(e)
        }
        Ok(ran) if ran.session_ended => {
            lock.abandon();
            Ok(ran)
        }
        other => {
            let release = lock.release(&mut conn, cfg).await;
            conn.close().await;
            super::released(release);
            other
        }
    }
}

/// `--notify-url`: the run's outcome, when it wrote a marker (a run that found the work
/// done by another has nothing to announce).
async fn notify(settings: &MigrateConfig, version: &str, started: Instant, result: &Result<Ran>) {
    let (status, applied, error, wrote) = match result {
        Ok(ran) => ("succeeded", ran.applied, None, ran.wrote_marker),
        Err(e) => ("failed", 0, Some(redact(&format!("{e:#}"))), true),
    };
    if !wrote {
        return;
    }
    let event = http::Event {
        event: "schemagate.migrate",
        version,
        status,
        applied,
        duration_ms: started.elapsed().as_millis(),
        runner: &settings.db.runner,
        error,
    };
    http::notify(&settings.notify_urls, &event).await;
}

async fn connect_and_lock(
    cfg: &Config,
    settings: &MigrateConfig,
    job: &Job,
    expected: &Expected<'_>,
    conn: Option<(Conn, bool)>,
) -> Result<Before> {
    if settings.dry_run {
        let mut conn = db::connect(cfg).await?;
        let result = dry_run(&mut conn, cfg, job, expected).await;
        conn.close().await;
        return result.map(Before::Done);
    }
    match conn {
        Some((conn, checked)) => super::lock_on(conn, cfg, Some(expected), checked).await,
        None => super::connect_and_lock(cfg, Some(expected)).await,
    }
}

/// A run that ends with `version` in place, `applied` of its migrations by this run.
fn ready(version: String, applied: usize, message: String) -> Outcome {
    Outcome {
        version: Some(version),
        applied: Some(applied),
        message,
        exec: None,
    }
}

async fn dry_run(
    conn: &mut Conn,
    cfg: &Config,
    job: &Job,
    expected: &Expected<'_>,
) -> Result<String> {
    match job {
        Job::Sql(source) => {
            let plan = plan(conn, &cfg.migrations_table, source).await?;
            print_plan(source, &plan.pending);
            Ok(format!("dry run: {} pending", plan.pending.len()))
        }
        Job::External { command, .. } => {
            if lock::is_done(conn, cfg, expected).await? {
                outln!(
                    "nothing to run: schema version {} is already recorded",
                    expected.version
                );
            } else {
                outln!(
                    "would run under the lock: {}\nthen record schema version {}",
                    redact(&command.join(" ")),
                    expected.version
                );
            }
            Ok("dry run".into())
        }
    }
}

/// The pending migrations, after checking that what is applied matches the source.
pub(super) async fn plan<'s>(
    conn: &mut Conn,
    table: &MigrationsTable,
    source: &'s Source,
) -> Result<Plan<'s>> {
    let (applied, dirty) = conn.applied(table).await?;
    source.plan(&applied, dirty, table)
}

fn print_plan(source: &Source, pending: &[&Entry]) {
    if pending.is_empty() {
        outln!(
            "nothing to apply: the database has every migration in {}",
            source.dir.display()
        );
        return;
    }
    outln!(
        "would apply {} migration(s) from {}:",
        pending.len(),
        source.dir.display()
    );
    for m in pending {
        let tx = if m.no_tx { "  (no transaction)" } else { "" };
        outln!("  {} {}{tx}", m.version, m.description);
    }
}
