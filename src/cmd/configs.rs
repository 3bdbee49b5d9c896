//! What each subcommand takes: its validated config, built once from the command line by
//! `config.rs`, so a handler never sees a value it must still doubt.

use std::path::PathBuf;
use std::time::Duration;

use crate::formats;
use crate::settings::Config;

/// `schemagate migrate`.
#[derive(Debug)]
pub struct MigrateConfig {
    pub db: Config,
    pub work: Work,
    pub dry_run: bool,
    /// `--ignore-missing`: an applied migration the source lacks is not drift.
    pub ignore_missing: bool,
    /// PostgreSQL: all pending transactional migrations in one transaction.
    pub single_transaction: bool,
    pub timeouts: DdlTimeouts,
    /// How long an external migrator gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub notify_urls: Vec<String>,
    /// `--phase`: `Contract` unless `--phase expand` (every contract is gated).
    pub phase: crate::phase::Mode,
    /// `--wait-for-drain`: how long a gated contract polls the registry.
    pub wait_for_drain: Option<Duration>,
}

/// What `migrate` applies.
#[derive(Debug, Clone)]
pub enum Work {
    /// `--source DIR`: SQL migrations, applied by schemagate. `detect`: no `--format` was
    /// given, so the directory is still to be checked for another migrator's layout; that
    /// is done where the source is read, after the no-op path (which reads no directory
    /// more than it must).
    Sql { dir: PathBuf, detect: bool },
    /// `--version V -- CMD`: any migrator; V is what it brings the database to.
    External {
        version: String,
        command: Vec<String>,
    },
    /// `--source DIR [--format F] -- CMD`: another migrator's directories, whose files
    /// give the version and digest.
    Foreign {
        spec: formats::Spec,
        command: Vec<String>,
    },
}

/// PostgreSQL's per-migration limits, and how often a migration that hit one is retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct DdlTimeouts {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub retries: u32,
}

/// `schemagate wait`.
#[derive(Debug)]
pub struct WaitConfig {
    pub db: Config,
    pub target: WaitTarget,
    pub timeout: Duration,
    pub interval: Duration,
    pub listen: bool,
    pub once: bool,
    pub ignore_failed: bool,
    pub http: Vec<String>,
    /// `-- CMD`: exec'd once ready.
    pub command: Vec<String>,
    /// `--phase expand`: ready once every expand migration is applied.
    pub expand_only: bool,
    /// `--release`: this instance, announced in the release registry once ready.
    pub registration: Option<Registration>,
}

/// What `wait` waits for.
#[derive(Debug)]
pub enum WaitTarget {
    /// `--expect V`: a `succeeded` marker for V.
    Expect(String),
    /// `--source DIR` of SQL migrations.
    Sql(PathBuf),
    /// `--source DIR` of another migrator: its own history table decides.
    Foreign(formats::Spec),
}

/// `schemagate status`.
#[derive(Debug)]
pub struct StatusConfig {
    pub db: Config,
    /// `--targets FILE`: each target's name and connection, read instead of `db`.
    pub targets: Vec<(String, Config)>,
    /// `--source DIR` (once or more) and its format, resolved.
    pub source: Option<formats::Spec>,
    pub json: bool,
    pub limit: u32,
}

/// `schemagate rollback`.
#[derive(Debug)]
pub struct RollbackConfig {
    pub db: Config,
    /// Stays applied; everything newer is undone. 0 undoes every migration.
    pub to: i64,
    pub source: PathBuf,
    pub dry_run: bool,
}

/// `schemagate stamp`.
#[derive(Debug)]
pub struct StampConfig {
    pub db: Config,
    /// Trimmed, not empty, short enough for the marker.
    pub version: String,
    /// `--source DIR`, with `version` as one of its migrations (an integer).
    pub source: Option<(PathBuf, i64)>,
}

/// `schemagate smoke`: it builds its own `Config`s, for the database it creates.
#[derive(Debug)]
pub struct SmokeConfig {
    /// The server to rehearse on; `None`: a throwaway SQLite file.
    pub database_url: Option<String>,
    pub source: PathBuf,
    pub replicas: u32,
    /// `--rolling`: how many rolling updates to rehearse instead.
    pub rolling: Option<u32>,
    pub timeout: Duration,
    pub json_logs: bool,
}

/// `schemagate check`.
#[derive(Debug)]
pub struct CheckConfig {
    pub db: Config,
    pub plan: CheckPlan,
    pub scratch_database: Option<String>,
    /// Findings accepted by `--allow` and the comments of `--allow-file`s.
    pub allowed: Vec<(String, String)>,
    pub sample_interval: Duration,
    pub json: bool,
}

/// What `check` rehearses.
#[derive(Debug)]
pub enum CheckPlan {
    /// `--source DIR --since V`.
    Sql { dir: PathBuf, since: i64 },
    /// `[--baseline 'CMD'] -- CMD`.
    External {
        baseline: Option<String>,
        command: Vec<String>,
    },
}

/// `schemagate heartbeat`.
#[derive(Debug)]
pub struct HeartbeatConfig {
    pub db: Config,
    pub me: Registration,
}

/// Who an instance is in the release registry, before the version it expects is known
/// (a source is read by the command).
#[derive(Debug, Clone)]
pub struct Registration {
    pub instance: String,
    pub release: String,
    pub expects: Expects,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub enum Expects {
    Version(String),
    Source(PathBuf),
}
