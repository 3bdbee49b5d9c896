//! The command line, validated into one typed config per subcommand (the types are the
//! commands' own, in `cmd/configs.rs`; the settings they carry are `settings.rs`'s). Every
//! check of a flag or of a combination of flags lives here, so a handler never sees a value
//! it must still doubt; checks that need the migrations' contents (is `--to V` one of them?)
//! stay where the source is read. This is the only module that reads `cli`.

mod fleet;

use std::path::{Path, PathBuf};

use crate::cli::{
    self, CheckArgs, ConnectArgs, HeartbeatArgs, LockArgs, LogFormat, MigrateArgs, RegistryArgs,
    RollbackArgs, SmokeArgs, StampArgs, StatusArgs, WaitArgs,
};
use crate::cmd::{
    CheckConfig, CheckPlan, DdlTimeouts, Expects, HeartbeatConfig, MigrateConfig, Registration,
    RollbackConfig, SmokeConfig, StampConfig, StatusConfig, WaitConfig, WaitTarget, Work,
};
use crate::error::{Error, Result};
use crate::formats::{self, Format};
use crate::settings::{Backend, Config, LockConfig, LockMode, MigrationsTable, Table};

impl MigrateConfig {
    pub fn from_args(args: &MigrateArgs) -> Result<MigrateConfig> {
        let work = migrate_work(args)?;
        let sql = match &work {
            Work::Sql { dir, .. } => Some(dir.as_path()),
            _ => None,
        };
        let foreign = matches!(work, Work::Foreign { .. });
        let db = connection(
            &sqlx_only(&args.connect, foreign),
            "migrate",
            Some(&args.lock),
            sql,
        )?;
        let postgres_only = [
            (args.ddl_lock_timeout.is_some(), "--ddl-lock-timeout"),
            (args.statement_timeout.is_some(), "--statement-timeout"),
            (args.single_transaction, "--single-transaction"),
        ];
        if let Some((_, flag)) = postgres_only.iter().find(|(set, _)| *set)
            && db.backend != Backend::Postgres
        {
            return Err(Error::Config(format!(
                "{flag} is supported on PostgreSQL only"
            )));
        }
        crate::http::validate(&args.notify_urls, "--notify-url")?;
        if let Some(flag) = [
            (args.phase.is_some(), "--phase"),
            (args.wait_for_drain.is_some(), "--wait-for-drain"),
        ]
        .iter()
        .find_map(|(set, flag)| (*set && sql.is_none() && !foreign).then_some(flag))
        {
            return Err(Error::Config(format!(
                "{flag} needs --source DIR: SQL migrations, or another migrator's directory \
                 with --format (its files say which migrations are contract); a bare -- CMD \
                 has no phases"
            )));
        }
        Ok(MigrateConfig {
            db,
            work,
            dry_run: args.dry_run,
            ignore_missing: args.ignore_missing,
            single_transaction: args.single_transaction,
            timeouts: DdlTimeouts {
                lock_timeout: args.ddl_lock_timeout,
                statement_timeout: args.statement_timeout,
                retries: args.ddl_retries,
            },
            grace: args.grace,
            notify_urls: args.notify_urls.clone(),
            phase: args.phase.unwrap_or(crate::phase::Mode::Contract),
            wait_for_drain: args.wait_for_drain,
        })
    }
}

/// `--source`, `--format`, `--version` and `-- CMD` into what to run (clap requires at
/// least one of `--source` and `-- CMD`).
fn migrate_work(args: &MigrateArgs) -> Result<Work> {
    let Some(dir) = args.source.first() else {
        let Some(version) = args.version.as_deref().filter(|v| !v.trim().is_empty()) else {
            return Err(Error::Config(
                "-- CMD needs --version V (the schema version it brings the database to), or \
                 --source DIR with the migrator's directory"
                    .into(),
            ));
        };
        let version = checked_version(version, "--version")?;
        // Not found is a usage error, before we connect or take the lock.
        crate::child::resolve(&args.command[0])?;
        return Ok(Work::External {
            version,
            command: args.command.clone(),
        });
    };
    if args.command.is_empty() && args.format.is_none_or(|f| f == Format::Sqlx) {
        if args.version.is_some() {
            return Err(Error::Config(
                "--version goes with an external migrator (-- CMD); a SQL source's version is \
                 its newest migration"
                    .into(),
            ));
        }
        if args.source.len() > 1 {
            // Several: name the migrator they belong to before refusing them.
            match formats::resolve_all(&args.source, args.format)? {
                Format::Sqlx => one_source(Format::Sqlx, &args.source)?,
                format => return Err(formats::needs_command(dir, format)),
            }
        }
        return Ok(Work::Sql {
            dir: dir.clone(),
            detect: args.format.is_none(),
        });
    }
    match (
        formats::resolve_all(&args.source, args.format)?,
        args.command.is_empty(),
    ) {
        (Format::Sqlx, false) => Err(Error::Config(
            "give --source DIR or -- CMD, not both (or --format with the migrator's \
             directory and its command)"
                .into(),
        )),
        (format, true) => Err(formats::needs_command(dir, format)),
        (format, false) => {
            if args.version.is_some() {
                return Err(Error::Config(format!(
                    "--version comes from the files with --format {}: drop it",
                    format.name()
                )));
            }
            let spec = foreign_spec(
                &args.source,
                format,
                &args.connect,
                &[
                    (args.ignore_missing, "--ignore-missing"),
                    (args.single_transaction, "--single-transaction"),
                    (args.ddl_lock_timeout.is_some(), "--ddl-lock-timeout"),
                    (args.statement_timeout.is_some(), "--statement-timeout"),
                ],
            )?;
            crate::child::resolve(&args.command[0])?;
            Ok(Work::Foreign {
                spec,
                command: args.command.clone(),
            })
        }
    }
}

impl WaitConfig {
    pub fn from_args(args: &WaitArgs) -> Result<WaitConfig> {
        // clap makes --expect and --source one required choice.
        let target = match (&args.expect, args.source.as_slice()) {
            // Trimmed as `migrate --version` is, so a version file's line end (`v1\r`) on
            // either side still matches.
            (Some(v), _) => WaitTarget::Expect(checked_version(v, "--expect")?),
            // A digest file is only ever written for a sqlx source: no detection (a
            // directory listing on the path every replica pays).
            (None, [dir]) if args.format.is_none() && dir.join(crate::digest::FILE).exists() => {
                WaitTarget::Sql(dir.clone())
            }
            (None, []) => unreachable!("clap requires --expect or --source"),
            (None, dirs) => match formats::resolve_all(dirs, args.format)? {
                Format::Sqlx => {
                    one_source(Format::Sqlx, dirs)?;
                    WaitTarget::Sql(dirs[0].clone())
                }
                format => WaitTarget::Foreign(foreign_spec(dirs, format, &args.connect, &[])?),
            },
        };
        let sql = match &target {
            WaitTarget::Sql(dir) => Some(dir.as_path()),
            _ => None,
        };
        let foreign = matches!(target, WaitTarget::Foreign(_));
        let mut connect = sqlx_only(&args.connect, foreign);
        if let Some(schema) = &args.tenant {
            in_schema(&mut connect, schema.trim(), !foreign)?;
        }
        let db = connection(&connect, "wait", None, sql)?;
        if args.listen {
            if db.backend != Backend::Postgres {
                return Err(Error::Config(format!(
                    "--listen needs PostgreSQL's LISTEN/NOTIFY; {} has none: drop --listen to \
                     poll",
                    db.backend.name()
                )));
            }
            if let WaitTarget::Foreign(spec) = &target {
                return Err(Error::Config(format!(
                    "--listen wakes on schemagate's marker, and {} writes none: drop --listen \
                     to poll {}",
                    spec.format.name(),
                    spec.table
                        .as_deref()
                        .unwrap_or_else(|| spec.format.history_table())
                )));
            }
        }
        crate::http::validate(&args.http, "--http")?;
        if let Some(program) = args.command.first() {
            // Not found is a usage error now, not after minutes of waiting.
            crate::child::resolve(program)?;
        }
        let expand_only = wait_phase(args, &target)?;
        let registration = wait_registration(args, &target)?;
        Ok(WaitConfig {
            db,
            target,
            timeout: args.timeout,
            interval: args.interval,
            listen: args.listen,
            once: args.once,
            ignore_failed: args.ignore_failed,
            http: args.http.clone(),
            command: args.command.clone(),
            expand_only,
            registration,
        })
    }
}

/// `wait --phase`: `expand` needs a SQL source; `contract` is what `wait` does anyway.
fn wait_phase(args: &WaitArgs, target: &WaitTarget) -> Result<bool> {
    match (args.phase, target) {
        (None, _) => Ok(false),
        (Some(crate::phase::Mode::Contract), _) => Err(Error::Config(
            "wait --phase contract is what wait does without --phase (every migration \
             applied): drop --phase"
                .into(),
        )),
        (Some(crate::phase::Mode::Expand), WaitTarget::Sql(_) | WaitTarget::Foreign(_)) => Ok(true),
        (Some(_), _) => Err(Error::Config(
            "--phase expand needs --source DIR (its phases are read from the files)".into(),
        )),
    }
}

/// `wait --release`: the instance expects the source's newest version, or `--expect`.
fn wait_registration(args: &WaitArgs, target: &WaitTarget) -> Result<Option<Registration>> {
    let expects = match target {
        WaitTarget::Expect(v) => Expects::Version(v.clone()),
        WaitTarget::Sql(dir) => Expects::Source(dir.clone()),
        WaitTarget::Foreign(spec) if args.registry.release.is_some() => {
            return Err(Error::Config(format!(
                "--release needs --source DIR of SQL migrations or --expect V: the contract \
                 gate compares versions as numbers, and {} names its versions otherwise",
                spec.format.name()
            )));
        }
        WaitTarget::Foreign(_) => return Ok(None),
    };
    registration(&args.registry, expects)
}

impl StatusConfig {
    pub fn from_args(args: &StatusArgs) -> Result<StatusConfig> {
        let source = match args.source.as_slice() {
            [] => None,
            dirs => Some(match formats::resolve_all(dirs, args.format)? {
                Format::Sqlx => {
                    one_source(Format::Sqlx, dirs)?;
                    formats::Spec::new(dirs.to_vec(), Format::Sqlx, None)?
                }
                format => foreign_spec(dirs, format, &args.connect, &[])?,
            }),
        };
        let sql = match &source {
            Some(spec) if spec.format == Format::Sqlx => Some(spec.dirs[0].as_path()),
            _ => None,
        };
        let foreign = source.as_ref().is_some_and(|s| s.format != Format::Sqlx);
        let connect = sqlx_only(&args.connect, foreign);
        let targets = match &args.targets {
            None => Vec::new(),
            Some(_) if foreign => {
                return Err(Error::Config(
                    "status --targets compares each target with a SQL (sqlx) source; for \
                     another migrator's, run status --source on one target"
                        .into(),
                ));
            }
            Some(file) => {
                let text = crate::files::read_small(file, 64 << 20).map_err(|e| {
                    Error::Config(format!("cannot read --targets {}: {e}", file.display()))
                })?;
                let origin = format!("--targets {}", file.display());
                fleet::status_targets(&text, &origin, &connect, !foreign)?
                    .into_iter()
                    .map(|(id, c)| Ok((id, connection(&c, "status", None, sql)?)))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let mut db = match targets.first() {
            // The first target's: `db` is what an error before any read names.
            Some((_, first)) => first.clone(),
            None => connection(&connect, "status", None, sql)?,
        };
        if let Some(name) = &args.lock_name {
            db.lock = LockConfig::named(Some(name), &db.table, db.lock.mode);
        }
        Ok(StatusConfig {
            db,
            targets,
            source,
            json: args.json,
            limit: args.limit,
        })
    }
}

impl RollbackConfig {
    pub fn from_args(args: &RollbackArgs) -> Result<RollbackConfig> {
        if args.to < 0 {
            return Err(Error::Config(format!(
                "--to {} is not a migration version: versions are positive (0 undoes every \
                 migration)",
                args.to
            )));
        }
        Ok(RollbackConfig {
            db: connection(
                &args.connect,
                "rollback",
                Some(&args.lock),
                Some(&args.source),
            )?,
            to: args.to,
            source: args.source.clone(),
            dry_run: args.dry_run,
        })
    }
}

impl StampConfig {
    pub fn from_args(args: &StampArgs) -> Result<StampConfig> {
        let db = connection(
            &args.connect,
            "stamp",
            Some(&args.lock),
            args.source.as_deref(),
        )?;
        let version = checked_version(&args.version, "the version to stamp")?;
        let source = match &args.source {
            Some(dir) => {
                let v: i64 = version.parse().map_err(|_| {
                    Error::Config(format!(
                        "{version:?} is not a migration version (an integer) of {}",
                        dir.display()
                    ))
                })?;
                Some((dir.clone(), v))
            }
            None => None,
        };
        Ok(StampConfig {
            db,
            version,
            source,
        })
    }
}

impl SmokeConfig {
    pub fn from_args(args: &SmokeArgs) -> SmokeConfig {
        SmokeConfig {
            database_url: args
                .database_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
            source: args.source.clone(),
            replicas: args.replicas,
            rolling: args.rolling.then_some(args.updates),
            timeout: args.timeout,
            json_logs: args.log_format == LogFormat::Json,
        }
    }
}

impl CheckConfig {
    pub fn from_args(args: &CheckArgs) -> Result<CheckConfig> {
        // The rehearsal runs on a scratch database, with `migrate`'s history table there:
        // the one `--migrations-table` or the source's `sqlx.toml` names.
        let db = connection(&args.connect, "check", None, args.source.as_deref())?;
        // clap requires --source or -- CMD, never both, and --since with --source.
        let plan = match (&args.source, args.since) {
            (Some(dir), Some(since)) => CheckPlan::Sql {
                dir: dir.clone(),
                since,
            },
            (Some(_), None) => unreachable!("clap requires --since with --source"),
            (None, Some(_)) => {
                return Err(Error::Config(
                    "--since goes with --source; with -- CMD, bring the scratch database to \
                     the running release with --baseline 'CMD'"
                        .into(),
                ));
            }
            (None, None) => {
                crate::child::resolve(&args.command[0])?;
                CheckPlan::External {
                    baseline: args.baseline.clone(),
                    command: args.command.clone(),
                }
            }
        };
        if db.backend != Backend::Postgres {
            if matches!(plan, CheckPlan::External { .. }) {
                return Err(Error::Config(format!(
                    "check -- CMD needs PostgreSQL (its locks are observed from pg_locks); on \
                     {} check a SQL source with --source DIR --since V",
                    db.backend.name()
                )));
            }
            if args.scratch_database.is_some() {
                return Err(Error::Config(format!(
                    "--scratch-database is supported on PostgreSQL only; on {} check creates \
                     its own",
                    db.backend.name()
                )));
            }
        }
        let mut allowed = crate::check::parse_allow_flags(&args.allow)?;
        for file in &args.allow_files {
            let text = crate::files::read_small(file, 16 << 20).map_err(|e| {
                Error::Config(format!("cannot read --allow-file {}: {e}", file.display()))
            })?;
            allowed.extend(crate::check::allows(&text));
        }
        Ok(CheckConfig {
            db,
            plan,
            scratch_database: args.scratch_database.clone(),
            allowed,
            sample_interval: args.sample_interval,
            json: args.json,
        })
    }
}

/// `wait --target SCHEMA`: the tables `fleet` gives a schema per tenant, in that schema.
/// (`sqlx`: the SQL migrations' table too; another migrator keeps its own history table.)
fn in_schema(connect: &mut ConnectArgs, schema: &str, sqlx: bool) -> Result<()> {
    let qualified = |flag: &str, name: &str| {
        if name.contains('.') {
            return Err(Error::Config(format!(
                "{flag} {name:?} names a schema, and --target {schema} names the tenant's: give \
                 the bare table name"
            )));
        }
        let t = format!("{schema}.{name}");
        Table::parse(&t).map_err(|_| {
            Error::Config(format!(
                "--target {schema:?} is not a schema name (a letter or `_`, then letters, \
                 digits or `_`; not a reserved word)"
            ))
        })?;
        Ok(t)
    };
    connect.table = qualified("--table", &connect.table)?;
    if sqlx {
        let name = connect
            .migrations_table
            .clone()
            .unwrap_or_else(|| MigrationsTable::DEFAULT.to_owned());
        connect.migrations_table = Some(qualified("--migrations-table", &name)?);
    }
    Ok(())
}

/// Several `--source`s only for a migrator that reads several directories.
fn one_source(format: Format, dirs: &[PathBuf]) -> Result<()> {
    if dirs.len() <= 1 || format.reads_several_sources() {
        return Ok(());
    }
    let hint = match format {
        Format::Sqlx => {
            "; for two migration tracks sharing one history, run `migrate --source DIR \
             --ignore-missing` once per track"
        }
        Format::Alembic => "; alembic reads `version_locations` from alembic.ini: give the project",
        _ => "",
    };
    Err(Error::Config(format!(
        "--source is given {} times ({}), but {} reads one directory{hint}",
        dirs.len(),
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        format.name()
    )))
}

/// Another migrator's source, once every flag it does not read is refused (naming the flag
/// and the format: a flag silently ignored reads as honoured). `--migrations-table` names
/// dbmate's own table (its `--migrations-table`).
fn foreign_spec(
    dirs: &[PathBuf],
    format: Format,
    connect: &ConnectArgs,
    flags: &[(bool, &str)],
) -> Result<formats::Spec> {
    one_source(format, dirs)?;
    let table = connect
        .migrations_table
        .as_deref()
        .filter(|t| !t.trim().is_empty());
    if table.is_some() && !format.reads_migrations_table() {
        return Err(Error::Config(format!(
            "--migrations-table is not read with --format {}: {} keeps its history in {} \
             (SCHEMAGATE_MIGRATIONS_TABLE counts too)",
            format.name(),
            format.name(),
            format.history_table()
        )));
    }
    if let Some((_, flag)) = flags.iter().find(|(set, _)| *set) {
        return Err(Error::Config(format!(
            "{flag} is not read with --format {}: {} applies the migrations itself",
            format.name(),
            format.name()
        )));
    }
    formats::Spec::new(dirs.to_vec(), format, table)
}

/// The connection options; another migrator's source keeps `--migrations-table` to itself
/// (dbmate's table is not sqlx's).
fn sqlx_only(args: &ConnectArgs, foreign: bool) -> ConnectArgs {
    let mut args = args.clone();
    if foreign {
        args.migrations_table = None;
    }
    args
}

/// A version given on the command line: trimmed, not empty, and short enough for the
/// marker's column.
fn checked_version(raw: &str, what: &str) -> Result<String> {
    let version = raw.trim();
    if version.is_empty() {
        return Err(Error::Config(format!("{what} must not be empty")));
    }
    let chars = version.chars().count();
    if chars > crate::db::MAX_VERSION {
        return Err(Error::Config(format!(
            "{what} is {chars} characters long; the marker stores at most {} (a migration \
             head or a hash fits): {version:.40}…",
            crate::db::MAX_VERSION,
        )));
    }
    Ok(version.to_owned())
}

/// The connection options (and the lock flags of the commands that take the lock) into a
/// `Config`. The URL comes from --database-url, --database-url-file or DATABASE_URL; the
/// migrations table from --migrations-table, else the `sqlx.toml` of the SQL source `sql`.
fn connection(
    args: &ConnectArgs,
    mode: &str,
    lock: Option<&LockArgs>,
    sql: Option<&Path>,
) -> Result<Config> {
    // An empty variable is unset: SCHEMAGATE_DATABASE_URL="" must not shadow DATABASE_URL.
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let file = args
        .database_url_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty());
    let raw = match (nonempty(args.database_url.clone()), file) {
        (Some(_), Some(path)) => {
            return Err(Error::Config(format!(
                "both --database-url (or SCHEMAGATE_DATABASE_URL) and --database-url-file {} \
                 are set: pass one",
                path.display()
            )));
        }
        (Some(url), None) => url,
        (None, Some(path)) => read_url_file(path)?,
        (None, None) => nonempty(std::env::var("DATABASE_URL").ok()).ok_or_else(|| {
            Error::Config(
                "no database URL: pass --database-url, --database-url-file, or set \
                 SCHEMAGATE_DATABASE_URL or DATABASE_URL"
                    .into(),
            )
        })?,
    };
    let table = Table::parse(&args.table)?;
    let migrations_table = MigrationsTable::resolve(args.migrations_table.as_deref(), sql)?;
    let mut lock_config = LockConfig::named(
        lock.and_then(|l| l.lock_name.as_deref()),
        &table,
        lock.map_or(LockMode::Auto, |l| l.lock.into()),
    );
    if let Some(l) = lock {
        lock_config.lease_ttl = l.lease_ttl;
        lock_config.wait = l.lock_wait;
    }
    Config::new(
        &raw,
        mode,
        table,
        migrations_table,
        lock_config,
        args.connect_timeout,
        args.log_format == LogFormat::Json,
    )
}

fn read_url_file(path: &Path) -> Result<String> {
    // A mounted secret holds one URL: a larger file is refused, not read.
    let text = crate::files::read_small(path, 64 * 1024).map_err(|e| {
        Error::Config(format!(
            "cannot read --database-url-file {}: {e}",
            path.display()
        ))
    })?;
    let url = text.trim();
    if url.is_empty() {
        return Err(Error::Config(format!(
            "--database-url-file {} is empty",
            path.display()
        )));
    }
    Ok(url.to_owned())
}

impl From<cli::LockMode> for LockMode {
    fn from(mode: cli::LockMode) -> LockMode {
        match mode {
            cli::LockMode::Auto => LockMode::Auto,
            cli::LockMode::Advisory => LockMode::Advisory,
            cli::LockMode::Lease => LockMode::Lease,
        }
    }
}

impl HeartbeatConfig {
    pub fn from_args(args: &HeartbeatArgs) -> Result<HeartbeatConfig> {
        let expects = match (&args.expect, &args.source) {
            (Some(v), _) => Expects::Version(checked_version(v, "--expect")?),
            (None, Some(dir)) => Expects::Source(dir.clone()),
            (None, None) => unreachable!("clap requires --expect or --source"),
        };
        let me = registration(&args.registry, expects)?
            .ok_or_else(|| Error::Config("heartbeat needs --release NAME".into()))?;
        let db = connection(&args.connect, "heartbeat", None, args.source.as_deref())?;
        Ok(HeartbeatConfig { db, me })
    }
}

/// `--release`, `--instance` and `--instance-ttl`: `None` without `--release`.
pub fn registration(args: &RegistryArgs, expects: Expects) -> Result<Option<Registration>> {
    let Some(release) = args.release.as_deref().filter(|r| !r.trim().is_empty()) else {
        if let Some(i) = &args.instance {
            return Err(Error::Config(format!(
                "--instance {i:?} goes with --release NAME"
            )));
        }
        return Ok(None);
    };
    let instance = match &args.instance {
        Some(i) => i.clone(),
        None => crate::settings::host_name(),
    };
    Ok(Some(Registration {
        instance: crate::registry::checked_name(&instance, "--instance")?,
        release: crate::registry::checked_name(release, "--release")?,
        expects,
        ttl: args.instance_ttl,
    }))
}
