//! `schemagate migrate`: the fast path, the lock, then either the pending SQL migrations on
//! the lock-holding connection or an external migrator kept under the lock, and the marker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::migrate::Migration;

use super::{Before, Outcome};
use crate::child;
use crate::cli::MigrateArgs;
use crate::config::{Config, redact};
use crate::db::{self, ApplyOptions, Conn, MIGRATIONS_TABLE, NewMarker, Status};
use crate::error::{Error, Result};
use crate::http;
use crate::lock::{self, Expected, Lock};
use crate::signals::Signals;
use crate::source::{Source, hex};

/// What this run applies.
enum Job {
    Sql(Source),
    External {
        version: String,
        command: Vec<String>,
    },
}

impl Job {
    fn from_args(args: &MigrateArgs) -> Result<Job> {
        match (&args.source, args.command.is_empty()) {
            (Some(dir), true) => Ok(Job::Sql(Source::load(dir)?)),
            (None, false) => {
                let version = args.version.clone().unwrap_or_default();
                if version.trim().is_empty() {
                    return Err(Error::Config(
                        "--version must not be empty with -- CMD".into(),
                    ));
                }
                // Not found is a usage error, before we connect or take the lock.
                child::resolve(&args.command[0])?;
                Ok(Job::External {
                    version,
                    command: args.command.clone(),
                })
            }
            (Some(_), false) => Err(Error::Config(
                "give --source DIR or -- CMD, not both".into(),
            )),
            (None, true) => Err(Error::Config(
                "give --source DIR, or --version V -- CMD".into(),
            )),
        }
    }

    fn expected(&self) -> (String, Option<String>) {
        match self {
            Job::Sql(source) => (source.version(), Some(source.digest())),
            Job::External { version, .. } => (version.clone(), None),
        }
    }
}

/// How a run under the lock ended, for the marker and the webhook.
struct Ran {
    applied: usize,
    /// Whether this run wrote a marker (and so has something to notify).
    wrote_marker: bool,
}

pub async fn run(cfg: &Config, args: &MigrateArgs, mut signals: Signals) -> Result<Outcome> {
    let started = Instant::now();
    // Read the source and check the command before touching the database: bad input is a
    // usage error.
    let job = Job::from_args(args)?;
    if args.version.is_some() && matches!(job, Job::Sql(_)) {
        return Err(Error::Config(
            "--version goes with an external migrator (-- CMD); a SQL source's version is its newest migration".into(),
        ));
    }
    http::validate(&args.notify_urls, "--notify-url")?;
    lock::validate(cfg, &args.lock)?;
    let postgres_only = [
        (args.ddl_lock_timeout.is_some(), "--ddl-lock-timeout"),
        (args.statement_timeout.is_some(), "--statement-timeout"),
        (args.single_transaction, "--single-transaction"),
    ];
    if let Some((_, flag)) = postgres_only.iter().find(|(set, _)| *set)
        && cfg.backend != crate::config::Backend::Postgres
    {
        return Err(Error::Config(format!(
            "{flag} is supported on PostgreSQL only"
        )));
    }
    let (version, digest) = job.expected();
    let expected = Expected {
        version: &version,
        digest: digest.as_deref(),
    };
    let done = |message: String, applied| Outcome {
        version: Some(version.clone()),
        applied: Some(applied),
        message,
        exec: None,
    };

    // Until we hold the lock nothing is ours to record: a signal just ends the run.
    let (mut conn, lock) = tokio::select! {
        r = connect_and_lock(cfg, args, &job, &expected) => match r? {
            Before::Done(message) => return Ok(done(message, 0)),
            Before::Locked(conn, lock) => (conn, lock),
        },
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };

    let ctx = Ctx {
        cfg,
        expected: &expected,
        started,
        lock: &lock,
    };
    let result = match &job {
        Job::Sql(source) => apply_sql(&mut conn, &ctx, source, args, &mut signals).await,
        Job::External { command, .. } => {
            run_external(&mut conn, &ctx, command, args.grace, &mut signals).await
        }
    };
    let result = match result {
        // The session that held the lock is gone (killed, or the server went away), or a
        // transaction may still be rolling back: leave the lock to end with it.
        Err(e @ (Error::Interrupted(_) | Error::LockLost(_))) => {
            lock.abandon();
            Err(e)
        }
        other => {
            let release = lock.release(&mut conn, cfg).await;
            conn.close().await;
            other.and_then(|ran| release.map(|()| ran))
        }
    };
    let (status, applied, error, wrote) = match &result {
        Ok(ran) => ("succeeded", ran.applied, None, ran.wrote_marker),
        Err(e) => ("failed", 0, Some(redact(&e.to_string())), true),
    };
    if wrote {
        let event = http::Event {
            event: "schemagate.migrate",
            version: &version,
            status,
            applied,
            duration_ms: started.elapsed().as_millis(),
            runner: &cfg.runner,
            error,
        };
        http::notify(&args.notify_urls, &event).await;
    }
    let ran = result?;
    Ok(done(
        format!("schema version {version} ready ({} applied)", ran.applied),
        ran.applied,
    ))
}

async fn connect_and_lock(
    cfg: &Config,
    args: &MigrateArgs,
    job: &Job,
    expected: &Expected<'_>,
) -> Result<Before> {
    if args.dry_run {
        let mut conn = db::connect(cfg).await?;
        let result = dry_run(&mut conn, cfg, job, expected).await;
        conn.close().await;
        return result.map(Before::Done);
    }
    super::connect_and_lock(cfg, &args.lock, Some(expected)).await
}

async fn dry_run(
    conn: &mut Conn,
    cfg: &Config,
    job: &Job,
    expected: &Expected<'_>,
) -> Result<String> {
    match job {
        Job::Sql(source) => {
            let plan = plan(conn, source).await?;
            print_plan(source, &plan);
            Ok(format!("dry run: {} pending", plan.len()))
        }
        Job::External { command, .. } => {
            if lock::is_done(conn, cfg, expected).await? {
                println!(
                    "nothing to run: schema version {} is already recorded",
                    expected.version
                );
            } else {
                println!(
                    "would run under the lock: {}\nthen record schema version {}",
                    redact(&command.join(" ")),
                    expected.version
                );
            }
            Ok("dry run".into())
        }
    }
}

/// What every run under the lock needs.
struct Ctx<'a> {
    cfg: &'a Config,
    expected: &'a Expected<'a>,
    started: Instant,
    lock: &'a Lock,
}

impl Ctx<'_> {
    fn marker<'m>(
        &'m self,
        status: Status,
        applied: usize,
        detail: Option<&'m str>,
    ) -> NewMarker<'m> {
        NewMarker {
            version: self.expected.version,
            digest: self.expected.digest,
            status,
            action: "migrate",
            elapsed: self.started.elapsed(),
            applied: applied as i64,
            runner: &self.cfg.runner,
            detail,
        }
    }
}

/// Tables first, then the check again: another run may have finished between our fast
/// path and taking the lock. `true` when there is nothing left to do.
async fn prepare_under_lock(conn: &mut Conn, ctx: &Ctx<'_>, sqlx_table: bool) -> Result<bool> {
    if sqlx_table {
        conn.ensure_migrations_table().await?;
    }
    conn.ensure_marker_table(&ctx.cfg.table).await?;
    if lock::is_done(conn, ctx.cfg, ctx.expected).await? {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            ctx.expected.version
        );
        return Ok(true);
    }
    Ok(false)
}

/// What `apply_pending` has got to, readable after it is cancelled.
#[derive(Default)]
struct Progress {
    applied: usize,
    current: Option<String>,
}

async fn apply_sql(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    args: &MigrateArgs,
    signals: &mut Signals,
) -> Result<Ran> {
    // With a lease, the session may be a pooler's: there is nothing of ours to end.
    let session = if ctx.lock.is_lease() {
        None
    } else {
        Some(conn.session_id().await?)
    };
    let opts = ApplyOptions {
        lock_timeout: args.ddl_lock_timeout,
        statement_timeout: args.statement_timeout,
    };
    let mut progress = Progress::default();
    tokio::select! {
        r = apply_pending(conn, ctx, source, args, &opts, &mut progress) => r,
        sig = signals.recv() => {
            // Leave the dropped query to the server: record the failure from another
            // connection while our session still holds the lock, then end our session so
            // its transaction rolls back and the lock is freed for the next run.
            let detail = format!(
                "interrupted by {sig} while applying {}",
                progress.current.as_deref().unwrap_or("the marker")
            );
            tracing::warn!("{detail}; rolling back");
            db::interrupt_local();
            record_from_side(ctx, progress.applied, &detail, session).await;
            Err(Error::Interrupted(sig))
        }
    }
}

/// Pending migrations in the groups applied together: each alone, or with
/// --single-transaction every run of transactional ones in one group.
fn batches<'m>(pending: &[&'m Migration], single_transaction: bool) -> Vec<Vec<&'m Migration>> {
    let mut out: Vec<Vec<&Migration>> = Vec::new();
    for m in pending {
        match out.last_mut() {
            Some(group) if single_transaction && !m.no_tx && !group[0].no_tx => group.push(m),
            _ => out.push(vec![m]),
        }
    }
    out
}

fn label(group: &[&Migration]) -> String {
    match group {
        [m] => format!("{} ({})", m.version, m.description),
        [first, .., last] => format!(
            "{} migrations {}..{} in one transaction",
            group.len(),
            first.version,
            last.version
        ),
        [] => String::new(),
    }
}

async fn apply_pending(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    args: &MigrateArgs,
    opts: &ApplyOptions,
    progress: &mut Progress,
) -> Result<Ran> {
    if prepare_under_lock(conn, ctx, true).await? {
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
        });
    }
    let pending = plan(conn, source).await?;
    for group in batches(&pending, args.single_transaction) {
        if ctx.lock.lease_lost() {
            return Err(Error::LockLost(format!(
                "the migration lease lapsed before {}; stopped (applied {})",
                label(&group),
                progress.applied
            )));
        }
        let label = label(&group);
        progress.current = Some(label.clone());
        let no_tx = group[0].no_tx;
        tracing::info!(
            "applying {label}{}",
            if no_tx { " without a transaction" } else { "" }
        );
        let t = Instant::now();
        let mut attempt = 0;
        loop {
            match conn.apply(&group, opts).await {
                Ok(()) => break,
                Err(e) if e.retryable && attempt < args.ddl_retries => {
                    attempt += 1;
                    let pause = Duration::from_millis(250) * 2u32.pow(attempt.min(6));
                    tracing::warn!(
                        "migration {label} timed out ({}); rolled back, retry {attempt}/{} in {pause:?}",
                        e.message,
                        args.ddl_retries
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    let tries = if attempt > 0 {
                        format!(" after {} tries", attempt + 1)
                    } else {
                        String::new()
                    };
                    let detail = format!("migration {label} failed{tries}: {}", e.message);
                    let hint = if no_tx {
                        " It ran without a transaction: some of its statements may have taken effect; \
                         it is recorded as dirty, so the next run stops and says so instead of running it again."
                    } else {
                        ""
                    };
                    // Logged once, by main, with the exit code it leads to.
                    let marker = ctx.marker(Status::Failed, progress.applied, Some(&detail));
                    if let Err(m) = conn.insert_marker(&ctx.cfg.table, &marker).await {
                        // The database may be why it failed: report the migration's error.
                        tracing::warn!("{m}");
                    }
                    let message = format!("{detail}{hint}");
                    return Err(if e.config {
                        Error::Config(message)
                    } else {
                        Error::Failed(message)
                    });
                }
            }
        }
        progress.applied += group.len();
        tracing::info!("applied {label} in {:.1?}", t.elapsed());
    }
    progress.current = None;
    conn.insert_marker(
        &ctx.cfg.table,
        &ctx.marker(Status::Succeeded, progress.applied, None),
    )
    .await?;
    tracing::info!(
        "schema version {} ready: {} applied in {:.1?}",
        ctx.expected.version,
        progress.applied,
        ctx.started.elapsed()
    );
    Ok(Ran {
        applied: progress.applied,
        wrote_marker: true,
    })
}

/// How often the lock connection is checked while an external migrator runs.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

async fn run_external(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    command: &[String],
    grace: Duration,
    signals: &mut Signals,
) -> Result<Ran> {
    if prepare_under_lock(conn, ctx, false).await? {
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
        });
    }
    let env = [
        ("SCHEMAGATE_VERSION", ctx.expected.version.to_owned()),
        ("SCHEMAGATE_LOCK_KEY", ctx.cfg.lock.key.to_string()),
    ];
    let mut running = child::spawn(command, &env, ctx.cfg.json_logs)?;
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
                if let Err(e) = conn.insert_marker(&ctx.cfg.table, &ctx.marker(Status::Failed, 0, Some(&detail))).await {
                    tracing::warn!("could not record the interruption: {e}");
                }
                return Err(Error::Interrupted(sig));
            }
        }
    };
    if status.success() {
        conn.insert_marker(&ctx.cfg.table, &ctx.marker(Status::Succeeded, 0, None))
            .await?;
        tracing::info!(
            "{name} finished; schema version {} recorded in {:.1?}",
            ctx.expected.version,
            ctx.started.elapsed()
        );
        return Ok(Ran {
            applied: 0,
            wrote_marker: true,
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
    conn.insert_marker(
        &ctx.cfg.table,
        &ctx.marker(Status::Failed, 0, Some(&detail)),
    )
    .await?;
    Err(Error::Failed(format!(
        "{name} {}",
        child::describe_status(&status)
    )))
}

/// The pending migrations, after checking that what is applied matches the source.
pub(super) async fn plan<'s>(conn: &mut Conn, source: &'s Source) -> Result<Vec<&'s Migration>> {
    let (applied, dirty) = conn.applied().await?;
    if let Some(v) = dirty {
        return Err(Error::Drift(format!(
            "migration {v} is dirty: it failed part-way on a previous run (it ran without a \
             transaction, or its DDL committed implicitly) and some of its statements may have \
             taken effect. Repair by hand: either undo what it did and `DELETE FROM \
             {MIGRATIONS_TABLE} WHERE version = {v}` to run it again, or finish it and run \
             `schemagate stamp {v} --source DIR` to mark it done"
        )));
    }
    let by_version: HashMap<i64, &Migration> = source.ups.iter().map(|m| (m.version, m)).collect();
    for a in &applied {
        match by_version.get(&a.version) {
            None => {
                return Err(Error::Drift(format!(
                    "migration {} was applied to the database but is missing from {}",
                    a.version,
                    source.dir.display()
                )));
            }
            Some(m) if *m.checksum != *a.checksum => {
                return Err(Error::Drift(format!(
                    "migration {} ({}) was previously applied but has been modified: \
                     checksum {} in the database, {} on disk",
                    a.version,
                    m.description,
                    short(&a.checksum),
                    short(&m.checksum)
                )));
            }
            Some(_) => {}
        }
    }
    let applied: HashSet<i64> = applied.iter().map(|a| a.version).collect();
    Ok(source
        .ups
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect())
}

fn short(checksum: &[u8]) -> String {
    hex(&checksum[..checksum.len().min(6)])
}

fn print_plan(source: &Source, pending: &[&Migration]) {
    if pending.is_empty() {
        println!(
            "nothing to apply: the database has every migration in {}",
            source.dir.display()
        );
        return;
    }
    println!(
        "would apply {} migration(s) from {}:",
        pending.len(),
        source.dir.display()
    );
    for m in pending {
        let tx = if m.no_tx { "  (no transaction)" } else { "" };
        println!("  {} {}{tx}", m.version, m.description);
    }
}

/// Write a `failed` marker from a fresh connection (the lock connection is busy or gone),
/// then end the session that held the lock, if given. Best effort: the database may be the
/// reason we are stopping.
async fn record_from_side(ctx: &Ctx<'_>, applied: usize, detail: &str, end_session: Option<i64>) {
    let mut short_cfg = ctx.cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        side.insert_marker(
            &ctx.cfg.table,
            &ctx.marker(Status::Failed, applied, Some(detail)),
        )
        .await?;
        if let Some(session) = end_session {
            side.kill_session(session).await?;
        }
        side.close().await;
        Ok::<_, Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(8), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("could not record the failure: {e}"),
        Err(_) => tracing::warn!("could not record the failure in time"),
    }
}
