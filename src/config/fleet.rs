//! `schemagate fleet`: the targets, and how one target's line becomes the `MigrateConfig`
//! of an ordinary `migrate` run (its URL, its tables and search_path, its command).

use std::path::Path;

use super::{MigrateConfig, Table};
use crate::cli::{FleetArgs, MigrateArgs};
use crate::error::{Error, Result};

/// The placeholder a target's name fills.
pub const PLACEHOLDER: &str = "{schema}";

/// `schemagate fleet`.
#[derive(Debug)]
pub struct FleetConfig {
    pub targets: Vec<Target>,
    pub parallel: usize,
    pub json: bool,
    /// Where a target named by a name lives.
    layout: Layout,
    /// `migrate`'s options as given, `{schema}` still in them.
    migrate: MigrateArgs,
}

/// One database or one schema.
#[derive(Debug, Clone)]
pub struct Target {
    /// How it is named in the summary and the logs: the name, or the URL with its
    /// password masked.
    pub id: String,
    what: What,
}

#[derive(Debug, Clone)]
enum What {
    /// A line holding a URL.
    Url(String),
    /// A line holding a name, for `{schema}`.
    Name(String),
}

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
        let url = m
            .connect
            .database_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let url = match (url, &m.connect.database_url_file) {
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
        let layout = match url {
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
                    (Some(m.connect.table.as_str()), "--table"),
                    (m.connect.migrations_table.as_deref(), "--migrations-table"),
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
        };
        if m.lock.lock_name.is_some() {
            return Err(Error::Config(
                "--lock-name is not taken by fleet: every target's lock is derived from its \
                 own marker table, so that targets never wait on each other"
                    .into(),
            ));
        }
        let targets = read_targets(&args.targets, &layout)?;
        let cfg = FleetConfig {
            targets,
            parallel: args.parallel as usize,
            json: args.json,
            layout,
            migrate: m.clone(),
        };
        // Every flag is checked now, on the first target, before anything runs.
        if let Some(first) = cfg.targets.first() {
            cfg.target_config(first)?;
        }
        Ok(cfg)
    }

    /// The `migrate` run for one target: `{schema}` filled in, its own tables and lock.
    pub fn target_config(&self, target: &Target) -> Result<MigrateConfig> {
        let mut args = self.migrate.clone();
        let name = match &target.what {
            What::Url(url) => {
                args.connect.database_url = Some(url.clone());
                None
            }
            What::Name(name) => Some(name.as_str()),
        };
        args.connect.database_url_file = None;
        args.connect.termination_log = None;
        if let Some(name) = name {
            args.connect.database_url = Some(match &self.layout {
                Layout::Databases(template) => template.replace(PLACEHOLDER, name),
                Layout::Schemas(url) => {
                    let c = &mut args.connect;
                    c.table = format!("{name}.{}", c.table);
                    c.migrations_table = Some(format!(
                        "{name}.{}",
                        c.migrations_table
                            .as_deref()
                            .unwrap_or(super::MigrationsTable::DEFAULT)
                    ));
                    with_search_path(url, name)
                }
                Layout::UrlsOnly => unreachable!("names are refused without --database-url"),
            });
        }
        let fill = |s: &String| s.replace(PLACEHOLDER, name.unwrap_or_default());
        args.command = args.command.iter().map(fill).collect();
        let mut cfg = MigrateConfig::from_args(&args)?;
        cfg.db.application_name = format!("schemagate fleet {}", super::host_name());
        Ok(cfg)
    }
}

/// The URL with `search_path` set to `schema` for the session, so that a migration's
/// unqualified names land in the target's schema.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options[search_path]={schema}")
}

/// The targets in `path`, checked: each line a URL or a name that fits `layout`, none twice.
fn read_targets(path: &Path, layout: &Layout) -> Result<Vec<Target>> {
    let text = crate::files::read_small(path, 64 << 20)
        .map_err(|e| Error::Config(format!("cannot read --targets {}: {e}", path.display())))?;
    let where_ = |n: usize| format!("--targets {} line {}", path.display(), n + 1);
    let mut targets: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let target = parse_target(line, layout)
            .map_err(|why| Error::Config(format!("{}: {why}", where_(n))))?;
        if let Some(first) = seen.insert(target.id.clone(), n) {
            return Err(Error::Config(format!(
                "{}: {} is listed twice (first on line {}): each target runs once",
                where_(n),
                target.id,
                first + 1
            )));
        }
        targets.push(target);
    }
    if targets.is_empty() {
        return Err(Error::Config(format!(
            "--targets {} lists no target",
            path.display()
        )));
    }
    Ok(targets)
}

/// One line: a URL (`scheme://…`), or a name for `{schema}`.
fn parse_target(line: &str, layout: &Layout) -> Result<Target, String> {
    if line.contains("://") || line.starts_with("sqlite:") {
        crate::redact::register_secrets(line);
        let (_, _, display) = super::url::parse_database_url(line).map_err(|e| e.to_string())?;
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
        return Err(format!(
            "{line:?} is neither a database URL nor a name (letters, digits, `_`, `-`, `.`; \
             at most 63)"
        ));
    }
    match layout {
        Layout::UrlsOnly => {
            return Err(format!(
                "{line:?} is a name, but no --database-url says where it lives: give \
                 --database-url 'postgres://host/{PLACEHOLDER}' (a database per name) or \
                 the database whose schemas they are"
            ));
        }
        Layout::Schemas(_) => {
            Table::parse(&format!("{line}.t")).map_err(|_| {
                format!(
                    "{line:?} is not a schema name schemagate takes unquoted (a letter or \
                     `_`, then letters, digits or `_`; not a reserved word)"
                )
            })?;
        }
        Layout::Databases(_) => {}
    }
    Ok(Target {
        id: line.to_owned(),
        what: What::Name(line.to_owned()),
    })
}
