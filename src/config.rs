//! Turns the parsed command line into a validated `Config`, once, at the edge: the database
//! URL (and its redacted form for display), the marker table, the lock identity and the
//! deadlines. Also owns redaction: every secret seen here is masked in anything we print.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cli::ConnectArgs;
use crate::error::{Error, Result};

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
    pub lock: LockId,
    pub connect_timeout: Duration,
    /// Who runs this process: the pod or host name and pid (recorded in the marker).
    pub runner: String,
    /// `schemagate <mode> <host>`: the connection's application_name.
    pub application_name: String,
    /// Logs are JSON lines (so a child's output lines carry structured fields).
    pub json_logs: bool,
    /// `wait` and `status` only read: SQLite opens the file read-only and never creates
    /// or converts it.
    pub read_only: bool,
}

/// A validated marker table name, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// As written in SQL: `name` or `schema.name` (validated, so safe to interpolate).
    pub qualified: String,
    pub schema: Option<String>,
    pub name: String,
}

/// The migration lock: a name, and the stable 64-bit key derived from it.
#[derive(Debug, Clone)]
pub struct LockId {
    pub name: String,
    pub key: i64,
}

impl Config {
    /// `lock_name`: `--lock-name` of the commands that take (or show) the lock.
    pub fn from_args(args: &ConnectArgs, mode: &str, lock_name: Option<&str>) -> Result<Config> {
        // An empty variable is unset: SCHEMAGATE_DATABASE_URL="" must not shadow
        // DATABASE_URL.
        let nonempty = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let file = args
            .database_url_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let raw = match (nonempty(args.database_url.clone()), file) {
            (Some(_), Some(path)) => {
                return Err(Error::Config(format!(
                    "both --database-url (or SCHEMAGATE_DATABASE_URL) and --database-url-file \
                     {} are set: pass one",
                    path.display()
                )));
            }
            (Some(url), None) => url,
            (None, Some(path)) => read_url_file(path)?,
            (None, None) => match nonempty(std::env::var("DATABASE_URL").ok()) {
                Some(url) => url,
                None => {
                    return Err(Error::Config(
                        "no database URL: pass --database-url, --database-url-file, or set \
                         SCHEMAGATE_DATABASE_URL or DATABASE_URL"
                            .into(),
                    ));
                }
            },
        };
        register_secrets(&raw);
        let (backend, url, display_url) = parse_database_url(&raw)?;
        if backend == Backend::Sqlite && mode != "smoke" && sqlite_in_memory(&url) {
            return Err(Error::Config(format!(
                "{display_url} is an in-memory database, which vanishes when schemagate exits: \
                 pass a file (sqlite:///path/app.db)"
            )));
        }
        let table = Table::parse(&args.table)?;
        if let Some(name) = &args.migrations_table {
            crate::db::set_migrations_table(name, "--migrations-table")?;
        }
        let lock_name = lock_name
            .map(str::to_owned)
            .unwrap_or_else(|| format!("schemagate:{}", table.qualified));
        let lock = LockId {
            key: lock_key(&lock_name),
            name: lock_name,
        };
        let host = host_name();
        Ok(Config {
            backend,
            url,
            display_url,
            table,
            lock,
            connect_timeout: args.connect_timeout,
            runner: format!("{host} (pid {})", std::process::id()),
            application_name: format!("schemagate {mode} {host}"),
            json_logs: args.log_format == crate::cli::LogFormat::Json,
            read_only: matches!(mode, "wait" | "status"),
        })
    }
}

fn read_url_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
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
        let bad = |why: &str| Error::Config(format!("invalid --table {s:?}: {why}"));
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

// ----- the database URL -----

pub use crate::redact::{redact, register_secrets};

const ENCODE_HINT: &str = "special characters in the user name or password must be \
    percent-encoded (@ as %40, / as %2F, ? as %3F, # as %23, % as %25, : as %3A)";

/// The URL with its password masked, for display; a URL that does not parse is never
/// echoed, only its scheme and host when they can be told apart safely.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) if url.fragment().is_none() && !after_authority(&url).contains('@') => {
            redact(&display_of(&url))
        }
        _ => safe_form(raw),
    }
}

/// What of an unparseable URL can be shown: `scheme://…@host`, or `<unparseable URL>`.
fn safe_form(raw: &str) -> String {
    let Some(p) = raw.find("://") else {
        return "<unparseable URL>".into();
    };
    let scheme = &raw[..p];
    let after = &raw[p + 3..];
    let (userinfo, hostpart) = match after.rfind('@') {
        Some(at) => (true, &after[at + 1..]),
        None => (false, after),
    };
    let host = &hostpart[..hostpart.find(['/', '?', '#']).unwrap_or(hostpart.len())];
    let safe = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
    };
    if !is_scheme(scheme) || !safe(host) {
        return "<unparseable URL>".into();
    }
    format!("{scheme}://{}{host}", if userinfo { "…@" } else { "" })
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Path, query and fragment: where an `@` means a password's special characters were not
/// encoded (the URL then names another host, and its "path" holds the rest).
fn after_authority(url: &url::Url) -> String {
    format!(
        "{}{}{}",
        url.path(),
        url.query().unwrap_or(""),
        url.fragment().unwrap_or("")
    )
}

/// A parsed URL with the password and any password-like parameter masked.
fn display_of(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string().replace("%2A%2A%2A", "***")
}

/// The backend a URL names, the URL as sqlx takes it, and its redacted form.
fn parse_database_url(raw: &str) -> Result<(Backend, String, String)> {
    let bad =
        |shown: &str, why: &str| Error::Config(format!("invalid database URL {shown}: {why}"));
    let Some((scheme, rest)) = raw.split_once(':').filter(|(s, _)| is_scheme(s)) else {
        let why = if raw.contains('=') {
            "this is a key=value connection string (libpq or ADO.NET style); pass a URL such \
             as postgres://app@db:5432/app (the password after the user, as app:PASSWORD@)"
        } else {
            "expected a URL such as postgres://app@db:5432/app"
        };
        return Err(bad("<unparseable URL>", why));
    };
    let backend = match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Backend::Postgres,
        "mysql" | "mariadb" => Backend::MySql,
        "sqlite" => return Ok((Backend::Sqlite, raw.into(), redact(raw))),
        _ => {
            return Err(bad(
                &format!("{scheme}://…"),
                "the scheme must be postgres://, postgresql://, mysql://, mariadb:// or sqlite://",
            ));
        }
    };
    if !rest.starts_with("//") {
        return Err(bad(
            &format!("{scheme}:…"),
            &format!("expected {scheme}://app@db:5432/app (two slashes after the scheme)"),
        ));
    }
    let shown = safe_form(raw);
    let mut url = url::Url::parse(raw).map_err(|e| bad(&shown, &format!("{e}; {ENCODE_HINT}")))?;
    if url.fragment().is_some() || after_authority(&url).contains('@') {
        return Err(bad(
            &shown,
            &format!("it has a '#' or an '@' after the host; {ENCODE_HINT}"),
        ));
    }
    for (key, value) in url.query_pairs() {
        let is_file_param = matches!(
            key.to_ascii_lowercase().as_str(),
            "sslrootcert" | "sslcert" | "sslkey" | "sslca" | "ssl-ca" | "ssl-cert" | "ssl-key"
        );
        // Checked here: the driver reports a missing file as an I/O error, which would be
        // retried until --connect-timeout.
        if is_file_param && !Path::new(&*value).is_file() {
            return Err(Error::Config(format!(
                "{key}={value} in the database URL {shown}: no such file (mount the \
                 certificate and give its path)"
            )));
        }
    }
    let mut modified = false;
    if backend == Backend::MySql {
        modified = honour_mysql_credentials(&mut url).map_err(|why| bad(&shown, &why))?;
        if !url.scheme().eq_ignore_ascii_case("mysql") {
            // mariadb:// is MySQL's protocol; sqlx knows it as mysql://.
            url = url::Url::parse(&format!("mysql:{rest}"))
                .map_err(|e| bad(&shown, &e.to_string()))?;
            honour_mysql_credentials(&mut url).map_err(|why| bad(&shown, &why))?;
            modified = true;
        }
    }
    let display = redact(&display_of(&url));
    let url = if modified {
        url.to_string()
    } else {
        raw.to_owned()
    };
    Ok((backend, url, display))
}

/// MySQL URLs may carry `?user=` and `?password=` (documented MySQL URI parameters) that
/// sqlx ignores, connecting as its default user instead: move them into the user-info.
/// Two different values for one of them is refused. True when the URL changed.
fn honour_mysql_credentials(url: &mut url::Url) -> Result<bool, String> {
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let (user, password) = (get("user"), get("password"));
    if user.is_none() && password.is_none() {
        return Ok(false);
    }
    if let Some(user) = &user {
        let current = crate::redact::percent_decode(url.username());
        if !current.is_empty() && current != *user {
            return Err(format!(
                "it names two users, {current:?} before the host and {user:?} in ?user=: keep one"
            ));
        }
        url.set_username(&crate::redact::percent_encode(user))
            .map_err(|()| "the URL cannot carry a user name".to_owned())?;
    }
    if let Some(password) = &password {
        let current = url.password().map(crate::redact::percent_decode);
        if current.as_ref().is_some_and(|c| c != password) {
            return Err(
                "it has two different passwords, before the host and in ?password=: \
                        keep one"
                    .into(),
            );
        }
        url.set_password(Some(&crate::redact::percent_encode(password)))
            .map_err(|()| "the URL cannot carry a password".to_owned())?;
    }
    let rest: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("user") && !k.eq_ignore_ascii_case("password"))
        .collect();
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_in_userinfo_and_query() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/app?sslmode=require"),
            "postgres://app:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://db/app?user=x&password=hunter2"),
            "mysql://db/app?user=x&password=***"
        );
        assert_eq!(redact_url("postgres://db/app"), "postgres://db/app");
        // A URL that does not parse is never echoed.
        assert_eq!(redact_url("postgres://u:pw@@h:xx/d"), "postgres://…@h:xx");
        assert_eq!(
            redact_url("postgres://app:pa/ss1@db/app"),
            "postgres://…@db"
        );
        assert_eq!(redact_url("host=db password=x"), "<unparseable URL>");
    }

    #[test]
    fn mysql_user_and_password_parameters_are_honoured() {
        let (_, url, shown) =
            parse_database_url("mysql://h:3306/db?user=app&password=p%26w&ssl-mode=disabled")
                .unwrap();
        assert_eq!(url, "mysql://app:p%26w@h:3306/db?ssl-mode=disabled");
        assert_eq!(shown, "mysql://app:***@h:3306/db?ssl-mode=disabled");
        assert!(parse_database_url("mysql://root@h/db?user=app").is_err());
    }

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
    fn lock_key_is_stable() {
        assert_eq!(
            lock_key("schemagate:schemagate_marker"),
            lock_key("schemagate:schemagate_marker")
        );
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
