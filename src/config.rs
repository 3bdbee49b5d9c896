//! Turns the parsed command line into a validated `Config`, once, at the edge: the database
//! URL (and its redacted form for display), the marker table, the lock identity and the
//! deadlines. Also owns redaction: every secret seen here is masked in anything we print.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
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
    pub fn from_args(args: &ConnectArgs, mode: &str) -> Result<Config> {
        let raw = match (&args.database_url, &args.database_url_file) {
            (Some(url), _) => url.trim().to_owned(),
            (None, Some(path)) => read_url_file(path)?,
            (None, None) => match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
                _ => {
                    return Err(Error::Config(
                        "no database URL: pass --database-url, --database-url-file, or set \
                         SCHEMAGATE_DATABASE_URL or DATABASE_URL"
                            .into(),
                    ));
                }
            },
        };
        register_secrets(&raw);
        let display_url = redact_url(&raw);
        let (backend, url) = classify_url(&raw).ok_or_else(|| {
            Error::Config(format!(
                "invalid database URL {display_url:?}: the scheme must be postgres://, \
                 postgresql://, mysql://, mariadb:// or sqlite://"
            ))
        })?;
        let table = Table::parse(&args.table)?;
        if let Some(name) = &args.migrations_table {
            crate::db::set_migrations_table(name, "--migrations-table")?;
        }
        let lock_name = args
            .lock_name
            .clone()
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

/// The backend a URL names, and the URL as sqlx takes it.
fn classify_url(raw: &str) -> Option<(Backend, String)> {
    let (scheme, rest) = raw.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" if rest.starts_with("//") => {
            Some((Backend::Postgres, raw.into()))
        }
        "mysql" if rest.starts_with("//") => Some((Backend::MySql, raw.into())),
        "mariadb" if rest.starts_with("//") => Some((Backend::MySql, format!("mysql:{rest}"))),
        "sqlite" => Some((Backend::Sqlite, raw.into())),
        _ => None,
    }
}

impl Table {
    pub fn parse(s: &str) -> Result<Table> {
        let bad = || {
            Error::Config(format!(
                "invalid --table {s:?}: expected `name` or `schema.name`, each a letter or \
                 underscore followed by letters, digits or underscores (at most 63)"
            ))
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(bad());
        }
        let (schema, name) = match parts.as_slice() {
            [name] => (None, name.to_string()),
            [schema, name] => (Some(schema.to_string()), name.to_string()),
            _ => return Err(bad()),
        };
        Ok(Table {
            qualified: s.to_owned(),
            schema,
            name,
        })
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
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

// ----- redaction -----

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remember the password in a database URL (raw and percent-decoded), so `redact` masks it
/// wherever it turns up: driver errors, migrator output, marker detail.
pub fn register_secrets(raw_url: &str) {
    let mut found = Vec::new();
    if let Some((_, pw)) = userinfo(raw_url).and_then(|u| u.split_once(':')) {
        found.push(pw.to_owned());
        if let Ok(decoded) = url::Url::parse(&format!("x://u:{pw}@h"))
            && let Some(p) = decoded.password()
        {
            found.push(p.to_owned());
            found.push(
                url::form_urlencoded::parse(p.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect::<String>(),
            );
        }
    }
    if let Some((_, query)) = raw_url.split_once('?') {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k.eq_ignore_ascii_case("password") {
                found.push(v.into_owned());
            }
        }
    }
    let mut secrets = secrets().lock().expect("secrets lock");
    for s in found {
        // Masking a one-letter password would mangle every message; such a password is
        // still never printed as part of a URL.
        if s.len() >= 3 && !secrets.contains(&s) {
            secrets.push(s);
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Mask every registered secret in `text`.
pub fn redact(text: &str) -> String {
    let secrets = secrets().lock().expect("secrets lock");
    let mut out = text.to_owned();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// The user-info part of a URL (`user:password`), found without a full parse so that a
/// malformed URL is still redacted.
fn userinfo(raw: &str) -> Option<&str> {
    let after = &raw[raw.find("://")? + 3..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    authority.rfind('@').map(|at| &authority[..at])
}

/// The URL with the password (in the user-info or a `password=` parameter) masked.
pub fn redact_url(raw: &str) -> String {
    let mut out = raw.to_owned();
    if let Some(info) = userinfo(raw)
        && let Some((user, _)) = info.split_once(':')
    {
        let start = raw.find("://").expect("userinfo implies ://") + 3;
        out = format!("{}{user}:***{}", &raw[..start], &raw[start + info.len()..]);
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", masked.join("&"));
    }
    out
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
        // A malformed URL is still masked.
        assert_eq!(
            redact_url("postgres://u:pw@@h:xx/d"),
            "postgres://u:***@h:xx/d"
        );
    }

    #[test]
    fn rejects_bad_table_names() {
        assert!(Table::parse("schemagate_marker").is_ok());
        assert_eq!(
            Table::parse("ops.marker").unwrap().schema.as_deref(),
            Some("ops")
        );
        for bad in ["", "1abc", "a;drop", "a.b.c", "a b", "\"x\""] {
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
