//! `schemagate fleet` at the edge: the command line becomes the fleet's configuration,
//! and one target's line the `MigrateConfig` of an ordinary `migrate` run (its URL, its
//! tables and search_path, its command).

use crate::cli::{ConnectArgs, FleetArgs, LogFormat, MigrateArgs};
use crate::cmd::MigrateConfig;
use crate::cmd::fleet::{
    FleetConfig, PLACEHOLDER, Plan, Target, TargetList, URL_PLACEHOLDER, What,
};
use crate::error::{Error, Result};
use crate::settings::{self, Config, DEFAULT_TABLE, LockConfig, LockMode, MigrationsTable, Table};

/// Where a named target lives.
#[derive(Debug, Clone)]
enum Layout {
    /// No --database-url: every line must be a URL.
    UrlsOnly,
    /// --database-url with `{schema}`: a database per name.
    Databases(String),
    /// --database-url without `{schema}` (PostgreSQL): a schema per name in that database.
    Schemas(String),
}

impl FleetConfig {
    pub fn from_args(args: &FleetArgs) -> Result<FleetConfig> {
        let m = &args.migrate;
        let layout = layout_of(&m.connect)?;
        if m.lock.lock_name.is_some() {
            return Err(Error::Config(
                "--lock-name is not taken by fleet: every target's lock is derived from its \
                 own marker table, so that targets never wait on each other"
                    .into(),
            ));
        }
        let list = match (&args.targets, &args.targets_cmd, &args.targets_query) {
            (Some(path), _, _) => TargetList::File(path.clone()),
            (_, Some(cmd), _) => TargetList::Command(cmd.clone()),
            (_, _, Some(sql)) => {
                let raw = match (&args.catalog_url, &layout) {
                    (Some(url), _) => url.clone(),
                    (None, Layout::Schemas(url)) => url.clone(),
                    _ => {
                        return Err(Error::Config(
                            "--targets-query needs --catalog-url: the database to run it on \
                             (--database-url holds {schema}, or is not given)"
                                .into(),
                        ));
                    }
                };
                let table = Table::parse(DEFAULT_TABLE)?;
                let catalog = Config::new(
                    &raw,
                    "fleet",
                    table.clone(),
                    MigrationsTable::resolve(None, None)?,
                    LockConfig::named(None, &table, LockMode::Auto),
                    m.connect.connect_timeout,
                    m.connect.log_format == LogFormat::Json,
                )?;
                TargetList::Query(Box::new(catalog), sql.clone())
            }
            _ => unreachable!("clap requires one of --targets, --targets-cmd, --targets-query"),
        };
        let shard = match (args.shard, args.shards) {
            (Some(shard), _) => Some(shard),
            (None, Some(n)) => {
                let raw = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
                    Error::Config(
                        "--shards N reads this shard's index from JOB_COMPLETION_INDEX, which \
                         is not set (Kubernetes sets it in the pods of an Indexed Job): set \
                         it, or pass --shard I/N"
                            .into(),
                    )
                })?;
                let i: u32 = raw.trim().parse().map_err(|_| {
                    Error::Config(format!("JOB_COMPLETION_INDEX {raw:?} is not an index"))
                })?;
                if i >= n {
                    return Err(Error::Config(format!(
                        "JOB_COMPLETION_INDEX {i} is not below --shards {n}: the Job's \
                         completions and --shards must be equal"
                    )));
                }
                Some((i, n))
            }
            (None, None) => None,
        };
        let cfg = FleetConfig {
            list,
            shard,
            parallel: args.parallel as usize,
            canary: args.canary as usize,
            max_failed: args.max_failed,
            target_timeout: args.target_timeout,
            json: args.json,
            plan: Box::new(FleetPlan {
                layout,
                migrate: m.clone(),
                target_timeout: args.target_timeout,
            }),
        };
        Ok(cfg)
    }
}

/// Where named targets live, from --database-url (or --database-url-file, or
/// DATABASE_URL): nowhere (every line a URL), a database per name (`{schema}` in the
/// URL), or a schema per name in one PostgreSQL database.
fn layout_of(c: &ConnectArgs) -> Result<Layout> {
    let url = c
        .database_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let url = match (url, &c.database_url_file) {
        (Some(_), Some(path)) if !path.as_os_str().is_empty() => {
            return Err(Error::Config(format!(
                "both --database-url and --database-url-file {} are set: pass one",
                path.display()
            )));
        }
        (Some(url), _) => Some(url.to_owned()),
        (None, Some(path)) if !path.as_os_str().is_empty() => Some(super::read_url_file(path)?),
        _ => std::env::var("DATABASE_URL")
            .ok()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty()),
    };
    Ok(match url {
        None => Layout::UrlsOnly,
        Some(u) if u.contains(PLACEHOLDER) => Layout::Databases(u),
        Some(u) => {
            if !u.starts_with("postgres://") && !u.starts_with("postgresql://") {
                return Err(Error::Config(
                    "a schema per target needs PostgreSQL: with MySQL/MariaDB or SQLite, \
                     put {schema} into --database-url (a database or a file per target)"
                        .into(),
                ));
            }
            for (value, flag) in [
                (Some(c.table.as_str()), "--table"),
                (c.migrations_table.as_deref(), "--migrations-table"),
            ] {
                if value.is_some_and(|t| t.contains('.')) {
                    return Err(Error::Config(format!(
                        "{flag} {:?} names a schema, but with a schema per target each \
                         target's tables live in its own schema: give the bare name",
                        value.unwrap_or_default()
                    )));
                }
            }
            Layout::Schemas(u)
        }
    })
}

/// `status --targets`: each target's name and connection options, laid out as `fleet`
/// lays them out (its URL, or its database, or its schema's tables).
pub(super) fn status_targets(
    text: &str,
    origin: &str,
    connect: &ConnectArgs,
    sqlx: bool,
) -> Result<Vec<(String, ConnectArgs)>> {
    let layout = layout_of(connect)?;
    read_targets(text, origin, &layout)?
        .into_iter()
        .map(|t| {
            let mut c = connect.clone();
            c.database_url_file = None;
            c.termination_log = None;
            match (&t.what, &layout) {
                (What::Url(url), _) => c.database_url = Some(url.clone()),
                (What::Name(name), Layout::Databases(template)) => {
                    c.database_url = Some(template.replace(PLACEHOLDER, name));
                }
                (What::Name(name), Layout::Schemas(url)) => {
                    c.database_url = Some(url.clone());
                    super::in_schema(&mut c, name, sqlx)?;
                }
                (What::Name(_), Layout::UrlsOnly) => {
                    unreachable!("names are refused without --database-url")
                }
            }
            Ok((t.id, c))
        })
        .collect()
}

/// What `fleet` was given: where named targets live, and `migrate`'s flags with
/// `{schema}` still in them.
#[derive(Debug)]
struct FleetPlan {
    layout: Layout,
    migrate: MigrateArgs,
    /// `--target-timeout`: bounds each target's connect and lock wait.
    target_timeout: Option<std::time::Duration>,
}

impl Plan for FleetPlan {
    /// The targets in `text` (the file, the command's output, the query's rows as lines),
    /// from `origin`: each line a URL or a name that fits where names live, none twice,
    /// and the first one's `migrate` options checked, all before anything runs.
    fn targets(&self, text: &str, origin: &str) -> Result<Vec<Target>> {
        let targets = read_targets(text, origin, &self.layout)?;
        self.target_config(&targets[0])?;
        Ok(targets)
    }

    /// The target's URL as given (a schema's: the database's): what `{url}` and an external
    /// migrator's DATABASE_URL get, and what names its server.
    fn plain_url(&self, target: &Target) -> String {
        match (&target.what, &self.layout) {
            (What::Url(url), _) => url.clone(),
            (What::Name(name), Layout::Databases(template)) => template.replace(PLACEHOLDER, name),
            (What::Name(_), Layout::Schemas(url)) => url.clone(),
            (What::Name(_), Layout::UrlsOnly) => {
                unreachable!("names are refused without --database-url")
            }
        }
    }

    /// The `migrate` run for one target: `{schema}` filled in, its own tables and lock.
    fn target_config(&self, target: &Target) -> Result<MigrateConfig> {
        let mut args = self.migrate.clone();
        let name = match &target.what {
            What::Url(_) => None,
            What::Name(name) => Some(name.as_str()),
        };
        args.connect.database_url_file = None;
        args.connect.termination_log = None;
        let plain = self.plain_url(target);
        args.connect.database_url = Some(plain.clone());
        if let (Some(name), Layout::Schemas(url)) = (name, &self.layout) {
            let c = &mut args.connect;
            c.table = format!("{name}.{}", c.table);
            c.migrations_table = Some(format!(
                "{name}.{}",
                c.migrations_table
                    .as_deref()
                    .unwrap_or(MigrationsTable::DEFAULT)
            ));
            c.database_url = Some(with_search_path(url, name));
        }
        let fill = |s: &String| {
            s.replace(PLACEHOLDER, name.unwrap_or_default())
                .replace(URL_PLACEHOLDER, &plain)
        };
        args.command = args.command.iter().map(fill).collect();
        let mut cfg = MigrateConfig::from_args(&args)?;
        cfg.db.application_name = format!("schemagate fleet {}", settings::host_name());
        cfg.db.child_env = vec![
            ("DATABASE_URL", plain),
            ("SCHEMAGATE_TARGET", target.id.clone()),
        ];
        if let Some(name) = name {
            cfg.db
                .child_env
                .push(("SCHEMAGATE_SCHEMA", name.to_owned()));
        }
        if let Some(limit) = self.target_timeout {
            cfg.db = cfg.db.connect_within(limit, "--target-timeout");
            cfg.db.lock.wait = cfg.db.lock.wait.min(limit);
        }
        Ok(cfg)
    }
}

/// The URL with `search_path` set to `schema` for the session, so that a migration's
/// unqualified names land in the target's schema.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options[search_path]={schema}")
}

/// The targets in `text`, checked: each line a URL or a name that fits `layout`, none
/// twice, at least one.
fn read_targets(text: &str, origin: &str, layout: &Layout) -> Result<Vec<Target>> {
    let mut targets: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let target = parse_target(line, layout)
            .map_err(|why| Error::Config(format!("{origin} line {}: {why}", n + 1)))?;
        if let Some(first) = seen.insert(target.id.clone(), n) {
            return Err(Error::Config(format!(
                "{origin} line {}: {} is listed twice (first on line {}): each target runs once",
                n + 1,
                target.id,
                first + 1
            )));
        }
        targets.push(target);
    }
    if targets.is_empty() {
        return Err(Error::Config(format!("{origin} lists no target")));
    }
    Ok(targets)
}

crate::error::reason! {
    /// Why a line of a target list is not a target.
    struct BadTarget;
}

/// One line: a URL (`scheme://…`), or a name for `{schema}`.
fn parse_target(line: &str, layout: &Layout) -> Result<Target, BadTarget> {
    if line.contains("://") || line.starts_with("sqlite:") {
        crate::redact::register_secrets(line);
        let (_, _, display) =
            settings::parse_database_url(line).map_err(|e| BadTarget(e.to_string()))?;
        return Ok(Target {
            id: display,
            what: What::Url(line.to_owned()),
        });
    }
    let valid = line.len() <= 63
        && line
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(BadTarget(format!(
            "{line:?} is neither a database URL nor a name (letters, digits, `_`, `-`, `.`; \
             at most 63)"
        )));
    }
    match layout {
        Layout::UrlsOnly => {
            return Err(BadTarget(format!(
                "{line:?} is a name, but no --database-url says where it lives: give \
                 --database-url 'postgres://host/{PLACEHOLDER}' (a database per name) or \
                 the database whose schemas they are"
            )));
        }
        Layout::Schemas(_) => {
            Table::parse(&format!("{line}.t")).map_err(|_| {
                BadTarget(format!(
                    "{line:?} is not a schema name schemagate takes unquoted (a letter or \
                     `_`, then letters, digits or `_`; not a reserved word)"
                ))
            })?;
        }
        Layout::Databases(_) => {}
    }
    Ok(Target {
        id: line.to_owned(),
        what: What::Name(line.to_owned()),
    })
}
