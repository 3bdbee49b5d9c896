//! The command line, and nothing else: clap definitions whose doc comments are the
//! `--help` text. Values are validated into a `Config` in `config.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0        done / ready
  1        the migration or the external migrator failed; other runtime errors
  2        usage or configuration error (bad flag, bad URL, unreadable source,
           authentication refused): retrying will not help
  3        wait: the expected version is recorded as failed
  4        drift: applied migrations differ from the source (checksum mismatch,
           unknown applied version, dirty state)
  5        check: a finding that no `schemagate:allow` comment (or --allow) accepts
  124      timed out (connect, lock, wait)
  130/143  interrupted by SIGINT / SIGTERM (the run is rolled back or recorded as failed;
           a signal after the succeeded marker committed ends the run with 0)

Every flag can also be set as SCHEMAGATE_<FLAG> (for example SCHEMAGATE_LOCK_WAIT=5m).";

/// Apply schema migrations under a crash-safe database lock, and gate applications on the
/// schema version they were built for.
///
/// Run `migrate` once per rollout (a Kubernetes Job, a Compose service, or in every replica:
/// only one applies, the rest wait or exit at once), and `wait` in front of every app
/// container (an initContainer, a `depends_on` service or an entrypoint wrapper).
#[derive(Debug, Parser)]
#[command(name = "schemagate", version, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations under the lock, then record a completion marker.
    ///
    /// When a `succeeded` marker for this version (and source digest) exists, exits 0 after
    /// one query without taking the lock: that is what every replica pays at every start.
    ///
    /// Examples:
    ///   schemagate migrate --source ./migrations
    ///   schemagate migrate --source ./migrations --dry-run
    ///   schemagate migrate --version "$(cat /app/ALEMBIC_HEAD)" -- alembic upgrade head
    #[command(verbatim_doc_comment)]
    Migrate(MigrateArgs),
    /// Exit 0 once the expected schema version is present; optionally exec a command.
    ///
    /// Ready when the newest marker for the expected version is `succeeded` (with
    /// `--source`, its digest must match), or, with `--source`, when every migration there
    /// is recorded as applied (the database is at or ahead of this build).
    ///
    /// Examples:
    ///   schemagate wait --expect 20240115093000
    ///   schemagate wait --source ./migrations --timeout 5m
    ///   schemagate wait --expect 20240115093000 --once      # a healthcheck
    ///   schemagate wait --expect 20240115093000 --http http://localhost:8080/health
    ///   schemagate wait --source ./migrations -- ./server    # then exec the app
    #[command(verbatim_doc_comment)]
    Wait(WaitArgs),
    /// Show marker history, applied and pending migrations, dirty state and the lock holder.
    ///
    /// Examples:
    ///   schemagate status
    ///   schemagate status --source ./migrations --json
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Run down migrations under the lock, newest first, until VERSION is the newest
    /// applied; record a `rollback` marker.
    ///
    /// Every migration to undo needs a `<VERSION>_<description>.down.sql`. Waiters for
    /// VERSION (built from the same source) then pass; waiters for a newer version wait.
    ///
    /// Examples:
    ///   schemagate rollback --to 20240103000000 --source ./migrations
    ///   schemagate rollback --to 0 --source ./migrations --dry-run
    #[command(verbatim_doc_comment)]
    Rollback(RollbackArgs),
    /// Repair: mark VERSION done without running anything, under the lock.
    ///
    /// With --source, every migration up to VERSION that is not applied is recorded as
    /// applied, and a dirty one (failed part-way) is marked done: use it after finishing
    /// a migration by hand. Without --source (an external migrator), only the marker is
    /// written.
    ///
    /// Examples:
    ///   schemagate stamp 20240104000000 --source ./migrations
    ///   schemagate stamp 0003_backfill_display_name
    #[command(verbatim_doc_comment)]
    Stamp(StampArgs),
    /// Rehearse a rollout locally: N racing `migrate` and N `wait` processes.
    ///
    /// Runs against a throwaway SQLite file unless --database-url is given (DATABASE_URL is
    /// deliberately not read: a rehearsal must never touch a database by accident). Checks
    /// that every process exited 0, each migration was applied exactly once by one run, one
    /// `succeeded` marker was written, and every waiter passed only once it existed.
    ///
    /// Examples:
    ///   schemagate smoke --source examples/migrations/sqlite
    ///   schemagate smoke --source ./migrations --replicas 20 \
    ///       --database-url postgres://postgres@127.0.0.1/scratch
    #[command(verbatim_doc_comment)]
    Smoke(SmokeArgs),
    /// Rehearse the new migrations on a scratch database and report what they lock, what
    /// they rewrite and what they break for the release still running (a CI gate).
    ///
    /// Creates a scratch database on the server --database-url names (the URL's own
    /// database is only used to run CREATE/DROP DATABASE, never changed), applies the
    /// migrations up to --since V (the release in production), snapshots the catalog, then
    /// applies each newer migration and observes it: transactional ones are read from
    /// pg_locks of their own backend before commit; `-- no-transaction` migrations and
    /// external migrators from a side connection that samples pg_locks (the resolution is
    /// printed), plus a ddl_command_end event trigger when the role may create one. The
    /// scratch database is dropped afterwards, also on failure or SIGINT/SIGTERM.
    /// On MySQL/MariaDB and SQLite (--source only): the catalog diff, without locks.
    ///
    /// Findings (exit 5 unless every one is accepted):
    ///   drop-table, drop-view, rename-table, drop-column, rename-column, change-type,
    ///   set-not-null, add-not-null-column, drop-default, drop-enum-value, drop-function,
    ///   add-unique, add-check                      (breaks the release still running)
    ///   rewrite, blocking-scan                     (blocks traffic for a table-sized time)
    /// Accept one with a comment in the migration that causes it:
    ///   -- schemagate:allow drop-column users.legacy_email
    ///
    /// Examples:
    ///   schemagate check --source ./migrations --since 20240103000000 \
    ///       --database-url postgres://postgres@127.0.0.1/postgres
    ///   schemagate check --source ./migrations --since 20240103000000 --json
    ///   schemagate check --baseline 'alembic upgrade 0002' --allow 'drop-column users.x' \
    ///       -- alembic upgrade head
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Write the source's digest beside the migrations (DIR/.schemagate-digest), so that the
    /// no-op `migrate --source` reads no migration.
    ///
    /// Run it where the image is built, after the migrations are copied in. At start,
    /// `migrate --source DIR` lists DIR and checks every `.sql` file's name and size against
    /// the digest file, and that none was modified after it was written; it then compares
    /// the recorded digest with the marker's, reading no file. If anything differs, the
    /// digest file is ignored with a warning and every migration is read and hashed, as
    /// without one: a changed migration is still noticed. Prints the digest and the path.
    ///
    /// Examples:
    ///   schemagate digest --source ./migrations
    ///   RUN ["/schemagate", "digest", "--source", "/migrations"]     # in a Dockerfile
    #[command(verbatim_doc_comment)]
    Digest(DigestArgs),
}

impl Command {
    /// The subcommand's name, for logs, application_name and the termination log.
    pub fn mode(&self) -> &'static str {
        match self {
            Command::Migrate(_) => "migrate",
            Command::Wait(_) => "wait",
            Command::Status(_) => "status",
            Command::Rollback(_) => "rollback",
            Command::Stamp(_) => "stamp",
            Command::Smoke(_) => "smoke",
            Command::Check(_) => "check",
            Command::Digest(_) => "digest",
        }
    }

    /// The connection options, for the commands that take them.
    pub fn connect(&self) -> Option<&ConnectArgs> {
        match self {
            Command::Migrate(a) => Some(&a.connect),
            Command::Wait(a) => Some(&a.connect),
            Command::Status(a) => Some(&a.connect),
            Command::Rollback(a) => Some(&a.connect),
            Command::Stamp(a) => Some(&a.connect),
            Command::Check(a) => Some(&a.connect),
            Command::Smoke(_) | Command::Digest(_) => None,
        }
    }
}

/// How to reach the database and which marker and lock to use.
#[derive(Debug, Args, Clone)]
pub struct ConnectArgs {
    /// Database URL: postgres://, postgresql://, mysql://, mariadb:// or sqlite://.
    /// Falls back to DATABASE_URL.
    #[arg(long, env = "SCHEMAGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Read the database URL from this file (a mounted secret); surrounding white space is
    /// ignored.
    #[arg(
        long,
        env = "SCHEMAGATE_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,

    /// The marker table; `schema.table` is allowed. Created by `migrate` when missing.
    #[arg(long, env = "SCHEMAGATE_TABLE", default_value = "schemagate_marker")]
    pub table: String,

    /// The name the migration lock is derived from. Runs that share it exclude each other.
    /// Defaults to the marker table's name.
    #[arg(long, env = "SCHEMAGATE_LOCK_NAME")]
    pub lock_name: Option<String>,

    /// Give up connecting after this long (transient errors are retried with jittered
    /// backoff until then; authentication errors fail at once).
    #[arg(long, env = "SCHEMAGATE_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Log format on stderr.
    #[arg(long, env = "SCHEMAGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write a one-line JSON result here on exit (default: /dev/termination-log when it
    /// exists, so `kubectl describe` shows why a pod stopped).
    #[arg(long, env = "SCHEMAGATE_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,
}

/// How concurrent runs exclude each other.
#[derive(Debug, Args, Clone)]
pub struct LockArgs {
    /// `auto` (PostgreSQL): the session advisory lock when this connection is proven to be a
    /// server session of its own whose advisory lock excludes others, otherwise the lease
    /// (transaction poolers such as PgBouncer, Supavisor or Neon's pooler; CockroachDB,
    /// YugabyteDB). `advisory`: a session lock the server releases when the connection ends
    /// (no stale locks); refused (exit 2) when it cannot be honoured. `lease`: a row with an
    /// expiry, renewed while the run lasts and taken over only once expired; every
    /// migration checks in its own transaction that the lease is still ours (PostgreSQL
    /// only). MySQL and SQLite always use their own locks.
    #[arg(long, env = "SCHEMAGATE_LOCK", value_enum, default_value_t = LockMode::Auto)]
    pub lock: LockMode,

    /// With --lock lease: how long a lease lives without a heartbeat (renewed every third
    /// of it). A crashed run's lease is taken over after this long.
    #[arg(long, env = "SCHEMAGATE_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Give up waiting for the lock after this long (exit 124).
    #[arg(long, env = "SCHEMAGATE_LOCK_WAIT", default_value = "10m", value_parser = parse_duration)]
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockMode {
    Auto,
    Advisory,
    Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Directory of SQL migrations (sqlx layout: `<VERSION>_<description>.sql`, or
    /// `.up.sql`/`.down.sql`; `-- no-transaction` as the first line runs a file outside a
    /// transaction).
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    pub source: Option<PathBuf>,

    /// With an external migrator: the schema version it brings the database to (for example
    /// the output of `alembic heads`, baked into the image). Recorded in the marker.
    #[arg(long, env = "SCHEMAGATE_VERSION")]
    pub version: Option<String>,

    #[command(flatten)]
    pub lock: LockArgs,

    /// Print what would be applied and change nothing.
    #[arg(long, env = "SCHEMAGATE_DRY_RUN")]
    pub dry_run: bool,

    /// PostgreSQL: `lock_timeout` for each transactional migration. A migration that
    /// waits longer for a table lock is rolled back and retried with backoff (see
    /// --ddl-retries), instead of queueing every query on that table behind it.
    #[arg(long, env = "SCHEMAGATE_DDL_LOCK_TIMEOUT", value_parser = parse_duration)]
    pub ddl_lock_timeout: Option<Duration>,

    /// PostgreSQL: `statement_timeout` for each transactional migration; a migration that
    /// exceeds it is rolled back and retried like a lock timeout.
    #[arg(long, env = "SCHEMAGATE_STATEMENT_TIMEOUT", value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,

    /// How many times a migration that hit --ddl-lock-timeout or --statement-timeout is
    /// retried before the run fails.
    #[arg(long, env = "SCHEMAGATE_DDL_RETRIES", default_value_t = 3)]
    pub ddl_retries: u32,

    /// PostgreSQL: apply all pending transactional migrations in one transaction (all or
    /// nothing). `-- no-transaction` migrations still run on their own.
    #[arg(long, env = "SCHEMAGATE_SINGLE_TRANSACTION")]
    pub single_transaction: bool,

    /// How long an external migrator gets to exit after SIGTERM before SIGKILL.
    #[arg(long, env = "SCHEMAGATE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// POST a JSON event here when this run succeeds or fails (repeatable). A slow or
    /// failing endpoint never changes the outcome: 5 s timeout, 3 tries, then a warning.
    #[arg(
        long = "notify-url",
        env = "SCHEMAGATE_NOTIFY_URL",
        value_delimiter = ','
    )]
    pub notify_urls: Vec<String>,

    /// An external migrator to run under the lock instead of --source, for example
    /// `-- alembic upgrade head`. Needs --version. stdin is closed; its output is logged;
    /// SCHEMAGATE_VERSION and SCHEMAGATE_LOCK_KEY are added to its environment.
    #[arg(last = true, value_name = "CMD", requires = "version")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// The schema version to wait for (as written in the marker).
    #[arg(
        long,
        env = "SCHEMAGATE_EXPECT",
        required_unless_present = "source",
        conflicts_with = "source"
    )]
    pub expect: Option<String>,

    /// Wait for the newest migration in this directory, with a matching digest (or for all
    /// of them to be recorded as applied).
    #[arg(long, env = "SCHEMAGATE_SOURCE")]
    pub source: Option<PathBuf>,

    /// Give up after this long (exit 124).
    #[arg(long, env = "SCHEMAGATE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Time between checks (jittered by up to 20%).
    #[arg(long, env = "SCHEMAGATE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Hold one connection and LISTEN for the marker (PostgreSQL): wakes at commit.
    /// Polling continues as a fallback.
    #[arg(long, env = "SCHEMAGATE_LISTEN")]
    pub listen: bool,

    /// Check once and exit: 0 ready, 1 not yet (for a Compose healthcheck).
    #[arg(long, env = "SCHEMAGATE_ONCE", conflicts_with = "listen")]
    pub once: bool,

    /// Keep waiting when the newest marker for the version is `failed` (a retry may fix it).
    #[arg(long, env = "SCHEMAGATE_IGNORE_FAILED")]
    pub ignore_failed: bool,

    /// After the database is ready, also wait until this URL answers 2xx (repeatable),
    /// within the same --timeout.
    #[arg(long = "http", env = "SCHEMAGATE_HTTP", value_delimiter = ',')]
    pub http: Vec<String>,

    /// Once ready, replace this process with CMD (signals then go straight to the app):
    /// `schemagate wait --expect V -- ./server --port 8080`.
    #[arg(last = true, value_name = "CMD", conflicts_with = "once")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Compare the database with this migrations directory (applied, pending, drift).
    #[arg(long, env = "SCHEMAGATE_SOURCE")]
    pub source: Option<PathBuf>,

    /// Print one JSON document instead of text.
    #[arg(long, env = "SCHEMAGATE_JSON")]
    pub json: bool,

    /// How many markers to show, newest first.
    #[arg(long, env = "SCHEMAGATE_LIMIT", default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub lock: LockArgs,

    /// The version to roll back to: it stays applied, everything newer is undone. `0`
    /// undoes every migration.
    #[arg(long, env = "SCHEMAGATE_TO")]
    pub to: i64,

    /// Directory of migrations with `.down.sql` files.
    #[arg(long, env = "SCHEMAGATE_SOURCE")]
    pub source: PathBuf,

    /// Print what would be undone and change nothing.
    #[arg(long, env = "SCHEMAGATE_DRY_RUN")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StampArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub lock: LockArgs,

    /// The version to mark done.
    #[arg(value_name = "VERSION")]
    pub version: String,

    /// Directory of SQL migrations: record those up to VERSION as applied.
    #[arg(long, env = "SCHEMAGATE_SOURCE")]
    pub source: Option<PathBuf>,
}

/// `schemagate digest`.
#[derive(Debug, Args)]
pub struct DigestArgs {
    /// Directory of SQL migrations, as for `migrate`; the digest file is written there.
    #[arg(long, env = "SCHEMAGATE_SOURCE", default_value = "./migrations")]
    pub source: PathBuf,
}

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// The database to rehearse against (default: a throwaway SQLite file in a temp dir).
    /// Use a scratch database: the migrations are really applied.
    #[arg(long, env = "SCHEMAGATE_SMOKE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of SQL migrations, as for `migrate`.
    #[arg(long, env = "SCHEMAGATE_SOURCE", default_value = "./migrations")]
    pub source: PathBuf,

    /// How many `migrate` and how many `wait` processes to start at once.
    #[arg(long, env = "SCHEMAGATE_REPLICAS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub replicas: u32,

    /// Give up on the whole rehearsal after this long.
    #[arg(long, env = "SCHEMAGATE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Log format of this process (the rehearsed processes' logs are summarised).
    #[arg(long, env = "SCHEMAGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Directory of SQL migrations, as for `migrate`.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        required_unless_present = "command",
        conflicts_with_all = ["command", "baseline"],
        requires = "since"
    )]
    pub source: Option<PathBuf>,

    /// With --source: the version the release still running was built for. Migrations up
    /// to it are the baseline; the newer ones are checked. `0`: check them all.
    #[arg(long, env = "SCHEMAGATE_SINCE")]
    pub since: Option<i64>,

    /// With -- CMD: a shell command that brings the scratch database to the previous
    /// release (run with DATABASE_URL set to the scratch database), for example
    /// `alembic upgrade 0002_add_display_name`. Omitted: start from an empty database.
    #[arg(long, env = "SCHEMAGATE_BASELINE", requires = "command")]
    pub baseline: Option<String>,

    /// Use this existing, empty database on the same server instead of creating one (for
    /// a role without CREATEDB). Refused when it holds tables check did not create.
    #[arg(long, env = "SCHEMAGATE_SCRATCH_DATABASE")]
    pub scratch_database: Option<String>,

    /// Accept a finding (repeatable), as a `schemagate:allow` comment would:
    /// `--allow 'drop-column users.legacy_email'`. Meant for external migrators.
    #[arg(long = "allow", env = "SCHEMAGATE_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,

    /// Accept the findings that `schemagate:allow` comments in this file name (repeatable):
    /// with an external migrator, point it at the revision files the new release adds.
    #[arg(
        long = "allow-file",
        env = "SCHEMAGATE_ALLOW_FILE",
        value_delimiter = ','
    )]
    pub allow_files: Vec<PathBuf>,

    /// How often the side connection samples pg_locks while a `-- no-transaction`
    /// migration or an external migrator runs.
    #[arg(long, env = "SCHEMAGATE_SAMPLE_INTERVAL", default_value = "5ms", value_parser = parse_duration)]
    pub sample_interval: Duration,

    /// Print one JSON document instead of the table.
    #[arg(long, env = "SCHEMAGATE_JSON")]
    pub json: bool,

    /// An external migrator that applies the new release to the scratch database, for
    /// example `-- alembic upgrade head`. It gets DATABASE_URL (and SCHEMAGATE_DATABASE_URL)
    /// set to the scratch database.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Humane durations: `30s`, `10m`, `1h 30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (try 30s, 10m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
