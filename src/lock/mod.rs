//! The migration lock: choose the kind that really excludes here (`probe`), acquire it by
//! polling (never blocking), report who holds it while we wait, and stop waiting as soon as
//! another run's marker says the work is done (LISTEN, on a direct PostgreSQL session). The
//! kinds: the advisory lock and `GET_LOCK` here, the lease (`lease.rs`), an OS file lock for
//! SQLite (`file.rs`). How each is taken, and how runs that chose differently still exclude
//! each other: `docs/src/how-it-works.md#the-lock` and `#choosing-the-lock`.

mod expected;
mod file;
mod lease;
mod probe;

pub use expected::{Expected, is_done, marked};

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use serde::Serialize;

use crate::db::pg as postgres;
use crate::db::{self, Conn, Holder};
use crate::db::{Engine, ServerInfo};
use crate::error::{Error, Result};
use crate::settings::{Backend, Config, LockConfig, LockMode};

/// What waiting for the lock ended in.
pub enum Acquired {
    /// We hold the lock (until `Lock::release`, or the connection / process ends).
    Held(Lock),
    /// Another run recorded the expected marker while we waited: nothing to do.
    AlreadyDone,
}

/// Proof that we hold the lock.
pub struct Lock {
    kind: Kind,
    /// The lock as resolved when it was taken (`resolve`): what releases, checks and
    /// fences it name, whatever the spelling of the table in the caller's `Config`.
    lock: LockConfig,
    /// The server session that holds it, when known (PostgreSQL's advisory lock).
    session: Option<i64>,
    /// The engine the lock connection's `version()` named: whether a marker NOTIFYs.
    engine: Engine,
    /// The run whose expired lease this run took over, if it did: that run may have been
    /// paused, not dead, with a statement of its own still running.
    took_over: Option<String>,
}

enum Kind {
    Session,
    File(Option<std::fs::File>),
    Lease(lease::Held),
}

/// The kind of lock in force for this connection, and why: logged once by every run that
/// takes the lock, and shown by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// `advisory`, `lease`, `get_lock` (MySQL) or `file` (SQLite).
    pub kind: &'static str,
    pub reason: String,
    #[serde(skip)]
    engine: Engine,
}

impl Choice {
    fn new(kind: &'static str, reason: impl Into<String>) -> Choice {
        Choice {
            kind,
            reason: reason.into(),
            engine: Engine::Postgres,
        }
    }
}

const HOLDER_LOG_EVERY: Duration = Duration::from_secs(5);
const BRISK_FOR: Duration = Duration::from_secs(10);

/// Decide which lock this connection uses (on PostgreSQL: the engine, then the probe).
/// `--lock advisory` that cannot be honoured is a configuration error (exit 2).
pub async fn choose(conn: &mut Conn, cfg: &Config) -> Result<Choice> {
    let mode = cfg.lock.mode;
    let (info, decided) = preliminary(conn, cfg, mode, None).await?;
    match decided {
        Some(choice) => Ok(choice),
        None => Ok(prove_advisory(conn, cfg, mode, &info, None, false)
            .await?
            .expect("a random key is never busy")),
    }
}

/// What is decided without the probe: the backend's own lock, `--lock lease`, or an engine
/// whose advisory locks are not real. `None`: the advisory lock, once proven. Also returns
/// the server's `version()` (PostgreSQL), and with `probe_key` whether the lock and the
/// probe key are held.
async fn preliminary(
    conn: &mut Conn,
    cfg: &Config,
    mode: LockMode,
    probe_key: Option<i64>,
) -> Result<(ServerInfo, Option<Choice>)> {
    let info = conn
        .prepare_for_lock(cfg, probe_key)
        .await?
        .unwrap_or(ServerInfo {
            version: String::new(),
            pid: 0,
            startup_pid: 0,
            advisory_held: false,
            proving: false,
            probe_taken: false,
        });
    let version = &info.version;
    let decided = match cfg.backend {
        Backend::Sqlite => Some(Choice::new(
            "file",
            "SQLite: an OS file lock beside the database file",
        )),
        Backend::MySql => Some(Choice::new(
            "get_lock",
            "MySQL/MariaDB: GET_LOCK, released when the connection ends",
        )),
        Backend::Postgres => {
            let engine = Engine::from_version(version);
            if mode == LockMode::Lease {
                Some(Choice {
                    engine,
                    ..Choice::new("lease", "chosen with --lock lease")
                })
            } else if engine != Engine::Postgres {
                // Decided by the engine's name: no key is taken.
                prove_advisory(conn, cfg, mode, &info, None, false).await?
            } else if let Some(reason) = &cfg.advisory_proven
                && info.pid == info.startup_pid
            {
                // Proven for this server already; this session is a direct one (the pid
                // it announced is its own), so the lock it takes is the proven kind.
                Some(Choice {
                    engine,
                    ..Choice::new("advisory", reason.clone())
                })
            } else {
                None
            }
        }
    };
    Ok((info, decided))
}

/// Run the probe (`probe.rs`): the advisory lock where proven, else the lease, or, with
/// `--lock advisory`, a configuration error naming what was detected. `Ok(None)`: another
/// run holds `probe_key`, proving now.
async fn prove_advisory(
    conn: &mut Conn,
    cfg: &Config,
    mode: LockMode,
    info: &ServerInfo,
    probe_key: Option<i64>,
    taken: bool,
) -> Result<Option<Choice>> {
    let t = Instant::now();
    let Some(verdict) = probe::prove(conn, cfg, info, probe_key, taken).await? else {
        return Ok(None);
    };
    tracing::debug!("the advisory-lock probe took {:.2?}", t.elapsed());
    let engine = Engine::from_version(&info.version);
    if verdict.advisory_ok {
        return Ok(Some(Choice {
            engine,
            ..Choice::new("advisory", verdict.reason)
        }));
    }
    if mode == LockMode::Advisory {
        let what = if verdict.pooler {
            "this connection goes through a connection pooler or proxy"
        } else {
            "the session advisory lock does not exclude other sessions here"
        };
        return Err(Error::Config(format!(
            "--lock advisory cannot be honoured: {what} ({}). Use --lock lease, or --lock auto \
             (the default), which picks the lease here",
            verdict.reason
        )));
    }
    Ok(Some(Choice {
        engine,
        ..Choice::new("lease", verdict.reason)
    }))
}

/// `cfg` with the lock this run takes: `--lock-name` as given, else the name derived from
/// the marker table as the server resolves it (`LockConfig::resolved`), so that every
/// spelling of one table (`schemagate_marker`, `public.schemagate_marker`,
/// `Schemagate_Marker`, or an unqualified name and its schema) takes one lock. Costs a
/// round trip only where the spelling alone cannot tell (PostgreSQL: an unqualified name,
/// which the search_path resolves; MySQL: a database-qualified one); never on the fast
/// path, which takes no lock.
pub async fn resolve(conn: &mut Conn, cfg: &Config) -> Result<Config> {
    if cfg.lock.explicit {
        return Ok(cfg.clone());
    }
    let (schema, home) = conn.table_home(&cfg.table).await?;
    Ok(Config {
        lock: cfg
            .lock
            .resolved(&cfg.table, schema.as_deref(), home.as_deref()),
        ..cfg.clone()
    })
}

/// Take the lock, or find `expected` recorded by another run meanwhile. Long on purpose:
/// one poll's steps (the marker, the decision, the try, LISTEN, the log line, the pause) in
/// the order each poll takes them; the decision and the log line are `Race::decide` and
/// `log_waiting`.
pub async fn acquire(
    conn: &mut Conn,
    cfg: &Config,
    expected: Option<&Expected<'_>>,
) -> Result<Acquired> {
    let started = Instant::now();
    let resolved = resolve(conn, cfg).await?;
    let cfg = &resolved;
    let token = token();
    // A run that would only wait for a marker proves on the run's probe key, and waits while
    // another run proves on it (`probe.rs`).
    let probe_key = expected.map(|_| probe::probe_key(cfg.lock.key));
    let (info, decided) = preliminary(conn, cfg, cfg.lock.mode, probe_key).await?;
    // A direct PostgreSQL session (the pid announced at startup is the session's own) that
    // would prove the advisory lock: a NOTIFY reaches it, so while it waits it LISTENs and
    // leaves at the marker's commit. Behind a pooler, and on the lease, it only polls.
    let direct = decided.is_none() && info.pid == info.startup_pid;
    if let Some(c) = &decided {
        announce(conn, cfg, c).await?;
    }
    let mut race = Race {
        choice: decided,
        probe_key,
        lock_held: info.advisory_held,
        proving: info.proving,
        probe_taken: info.probe_taken,
        holding_probe: None,
    };
    let polling = async {
        let mut delays = db::backoff(Duration::from_millis(10), Duration::from_secs(1)).build();
        let mut listening_delays = db::backoff(LISTENING_POLL / 2, LISTENING_POLL).build();
        let mut last_log: Option<Instant> = None;
        let mut listening = false;
        let mut woke = false;
        let mut first = true;
        loop {
            if woke
                && let Some(expected) = expected
                && is_done(conn, cfg, expected).await?
            {
                return Ok(Acquired::AlreadyDone);
            }
            if race.choice.is_none() {
                race.decide(conn, cfg, &info, expected.is_some() && direct, first)
                    .await?;
            }
            first = false;
            if let Some(c) = &race.choice
                && let Some(mut lock) =
                    try_acquire(conn, cfg, c, &token, race.holding_probe.take()).await?
            {
                if last_log.is_some() {
                    tracing::info!("took the migration lock after {:.1?}", started.elapsed());
                }
                if matches!(lock.kind, Kind::Session) && cfg.backend == Backend::Postgres {
                    // Proven a direct session: the pid read when preparing is the holder's.
                    lock.session = Some(info.pid);
                }
                return Ok(Acquired::Held(lock));
            }
            if let Some(expected) = expected {
                // LISTEN before the check, so a marker committed in between still wakes us.
                if direct && !listening && race.choice.as_ref().is_none_or(|c| c.kind == "advisory")
                {
                    postgres::listen_for_markers(pg(conn))
                        .await
                        .map_err(|e| read_err("cannot LISTEN for the marker", e))?;
                    listening = true;
                }
                if !woke && is_done(conn, cfg, expected).await? {
                    return Ok(Acquired::AlreadyDone);
                }
            }
            // A waiter that LISTENs names the holder once it has waited a while: most such
            // waits end at the marker before that (the race is their common case), and
            // naming the holder reads the server's whole lock table.
            if (!listening || started.elapsed() >= LISTENING_QUIET)
                && last_log.is_none_or(|t| t.elapsed() >= HOLDER_LOG_EVERY)
            {
                log_waiting(conn, cfg, &race, listening).await;
                last_log = Some(Instant::now());
            }
            let pause = if listening {
                listening_delays.next().unwrap_or(LISTENING_POLL)
            } else {
                brisk_then_gentle(&mut delays, started)
            };
            woke = if listening {
                postgres::wait_for_marker(pg(conn), pause)
                    .await
                    .map_err(|e| read_err("lost the connection while waiting for the lock", e))?
            } else {
                tokio::time::sleep(pause).await;
                false
            };
        }
    };
    match tokio::time::timeout(cfg.lock.wait, polling).await {
        Ok(r) => r,
        Err(_) => Err(lock_wait_passed(conn, cfg).await),
    }
}

/// `--lock-wait` passed: say so, naming the holder when it can be read.
async fn lock_wait_passed(conn: &mut Conn, cfg: &Config) -> Error {
    let who = holder(conn, cfg)
        .await
        .ok()
        .flatten()
        .map(|h| format!(", held by {h}"))
        .unwrap_or_default();
    Error::Timeout(format!(
        "could not take the migration lock {:?} within {} (--lock-wait){who}",
        cfg.lock.name,
        humantime::format_duration(cfg.lock.wait)
    ))
}

/// What a run waiting for the lock knows so far.
struct Race {
    /// The lock this connection uses, once decided (on PostgreSQL, once proven).
    choice: Option<Choice>,
    /// The run's probe key, for a run that would only wait for a marker.
    probe_key: Option<i64>,
    /// Whether another session held the lock, or the probe key, at the last look.
    lock_held: bool,
    proving: bool,
    /// Whether the probe key was taken when the connection was prepared, and not yet
    /// proven on.
    probe_taken: bool,
    /// The probe key, while this run holds it after proving on it (`probe::prove`).
    holding_probe: Option<i64>,
}

impl Race {
    /// Decide the lock before the first try on the real key: a run that took the advisory
    /// lock on a pooled server session could not be sure to release it there. But while
    /// another session holds the lock, or proves it, a run that `only_waits` for its marker
    /// has nothing to prove yet: the probe (a second connection) is left to the run that
    /// may take the lock.
    async fn decide(
        &mut self,
        conn: &mut Conn,
        cfg: &Config,
        info: &ServerInfo,
        only_waits: bool,
        first: bool,
    ) -> Result<()> {
        if only_waits
            && !first
            && let Some(probe_key) = self.probe_key
        {
            // A server that cannot tell (no transaction-level advisory locks): prove,
            // which is always safe.
            (self.lock_held, self.proving) = postgres::lock_busy(pg(conn), cfg.lock.key, probe_key)
                .await
                .unwrap_or((false, false));
        }
        // Refused the probe key when preparing: another run proves, so wait for it. At a
        // later poll the probe itself asks the server's lock table (`probe::prove`), so
        // that a server which refuses every key is not waited on forever.
        if only_waits && (self.lock_held || (self.proving && first)) {
            return Ok(());
        }
        let key = self.probe_key.filter(|_| only_waits);
        let taken = std::mem::take(&mut self.probe_taken);
        match prove_advisory(conn, cfg, cfg.lock.mode, info, key, taken).await? {
            Some(c) => {
                if c.kind == "advisory" {
                    self.holding_probe = key;
                }
                announce(conn, cfg, &c).await?;
                self.choice = Some(c);
            }
            None => self.proving = true,
        }
        Ok(())
    }
}

/// Say who holds the lock we wait for. Still unproven means the advisory lock (or the
/// probe key) was seen held: ask only for it.
async fn log_waiting(conn: &mut Conn, cfg: &Config, race: &Race, listening: bool) {
    let who = match if race.choice.is_none() {
        conn.lock_holder(cfg).await
    } else {
        holder(conn, cfg).await
    } {
        Ok(Some(h)) => h.to_string(),
        Ok(None) if race.choice.is_none() && race.proving => {
            "no one yet: another run is proving that the advisory lock excludes here".into()
        }
        Ok(None) => "a session that just let go".into(),
        Err(e) => format!("unknown ({e:#})"),
    };
    tracing::info!(
        "waiting for the migration lock {:?} (key {}), held by {who}{}",
        cfg.lock.name,
        cfg.lock.key,
        if listening {
            "; leaving when its marker is committed"
        } else {
            ""
        }
    );
}

/// The pause between polls of a waiter that does not LISTEN. Briskly at first: most waits
/// are for a short migration, and a waiter should leave as soon as its marker lands. Then
/// gently, to spare the server during a long one. (A waiter that LISTENs is woken by the
/// marker's commit, so it polls only to take over from a holder that died: gently from
/// the start.)
fn brisk_then_gentle(delays: &mut impl Iterator<Item = Duration>, started: Instant) -> Duration {
    let cap = if started.elapsed() < BRISK_FOR {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    };
    delays.next().unwrap_or(cap).min(cap)
}

/// How long a waiter that LISTENs waits before naming the holder.
const LISTENING_QUIET: Duration = Duration::from_secs(1);

/// How often a waiter that LISTENs polls the lock anyway (a holder that died writes no
/// marker: its lock is released with its session, and the next poll takes over).
const LISTENING_POLL: Duration = Duration::from_millis(500);

/// Log the lock chosen (once per run that gets this far), and create the lease's table.
async fn announce(conn: &mut Conn, cfg: &Config, choice: &Choice) -> Result<()> {
    tracing::info!("lock: {} ({})", choice.kind, choice.reason);
    if choice.kind == "lease" {
        lease::ensure_table(pg(conn), &cfg.table).await?;
    }
    Ok(())
}

/// A failed read or write of the lock's own state: a runtime error (exit 1), whatever its
/// class, with the driver's error kept as the cause.
fn read_err(context: &str, e: sqlx::Error) -> Error {
    Error::Database {
        context: context.to_owned(),
        class: crate::error::Class::Runtime,
        described: db::describe(&e),
        source: e,
    }
}

fn pg(conn: &mut Conn) -> &mut sqlx::PgConnection {
    conn.pg().expect("the lease and the probe are PostgreSQL's")
}

async fn try_acquire(
    conn: &mut Conn,
    cfg: &Config,
    choice: &Choice,
    token: &str,
    then_release: Option<i64>,
) -> Result<Option<Lock>> {
    let mut took_over = None;
    let kind = match choice.kind {
        "file" => file::try_lock(cfg)?.map(Kind::File),
        "lease" => try_lease(conn, cfg, choice, token, &mut took_over).await?,
        _ => try_session(conn, cfg, token, then_release, &mut took_over).await?,
    };
    Ok(kind.map(|kind| Lock {
        kind,
        lock: cfg.lock.clone(),
        session: None,
        engine: choice.engine,
        took_over,
    }))
}

/// Take the lease, unless a run that proved the advisory lock (it connects directly)
/// holds that.
async fn try_lease(
    conn: &mut Conn,
    cfg: &Config,
    choice: &Choice,
    token: &str,
    took_over: &mut Option<String>,
) -> Result<Option<Kind>> {
    let Some(previous) = lease::try_take(pg(conn), cfg, token, cfg.lock.lease_ttl).await? else {
        return Ok(None);
    };
    if choice.engine == Engine::Postgres
        && let Some(h) = conn.lock_holder(cfg).await?
    {
        tracing::debug!("stepping back: the advisory lock is held by {h}");
        lease::release(pg(conn), cfg, token).await?;
        return Ok(None);
    }
    if let Some(previous) = previous {
        tracing::warn!("took over an expired lease from {previous}");
        *took_over = Some(previous);
    }
    Ok(Some(Kind::Lease(lease::Held::start(
        cfg,
        token,
        cfg.lock.lease_ttl,
    ))))
}

/// Take the session lock (advisory, or MySQL's named lock), letting go of `then_release`
/// (the probe key) in the same statement.
async fn try_session(
    conn: &mut Conn,
    cfg: &Config,
    token: &str,
    then_release: Option<i64>,
    took_over: &mut Option<String>,
) -> Result<Option<Kind>> {
    if !conn.try_lock(cfg, token, then_release).await? {
        return Ok(None);
    }
    // A run that could not use the advisory lock (behind a pooler) may hold the lease. Take
    // the lease row too, for a moment, exactly as a lease taker would: a live lease makes us
    // step back; an expired one is taken over and its token replaced, so a holder that
    // lapsed but still runs fails its fence instead of committing beside us. Then the row
    // goes: the advisory lock is ours.
    if cfg.backend == Backend::Postgres && lease::exists(pg(conn), cfg).await? {
        match lease::try_take(pg(conn), cfg, token, cfg.lock.lease_ttl).await? {
            None => {
                tracing::debug!("stepping back: a run holds the lease");
                conn.unlock(cfg).await?;
                return Ok(None);
            }
            Some(previous) => {
                if let Some(previous) = previous {
                    tracing::warn!(
                        "took over an expired lease from {previous} (and ended it: this run \
                         holds the advisory lock)"
                    );
                    *took_over = Some(previous);
                }
                lease::release(pg(conn), cfg, token).await?;
            }
        }
    }
    Ok(Some(Kind::Session))
}

impl Lock {
    /// Whether we can no longer be sure we hold the lock (the lease lapsed or was taken).
    /// Session and file locks are checked on their connection (`Conn::lock_still_held`).
    pub fn lease_lost(&self) -> bool {
        matches!(&self.kind, Kind::Lease(l) if l.is_lost())
    }

    pub fn is_lease(&self) -> bool {
        matches!(self.kind, Kind::Lease(_))
    }

    /// The key of the lock as taken (resolved: `resolve`).
    pub fn key(&self) -> i64 {
        self.lock.key
    }

    /// `cfg`, naming the lock as it was taken.
    fn named(&self, cfg: &Config) -> Config {
        Config {
            lock: self.lock.clone(),
            ..cfg.clone()
        }
    }

    /// The run whose expired lease this run took over, if it did (`Lock::took_over`).
    pub fn took_over_from(&self) -> Option<&str> {
        self.took_over.as_deref()
    }

    /// The server session (`pg_backend_pid()`) that holds the lock, when already known.
    pub fn session(&self) -> Option<i64> {
        self.session
    }

    /// The engine the lock was taken on (PostgreSQL and its look-alikes), for the marker:
    /// an engine without LISTEN/NOTIFY gets its marker written without NOTIFY.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The lease's fence, to run first in each transaction that changes the schema or
    /// writes a marker (`lease::fence`); `None` for the other locks.
    pub fn fence(&self, cfg: &Config) -> Option<db::Fence> {
        match &self.kind {
            Kind::Lease(l) => Some(lease::fence(&self.named(cfg), &l.token, l.ttl)),
            _ => None,
        }
    }

    /// Check the lock while a long step runs; `Err` says why it is gone.
    pub async fn check(&self, conn: &mut Conn, cfg: &Config) -> Result<(), db::LockGone> {
        match &self.kind {
            Kind::Lease(l) if l.is_lost() => Err(db::LockGone::Lapsed),
            Kind::Lease(_) | Kind::File(_) => Ok(()),
            Kind::Session => conn.lock_still_held(&self.named(cfg)).await,
        }
    }

    pub async fn release(self, conn: &mut Conn, cfg: &Config) -> Result<()> {
        let cfg = &self.named(cfg);
        match self.kind {
            Kind::File(f) => {
                if let Some(f) = f {
                    file::release(f);
                }
                Ok(())
            }
            Kind::Session => {
                if !conn.unlock(cfg).await? {
                    tracing::warn!(
                        "the advisory lock was no longer held by this session when released: \
                         if this connection goes through a transaction pooler, use --lock lease"
                    );
                }
                Ok(())
            }
            Kind::Lease(held) => {
                held.stop_heartbeat();
                lease::release(pg(conn), cfg, &held.token).await
            }
        }
    }

    /// Leave the lock to expire (a lease) or to the process's end: used when the run was
    /// interrupted and its last transaction may still be rolling back on the server.
    pub fn abandon(self) {
        if let Kind::Lease(held) = self.kind {
            held.stop_heartbeat();
        }
    }
}

/// Who holds the lock now, if anyone: the lease's holder, else the advisory lock's.
pub async fn holder(conn: &mut Conn, cfg: &Config) -> Result<Option<Holder>> {
    match cfg.backend {
        Backend::Sqlite => file::holder(cfg),
        Backend::MySql => conn.lock_holder(cfg).await,
        Backend::Postgres => match lease::holder(pg(conn), cfg).await? {
            Some(h) => Ok(Some(h)),
            None => conn.lock_holder(cfg).await,
        },
    }
}

/// A random token that names this run's lease.
fn token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one((std::process::id(), Instant::now()));
    let b = RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}
