//! Connecting, with retry inside a wall-clock deadline, and what a driver error means:
//! its class (retry, configuration, other) and its description (redacted, with a hint
//! where one helps: TLS, privileges). A server that speaks another protocol than the URL's
//! is told apart from one not up yet (`protocol.rs`) and refused at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::{Conn, mysql, postgres, protocol, sqlite};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Backend, Config};

/// How a failed operation should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying: refused, reset, server starting or shutting down, too many clients.
    Transient,
    /// Retrying will not help: authentication, unknown database, bad options.
    Config,
    Other,
}

pub fn classify(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Io(io) if tls_failure(io).is_some() => Class::Config,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => {
            Class::Transient
        }
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => Class::Config,
        sqlx::Error::Database(db) => {
            // MySQL's SQLSTATEs are coarse (42000 covers an unknown database and a lost
            // privilege alike): classify by its error number.
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return classify_mysql(my.number());
            }
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                // PostgreSQL: cannot_connect_now (starting up), too_many_connections,
                // admin/crash shutdown, connection exceptions.
                "57P03" | "53300" | "57P01" | "57P02" | "08000" | "08003" | "08006" | "08001"
                | "08004" => Class::Transient,
                // SQLite: busy / locked.
                "5" | "6" | "261" | "517" => Class::Transient,
                // PostgreSQL auth, unknown database, insufficient privilege; SQLite cannot
                // open.
                "28P01" | "28000" | "3D000" | "42501" | "14" => Class::Config,
                _ if code.starts_with("28") => Class::Config,
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

fn classify_mysql(number: u16) -> Class {
    match number {
        // Too many connections, too many for this user, max_user_connections reached,
        // server shutting down, connection killed (MariaDB).
        1040 | 1203 | 1226 | 1053 | 1927 => Class::Transient,
        // Access denied (user, database, table, column, routine, a privilege such as
        // SUPER), unknown database, host not allowed, password expired, account locked.
        1044 | 1045 | 1049 | 1130 | 1142 | 1143 | 1227 | 1370 | 1698 | 1820 | 1862 | 3118
        | 4151 => Class::Config,
        _ => Class::Other,
    }
}

/// Whether an error says the database user lacks a privilege.
pub(super) fn is_permission_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1044 | 1142 | 1143 | 1227 | 1370);
    }
    db.code().as_deref() == Some("42501")
}

/// The TLS error inside an I/O error (rustls reports a failed handshake through the
/// stream), if it is one.
fn tls_failure(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A driver error as text, redacted. PostgreSQL's "at line N" (a line of the server's C
/// source, not of the migration) is left out.
pub fn describe(e: &sqlx::Error) -> String {
    let text = match e {
        sqlx::Error::Database(db) => {
            let mut text = format!("error returned from database: {}", db.message());
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // What PostgreSQL adds is often the part that says what to do.
                text.push_str(&format!(" (SQLSTATE {})", pg.code()));
                if let Some(detail) = pg.detail() {
                    text.push_str(&format!("; DETAIL: {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    text.push_str(&format!("; HINT: {hint}"));
                }
            }
            text
        }
        sqlx::Error::Io(io) => match tls_failure(io) {
            Some(tls) => format!("TLS handshake failed: {tls}; {}", tls_hint(tls)),
            None => e.to_string(),
        },
        _ => e.to_string(),
    };
    let mut text = redact(&text);
    if is_permission_error(e) {
        text.push_str(
            " (the database user lacks this privilege: grant it, or connect as a user that \
             has it)",
        );
    }
    text
}

fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error as E};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is signed by a CA this build does not trust (only the \
             public web roots are compiled in): mount your provider's CA bundle and pass it \
             with sslrootcert=/path/ca.pem in the URL (MySQL: ssl-ca=/path/ca.pem)"
        }
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the certificate does not name the host in the URL: connect by the name the \
             certificate was issued for, or use sslmode=verify-ca"
        }
        E::InvalidCertificate(_) => {
            "the server's certificate was refused: check it, or the CA given with sslrootcert="
        }
        _ => "check the URL's sslmode and the server's TLS settings",
    }
}

/// Why one connection attempt failed.
enum Failure {
    Driver(sqlx::Error),
    /// The server at the address speaks another protocol (the message says which).
    Foreign(String),
}

/// How long an attempt may go without an answer before we ask what listens at the address
/// (while it goes on): a server of another protocol that waits for its own client to speak
/// first (Redis, an HTTP server, PostgreSQL for a MySQL URL) would otherwise hold the
/// attempt until the deadline. Not shorter: an overloaded server is slow too, and asking
/// it costs a connection (a fork, on PostgreSQL) when it can least afford one.
const STALL: Duration = Duration::from_secs(5);

/// One attempt, told apart from a server that speaks another protocol: the server is
/// asked when the attempt fails as a foreign server makes it fail (the first bytes made no
/// sense, or the server hung up), or stalls; not once it has answered in the URL's
/// protocol (`spoken`, across the attempts of one `connect`).
async fn attempt(cfg: &Config, spoken: &AtomicBool) -> Result<Conn, Failure> {
    let connecting = async {
        match cfg.backend {
            Backend::Postgres => postgres::connect(cfg).await.map(Conn::new),
            Backend::MySql => mysql::connect(cfg).await.map(Conn::new),
            Backend::Sqlite => sqlite::connect(cfg).await.map(Conn::new),
        }
    };
    let ask = || async {
        if spoken.load(Ordering::Relaxed) {
            return None;
        }
        match protocol::ask_server(cfg).await {
            protocol::Answer::Foreign(why) => Some(why),
            protocol::Answer::Expected => {
                spoken.store(true, Ordering::Relaxed);
                None
            }
            protocol::Answer::Unknown => None,
        }
    };
    tokio::pin!(connecting);
    tokio::select! {
        r = &mut connecting => {
            if let Err(sqlx::Error::Database(_)) = &r {
                // The server answered in its protocol (an error such as too many clients).
                spoken.store(true, Ordering::Relaxed);
            }
            return match r {
                Err(e) if maybe_foreign(&e) => match ask().await {
                    Some(why) => Err(Failure::Foreign(why)),
                    None => Err(Failure::Driver(e)),
                },
                r => r.map_err(Failure::Driver),
            };
        }
        () = tokio::time::sleep(STALL) => {}
    }
    let asking = ask();
    tokio::pin!(asking);
    tokio::select! {
        r = &mut connecting => r.map_err(Failure::Driver),
        why = &mut asking => match why {
            Some(why) => Err(Failure::Foreign(why)),
            None => connecting.await.map_err(Failure::Driver),
        },
    }
}

/// How `backend` spells what portable statements need, before any connection.
pub fn dialect_of(backend: Backend) -> &'static super::Dialect {
    match backend {
        Backend::Postgres => &postgres::DIALECT,
        Backend::MySql => &mysql::DIALECT,
        Backend::Sqlite => &sqlite::DIALECT,
    }
}

/// Whether an error is what a server of another protocol causes: bytes the driver could
/// not read, or the server hanging up on them. A refused or unreachable address is not.
fn maybe_foreign(e: &sqlx::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::InvalidData
        ),
        _ => false,
    }
}

/// Connect, retrying transient errors with jittered backoff until `cfg.connect_timeout`
/// (named by `cfg.connect_limit`). A server that speaks another protocol is a
/// configuration error at once.
pub async fn connect(cfg: &Config) -> Result<Conn> {
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let spoken = AtomicBool::new(false);
    let retrying = (|| attempt(cfg, &spoken))
        .retry(backoff(Duration::from_millis(50), Duration::from_secs(2)))
        .sleep(tokio::time::sleep)
        .when(|f| matches!(f, Failure::Driver(e) if classify(e) == Class::Transient))
        .adjust({
            let mut refused = 0;
            move |f, delay| match (f, delay) {
                (Failure::Driver(e), Some(_)) if no_free_slot(e) => {
                    refused += 1;
                    Some(after_no_free_slot(cfg.read_only, refused))
                }
                (_, other) => other,
            }
        })
        .notify(|f, delay| {
            let Failure::Driver(e) = f else { return };
            let msg = describe(e);
            tracing::warn!(
                "cannot connect to {} yet ({msg}); retrying in {delay:.1?}",
                cfg.display_url
            );
            *last_error.lock().expect("last_error") = Some(msg);
        });
    match tokio::time::timeout(cfg.connect_timeout, retrying).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(Failure::Driver(e))) => Err(super::db_err(
            &format!("cannot connect to {}", cfg.display_url),
            e,
        )),
        Ok(Err(Failure::Foreign(why))) => Err(Error::Config(format!(
            "cannot connect to {}: {why}",
            cfg.display_url
        ))),
        Err(_) => {
            let last = last_error.lock().expect("last_error").clone();
            Err(Error::Timeout(format!(
                "cannot connect to {} within {} ({}); {}",
                cfg.display_url,
                humantime::format_duration(rounded(cfg.connect_timeout)),
                cfg.connect_limit,
                last.map(|e| format!("last error: {e}")).unwrap_or_else(|| {
                    "no answer from the server in that time (an address that drops packets, \
                     or a server too busy to answer)"
                        .into()
                })
            )))
        }
    }
}

/// Whether the server refused a connection for want of a free slot ("too many clients",
/// or the slots left are reserved for superusers; MySQL: too many connections, or the
/// user's limit).
fn no_free_slot(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1040 | 1203 | 1226);
    }
    db.code().as_deref() == Some("53300")
}

/// The pause before the next attempt after the server refused the `refused`th for want
/// of a free slot. The migrator (any run that changes the schema) tries again briskly,
/// every 50-250 ms until its deadline, so a slot freed is soon its own; a run that only
/// reads (`wait`, `status`) steps back, 1 s after the first refusal, doubling to 16 s
/// (each ±50%). With the common backoff alone, hundreds of waiters retried as often as
/// the migrator (up to every 2 s, each), and each refused attempt held one of the
/// server's slots while it authenticated (PostgreSQL checks the slots reserved for
/// superusers only after authentication): the slots stayed full, and under load the
/// migrator lost every race for one until its --connect-timeout passed. Stepping back,
/// the waiters leave the slots that free up to it.
fn after_no_free_slot(reader: bool, refused: u32) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = (RandomState::new().hash_one(std::time::Instant::now()) % 1000) as f64 / 1000.0;
    if reader {
        Duration::from_secs(1 << refused.clamp(1, 5).saturating_sub(1)).mul_f64(0.5 + r)
    } else {
        Duration::from_millis(50).mul_f64(1.0 + 4.0 * r)
    }
}

/// A deadline for a message: to a tenth of a second (what is left of `--timeout` is
/// never a round number).
fn rounded(d: Duration) -> Duration {
    Duration::from_millis((d.as_millis() as u64).div_ceil(100) * 100)
}

/// Exponential backoff with jitter and no limit on tries: callers bound it with a deadline.
pub fn backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_yield_slots_the_migrator_retries_for() {
        for refused in 1..20 {
            let writer = after_no_free_slot(false, refused);
            assert!(writer <= Duration::from_millis(250), "{writer:?}");
            let reader = after_no_free_slot(true, refused);
            let base = Duration::from_secs(1 << (refused.min(5) - 1));
            assert!(
                reader >= base / 2 && reader <= base * 3 / 2,
                "{refused}: {reader:?}"
            );
        }
    }
}
