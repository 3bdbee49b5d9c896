//! The validated settings every layer reads: which database (`Config`: the URL, its
//! redacted form for display, the deadlines), the marker and migrations tables, and the lock
//! identity. Built once, at the edge (`config.rs` turns the command line into them); below
//! it, state travels in these values, never in globals.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

mod url;

/// The marker table unless `--table` says otherwise (and always in `smoke`).
pub const DEFAULT_TABLE: &str = "schemagate_marker";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }

    /// Whether a database lives on a server (that holds others beside it), rather than
    /// being a file of its own.
    pub fn has_server(self) -> bool {
        match self {
            Backend::Postgres | Backend::MySql => true,
            Backend::Sqlite => false,
        }
    }
}

/// Everything needed to reach the database and find the marker and the lock.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// The URL as sqlx takes it (`mariadb://` rewritten to `mysql://`). Never printed.
    pub url: String,
    /// The URL with its password masked, for logs and errors.
    pub display_url: String,
    pub table: Table,
    /// Where applied SQL migrations are recorded (`MigrationsTable::resolve`).
    pub migrations_table: MigrationsTable,
    pub lock: LockConfig,
    pub connect_timeout: Duration,
    /// What set `connect_timeout`, for the message when it passes: `--connect-timeout`, or
    /// the limit that cut it short (`connect_within`).
    pub connect_limit: &'static str,
    /// Who runs this process: the pod or host name and pid (recorded in the marker).
    pub runner: String,
    /// `schemagate <mode> <host>`: the connection's application_name.
    pub application_name: String,
    /// Logs are JSON lines (so a child's output lines carry structured fields).
    pub json_logs: bool,
    /// `wait` and `status` only read: SQLite opens the file read-only and never creates
    /// or converts it.
    pub read_only: bool,
    /// PostgreSQL: that the advisory lock excludes sessions on this server was proven
    /// already (by `fleet`, once per server, before its targets run), and why. A run then
    /// takes it on a session proven direct without the probe's second connection.
    pub advisory_proven: Option<String>,
    /// Added to an external migrator's environment: `fleet` names the target there
    /// (DATABASE_URL, SCHEMAGATE_TARGET, SCHEMAGATE_SCHEMA).
    pub child_env: Vec<(&'static str, String)>,
}

/// A validated marker table name, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// As written in SQL: `name` or `schema.name` (validated, so safe to interpolate).
    pub qualified: String,
    pub schema: Option<String>,
    pub name: String,
}

/// The table recording applied SQL migrations, in sqlx's layout (shared with sqlx-cli):
/// `--migrations-table`, else `[migrate] table-name` in the source's `sqlx.toml`, else
/// `_sqlx_migrations`. Resolved once, at the edge (`resolve`), and carried in `Config` to
/// every statement that reads or writes it; formats as its name in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationsTable(Table);

impl MigrationsTable {
    /// sqlx's own name for it.
    pub const DEFAULT: &str = "_sqlx_migrations";

    /// `flag` (`--migrations-table`) when given, else the `table-name` of the `sqlx.toml`
    /// that applies to the SQL source `source`, else `_sqlx_migrations`. The file used is
    /// logged, and so is a flag that overrides its table.
    pub fn resolve(flag: Option<&str>, source: Option<&Path>) -> Result<MigrationsTable> {
        let found = match source {
            Some(dir) => crate::sqlx_toml::load(dir)?,
            None => None,
        };
        let Some((path, settings)) = found else {
            return match flag {
                Some(name) => MigrationsTable::parse(name, "--migrations-table"),
                None => MigrationsTable::parse(Self::DEFAULT, "the default"),
            };
        };
        let path = path.display();
        let (table, why) = match (flag, settings.table_name.as_deref()) {
            (Some(name), Some(own)) if name != own => (
                MigrationsTable::parse(name, "--migrations-table")?,
                format!("--migrations-table, which overrides its table-name {own:?}"),
            ),
            (Some(name), _) => (
                MigrationsTable::parse(name, "--migrations-table")?,
                "--migrations-table".into(),
            ),
            (None, Some(own)) => (
                MigrationsTable::parse(own, &format!("[migrate] table-name in {path}"))?,
                "its [migrate] table-name".into(),
            ),
            (None, None) => (
                MigrationsTable::parse(Self::DEFAULT, "the default")?,
                "it names none: sqlx's default".into(),
            ),
        };
        tracing::info!("using {path}: migrations table {table} ({why})");
        Ok(table)
    }

    /// `name` validated (`schema.table` allowed); `from` says where it was given.
    fn parse(name: &str, from: &str) -> Result<MigrationsTable> {
        Table::parse_or(name, |why| {
            Error::Config(format!("invalid migrations table {name:?} ({from}): {why}"))
        })
        .map(MigrationsTable)
    }

    /// As written in SQL: `name` or `schema.name`.
    pub fn qualified(&self) -> &str {
        &self.0.qualified
    }
}

impl std::fmt::Display for MigrationsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.qualified())
    }
}

/// How concurrent runs exclude each other: `--lock`, `--lease-ttl`, `--lock-wait`, and the
/// lock's name with the stable 64-bit key derived from it.
#[derive(Debug, Clone)]
pub struct LockConfig {
    pub mode: LockMode,
    pub lease_ttl: Duration,
    /// Give up waiting for the lock after this long.
    pub wait: Duration,
    pub name: String,
    pub key: i64,
    /// Given with `--lock-name`: used as given. Otherwise derived from the marker table,
    /// and resolved on the server before the lock is taken (`LockConfig::resolved`).
    pub explicit: bool,
}

/// Which lock a PostgreSQL run takes (`--lock`, `cli::LockMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Auto,
    Advisory,
    Lease,
}

impl LockConfig {
    /// The lock named `name` (default: derived from the marker table), with the defaults
    /// of `--lease-ttl` and `--lock-wait`.
    pub fn named(name: Option<&str>, table: &Table, mode: LockMode) -> LockConfig {
        let (name, explicit) = match name {
            Some(name) => (name.to_owned(), true),
            None => (
                default_lock_name(table.schema.as_deref(), &table.name, Some("public")),
                false,
            ),
        };
        LockConfig {
            mode,
            lease_ttl: Duration::from_secs(30),
            wait: Duration::from_secs(600),
            key: lock_key(&name),
            name,
            explicit,
        }
    }

    /// The default lock once the server has said where `table` lives: `schema` holds it
    /// (PostgreSQL: its schema; MySQL: its database), and a name in `home` needs no
    /// qualifier (`public`; the connection's database; SQLite's `main`). A `--lock-name`
    /// stays as given.
    pub fn resolved(&self, table: &Table, schema: Option<&str>, home: Option<&str>) -> LockConfig {
        if self.explicit {
            return self.clone();
        }
        let name = default_lock_name(schema, &table.name, home);
        LockConfig {
            key: lock_key(&name),
            name,
            ..self.clone()
        }
    }
}

/// The default lock's name for the table `schema.name`: `schemagate:<schema>.<name>`, or
/// `schemagate:<name>` when the table is in `home` (or no schema is known), lower-cased as
/// PostgreSQL folds unquoted identifiers. So every spelling of one table names one lock
/// (`schemagate_marker`, `public.schemagate_marker` and `Schemagate_Marker` are one table),
/// and the default table in `public` keeps the name, and key, of earlier releases, so runs
/// of an old and a new binary still exclude each other during an upgrade. MySQL folds case
/// here too, whatever `lower_case_table_names` says: two marker tables that differ only in
/// case would still guard one database's migrations, so they share the lock.
fn default_lock_name(schema: Option<&str>, name: &str, home: Option<&str>) -> String {
    let name = name.to_ascii_lowercase();
    match schema {
        Some(s) if home.is_none_or(|h| !s.eq_ignore_ascii_case(h)) => {
            format!("schemagate:{}.{name}", s.to_ascii_lowercase())
        }
        _ => format!("schemagate:{name}"),
    }
}

impl Config {
    /// `raw_url` as given (its secrets are registered for redaction here); `mode` names
    /// the subcommand in `application_name`.
    pub fn new(
        raw_url: &str,
        mode: &str,
        table: Table,
        migrations_table: MigrationsTable,
        lock: LockConfig,
        connect_timeout: Duration,
        json_logs: bool,
    ) -> Result<Config> {
        crate::redact::register_secrets(raw_url);
        let (backend, url, display_url) = parse_database_url(raw_url)?;
        if backend == Backend::Sqlite && mode != "smoke" && sqlite_in_memory(&url) {
            return Err(Error::Config(format!(
                "{display_url} is an in-memory database, which vanishes when schemagate exits: \
                 pass a file (sqlite:///path/app.db)"
            )));
        }
        if lock.mode == LockMode::Lease && backend != Backend::Postgres {
            return Err(Error::Config(format!(
                "--lock lease is for PostgreSQL behind a transaction pooler; {} uses its own lock",
                backend.name()
            )));
        }
        let host = host_name();
        Ok(Config {
            backend,
            url,
            display_url,
            table,
            migrations_table,
            lock,
            connect_timeout,
            connect_limit: "--connect-timeout",
            runner: format!("{host} (pid {})", std::process::id()),
            application_name: format!("schemagate {mode} {host}"),
            json_logs,
            read_only: matches!(mode, "wait" | "status"),
            advisory_proven: None,
            child_env: Vec::new(),
        })
    }

    /// This config with `limit` as its connect deadline, named by `what` when it is shorter
    /// than `--connect-timeout` (which stays the bound otherwise): a timeout message names
    /// the limit that ran out.
    pub fn connect_within(&self, limit: Duration, what: &'static str) -> Config {
        let mut cfg = self.clone();
        if limit < self.connect_timeout {
            cfg.connect_timeout = limit;
            cfg.connect_limit = what;
        }
        cfg
    }
}

/// `sqlite::memory:`, `sqlite://:memory:`, `?mode=memory`: gone when the process exits.
fn sqlite_in_memory(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let path = lower
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or("")
        .to_owned();
    path.is_empty() || path == ":memory:" || lower.contains("mode=memory")
}

impl Table {
    pub fn parse(s: &str) -> Result<Table> {
        Table::parse_or(s, |why| {
            Error::Config(format!("invalid --table {s:?}: {why}"))
        })
    }

    /// As `parse`, with `bad` making the error from what is wrong.
    fn parse_or(s: &str, bad: impl Fn(&str) -> Error) -> Result<Table> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(bad(
                "expected `name` or `schema.name`, each a letter or underscore followed by \
                 letters, digits or underscores",
            ));
        }
        if let Some(word) = parts.iter().find(|p| is_reserved(p)) {
            return Err(bad(&format!(
                "{word:?} is a reserved word in SQL; choose another name"
            )));
        }
        let (schema, name) = match parts.as_slice() {
            [name] => (None, name.to_string()),
            [schema, name] => (Some(schema.to_string()), name.to_string()),
            _ => unreachable!("checked above"),
        };
        // The longest name derived from it, `<name>_version_idx`, must fit PostgreSQL's
        // 63-byte identifiers (MySQL allows 64), or it is cut and collides.
        if name.len() > MAX_TABLE_NAME || schema.as_ref().is_some_and(|s| s.len() > 63) {
            return Err(bad(&format!(
                "the table name may have at most {MAX_TABLE_NAME} characters (the schema 63), \
                 so the names derived from it (<name>_version_idx, <name>_lease_pkey) fit the \
                 database's 63-character limit"
            )));
        }
        Ok(Table {
            qualified: s.to_owned(),
            schema,
            name,
        })
    }
}

const MAX_TABLE_NAME: usize = 63 - "_version_idx".len();

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reserved in PostgreSQL, MySQL/MariaDB or SQLite: unusable as an unquoted table name on
/// at least one backend.
fn is_reserved(word: &str) -> bool {
    #[rustfmt::skip]
    const RESERVED: &[&str] = &[
        "abort", "accessible", "add", "all", "alter", "analyse", "analyze", "and", "any",
        "array", "as", "asc", "asensitive", "asymmetric", "authorization", "before",
        "between", "bigint", "binary", "blob", "both", "by", "call", "cascade", "case",
        "cast", "change", "char", "character", "check", "collate", "column", "concurrently",
        "condition", "constraint", "continue", "convert", "create", "cross", "current",
        "current_catalog", "current_date", "current_role", "current_schema", "current_time",
        "current_timestamp", "current_user", "cursor", "database", "databases", "day_hour",
        "day_microsecond", "day_minute", "day_second", "dec", "decimal", "declare",
        "default", "deferrable", "delayed", "delete", "desc", "describe", "deterministic",
        "distinct", "distinctrow", "div", "do", "double", "drop", "dual", "each", "else",
        "elseif", "enclosed", "end", "escape", "escaped", "except", "exists", "exit",
        "explain", "false", "fetch", "float", "float4", "float8", "for", "force", "foreign",
        "freeze", "from", "full", "fulltext", "function", "generated", "get", "glob",
        "grant", "group", "groups", "having", "high_priority", "hour_microsecond",
        "hour_minute", "hour_second", "if", "ignore", "ilike", "in", "index", "infile",
        "initially", "inner", "inout", "insensitive", "insert", "int", "int1", "int2",
        "int3", "int4", "int8", "integer", "intersect", "interval", "into", "is", "isnull",
        "iterate", "join", "key", "keys", "kill", "lateral", "leading", "leave", "left",
        "like", "limit", "linear", "lines", "load", "localtime", "localtimestamp", "lock",
        "long", "longblob", "longtext", "loop", "low_priority", "match", "mediumblob",
        "mediumint", "mediumtext", "middleint", "minute_microsecond", "minute_second",
        "mod", "modifies", "natural", "not", "notnull", "no_write_to_binlog", "null",
        "numeric", "of", "offset", "on", "only", "optimize", "option", "optionally", "or",
        "order", "out", "outer", "outfile", "over", "overlaps", "partition", "placing",
        "precision", "primary", "procedure", "purge", "range", "read", "reads", "real",
        "recursive", "references", "regexp", "release", "rename", "repeat", "replace",
        "require", "resignal", "restrict", "return", "returning", "revoke", "right",
        "rlike", "row", "rows", "schema", "schemas", "second_microsecond", "select",
        "sensitive", "separator", "session_user", "set", "show", "signal", "similar",
        "smallint", "some", "spatial", "specific", "sql", "sqlexception", "sqlstate",
        "sqlwarning", "sql_big_result", "sql_calc_found_rows", "sql_small_result", "ssl",
        "starting", "stored", "straight_join", "symmetric", "system_user", "table",
        "terminated", "then", "tinyblob", "tinyint", "tinytext", "to", "trailing",
        "trigger", "true", "undo", "union", "unique", "unlock", "unsigned", "update",
        "usage", "use", "user", "using", "utc_date", "utc_time", "utc_timestamp", "values",
        "varbinary", "varchar", "varcharacter", "variadic", "varying", "verbose", "virtual",
        "when", "where", "while", "window", "with", "write", "xor", "year_month",
        "zerofill",
    ];
    RESERVED.contains(&word.to_ascii_lowercase().as_str())
}

/// A stable 64-bit key for a lock name: the first 8 bytes of its SHA-256.
pub fn lock_key(name: &str) -> i64 {
    let hash = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// The pod or host name: `HOSTNAME` (set by Kubernetes and Docker), else the kernel's.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

pub(crate) use url::parse_database_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_table_names() {
        assert!(Table::parse("schemagate_marker").is_ok());
        assert_eq!(
            Table::parse("ops.marker").unwrap().schema.as_deref(),
            Some("ops")
        );
        for bad in [
            "", "1abc", "a;drop", "a.b.c", "a b", "\"x\"", "order", "x.user",
        ] {
            assert!(Table::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_spelling_of_one_table_names_one_lock() {
        let named = |t: &str| LockConfig::named(None, &Table::parse(t).unwrap(), LockMode::Auto);
        let default = named("schemagate_marker");
        // The name (and key) of earlier releases, for the default table.
        assert_eq!(default.name, "schemagate:schemagate_marker");
        for t in [
            "public.schemagate_marker",
            "Schemagate_Marker",
            "PUBLIC.SCHEMAGATE_MARKER",
        ] {
            assert_eq!(named(t).key, default.key, "{t}");
        }
        assert_eq!(named("Ops.Marker").name, "schemagate:ops.marker");
        // Resolved on the server: an unqualified name in schema `app`, and `app.marker`.
        let unqualified = named("marker");
        let resolved = |l: &LockConfig, t: &str, s: Option<&str>, home: Option<&str>| {
            l.resolved(&Table::parse(t).unwrap(), s, home).name
        };
        assert_eq!(
            resolved(&unqualified, "marker", Some("app"), Some("public")),
            resolved(
                &named("app.marker"),
                "app.marker",
                Some("app"),
                Some("public")
            )
        );
        // MySQL: the connection's database needs no qualifier.
        assert_eq!(
            resolved(
                &named("Shop.Marker"),
                "Shop.Marker",
                Some("Shop"),
                Some("shop")
            ),
            "schemagate:marker"
        );
        // --lock-name stays as given.
        let explicit = LockConfig::named(
            Some("My-Lock"),
            &Table::parse("marker").unwrap(),
            LockMode::Auto,
        );
        assert_eq!(
            explicit
                .resolved(&Table::parse("marker").unwrap(), Some("app"), None)
                .name,
            "My-Lock"
        );
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(
            lock_key("schemagate:schemagate_marker"),
            lock_key("schemagate:schemagate_marker")
        );
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
