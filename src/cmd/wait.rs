//! `schemagate wait`: poll (or LISTEN) until the expected schema version is present.
//! Between polls no connection is held, so hundreds of waiting pods never take the slots
//! the migrator needs.

use std::time::{Duration, Instant};

use super::Outcome;
use super::{WaitConfig, WaitTarget};
use crate::redact::redact_http_url;
use crate::settings::{Backend, Config};
use sqlx::migrate::AppliedMigration;

use crate::db::{self, Conn, Decisive, Listener, Wake};
use crate::digest;
use crate::error::{Error, Result};
use crate::formats::{Foreign, history};
use crate::http;
use crate::source::Source;

/// What the database says about the expected version right now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Ready(String),
    /// The failure the marker records, and what is recorded newest (when read).
    RecordedFailed(String, Option<String>),
    NotYet(String),
}

struct Target {
    version: String,
    /// `--source DIR` of SQL migrations.
    source: Option<SqlSource>,
    /// `--source DIR --format F` for another migrator: its history table decides.
    foreign: Option<Foreign>,
    /// `--phase expand`: ready once every expand migration of the source is applied.
    expand_only: bool,
}

/// A SQL source, read only once its migrations are needed: while a trusted digest file
/// (`digest.rs`) stands for them, a check compares the marker with what the file says and
/// reads no migration. The rule that needs every migration's checksum (the database at or
/// ahead of this build) reads them, and from then on the files decide.
struct SqlSource {
    dir: std::path::PathBuf,
    claimed: Option<digest::Summary>,
    read: std::cell::OnceCell<Source>,
}

impl SqlSource {
    fn loaded(source: Source) -> SqlSource {
        SqlSource {
            dir: source.dir.clone(),
            claimed: None,
            read: source.into(),
        }
    }

    /// The digest and history (newest version, count) the marker must agree with.
    fn expected(&self) -> (String, (i64, usize)) {
        match (self.read.get(), &self.claimed) {
            (Some(source), _) => (source.digest(), source.history()),
            (None, Some(c)) => (c.digest.clone(), (c.version, c.count)),
            (None, None) => unreachable!("a source not read yet has a digest file for it"),
        }
    }

    /// The migrations, read the first time they are needed.
    fn migrations(&self) -> Result<&Source> {
        if let Some(source) = self.read.get() {
            return Ok(source);
        }
        let source = Source::load(&self.dir)?;
        if let Some(claimed) = &self.claimed
            && (claimed.digest != source.digest()
                || (claimed.version, claimed.count) != source.history())
        {
            tracing::warn!(
                "{} records digest {}, but the migrations hash to {}: it was edited, or a \
                 migration was changed without changing its size or time. From now on the \
                 migrations decide; run `schemagate digest --source {}` again",
                self.dir.join(digest::FILE).display(),
                claimed.digest,
                source.digest(),
                self.dir.display()
            );
        }
        Ok(self.read.get_or_init(|| source))
    }
}

impl Target {
    /// Read what `wait` waits for: a SQL source is read only when no trusted digest file
    /// stands for it (`SqlSource`).
    fn load(target: &WaitTarget) -> Result<Target> {
        Ok(match target {
            WaitTarget::Expect(v) => Target {
                version: v.clone(),
                source: None,
                foreign: None,
                expand_only: false,
            },
            WaitTarget::Sql(dir) => match claimed(dir)? {
                Some(summary) => Target {
                    version: summary.version.to_string(),
                    source: Some(SqlSource {
                        dir: dir.clone(),
                        claimed: Some(summary),
                        read: std::cell::OnceCell::new(),
                    }),
                    foreign: None,
                    expand_only: false,
                },
                None => {
                    let source = Source::load(dir)?;
                    Target {
                        version: source.version(),
                        source: Some(SqlSource::loaded(source)),
                        foreign: None,
                        expand_only: false,
                    }
                }
            },
            WaitTarget::Foreign(spec) => {
                let foreign = Foreign::load(spec)?;
                Target {
                    version: foreign.version(),
                    source: None,
                    foreign: Some(foreign),
                    expand_only: false,
                }
            }
        })
    }
}

pub async fn run(args: &WaitConfig) -> Result<Outcome> {
    let cfg = &args.db;
    let target = Target {
        expand_only: args.expand_only,
        ..Target::load(&args.target)?
    };
    let version = target.version.clone();
    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut last = Readiness::NotYet("not checked yet".into());
    // The loop keeps its own deadline (and always makes one check, even with --timeout 0);
    // this backstop only bounds a query that hangs on a connection that is already open.
    let backstop = args.timeout + cfg.connect_timeout.min(Duration::from_secs(10));
    let gate = tokio::time::timeout(backstop, wait_loop(cfg, args, &target, deadline, &mut last));
    let why = match gate.await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Timeout(format!(
                "schema version {version} not ready after {} (--timeout): {}",
                humantime::format_duration(args.timeout),
                match &last {
                    Readiness::NotYet(why) => why.as_str(),
                    _ => "unknown",
                }
            )));
        }
    };
    probe_http(args, deadline).await?;
    tracing::info!(
        "schema version {version} is ready ({why}) after {:.1?}",
        started.elapsed()
    );
    Ok(Outcome {
        version: Some(version),
        applied: None,
        message: why,
        exec: (!args.command.is_empty()).then(|| args.command.clone()),
    })
}

/// After the database gate: each `--http` URL must answer 2xx (once, with `--once`),
/// within what is left of --timeout.
async fn probe_http(args: &WaitConfig, deadline: Instant) -> Result<()> {
    if args.http.is_empty() {
        return Ok(());
    }
    let client =
        http::client(Duration::from_secs(5).min(args.interval.max(Duration::from_secs(1))))?;
    for url in &args.http {
        if args.once {
            if !http::answers_2xx(&client, url).await {
                return Err(Error::Failed(format!(
                    "the schema is ready, but {} is not",
                    redact_http_url(url)
                )));
            }
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            let probing = http::wait_ready(&client, url, jitter(args.interval));
            if tokio::time::timeout(left, probing).await.is_err() {
                return Err(Error::Timeout(format!(
                    "the schema is ready, but {} did not answer 2xx within {} (--timeout)",
                    redact_http_url(url),
                    humantime::format_duration(args.timeout)
                )));
            }
        }
    }
    Ok(())
}

/// The connect budget of one check: what is left of --timeout (at least a second, so
/// the first check is always made), never more than --connect-timeout.
fn check_config(cfg: &Config, deadline: Instant) -> Config {
    let left = deadline.saturating_duration_since(Instant::now());
    // To a tenth of a second, for the message that names it.
    let left = Duration::from_millis((left.as_millis() as u64).div_ceil(100) * 100);
    cfg.connect_within(left.max(Duration::from_secs(1)), "--timeout")
}

async fn wait_loop(
    cfg: &Config,
    args: &WaitConfig,
    target: &Target,
    deadline: Instant,
    last: &mut Readiness,
) -> Result<String> {
    let mut listener = listener(cfg, args, deadline).await?;
    let mut last_log: Option<Instant> = None;
    let mut crowded = 0;
    loop {
        // --listen checks on its one LISTEN connection; polling opens one per check and
        // holds nothing in between.
        let checked =
            match listener.as_mut() {
                Some(l) => check(&mut Via::Listener(l), cfg, target).await,
                None => check_once(&check_config(cfg, deadline), target).await.map(
                    |(state, few_slots)| {
                        crowded = if few_slots {
                            (crowded + 1).min(CROWDED_MAX)
                        } else {
                            crowded.saturating_sub(1)
                        };
                        state
                    },
                ),
            };
        let why = match verdict(checked, args, target)? {
            Verdict::Ready(why) => return Ok(why),
            Verdict::NotYet(why) => why,
        };
        *last = Readiness::NotYet(why.clone());
        if args.once {
            return Err(Error::Failed(format!(
                "schema version {} not ready: {why}",
                target.version
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(format!(
                "schema version {} not ready after {} (--timeout): {why}",
                target.version,
                humantime::format_duration(args.timeout),
            )));
        }
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::info!("waiting for schema version {}: {why}", target.version);
            last_log = Some(Instant::now());
        }
        pause(
            listener.as_mut(),
            crowded_pause(args.interval, crowded).min(left),
        )
        .await;
    }
}

/// With --listen, where LISTEN can be trusted: the LISTEN connection, opened before the
/// first check, so a marker committed in between still wakes us.
async fn listener(cfg: &Config, args: &WaitConfig, deadline: Instant) -> Result<Option<Listener>> {
    if !args.listen || !listen_works(cfg).await? {
        return Ok(None);
    }
    let bounded = check_config(cfg, deadline);
    match Listener::connect(&bounded).await {
        Ok(l) => Ok(Some(l)),
        Err(sqlx::Error::PoolTimedOut) => Err(Error::Timeout(format!(
            "cannot LISTEN on {} within {} ({})",
            cfg.display_url,
            humantime::format_duration(bounded.connect_timeout),
            bounded.connect_limit
        ))),
        // A hot standby refuses LISTEN, and a NOTIFY on the primary would never reach it:
        // the marker replicates, so polling sees it.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25006") => {
            tracing::warn!(
                "--listen: {} is a hot standby (read-only, in recovery), where LISTEN cannot \
                 run and the primary's NOTIFY never arrives: polling every --interval instead",
                cfg.display_url
            );
            Ok(None)
        }
        // Classified: a refused password or privilege is exit 2, as for polling.
        Err(e) => Err(db::db_err(
            &format!("cannot LISTEN on {}", cfg.display_url),
            e,
        )),
    }
}

/// What one check means for the wait, and why.
enum Verdict {
    Ready(String),
    NotYet(String),
}

/// What one check means for the wait; `Err` the end of the wait (a configuration error, a
/// recorded failure, or with --once anything that kept the check from looking).
fn verdict(checked: Result<Readiness>, args: &WaitConfig, target: &Target) -> Result<Verdict> {
    let state = match checked {
        Ok(state) => state,
        Err(e) if e.is_config() => return Err(e),
        // A single check reports why it could not look (unreachable: 124).
        Err(e) if args.once => return Err(e),
        // Unreachable, or an error retrying may cure (the message says which).
        Err(e) => Readiness::NotYet(format!("cannot check: {e:#}")),
    };
    Ok(match state {
        Readiness::Ready(why) => Verdict::Ready(why),
        Readiness::RecordedFailed(detail, _) if !args.ignore_failed => {
            return Err(Error::RecordedFailed(format!(
                "schema version {} is recorded as failed: {detail}",
                target.version
            )));
        }
        Readiness::RecordedFailed(detail, recorded) => Verdict::NotYet(format!(
            "recorded as failed ({detail}); waiting for a retry{}",
            recorded.map(|r| format!("; {r}")).unwrap_or_default()
        )),
        Readiness::NotYet(why) => Verdict::NotYet(why),
    })
}

/// Until the next check: a NOTIFY on the LISTEN connection (or its interval), else a
/// sleep. A lost LISTEN connection falls back to sleeping; the listener reconnects at its
/// next wait.
async fn pause(listener: Option<&mut Listener>, pause: Duration) {
    match listener {
        Some(l) => match l.wait(pause).await {
            Ok(Wake::Check) | Ok(Wake::Idle) => {}
            Err(e) => {
                tracing::warn!(
                    "LISTEN connection lost ({}); polling until it is back",
                    db::describe(&e)
                );
                tokio::time::sleep(pause).await;
            }
        },
        None => tokio::time::sleep(pause).await,
    }
}

/// Whether LISTEN can be trusted on this connection: a NOTIFY reaches only the server
/// session that LISTENs, and behind a transaction pooler that session is not ours between
/// statements (and CockroachDB and YugabyteDB have no LISTEN). The same probe as `--lock
/// auto` decides; when it fails, `wait` polls and says so.
async fn listen_works(cfg: &Config) -> Result<bool> {
    let mut conn = db::connect(cfg).await?;
    let choice = crate::lock::choose(&mut conn, cfg).await;
    conn.close().await;
    let choice = choice?;
    if choice.kind == "advisory" {
        return Ok(true);
    }
    tracing::warn!(
        "--listen needs a server session of its own, and this connection has none ({}): \
         polling every --interval instead",
        choice.reason
    );
    Ok(false)
}

/// Where a check reads from: a fresh connection, or the LISTEN connection.
enum Via<'a> {
    Conn(&'a mut Conn),
    Listener(&'a mut Listener),
}

impl Via<'_> {
    async fn newest_marker(
        &mut self,
        cfg: &Config,
        version: &str,
        upto: Option<i64>,
    ) -> Result<Decisive> {
        match self {
            Via::Conn(c) => {
                let upto = upto.map(db::Upto::Version);
                c.newest_marker(&cfg.table, &cfg.migrations_table, version, upto, true)
                    .await
            }
            Via::Listener(l) => {
                let r = l
                    .newest_marker(&cfg.table, &cfg.migrations_table, version, upto)
                    .await;
                let history_missing = matches!(r, Ok((_, true)));
                Ok(Decisive {
                    history_missing,
                    ..db::settle_newest(r.map(|(rows, _)| rows), &cfg.table, version)?
                })
            }
        }
    }

    async fn history_whereabouts(&mut self, cfg: &Config) -> db::Whereabouts {
        match self {
            Via::Conn(c) => c.history_whereabouts(&cfg.migrations_table).await,
            Via::Listener(l) => l.history_whereabouts(&cfg.migrations_table).await,
        }
    }

    async fn applied(&mut self, cfg: &Config) -> Result<(Vec<AppliedMigration>, Option<i64>)> {
        let table = &cfg.migrations_table;
        match self {
            Via::Conn(c) => c.applied(table).await,
            Via::Listener(l) => db::settle_applied(l.applied(table).await),
        }
    }
}

/// The server's connection slots a waiter leaves free for the migrator (its connection,
/// the probe's second one, the lease's heartbeat): fewer free after a check that found the
/// schema not ready, and the waiter polls less often (`crowded_pause`).
const HEADROOM: i64 = 3;

/// How many times in a row the pause may double while the server is crowded.
const CROWDED_MAX: u32 = 6;

/// The pause before the next poll (jittered): --interval, doubled for each check in a row
/// that found fewer than `HEADROOM` connection slots free, up to 15 s (or --interval, if
/// longer). Waiters hold no connection between polls, but each poll is a connection, and
/// a refused attempt holds a slot while it authenticates: hundreds of waiters polling at
/// --interval keep a crowded server's slots full, and the migrator would wait for one as
/// long as they poll. Stepping back before the slots run out leaves them to it.
fn crowded_pause(interval: Duration, crowded: u32) -> Duration {
    let cap = interval.max(Duration::from_secs(15));
    jitter(interval.saturating_mul(1 << crowded).min(cap))
}

/// One check on a connection of its own, closed afterwards; also whether the server had
/// fewer than `HEADROOM` connection slots free (asked only when not ready: a ready check
/// ends the wait).
async fn check_once(cfg: &Config, target: &Target) -> Result<(Readiness, bool)> {
    if cfg.backend == Backend::Sqlite {
        // Read-only: a missing file is not created, and `migrate` may yet create it.
        let options = db::sqlite_options(cfg)
            .map_err(|e| Error::Config(format!("invalid database URL: {}", db::describe(&e))))?;
        if !options.get_filename().exists() {
            return Ok((
                Readiness::NotYet(format!(
                    "the SQLite database file {} does not exist yet",
                    options.get_filename().display()
                )),
                false,
            ));
        }
    }
    let mut conn = db::connect(cfg).await?;
    let state = match &target.foreign {
        Some(f) => check_foreign(&mut conn, cfg, target, f).await,
        None => check(&mut Via::Conn(&mut conn), cfg, target).await,
    };
    let few_slots = matches!(state, Ok(Readiness::NotYet(_)))
        && conn.free_slots().await.is_some_and(|free| free < HEADROOM);
    conn.close().await;
    state.map(|state| (state, few_slots))
}

async fn check(via: &mut Via<'_>, cfg: &Config, target: &Target) -> Result<Readiness> {
    if let (true, Some(sql)) = (target.expand_only, &target.source) {
        return expand_ready(via, cfg, sql).await;
    }
    let (digest, history) = target.source.as_ref().map(SqlSource::expected).unzip();
    let Decisive {
        marker: decisive,
        newest_succeeded,
        newest,
        history_missing,
    } = via
        .newest_marker(cfg, &target.version, history.map(|(v, _)| v))
        .await?;
    // What every "not yet" says is there: an operator waiting for a version no run ever
    // recorded sees which one is.
    let recorded = match &newest {
        Some(r) => format!("the newest marker is for {r}"),
        None => "no marker has been recorded yet".to_owned(),
    };
    if history_missing
        && let Some(m) = &decisive
        && m.status == "succeeded"
        && (digest.is_none() || m.digest == digest)
    {
        // Migrate wrote the history beside this marker, but this connection cannot see
        // it: no poll will, until the configuration changes.
        return Err(Error::Config(
            history_not_visible(via, cfg, &target.version).await,
        ));
    }
    let (failed, why_not) = match decisive {
        Some(m) => match marker_says(m, target, digest.as_deref(), history, cfg) {
            Ok(ready) => return Ok(ready),
            Err(not_ready) => not_ready,
        },
        None => (
            None,
            format!("no marker for version {} yet", target.version),
        ),
    };
    if let Some(sql) = &target.source {
        // The database may be at or ahead of this build (an app rolled back to it must
        // still start): ready when every migration here is applied, unchanged.
        let source = sql.migrations()?;
        let (applied, dirty) = via.applied(cfg).await?;
        let all = source.applied_unchanged(&applied);
        if all && dirty.is_none() {
            return Ok(Readiness::Ready(
                "every migration in the source is applied".into(),
            ));
        }
    }
    if failed.is_none()
        && target.source.is_none()
        && let Ok(v) = target.version.parse::<i64>()
        && passed(via, cfg, newest_succeeded.as_deref(), v).await?
    {
        return Ok(Readiness::Ready(format!(
            "the database has passed version {v}: it is applied, and the newest succeeded \
             marker is for a version at or above it"
        )));
    }
    Ok(match failed {
        Some(detail) => Readiness::RecordedFailed(detail, Some(recorded)),
        None => Readiness::NotYet(format!("{why_not}; {recorded}")),
    })
}

/// Why a `succeeded` marker cannot count: the migrations table it must agree with is not
/// where this connection looks. Names where it looks, and where the table is.
async fn history_not_visible(via: &mut Via<'_>, cfg: &Config, version: &str) -> String {
    let table = cfg.migrations_table.qualified();
    let bare = table.rsplit('.').next().unwrap_or(table);
    let w = via.history_whereabouts(cfg).await;
    let mut why = format!(
        "the marker for version {version} says succeeded, but {table}, the migration history \
         it must agree with, is not visible to this connection"
    );
    if !w.scope.is_empty() {
        why.push_str(&format!(" ({} {})", w.scope, w.current));
    }
    let kind = if w.scope == "database" {
        "database"
    } else {
        "schema"
    };
    match w.found_in.as_slice() {
        [] => why.push_str(&format!(
            ": no {kind} holds a table named {bare}: was it dropped, or did migrate use \
             another --migrations-table?"
        )),
        found => {
            why.push_str(&format!(
                "; it exists in {kind} {}: let wait read the history migrate wrote: pass \
                 --migrations-table {}.{bare}",
                found.join(", "),
                found[0]
            ));
            if kind == "schema" {
                why.push_str(&format!(
                    ", or give wait migrate's search_path (?options=-csearch_path%3D{} in \
                     the URL)",
                    found[0]
                ));
            }
        }
    }
    why
}

/// What the decisive marker says: ready (`Ok`), or not, as (the failure it records, why
/// not). With a source, the marker must agree with the history it sits beside: a revert
/// made by another tool is not hidden behind an old `succeeded`.
fn marker_says(
    m: crate::marker::Newest,
    target: &Target,
    digest: Option<&str>,
    history: Option<(i64, usize)>,
    cfg: &Config,
) -> std::result::Result<Readiness, (Option<String>, String)> {
    let history_agrees = history.is_none_or(|(_, n)| m.applied_upto == n as i64 && m.dirty == 0);
    match m.status.as_str() {
        "succeeded" if (digest.is_none() || m.digest.as_deref() == digest) && history_agrees => {
            Ok(Readiness::Ready("marker succeeded".into()))
        }
        "succeeded" if !history_agrees => Err((
            None,
            format!(
                "the marker for version {} says succeeded, but {} records {} of this build's \
                 {} migrations as applied{}",
                target.version,
                cfg.migrations_table,
                m.applied_upto,
                history.map_or(0, |(_, n)| n),
                if m.dirty > 0 {
                    ", and one is dirty"
                } else {
                    ""
                }
            ),
        )),
        "succeeded" => Err((
            None,
            format!(
                "the marker for version {} has digest {}, this build's source has {}",
                target.version,
                m.digest.as_deref().unwrap_or("none"),
                digest.unwrap_or("none")
            ),
        )),
        _ => Err((
            Some(m.detail.unwrap_or_else(|| "no detail recorded".into())),
            String::new(),
        )),
    }
}

/// Another migrator's history: ready when it shows every migration of this image applied
/// (whoever applied them; a database ahead of the image is ready too). A `failed` marker for
/// this version ends the wait only when written after the history last changed. With
/// `--phase expand`, ready once no expand migration is pending (contracts may be).
async fn check_foreign(
    conn: &mut Conn,
    cfg: &Config,
    target: &Target,
    f: &Foreign,
) -> Result<Readiness> {
    let version = target.version.as_str();
    let h = history::read(conn, f).await?;
    let standing = f.standing(&h.rows);
    if standing.ready() {
        return Ok(Readiness::Ready(standing.describe(f)));
    }
    if target.expand_only {
        let pending = f.pending_items(&standing);
        // Reshape: a started migration's new schema is there; only `complete` is left.
        let started = match f.format {
            crate::formats::Format::Reshape => history::reshape_in_progress(conn).await?,
            _ => Vec::new(),
        };
        if pending
            .iter()
            .all(|i| i.phase == crate::phase::Phase::Contract || started.contains(&i.id))
        {
            let ids: Vec<&str> = pending.iter().map(|i| i.id.as_str()).collect();
            return Ok(Readiness::Ready(format!(
                "every expand migration is applied; contract migration(s) {} pending",
                ids.join(", ")
            )));
        }
    }
    if let Some(detail) = history::failed_since(conn, &cfg.table, version, &h).await? {
        return Ok(Readiness::RecordedFailed(detail, None));
    }
    Ok(Readiness::NotYet(standing.describe(f)))
}

/// `--expect V` for a SQL history, where the database has moved past V (migrated further,
/// or rolled back to a version at or above V): V is recorded as applied in the migrations
/// table, nothing is dirty, and the newest `succeeded` marker of any action
/// names an integer version at or above V. A rollback below V, or an interrupted one
/// (whose marker is `failed`), does not pass.
async fn passed(
    via: &mut Via<'_>,
    cfg: &Config,
    newest_succeeded: Option<&str>,
    v: i64,
) -> Result<bool> {
    if newest_succeeded
        .and_then(|n| n.parse::<i64>().ok())
        .is_none_or(|n| n < v)
    {
        return Ok(false);
    }
    let (applied, dirty) = via.applied(cfg).await?;
    Ok(dirty.is_none() && applied.iter().any(|a| a.version == v))
}

/// `d` scaled by a random factor in [0.8, 1.2), so that many waiters spread their polls.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) % 4000;
    d.mul_f64(0.8 + r as f64 / 10_000.0)
}

/// What a trusted digest file says about a SQL source `dir` (`digest.rs`), when one can
/// stand for its migrations (`digest::may_stand_for`): never for another migrator's
/// directory.
fn claimed(dir: &std::path::Path) -> Result<Option<digest::Summary>> {
    if !digest::may_stand_for(dir)? {
        return Ok(None);
    }
    digest::trusted(dir)
}

/// `--phase expand`: every expand migration of the source applied with this build's
/// checksum, nothing dirty; its contract migrations may still be pending (the older
/// release still runs).
async fn expand_ready(via: &mut Via<'_>, cfg: &Config, sql: &SqlSource) -> Result<Readiness> {
    let source = sql.migrations()?;
    let (applied, dirty) = via.applied(cfg).await?;
    if let Some(v) = dirty {
        return Ok(Readiness::NotYet(format!("migration {v} is dirty")));
    }
    Ok(match source.expand_applied(&applied) {
        Ok(()) => Readiness::Ready("every expand migration in the source is applied".into()),
        Err(why) => Readiness::NotYet(why.to_string()),
    })
}
