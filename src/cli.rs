//! The command line, and nothing else: clap definitions whose doc comments are the
//! `--help` text. Values are validated into one typed config per command in `config.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

pub use crate::cmd::fleet::MaxFailed;

use crate::settings::DEFAULT_TABLE;

/// `--lock`: which lock a PostgreSQL run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockMode {
    Auto,
    Advisory,
    Lease,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0        done / ready
  1        the migration or the external migrator failed; other runtime errors
  2        usage or configuration error (bad flag, bad URL, unreadable source,
           authentication refused, a missing privilege, a TLS certificate
           refused): retrying will not help
  3        wait: the expected version is recorded as failed
  4        drift: applied migrations differ from the source (checksum mismatch,
           unknown applied version, dirty state)
  5        check: a finding that no `schemagate:allow` comment (or --allow) accepts
  75       migrate: a contract migration may not run yet (an instance of an older
           release is live): try again later, or pass --wait-for-drain
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

// `defer`: only the subcommand given is built, not all eight (building every argument was
// half the instructions of a no-op `migrate`). So the argument groups flattened into the
// subcommands carry `//` comments, not doc comments: under `defer` a group's doc comment
// would replace the subcommand's about text.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
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
    ///   schemagate migrate --source /app --format alembic -- alembic upgrade head
    ///   schemagate migrate --source /app --format django -- python manage.py migrate --noinput
    ///   schemagate migrate --source db/migrations --ignore-missing     # two sqlx tracks
    #[command(
        verbatim_doc_comment,
        override_usage = "schemagate migrate [OPTIONS] --source <DIR>\n       \
                          schemagate migrate [OPTIONS] --version <VERSION> -- <CMD>...\n       \
                          schemagate migrate [OPTIONS] --source <DIR> [--format <FORMAT>] -- <CMD>..."
    )]
    Migrate(MigrateArgs),
    /// Exit 0 once the expected schema version is present; optionally exec a command.
    ///
    /// Ready when the newest marker for the expected version is `succeeded` (with
    /// `--source`, its digest must match), or, with `--source`, when every migration there
    /// is recorded as applied (the database is at or ahead of this build). With another
    /// migrator's directory (`--format`), when that migrator's own history table shows
    /// every migration there applied, whoever ran it.
    ///
    /// Examples:
    ///   schemagate wait --expect 20240115093000
    ///   schemagate wait --source ./migrations --timeout 5m
    ///   schemagate wait --expect 20240115093000 --once      # a healthcheck
    ///   schemagate wait --expect 20240115093000 --http http://localhost:8080/health
    ///   schemagate wait --source ./migrations -- ./server    # then exec the app
    ///   schemagate wait --source /app --format alembic       # alembic_version decides
    ///   schemagate wait --source /app/db/migrate              # detected: rails
    #[command(verbatim_doc_comment)]
    Wait(WaitArgs),
    /// Show marker history, applied and pending migrations, dirty state and the lock holder.
    ///
    /// Examples:
    ///   schemagate status
    ///   schemagate status --source ./migrations --json
    ///   schemagate status --source /app --format django      # django_migrations vs files
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
    /// With --rolling, rehearses rolling updates with expand/contract phases instead:
    /// instances of each release run as `wait --release -- sleep` while the contract waits
    /// for the older ones, with SIGTERM, SIGKILL and (on a server --database-url only)
    /// network partitions; fails when a contract starts while an older app is alive.
    ///
    /// Examples:
    ///   schemagate smoke --source examples/migrations/sqlite
    ///   schemagate smoke --source ./migrations --replicas 20 \
    ///       --database-url postgres://postgres@127.0.0.1/scratch
    ///   schemagate smoke --rolling --updates 100 \
    ///       --database-url postgres://postgres@127.0.0.1/scratch
    #[command(verbatim_doc_comment)]
    Smoke(SmokeArgs),
    /// Rehearse the new migrations on a scratch database and report what they lock, what
    /// they rewrite and what they break for the release still running (a CI gate).
    ///
    /// Creates a scratch database on the server --database-url names (the URL's own
    /// database is only used to run CREATE/DROP DATABASE and to be read, never changed),
    /// applies the migrations up to --since V (the release in production) as `migrate`
    /// does, history table included, snapshots the catalog, then applies each newer
    /// migration and observes it: transactional ones are read from pg_locks of their own
    /// backend before commit; `-- no-transaction` migrations and external migrators from a
    /// side connection that samples pg_locks (the resolution is printed), plus a
    /// ddl_command_end event trigger when the role may create one. The scratch database is
    /// dropped afterwards, also on failure or SIGINT/SIGTERM; one left by a killed run is
    /// dropped by the next check or smoke on the server.
    /// On MySQL/MariaDB and SQLite (--source only): the catalog diff, without locks.
    ///
    /// Statements that act outside the scratch database (ALTER DATABASE, COMMENT ON
    /// DATABASE, CREATE ROLE, GRANT role TO, ALTER SYSTEM, dblink, COPY ... PROGRAM, ...)
    /// are never run: each is an outside-database finding. The URL's database is compared
    /// before and after each step; if the rehearsal changed it, or an external migrator
    /// exited 0 without touching the scratch database, check exits 1 naming what happened
    /// (changed-real-database, scratch-untouched: never accepted).
    ///
    /// Findings (exit 5 unless every one is accepted):
    ///   drop-table, drop-view, rename-table, drop-column, rename-column, change-type,
    ///   set-not-null, add-not-null-column, drop-default, drop-enum-value, drop-function,
    ///   add-unique, add-check                      (breaks the release still running)
    ///   rewrite, blocking-scan                     (blocks traffic for a table-sized time)
    ///   outside-database                           (not rehearsed: acts beyond its database)
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
    /// Print the shell completion script for SHELL, generated from these flags.
    ///
    /// Examples:
    ///   schemagate completions bash > /usr/share/bash-completion/completions/schemagate
    ///   schemagate completions zsh > "${fpath[1]}/_schemagate"
    ///   schemagate completions fish > ~/.config/fish/completions/schemagate.fish
    ///   schemagate completions powershell >> $PROFILE
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into --dir.
    ///
    /// Examples:
    ///   schemagate man | man -l -
    ///   schemagate man --dir /usr/local/share/man/man1    # schemagate.1, schemagate-migrate.1, ...
    #[command(verbatim_doc_comment)]
    Man(ManArgs),
    /// Announce this instance in the release registry until SIGTERM: a sidecar beside the
    /// app, so that `migrate --phase contract` runs only once older releases are gone.
    ///
    /// Writes a row `(instance, release, expected version)` in `<table>_instances` and
    /// renews it every third of --instance-ttl, on the database server's clock; removes it
    /// on SIGTERM. A row not renewed within --instance-ttl is dead. When it cannot renew
    /// for most of --instance-ttl it exits 1 (its row is then about to expire). Refuses to
    /// start (exit 4) when a contract migration newer than the expected version has run.
    ///
    /// Examples:
    ///   schemagate heartbeat --release v42 --source /app/migrations
    ///   schemagate heartbeat --release "$IMAGE_TAG" --expect 20240115093000 --instance "$POD_NAME"
    #[command(verbatim_doc_comment)]
    Heartbeat(HeartbeatArgs),
    /// Migrate many tenant databases or schemas: one ordinary `migrate` run per target,
    /// each with its own lock, marker and history, N at a time, then a summary.
    ///
    /// Targets come from --targets FILE, one per line (`#` starts a comment line). A line
    /// is either a full database URL, or a name that fills the `{schema}` placeholder:
    ///
    ///   of --database-url, for a database per tenant:
    ///     --database-url 'postgres://app@db/{schema}'      (or mysql://, sqlite://)
    ///   otherwise, on PostgreSQL, a schema in the one database --database-url names:
    ///     the target's marker and migrations tables live in that schema
    ///     (<name>.schemagate_marker, <name>._sqlx_migrations) and its migrations run
    ///     with search_path set to it, so their unqualified names land there.
    ///
    /// Every target's lock is derived from its own marker table, so targets never wait on
    /// each other. A target already at the version costs one query: a rerun (after a
    /// crash, a `kill -9`, or once a failed target is fixed) is the resume, and applies
    /// only what is missing. The summary lists every target: applied, up-to-date, failed
    /// (with the reason) or skipped (never started).
    ///
    /// Exit status: 0 when every target is applied or up to date; 1 when any target failed
    /// or was skipped; 2 for a usage error (nothing was started); 130/143 on SIGINT/SIGTERM
    /// (the targets in flight are stopped as `migrate` stops; none is started after it).
    ///
    /// An external migrator after `--` runs once per target, with `{schema}` (the name) and
    /// `{url}` (the target's URL; for a schema, the database's) filled in its arguments, and
    /// DATABASE_URL, SCHEMAGATE_TARGET and SCHEMAGATE_SCHEMA set to the target's.
    ///
    /// Examples:
    ///   schemagate fleet --targets tenants.txt --source ./migrations \
    ///       --database-url 'postgres://app@db/app'          # a schema per line
    ///   schemagate fleet --targets dbs.txt --source ./migrations --parallel 16 \
    ///       --database-url 'postgres://app@db/{schema}'     # a database per line
    ///   schemagate fleet --targets urls.txt --source ./migrations --json
    ///   schemagate fleet --targets tenants.txt --version "$HEAD" \
    ///       -- alembic -x tenant={schema} upgrade head
    #[command(verbatim_doc_comment)]
    Fleet(FleetArgs),
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
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Heartbeat(_) => "heartbeat",
            Command::Fleet(_) => "fleet",
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
            Command::Heartbeat(a) => Some(&a.connect),
            Command::Fleet(a) => Some(&a.migrate.connect),
            Command::Smoke(_) | Command::Digest(_) | Command::Completions(_) | Command::Man(_) => {
                None
            }
        }
    }
}

// How to reach the database and which marker and lock to use.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// Database URL: postgres://, postgresql://, mysql://, mariadb:// or sqlite://.
    /// Falls back to DATABASE_URL.
    #[arg(
        long,
        env = "SCHEMAGATE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Read the database URL from this file (a mounted secret); surrounding white space is
    /// ignored. Not both with --database-url.
    #[arg(long, env = "SCHEMAGATE_DATABASE_URL_FILE", value_name = "PATH")]
    pub database_url_file: Option<PathBuf>,

    /// The marker table; `schema.table` is allowed. Created by `migrate` when missing.
    #[arg(
        long,
        env = "SCHEMAGATE_TABLE",
        default_value = DEFAULT_TABLE,
        value_name = "TABLE"
    )]
    pub table: String,

    /// The table recording applied SQL migrations (sqlx's `_sqlx_migrations` by default);
    /// `schema.table` is allowed. Overrides `table-name` under `[migrate]` in the source's
    /// `sqlx.toml` (the nearest one from the source up to its crate root, the directory of
    /// the nearest `Cargo.toml`). Two apps sharing one database each need their own:
    /// `--table appa.marker --migrations-table appa._sqlx_migrations`.
    #[arg(
        long,
        env = "SCHEMAGATE_MIGRATIONS_TABLE",
        value_name = "TABLE",
        help_heading = "Connection"
    )]
    pub migrations_table: Option<String>,

    /// Give up connecting after this long (transient errors are retried with jittered
    /// backoff until then; authentication errors fail at once).
    #[arg(long, env = "SCHEMAGATE_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_connect_timeout, value_name = "DURATION", help_heading = "Timeouts")]
    pub connect_timeout: Duration,

    /// Log format on stderr.
    #[arg(long, env = "SCHEMAGATE_LOG_FORMAT", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, help_heading = "Output")]
    pub log_format: LogFormat,

    /// Write a one-line JSON result here on exit (default: /dev/termination-log when it
    /// exists, so `kubectl describe` shows why a pod stopped).
    #[arg(
        long,
        env = "SCHEMAGATE_TERMINATION_LOG",
        value_name = "PATH",
        help_heading = "Output"
    )]
    pub termination_log: Option<PathBuf>,
}

// How concurrent runs exclude each other.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Lock")]
pub struct LockArgs {
    /// The name the migration lock is derived from. Runs that share it exclude each other.
    /// Defaults to the marker table's name.
    #[arg(
        long,
        env = "SCHEMAGATE_LOCK_NAME",
        value_name = "NAME",
        help_heading = "Lock"
    )]
    pub lock_name: Option<String>,

    /// `auto` (PostgreSQL): the session advisory lock when this connection is proven to be a
    /// server session of its own whose advisory lock excludes others, otherwise the lease
    /// (transaction poolers such as PgBouncer, Supavisor or Neon's pooler; CockroachDB,
    /// YugabyteDB). `advisory`: a session lock the server releases when the connection ends
    /// (no stale locks); refused (exit 2) when it cannot be honoured. `lease`: a row with an
    /// expiry, renewed while the run lasts and taken over only once expired; every
    /// migration checks in its own transaction that the lease is still ours (PostgreSQL
    /// only). MySQL and SQLite always use their own locks.
    #[arg(long, env = "SCHEMAGATE_LOCK", value_enum, value_name = "MODE", default_value_t = LockMode::Auto)]
    pub lock: LockMode,

    /// With --lock lease: how long a lease lives without a heartbeat (renewed every third
    /// of it). A crashed run's lease is taken over after this long.
    #[arg(long, env = "SCHEMAGATE_LEASE_TTL", default_value = "30s", value_parser = parse_lease_ttl, value_name = "DURATION")]
    pub lease_ttl: Duration,

    /// Give up waiting for the lock after this long (exit 124).
    #[arg(long, env = "SCHEMAGATE_LOCK_WAIT", default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_wait: Duration,
}

// Who this instance is in the release registry (`heartbeat`, `wait --release`).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Registry")]
pub struct RegistryArgs {
    /// The release this instance runs (an image tag, a commit): announced with the schema
    /// version it expects in `<table>_instances`, so that `migrate --phase contract` waits
    /// until every instance built before a contract migration is gone.
    #[arg(
        long,
        env = "SCHEMAGATE_RELEASE",
        value_name = "NAME",
        help_heading = "Registry"
    )]
    pub release: Option<String>,

    /// This instance's id in the registry (default: $HOSTNAME, the pod name).
    #[arg(
        long,
        env = "SCHEMAGATE_INSTANCE",
        value_name = "ID",
        help_heading = "Registry"
    )]
    pub instance: Option<String>,

    /// An instance whose row is not renewed for this long counts as gone (renewed every
    /// third of it).
    #[arg(long, env = "SCHEMAGATE_INSTANCE_TTL", default_value = crate::registry::DEFAULT_TTL, value_parser = parse_lease_ttl, value_name = "DURATION", help_heading = "Registry")]
    pub instance_ttl: Duration,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").args(["expect", "source"]).required(true)))]
pub struct HeartbeatArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// The schema version this release was built for.
    #[arg(
        long,
        env = "SCHEMAGATE_EXPECT",
        value_name = "VERSION",
        help_heading = "Registry"
    )]
    pub expect: Option<String>,

    /// The release's SQL migrations: it expects their newest version.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Registry"
    )]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
#[command(group(ArgGroup::new("work").args(["source", "command"]).required(true).multiple(true)))]
pub struct MigrateArgs {
    /// Directory of SQL migrations (sqlx layout: `<VERSION>_<description>.sql`, or
    /// `.up.sql`/`.down.sql`; `-- no-transaction` as the first line runs a file outside a
    /// transaction).
    ///
    /// With `-- CMD`, another migrator's directory (see --format): the version and digest
    /// come from its files, e.g. `migrate --source . --format alembic -- alembic upgrade head`.
    /// Repeatable for rails, dbmate and django, whose migrators read several directories
    /// (a Rails app's `db/post_migrate`, when present, is read along with `db/migrate`).
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Migrate"
    )]
    pub source: Vec<PathBuf>,

    /// Which migrator --source belongs to: `sqlx` (applied by schemagate), or `alembic`,
    /// `django`, `rails`, `dbmate`, `diesel` (run by CMD after `--`; schemagate reads their
    /// files and history table). Detected from the directory when left out.
    #[arg(
        long,
        env = "SCHEMAGATE_FORMAT",
        value_enum,
        value_name = "FORMAT",
        help_heading = "Migrate"
    )]
    pub format: Option<crate::formats::Format>,

    /// With an external migrator and no --source: the schema version it brings the
    /// database to (for example the output of `alembic heads`, baked into the image).
    /// Recorded in the marker.
    #[arg(
        long,
        env = "SCHEMAGATE_VERSION",
        value_name = "VERSION",
        help_heading = "Migrate"
    )]
    pub version: Option<String>,

    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Print what would be applied and change nothing.
    #[arg(long, env = "SCHEMAGATE_DRY_RUN", help_heading = "Migrate")]
    pub dry_run: bool,

    /// As sqlx-cli's: an applied migration this source does not have is not drift. For two
    /// migration tracks sharing one history table (for example `postgresql/` and
    /// `postgresql_deferred/`, each applied by its own `migrate --source`).
    #[arg(long, env = "SCHEMAGATE_IGNORE_MISSING", help_heading = "Migrate")]
    pub ignore_missing: bool,

    /// PostgreSQL: `lock_timeout` for each transactional migration. A migration that
    /// waits longer for a table lock is rolled back and retried with backoff (see
    /// --ddl-retries), instead of queueing every query on that table behind it.
    #[arg(long, env = "SCHEMAGATE_DDL_LOCK_TIMEOUT", value_parser = parse_pg_timeout, value_name = "DURATION", help_heading = "Timeouts")]
    pub ddl_lock_timeout: Option<Duration>,

    /// PostgreSQL: `statement_timeout` for each transactional migration; a migration that
    /// exceeds it is rolled back and retried like a lock timeout.
    #[arg(long, env = "SCHEMAGATE_STATEMENT_TIMEOUT", value_parser = parse_pg_timeout, value_name = "DURATION", help_heading = "Timeouts")]
    pub statement_timeout: Option<Duration>,

    /// How many times a migration that hit --ddl-lock-timeout or --statement-timeout is
    /// retried before the run fails.
    #[arg(
        long,
        env = "SCHEMAGATE_DDL_RETRIES",
        default_value_t = 3,
        value_name = "N",
        help_heading = "Timeouts"
    )]
    pub ddl_retries: u32,

    /// PostgreSQL: apply all pending transactional migrations in one transaction (all or
    /// nothing). `-- no-transaction` migrations still run on their own.
    #[arg(long, env = "SCHEMAGATE_SINGLE_TRANSACTION", help_heading = "Migrate")]
    pub single_transaction: bool,

    /// `expand`: apply pending migrations up to the first pending contract migration
    /// (`-- schemagate:phase contract`, or a file in `contract/`), safe while the older
    /// release runs; go past it only when it may run now and an expand comes after it.
    /// `contract`: apply every pending migration, each contract only once no instance
    /// built before it is live in the release registry (exit 75 otherwise). Without
    /// --phase: as `contract`. With --format and -- CMD, the migrator's convention says
    /// which migrations are contract (Rails' db/post_migrate, an Alembic branch labelled
    /// `contract`, Django's `schemagate_phase`, Reshape's `complete`), and CMD runs gated.
    #[arg(
        long,
        env = "SCHEMAGATE_PHASE",
        value_enum,
        value_name = "PHASE",
        help_heading = "Migrate"
    )]
    pub phase: Option<crate::phase::Mode>,

    /// When a contract migration may not run yet, poll the release registry for this long
    /// until it may (exit 124 after), instead of exiting 75 at once.
    #[arg(long, env = "SCHEMAGATE_WAIT_FOR_DRAIN", value_parser = parse_duration, value_name = "DURATION", help_heading = "Migrate")]
    pub wait_for_drain: Option<Duration>,

    /// How long an external migrator gets to exit after SIGTERM before SIGKILL.
    #[arg(long, env = "SCHEMAGATE_GRACE", default_value = "10s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Timeouts")]
    pub grace: Duration,

    /// POST a JSON event here when this run succeeds or fails (repeatable). A slow or
    /// failing endpoint never changes the outcome: 5 s timeout, 3 tries, then a warning.
    #[arg(
        long = "notify-url",
        env = "SCHEMAGATE_NOTIFY_URL",
        value_delimiter = ',',
        value_name = "URL",
        help_heading = "Output"
    )]
    pub notify_urls: Vec<String>,

    /// An external migrator to run under the lock, for example `-- alembic upgrade head`.
    /// Needs --version, or --source with the migrator's directory. stdin is closed; its
    /// output is logged; SCHEMAGATE_VERSION and SCHEMAGATE_LOCK_KEY are added to its
    /// environment.
    #[arg(last = true, value_name = "CMD", help_heading = "Migrate")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").args(["expect", "source"]).required(true)))]
pub struct WaitArgs {
    /// The schema version to wait for (as written in the marker).
    #[arg(
        long,
        env = "SCHEMAGATE_EXPECT",
        value_name = "VERSION",
        help_heading = "Wait"
    )]
    pub expect: Option<String>,

    /// With a schema per tenant (as `fleet` migrates them): wait for this tenant's schema,
    /// whose marker and migrations tables live in it (SCHEMA.schemagate_marker,
    /// SCHEMA._sqlx_migrations). With a database per tenant, the tenant's URL is enough.
    #[arg(
        long = "target",
        id = "tenant",
        env = "SCHEMAGATE_WAIT_TARGET",
        value_name = "SCHEMA",
        help_heading = "Wait"
    )]
    pub tenant: Option<String>,

    /// Wait for the newest migration in this directory, with a matching digest (or for all
    /// of them to be recorded as applied). With another migrator's directory (see
    /// --format), wait until that migrator's own history table shows every migration here
    /// applied, whoever ran it: `wait --source /app --format alembic`. Repeatable for rails,
    /// dbmate and django.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Wait"
    )]
    pub source: Vec<PathBuf>,

    /// Which migrator --source belongs to: sqlx, alembic, django, rails, dbmate, diesel.
    /// Detected from the directory when left out.
    #[arg(
        long,
        env = "SCHEMAGATE_FORMAT",
        value_enum,
        requires = "source",
        value_name = "FORMAT",
        help_heading = "Wait"
    )]
    pub format: Option<crate::formats::Format>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Give up after this long (exit 124). At least one check is made, even with 0; with
    /// --once, it bounds that one check.
    #[arg(long, env = "SCHEMAGATE_TIMEOUT", default_value = "10m", value_parser = parse_duration, value_name = "DURATION", help_heading = "Timeouts")]
    pub timeout: Duration,

    /// Time between checks (jittered by up to 20%); at least 50ms.
    #[arg(long, env = "SCHEMAGATE_INTERVAL", default_value = "1s", value_parser = parse_interval, value_name = "DURATION", help_heading = "Timeouts")]
    pub interval: Duration,

    /// Hold one connection and LISTEN for the marker (PostgreSQL): wakes at commit.
    /// Polling continues as a fallback.
    #[arg(long, env = "SCHEMAGATE_LISTEN", help_heading = "Wait")]
    pub listen: bool,

    /// Check once and exit: 0 ready, 1 not yet (for a Compose healthcheck).
    #[arg(
        long,
        env = "SCHEMAGATE_ONCE",
        conflicts_with = "listen",
        help_heading = "Wait"
    )]
    pub once: bool,

    /// Keep waiting when the newest marker for the version is `failed` (a retry may fix it).
    #[arg(long, env = "SCHEMAGATE_IGNORE_FAILED", help_heading = "Wait")]
    pub ignore_failed: bool,

    /// `expand`: ready once every expand migration of --source is applied, contract ones
    /// pending or not: a new release starts beside the old one before the contract phase
    /// (`migrate --phase contract`) may run.
    #[arg(
        long,
        env = "SCHEMAGATE_PHASE",
        value_enum,
        value_name = "PHASE",
        requires = "source",
        help_heading = "Wait"
    )]
    pub phase: Option<crate::phase::Mode>,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// After the database is ready, also wait until this URL answers 2xx (repeatable),
    /// within the same --timeout.
    #[arg(
        long = "http",
        env = "SCHEMAGATE_HTTP",
        value_delimiter = ',',
        value_name = "URL",
        help_heading = "Wait"
    )]
    pub http: Vec<String>,

    /// Once ready, replace this process with CMD (signals then go straight to the app):
    /// `schemagate wait --expect V -- ./server --port 8080`.
    #[arg(
        last = true,
        value_name = "CMD",
        conflicts_with = "once",
        help_heading = "Wait"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Summarise a fleet (see `fleet`) instead of one database: FILE lists the targets, one
    /// per line, each a URL or a name for `{schema}` (a database per name when
    /// --database-url holds `{schema}`, otherwise a schema in that PostgreSQL database).
    /// Each target's newest marker and, with --source, its pending migrations; 16 targets
    /// are read at a time. Exits 1 when a target cannot be read.
    #[arg(
        long,
        env = "SCHEMAGATE_TARGETS",
        value_name = "FILE",
        conflicts_with = "lock_name",
        help_heading = "Status"
    )]
    pub targets: Option<PathBuf>,

    /// The lock whose holder to show, when `migrate` runs with --lock-name.
    #[arg(
        long,
        env = "SCHEMAGATE_LOCK_NAME",
        value_name = "NAME",
        help_heading = "Status"
    )]
    pub lock_name: Option<String>,

    /// Compare the database with this migrations directory (applied, pending, drift).
    /// Repeatable for rails, dbmate and django.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Status"
    )]
    pub source: Vec<PathBuf>,

    /// Which migrator --source belongs to (detected when left out); for another migrator,
    /// its history table is shown against the files: `status --source . --format django`.
    #[arg(
        long,
        env = "SCHEMAGATE_FORMAT",
        value_enum,
        requires = "source",
        value_name = "FORMAT",
        help_heading = "Status"
    )]
    pub format: Option<crate::formats::Format>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Print one JSON document instead of text.
    #[arg(long, env = "SCHEMAGATE_JSON", help_heading = "Output")]
    pub json: bool,

    /// How many markers to show, newest first.
    #[arg(
        long,
        env = "SCHEMAGATE_LIMIT",
        default_value_t = 20,
        value_name = "N",
        help_heading = "Output"
    )]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to roll back to: it stays applied, everything newer is undone. `0`
    /// undoes every migration.
    #[arg(
        long,
        env = "SCHEMAGATE_TO",
        value_name = "VERSION",
        help_heading = "Rollback"
    )]
    pub to: i64,

    /// Directory of migrations with `.down.sql` files.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Rollback"
    )]
    pub source: PathBuf,

    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Print what would be undone and change nothing.
    #[arg(long, env = "SCHEMAGATE_DRY_RUN", help_heading = "Rollback")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StampArgs {
    /// The version to mark done.
    #[arg(value_name = "VERSION", help_heading = "Stamp")]
    pub version: String,

    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Directory of SQL migrations: record those up to VERSION as applied.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        value_name = "DIR",
        help_heading = "Stamp"
    )]
    pub source: Option<PathBuf>,
}

// `schemagate fleet`: `migrate`'s options, applied to every target, and how to go
// through the targets.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("list").args(["targets", "targets_cmd", "targets_query"]).required(true)))]
pub struct FleetArgs {
    // --database-url may hold `{schema}`; every other option is `migrate`'s.
    #[command(flatten)]
    pub migrate: MigrateArgs,

    /// The targets, one per line: a database URL, or a name for `{schema}` (see above).
    /// Blank lines and lines starting with `#` are skipped.
    #[arg(
        long,
        env = "SCHEMAGATE_TARGETS",
        value_name = "FILE",
        help_heading = "Fleet"
    )]
    pub targets: Option<PathBuf>,

    /// The targets are the lines this shell command prints (read as --targets FILE is).
    /// A command that exits non-zero stops the fleet before any target starts.
    #[arg(
        long,
        env = "SCHEMAGATE_TARGETS_CMD",
        value_name = "CMD",
        help_heading = "Fleet"
    )]
    pub targets_cmd: Option<String>,

    /// The targets are the first column (text) of this query's rows, run on --catalog-url:
    /// `--targets-query "SELECT schema_name FROM tenants WHERE active"`.
    #[arg(
        long,
        env = "SCHEMAGATE_TARGETS_QUERY",
        value_name = "SQL",
        help_heading = "Fleet"
    )]
    pub targets_query: Option<String>,

    /// The database --targets-query runs on (default: --database-url, when it holds no
    /// `{schema}`). Its connection is closed before the first target starts.
    #[arg(
        long,
        env = "SCHEMAGATE_CATALOG_URL",
        hide_env_values = true,
        value_name = "URL",
        requires = "targets_query",
        help_heading = "Fleet"
    )]
    pub catalog_url: Option<String>,

    /// How many targets are migrated at once. Each holds one connection to its server, so
    /// the fleet holds at most N (N + 1 while it reads --targets-query, or proves a server's
    /// advisory lock once, before any target starts).
    #[arg(long, env = "SCHEMAGATE_PARALLEL", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024), value_name = "N", help_heading = "Fleet")]
    pub parallel: u32,

    /// Migrate the first K targets first, and the rest only if none of them failed.
    #[arg(
        long,
        env = "SCHEMAGATE_CANARY",
        default_value_t = 0,
        value_name = "K",
        help_heading = "Fleet"
    )]
    pub canary: u32,

    /// Start no new target once more than N targets (or P% of them) have failed: `5`,
    /// `2%`. The targets in flight finish; the rest are `skipped`. Default: no limit.
    #[arg(long, env = "SCHEMAGATE_MAX_FAILED", value_name = "N|P%", value_parser = parse_max_failed, help_heading = "Fleet")]
    pub max_failed: Option<MaxFailed>,

    /// Give each target at most this long: its connect and lock waits are cut to it, and
    /// a run still going then is stopped as SIGTERM stops `migrate` (its migration rolled
    /// back, a `failed` marker written). It fails alone, with exit code 124 in its line.
    #[arg(long, env = "SCHEMAGATE_TARGET_TIMEOUT", value_parser = parse_connect_timeout, value_name = "DURATION", help_heading = "Fleet")]
    pub target_timeout: Option<Duration>,

    /// Take only this shard's targets: `I/N` (0 <= I < N) keeps the targets whose id hashes
    /// to I modulo N (SHA-256 of the id: stable across runs, machines and versions), so N
    /// processes, each with its own I, cover every target once.
    #[arg(long, env = "SCHEMAGATE_SHARD", value_name = "I/N", value_parser = parse_shard, conflicts_with = "shards", help_heading = "Fleet")]
    pub shard: Option<(u32, u32)>,

    /// As --shard I/N, with I read from JOB_COMPLETION_INDEX (set in each pod of a
    /// Kubernetes Indexed Job): `--shards 8` in a Job of 8 completions.
    #[arg(long, env = "SCHEMAGATE_SHARDS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Fleet")]
    pub shards: Option<u32>,

    /// Print the summary as one JSON document instead of text.
    #[arg(long, env = "SCHEMAGATE_JSON", help_heading = "Output")]
    pub json: bool,
}

/// `--shard I/N`.
fn parse_shard(s: &str) -> Result<(u32, u32), InvalidValue> {
    let bad = || {
        InvalidValue(format!(
            "invalid --shard {s:?}: I/N, with 0 <= I < N (for example 3/8)"
        ))
    };
    let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_max_failed(s: &str) -> Result<MaxFailed, InvalidValue> {
    let bad = || {
        InvalidValue(format!(
            "invalid --max-failed {s:?}: a count (5) or a percentage (2%)"
        ))
    };
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(InvalidValue(format!(
                    "--max-failed {s:?}: a percentage is 0% to 100%"
                )));
            }
            Ok(MaxFailed::Percent(p))
        }
        None => s.trim().parse().map(MaxFailed::Count).map_err(|_| bad()),
    }
}

// `schemagate digest`.
#[derive(Debug, Args)]
pub struct DigestArgs {
    /// Directory of SQL migrations, as for `migrate`; the digest file is written there.
    #[arg(long, env = "SCHEMAGATE_SOURCE", default_value = "./migrations")]
    pub source: PathBuf,
}

// `schemagate completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

// `schemagate man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `schemagate.1` and one page per command (`schemagate-migrate.1`, ...) into
    /// this directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// The server to rehearse on (default: a throwaway SQLite file in a temp dir). smoke
    /// creates a scratch database there, rehearses in it and drops it: the database in the
    /// URL is never touched. A SQLite file must be new or hold no tables.
    #[arg(
        long,
        env = "SCHEMAGATE_SMOKE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Smoke"
    )]
    pub database_url: Option<String>,

    /// Directory of SQL migrations, as for `migrate`.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        default_value = "./migrations",
        value_name = "DIR",
        help_heading = "Smoke"
    )]
    pub source: PathBuf,

    /// How many `migrate` and how many `wait` processes to start at once.
    #[arg(long, env = "SCHEMAGATE_REPLICAS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=500), value_name = "N", help_heading = "Smoke")]
    pub replicas: u32,

    /// Rehearse rolling updates with expand/contract instead (docs/src/phases.md), on
    /// migrations it generates (--source is not read). Each update replaces 3 instances
    /// of the old release (`wait --phase expand --release vK -- sleep`) by 3 of the new
    /// one, while `migrate --phase contract --wait-for-drain` waits for the old ones to go.
    /// The old ones end by SIGTERM, SIGKILL or, on a server --database-url only, a network
    /// partition (each old instance talks to the server through a proxy of smoke's own
    /// that stops forwarding: its supervisor must stop its app before its row expires).
    /// A new instance is SIGKILLed at random; every fifth update skips a release
    /// (N -> N+2). Fails when a contract starts while an app of an older release is alive,
    /// a partitioned app outlives its registry row, a contract starts over 60 s after the
    /// last old app ended, an N -> N+2 update fails, or `check` finds a breaking change
    /// in an expand migration. Needs `sleep` on PATH.
    #[arg(long, help_heading = "Smoke")]
    pub rolling: bool,

    /// With --rolling: how many rolling updates (--timeout bounds each one).
    #[arg(long, requires = "rolling", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000), value_name = "N", help_heading = "Smoke")]
    pub updates: u32,

    /// Give up on the whole rehearsal after this long.
    #[arg(long, env = "SCHEMAGATE_TIMEOUT", default_value = "2m", value_parser = parse_duration, value_name = "DURATION", help_heading = "Timeouts")]
    pub timeout: Duration,

    /// Log format of this process (the rehearsed processes' logs are summarised).
    #[arg(long, env = "SCHEMAGATE_LOG_FORMAT", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, help_heading = "Output")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of SQL migrations, as for `migrate`.
    #[arg(
        long,
        env = "SCHEMAGATE_SOURCE",
        required_unless_present = "command",
        conflicts_with_all = ["command", "baseline"],
        requires = "since"
    , value_name = "DIR", help_heading = "Check")]
    pub source: Option<PathBuf>,

    /// With --source: the version the release still running was built for. Migrations up
    /// to it are the baseline; the newer ones are checked. `0`: check them all.
    #[arg(
        long,
        env = "SCHEMAGATE_SINCE",
        value_name = "VERSION",
        help_heading = "Check"
    )]
    pub since: Option<i64>,

    /// With -- CMD: a shell command that brings the scratch database to the previous
    /// release (run with DATABASE_URL set to the scratch database), for example
    /// `alembic upgrade 0002_add_display_name`. Omitted: start from an empty database.
    #[arg(
        long,
        env = "SCHEMAGATE_BASELINE",
        requires = "command",
        value_name = "CMD",
        help_heading = "Check"
    )]
    pub baseline: Option<String>,

    /// Use this existing, empty database on the same server instead of creating one (for
    /// a role without CREATEDB). Refused when it holds tables check did not create.
    #[arg(
        long,
        env = "SCHEMAGATE_SCRATCH_DATABASE",
        value_name = "NAME",
        help_heading = "Check"
    )]
    pub scratch_database: Option<String>,

    /// Accept a finding (repeatable), as a `schemagate:allow` comment would:
    /// `--allow 'drop-column users.legacy_email'`. Meant for external migrators.
    #[arg(
        long = "allow",
        env = "SCHEMAGATE_ALLOW",
        value_delimiter = ',',
        value_name = "FINDING",
        help_heading = "Check"
    )]
    pub allow: Vec<String>,

    /// Accept the findings that `schemagate:allow` comments in this file name (repeatable):
    /// with an external migrator, point it at the revision files the new release adds.
    #[arg(
        long = "allow-file",
        env = "SCHEMAGATE_ALLOW_FILE",
        value_delimiter = ',',
        value_name = "PATH",
        help_heading = "Check"
    )]
    pub allow_files: Vec<PathBuf>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// How often the side connection samples pg_locks while a `-- no-transaction`
    /// migration or an external migrator runs.
    #[arg(long, env = "SCHEMAGATE_SAMPLE_INTERVAL", default_value = "5ms", value_parser = parse_duration, value_name = "DURATION", help_heading = "Check")]
    pub sample_interval: Duration,

    /// Print one JSON document instead of the table.
    #[arg(long, env = "SCHEMAGATE_JSON", help_heading = "Output")]
    pub json: bool,

    /// An external migrator that applies the new release to the scratch database, for
    /// example `-- alembic upgrade head`. It gets DATABASE_URL (and SCHEMAGATE_DATABASE_URL)
    /// set to the scratch database.
    #[arg(last = true, value_name = "CMD", help_heading = "Check")]
    pub command: Vec<String>,
}

crate::error::reason! {
    /// Why a flag's value is refused, as clap prints it after `invalid value '…' for '--flag'`.
    pub struct InvalidValue;
}

/// The longest duration any flag takes: beyond it, deadline arithmetic overflows and
/// servers refuse the interval.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Humane durations: `30s`, `10m`, `1h 30m`, `250ms`; at most a year.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidValue> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| InvalidValue(format!("invalid duration {s:?}: {e} (try 30s, 10m)")))?;
    if d > MAX_DURATION {
        return Err(InvalidValue(format!(
            "duration {s:?} is too long: at most 366d"
        )));
    }
    Ok(d)
}

/// A duration with a floor: below it, the flag would spin (open connections in a loop).
fn at_least(s: &str, min: Duration, min_text: &str) -> Result<Duration, InvalidValue> {
    let d = parse_duration(s)?;
    if d < min {
        return Err(InvalidValue(format!(
            "duration {s:?} is too short: at least {min_text}"
        )));
    }
    Ok(d)
}

/// `wait --interval`: each check opens a connection; at least 50ms.
pub fn parse_interval(s: &str) -> Result<Duration, InvalidValue> {
    at_least(s, Duration::from_millis(50), "50ms")
}

/// `--connect-timeout`: 0 would give up before the first attempt.
pub fn parse_connect_timeout(s: &str) -> Result<Duration, InvalidValue> {
    at_least(s, Duration::from_millis(100), "100ms")
}

/// `--lease-ttl`: renewed every third of it; at least 3s.
pub fn parse_lease_ttl(s: &str) -> Result<Duration, InvalidValue> {
    at_least(s, Duration::from_secs(3), "3s")
}

/// PostgreSQL's `lock_timeout` / `statement_timeout`: `0` means no limit, as in
/// PostgreSQL; otherwise at most 2147483647ms, the largest the server accepts.
pub fn parse_pg_timeout(s: &str) -> Result<Duration, InvalidValue> {
    let d = parse_duration(s)?;
    if d.as_millis() > i32::MAX as u128 {
        return Err(InvalidValue(format!(
            "duration {s:?} is longer than PostgreSQL accepts (at most 2147483647ms, about 24d \
             20h; 0 means no limit)"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn value_parsers_name_the_bad_value() {
        fn why<T>(r: Result<T, InvalidValue>) -> String {
            r.err().expect("refused").to_string()
        }
        assert_eq!(
            why(parse_shard("3/3")),
            "invalid --shard \"3/3\": I/N, with 0 <= I < N (for example 3/8)"
        );
        assert_eq!(
            why(parse_max_failed("120%")),
            "--max-failed \"120%\": a percentage is 0% to 100%"
        );
        assert_eq!(
            why(parse_max_failed("many")),
            "invalid --max-failed \"many\": a count (5) or a percentage (2%)"
        );
        assert_eq!(
            why(parse_duration("400d")),
            "duration \"400d\" is too long: at most 366d"
        );
        assert_eq!(
            why(parse_lease_ttl("1s")),
            "duration \"1s\" is too short: at least 3s"
        );
        assert!(why(parse_pg_timeout("25d")).starts_with("duration \"25d\" is longer than"));
        assert!(why(parse_duration("soon")).starts_with("invalid duration \"soon\": "));
        // clap prints the reason as it is, after naming the flag.
        let e = Cli::try_parse_from(["schemagate", "wait", "--interval", "10ms"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            e.to_string().contains(
                "invalid value '10ms' for '--interval <DURATION>': duration \"10ms\" is too \
                 short: at least 50ms"
            ),
            "{e}"
        );
    }
}
