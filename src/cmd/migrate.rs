//! `schemagate migrate`: the fast path, the lock, then either the pending SQL migrations on
//! the lock-holding connection or an external migrator kept under the lock, and the marker.

use std::time::{Duration, Instant};

use super::{Before, Outcome};
use crate::config::{Config, MigrateConfig, MigrationsTable, Work};
use crate::db::{self, ApplyOptions, Conn, NewMarker, Status};
use crate::digest;
use crate::error::{Error, Result};
use crate::formats::{self, Foreign, Format};
use crate::http;
use crate::lock::{self, Expected, Lock};
use crate::redact::redact;
use crate::signals::{self, Signals};
use crate::source::{Entry, Plan, Source};

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

/// How a run under the lock ended, for the marker and the webhook.
#[derive(Default)]
pub(super) struct Ran {
    pub(super) applied: usize,
    /// Whether this run wrote a marker (and so has something to notify).
    pub(super) wrote_marker: bool,
    /// The lock's session was ended from a side connection (after a signal): there is
    /// nothing left to release.
    pub(super) session_ended: bool,
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
    Ok(done(
        format!("schema version {version} ready ({} applied)", ran.applied),
        ran.applied,
    ))
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
            super::supervise::run_external(
                conn,
                ctx,
                command,
                foreign.as_ref(),
                settings.grace,
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

/// Where waiting on a trusted digest file's claim ended.
enum Claimed {
    /// Another run's marker for the claim landed.
    Done(Outcome),
    Held(Conn, Lock),
}

/// Take the lock, or leave at another run's marker for what the digest file claims (the
/// fast path already asked for it on `conn`).
async fn lock_on_claim(
    conn: Conn,
    cfg: &Config,
    summary: &digest::Summary,
    signals: &mut Signals,
) -> Result<Claimed> {
    let version = summary.version.to_string();
    let claim = claimed(summary, &version);
    let before = tokio::select! {
        r = super::lock_on(conn, cfg, Some(&claim), true) => r?,
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    Ok(match before {
        Before::Done(message) => Claimed::Done(ready(version, 0, message)),
        Before::Locked(conn, lock) => Claimed::Held(conn, lock),
    })
}

/// What a trusted digest file claims (`version` is its version, as text), as the marker
/// for it would record it.
fn claimed<'a>(summary: &'a digest::Summary, version: &'a str) -> Expected<'a> {
    Expected {
        version,
        digest: Some(&summary.digest),
        history: Some((summary.version, summary.count)),
        versions: None,
        foreign: None,
    }
}

/// What the digest file's fast path came to.
enum Early {
    /// The marker for the digest file's version and digest is there: nothing to do.
    Done(String, String),
    /// Not done (or the digest file is stale): the connection, for the full path, and
    /// what the file says when it was trusted.
    Open(Conn, Option<digest::Summary>),
    /// No source, a dry run, or no digest file.
    NotTried,
}

/// With `DIR/.schemagate-digest` (`digest.rs`): ask the marker with what the file claims
/// while a blocking thread checks the directory against it, and believe the answer only
/// once that check has passed. The per-file work (a directory entry and a `statx` each)
/// runs beside the connection's start-up and the query, off the path every replica waits
/// on; no migration is read.
async fn digest_fast_path(cfg: &Config, settings: &MigrateConfig) -> Result<Early> {
    let Work::Sql { dir, .. } = &settings.work else {
        return Ok(Early::NotTried);
    };
    let dir = dir.clone();
    if settings.dry_run {
        return Ok(Early::NotTried);
    }
    // Anything that changes how the source or its history is read (--ignore-missing, or
    // what `digest::may_stand_for` refuses) takes the full read.
    if settings.ignore_missing || !digest::may_stand_for(&dir)? {
        return Ok(Early::NotTried);
    }
    let Some(claim) = digest::read(&dir)? else {
        return Ok(Early::NotTried);
    };
    let summary = claim.summary.clone();
    let checked = tokio::task::spawn_blocking(move || match claim.check(&dir) {
        Ok(()) => true,
        Err(why) => {
            digest::ignore(&dir, &why);
            false
        }
    });
    let mut conn = db::connect(cfg).await?;
    let version = summary.version.to_string();
    let done = lock::is_done(&mut conn, cfg, &claimed(&summary, &version)).await?;
    if !checked.await.unwrap_or(false) {
        // Stale: what the marker said about the file's claim counts for nothing.
        return Ok(Early::Open(conn, None));
    }
    if !done {
        return Ok(Early::Open(conn, Some(summary)));
    }
    tracing::info!("schema version {version} is already applied; nothing to do");
    conn.close().await;
    let message = format!("schema version {version} already applied");
    Ok(Early::Done(version, message))
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

/// What every run under the lock needs.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a Config,
    pub(super) expected: &'a Expected<'a>,
    pub(super) started: Instant,
    pub(super) lock: &'a Lock,
    /// With a lease: the fence every schema change and marker write runs first.
    pub(super) fence: Option<db::Fence>,
}

impl Ctx<'_> {
    pub(super) fn marker<'m>(
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

    /// Write a `failed` marker from a side connection: fenced, and not after a
    /// `succeeded` one for the version (see `Conn::insert_marker_unless_done`).
    pub(super) async fn record_failure_from_side(
        &self,
        side: &mut Conn,
        marker: &NewMarker<'_>,
    ) -> Result<()> {
        side.insert_marker_unless_done(
            &self.cfg.table,
            marker,
            self.fence.as_ref(),
            self.lock.engine(),
        )
        .await
    }

    /// Write a marker on `conn`, fenced by the lease when we hold one.
    pub(super) async fn record(&self, conn: &mut Conn, marker: &NewMarker<'_>) -> Result<()> {
        conn.insert_marker(
            &self.cfg.table,
            marker,
            self.fence.as_ref(),
            self.lock.engine(),
        )
        .await
    }
}

/// Tables first, then the check again: another run may have finished between our fast
/// path and taking the lock. `true` when there is nothing left to do.
pub(super) async fn prepare_under_lock(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    sqlx_table: bool,
) -> Result<bool> {
    let migrations = sqlx_table.then_some(&ctx.cfg.migrations_table);
    conn.ensure_tables(&ctx.cfg.table, migrations).await?;
    if lock::is_done(conn, ctx.cfg, ctx.expected).await? {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            ctx.expected.version
        );
        return Ok(true);
    }
    Ok(false)
}

/// `prepare_under_lock` for a SQL source, with what the migrations table holds read in the
/// same round trip where the backend allows (PostgreSQL): `None` when there is nothing
/// left to do.
async fn prepare_sql_under_lock(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
) -> Result<Option<(Vec<sqlx::migrate::AppliedMigration>, Option<i64>)>> {
    let migrations = &ctx.cfg.migrations_table;
    let Some((decisive, applied)) = conn
        .ensure_tables_and_read(
            &ctx.cfg.table,
            migrations,
            ctx.expected.version,
            ctx.expected.upto(),
        )
        .await?
    else {
        if prepare_under_lock(conn, ctx, true).await? {
            return Ok(None);
        }
        return conn.applied(migrations).await.map(Some);
    };
    // A SQL source has no other migrator's table to consult (`Expected::foreign`).
    if crate::marker::marked(&decisive, ctx.expected) {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            ctx.expected.version
        );
        return Ok(None);
    }
    Ok(Some(applied))
}

/// What `apply_pending` has got to, readable after it is cancelled.
#[derive(Default)]
struct Progress {
    applied: usize,
    current: Option<String>,
    /// The versions of the group in flight.
    group: Vec<i64>,
}

async fn apply_sql(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    settings: &MigrateConfig,
    signals: &mut Signals,
) -> Result<Ran> {
    // With a lease, the session may be a pooler's: there is nothing of ours to end.
    let session = match ctx.lock.session() {
        _ if ctx.lock.is_lease() => None,
        Some(known) => Some(known),
        None => Some(conn.session_id().await?),
    };
    let opts = ApplyOptions {
        lock_timeout: settings.timeouts.lock_timeout,
        statement_timeout: settings.timeouts.statement_timeout,
        fence: ctx.fence.clone(),
    };
    let mut progress = Progress::default();
    tokio::select! {
        r = apply_pending(conn, ctx, source, settings, &opts, &mut progress) => r,
        sig = signals.recv() => {
            signals::stop_local_statements();
            interrupted(ctx, &progress, sig, session).await
        }
    }
}

/// A signal arrived while migrations (or the marker) were being applied. From a side
/// connection, while our session still holds the lock: cancel its statement and wait until
/// it settles, then read what really happened (the in-flight migration, or the marker,
/// may have committed before the cancel reached it), record that, and end our session.
///
/// When the `succeeded` marker committed, the run is done: exit 0 and no new marker.
async fn interrupted(
    ctx: &Ctx<'_>,
    progress: &Progress,
    sig: crate::signals::Signal,
    session: Option<i64>,
) -> Result<Ran> {
    let current = progress.current.as_deref().unwrap_or("the marker");
    let mut short_cfg = ctx.cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    short_cfg.connect_limit = "the limit of a connection that records a failure";
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        let settled = match session {
            Some(id) => side.cancel_and_settle(id, Duration::from_secs(5)).await?,
            None => false,
        };
        if lock::is_done(&mut side, ctx.cfg, ctx.expected).await? {
            if let Some(id) = session {
                side.kill_session(id).await?;
            }
            side.close().await;
            return Ok(None);
        }
        let committed = committed_in_flight(&mut side, ctx, progress).await?;
        let detail = interruption_detail(sig, current, committed, settled);
        tracing::warn!("{detail}");
        let applied_count = progress.applied + committed;
        ctx.record_failure_from_side(
            &mut side,
            &ctx.marker(Status::Failed, applied_count, Some(&detail)),
        )
        .await?;
        if let Some(id) = session {
            side.kill_session(id).await?;
        }
        side.close().await;
        Ok::<_, Error>(Some(()))
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(None)) => {
            tracing::info!(
                "{sig} arrived after the marker for schema version {} committed: the run is \
                 done",
                ctx.expected.version
            );
            return Ok(Ran {
                applied: progress.applied,
                session_ended: true,
                ..Ran::default()
            });
        }
        Ok(Ok(Some(()))) => {}
        Ok(Err(e)) => tracing::warn!("could not record the interruption: {e:#}"),
        Err(_) => tracing::warn!("could not record the interruption in time"),
    }
    Err(Error::Interrupted(sig))
}

/// How many of the group in flight committed before the cancel reached it (read from a
/// side connection once the interrupted statement settled).
async fn committed_in_flight(side: &mut Conn, ctx: &Ctx<'_>, progress: &Progress) -> Result<usize> {
    let (applied, dirty) = side.applied(&ctx.cfg.migrations_table).await?;
    Ok(progress
        .group
        .iter()
        .filter(|v| dirty != Some(**v) && applied.iter().any(|a| a.version == **v))
        .count())
}

/// The `failed` marker's detail for a run interrupted while applying `current`.
fn interruption_detail(
    sig: crate::signals::Signal,
    current: &str,
    committed: usize,
    settled: bool,
) -> String {
    match (committed, settled) {
        (0, true) => format!("interrupted by {sig} while applying {current}; it did not commit"),
        (0, false) => format!("interrupted by {sig} while applying {current}"),
        (n, _) => format!(
            "interrupted by {sig} after applying {current}: {n} migration(s) of it committed \
             before the signal took effect"
        ),
    }
}

/// Pending migrations in the groups applied together: each alone, or with
/// --single-transaction every run of transactional ones in one group.
fn batches<'m>(pending: &[&'m Entry], single_transaction: bool) -> Vec<Vec<&'m Entry>> {
    let mut out: Vec<Vec<&Entry>> = Vec::new();
    for m in pending {
        match out.last_mut() {
            Some(group) if single_transaction && !m.no_tx && !group[0].no_tx => group.push(m),
            _ => out.push(vec![m]),
        }
    }
    out
}

fn label(group: &[&Entry]) -> String {
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
    settings: &MigrateConfig,
    opts: &ApplyOptions,
    progress: &mut Progress,
) -> Result<Ran> {
    let Some((applied, dirty)) = prepare_sql_under_lock(conn, ctx).await? else {
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
            ..Ran::default()
        });
    };
    let plan = source.plan(&applied, dirty, &ctx.cfg.migrations_table)?;
    if let Some(message) = plan.ahead_message(source) {
        // An older release against a newer schema (an image rolled back): not drift, and
        // nothing to record: the newer release's marker stands.
        tracing::info!("{message}");
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
            ..Ran::default()
        });
    }
    super::refuse_transaction_control(ctx.cfg, source, plan.pending.iter().copied())?;
    for group in batches(&plan.pending, settings.single_transaction) {
        if ctx.lock.lease_lost() {
            return Err(Error::LockLost(format!(
                "the migration lease lapsed before {}; stopped (applied {})",
                label(&group),
                progress.applied
            )));
        }
        let label = label(&group);
        progress.current = Some(label.clone());
        progress.group = group.iter().map(|m| m.version).collect();
        let no_tx = group[0].no_tx;
        tracing::info!(
            "applying {label}{}",
            if no_tx { " without a transaction" } else { "" }
        );
        let t = Instant::now();
        let run = Group {
            source,
            migrations: &group,
            label: &label,
        };
        apply_group(conn, ctx, &run, settings, opts, progress.applied).await?;
        progress.applied += group.len();
        progress.group.clear();
        tracing::info!("applied {label} in {:.1?}", t.elapsed());
    }
    progress.current = None;
    record_success(conn, ctx, progress.applied).await?;
    tracing::info!(
        "schema version {} ready: {} applied in {:.1?}",
        ctx.expected.version,
        progress.applied,
        ctx.started.elapsed()
    );
    Ok(Ran {
        applied: progress.applied,
        wrote_marker: true,
        ..Ran::default()
    })
}

/// Write the `succeeded` marker. When the connection dies with its commit in flight, a
/// side connection reads whether it landed; only when it did not is this a failure.
async fn record_success(conn: &mut Conn, ctx: &Ctx<'_>, applied: usize) -> Result<()> {
    let marker = ctx.marker(Status::Succeeded, applied, None);
    if let Err(e) = ctx.record(conn, &marker).await {
        if matches!(e, Error::LockLost(_)) {
            return Err(e);
        }
        // The connection may have died with the commit in flight: see what landed.
        let detail = format!("every migration applied, but {e:#}");
        if record_from_side(ctx, applied, &detail, None).await {
            return Err(e);
        }
        tracing::info!("the marker committed before the connection was lost");
    }
    Ok(())
}

/// A group of migrations applied together, and the source that reads their SQL.
struct Group<'a> {
    source: &'a Source,
    migrations: &'a [&'a Entry],
    label: &'a str,
}

/// Apply one group (a migration, or with --single-transaction several), retrying a lock
/// or statement timeout with backoff up to --ddl-retries. A failure is recorded in a
/// `failed` marker (from a fresh connection if ours is gone), except when the lease was
/// taken over: then another run's marker stands. Each migration's SQL is read as it is
/// applied, and let go after.
async fn apply_group(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    group: &Group<'_>,
    settings: &MigrateConfig,
    opts: &ApplyOptions,
    applied: usize,
) -> Result<()> {
    let label = group.label;
    let no_tx = group.migrations[0].no_tx;
    let mut attempt = 0;
    loop {
        let sql = group.migrations.iter().map(|m| group.source.migration(m));
        let e = match conn.apply(&ctx.cfg.migrations_table, sql, opts).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Never again once part of it took effect (a `-- no-transaction` file recorded
        // dirty): its first statements would run twice.
        if e.retryable && !e.dirty && !e.took_effect && attempt < settings.timeouts.retries {
            attempt += 1;
            let pause = Duration::from_millis(250) * 2u32.pow(attempt.min(6));
            tracing::warn!(
                "migration {label} timed out ({}); rolled back, retry {attempt}/{} in {pause:?}",
                e.message,
                settings.timeouts.retries
            );
            tokio::time::sleep(pause).await;
            continue;
        }
        if e.lease_lost {
            // Another run owns the lease now, and any marker we wrote could contradict the
            // new holder's. A migration without a transaction may have run in part: its
            // message says how far.
            return Err(Error::LockLost(if e.took_effect {
                format!(
                    "migration {label}: {}; stopped (applied {applied})",
                    e.message
                )
            } else {
                format!(
                    "the migration lease was taken over by another run before {label}; \
                     stopped without running it (applied {applied})"
                )
            }));
        }
        return Err(record_failed(conn, ctx, &e, label, attempt, no_tx, applied).await);
    }
}

/// A migration failed for good: record the `failed` marker (from a fresh connection when
/// the lock's is gone, so waiters fail fast) and return the run's error. Logged once, by
/// main, with the exit code it leads to.
async fn record_failed(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    e: &db::ApplyError,
    label: &str,
    attempt: u32,
    no_tx: bool,
    applied: usize,
) -> Error {
    let tries = if attempt > 0 {
        format!(" after {} tries", attempt + 1)
    } else {
        String::new()
    };
    let detail = format!("migration {label} failed{tries}: {}", e.message);
    let hint = if e.dirty {
        " It ran without a transaction and part of it took effect: it is recorded as dirty, \
         so the next run stops and says so instead of running it again."
    } else if e.took_effect {
        " It ran without a transaction and what is said above took effect, but it is not \
         recorded as dirty: check the database before it runs again."
    } else if no_tx {
        " It ran without a transaction; nothing of it took effect in this run, so the next \
         run tries it again."
    } else {
        ""
    };
    // A run that took over an expired lease cannot know what its predecessor, paused
    // rather than dead, still ran: a statement it had sent before it stopped.
    let predecessor = match ctx.lock.took_over_from() {
        Some(previous) if no_tx => format!(
            " This run took over the expired lease of {previous}: a statement that run had \
             already sent may have taken effect too."
        ),
        _ => String::new(),
    };
    let marker = ctx.marker(Status::Failed, applied, Some(&detail));
    if let Err(m) = ctx.record(conn, &marker).await {
        tracing::warn!("{m:#}; recording the failure from another connection");
        if !matches!(m, Error::LockLost(_)) {
            record_from_side(ctx, applied, &detail, None).await;
        }
    }
    let message = format!("{detail}{hint}{predecessor}");
    if e.config {
        Error::Config(message)
    } else {
        Error::Failed(message)
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

/// Write a `failed` marker from a fresh connection (the lock connection is busy or gone),
/// unless the expected version is recorded as done (by us, with an acknowledgement lost in
/// transit, or by a run that took the lock since), then end the session that held the lock,
/// if given. Best effort: the database may be the reason we are stopping. Returns false
/// when the version turned out to be done.
pub(super) async fn record_from_side(
    ctx: &Ctx<'_>,
    applied: usize,
    detail: &str,
    end_session: Option<i64>,
) -> bool {
    let mut short_cfg = ctx.cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    short_cfg.connect_limit = "the limit of a connection that records a failure";
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        let done = lock::is_done(&mut side, ctx.cfg, ctx.expected).await?;
        if !done {
            ctx.record_failure_from_side(
                &mut side,
                &ctx.marker(Status::Failed, applied, Some(detail)),
            )
            .await?;
        }
        if let Some(session) = end_session {
            side.kill_session(session).await?;
        }
        side.close().await;
        Ok::<_, Error>(!done)
    };
    match tokio::time::timeout(Duration::from_secs(8), attempt).await {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(e)) => {
            tracing::warn!("could not record the failure: {e:#}");
            true
        }
        Err(_) => {
            tracing::warn!("could not record the failure in time");
            true
        }
    }
}
