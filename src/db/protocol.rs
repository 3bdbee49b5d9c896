//! Which protocol the server at the URL's address speaks, asked only when a connection
//! attempt failed or stalled as a server of another protocol makes it (a `postgres://` URL
//! at a MySQL port, a `mysql://` URL at PostgreSQL, Redis, an HTTP server): that is a
//! configuration error to report at once, not an outage to retry until the deadline.
//!
//! The answer must be positive: bytes that are not the expected protocol's. A server that
//! hangs up without a byte (a container port whose process is still starting), or says
//! nothing, may be the right server not ready yet, and is retried as before.

use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::settings::{Backend, Config};

/// PostgreSQL's SSLRequest: a PostgreSQL server answers it with one byte, `S` or `N`.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// For servers that wait for a line (Redis, HTTP): each answers it in its own protocol.
const NUDGE: &[u8] = b"HEAD / HTTP/1.0\r\n\r\n";

/// How long each step waits for an answer.
const QUIET: Duration = Duration::from_millis(1000);

/// What the server at the URL's address answered.
pub(super) enum Answer {
    /// The URL's protocol: no need to ask again.
    Expected,
    /// Another protocol: why, for the message (`the server at host:port does not speak
    /// PostgreSQL: …`).
    Foreign(String),
    /// Nothing to go by: it hung up, said nothing, or cannot be asked (a Unix socket).
    Unknown,
}

/// Ask the server at the URL's address which protocol it speaks.
pub(super) async fn ask_server(cfg: &Config) -> Answer {
    let Some((host, port)) = address(cfg) else {
        return Answer::Unknown;
    };
    let expected = match cfg.backend {
        Backend::Postgres => "PostgreSQL",
        Backend::MySql => "MySQL",
        Backend::Sqlite => return Answer::Unknown,
    };
    let Some(heard) = listen(&host, port, cfg.backend).await else {
        return Answer::Unknown;
    };
    let speaks = identify(&heard);
    let matches = match cfg.backend {
        Backend::Postgres => speaks == Speaks::Postgres,
        _ => matches!(speaks, Speaks::MySql(_)),
    };
    if matches {
        return Answer::Expected;
    }
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Answer::Foreign(format!(
        "the server at {shown} does not speak {expected}: it answered as {}. Check the \
         URL's scheme and port",
        speaks.describe(&heard)
    ))
}

/// The host and port the driver connects to (after `?host=` / `?port=`), unless it uses a
/// Unix socket.
fn address(cfg: &Config) -> Option<(String, u16)> {
    let (host, port) = match cfg.backend {
        Backend::Postgres => {
            let o = sqlx::postgres::PgConnectOptions::from_str(&cfg.url).ok()?;
            if o.get_socket().is_some() {
                return None;
            }
            (o.get_host().to_owned(), o.get_port())
        }
        Backend::MySql => {
            let o = sqlx::mysql::MySqlConnectOptions::from_str(&cfg.url).ok()?;
            if o.get_socket().is_some() {
                return None;
            }
            (o.get_host().to_owned(), o.get_port())
        }
        Backend::Sqlite => return None,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or(host.clone(), str::to_owned);
    Some((host, port))
}

/// The first bytes the server sends: unprompted (a MySQL greeting, NATS's INFO), else in
/// answer to an SSLRequest (PostgreSQL), else, on a second connection, to a line (Redis,
/// HTTP: Redis reads no line that starts with the SSLRequest's NUL bytes). `None` when it
/// hangs up or says nothing.
async fn listen(host: &str, port: u16, backend: Backend) -> Option<Vec<u8>> {
    // A MySQL server speaks first; PostgreSQL (and most others) wait for the client.
    let first = match backend {
        Backend::MySql => ask(host, port, &[b"", &SSL_REQUEST]).await,
        _ => ask(host, port, &[&SSL_REQUEST]).await,
    };
    match first {
        Heard::Bytes(b) => Some(b),
        Heard::Closed => None,
        Heard::Nothing => match ask(host, port, &[NUDGE]).await {
            Heard::Bytes(b) => Some(b),
            _ => None,
        },
    }
}

enum Heard {
    Bytes(Vec<u8>),
    /// Refused, or hung up without a byte.
    Closed,
    Nothing,
}

/// On a new connection, send each of `steps` in turn (an empty one sends nothing) until the
/// server answers one.
async fn ask(host: &str, port: u16, steps: &[&[u8]]) -> Heard {
    let connecting = tokio::net::TcpStream::connect((host, port));
    let Ok(Ok(mut stream)) = tokio::time::timeout(QUIET, connecting).await else {
        return Heard::Closed;
    };
    let mut buf = vec![0u8; 64];
    for step in steps {
        if !step.is_empty() && stream.write_all(step).await.is_err() {
            return Heard::Closed;
        }
        let n = match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return Heard::Closed,
            Ok(Ok(n)) => n,
        };
        // The rest of a first packet that came in pieces.
        let mut len = n;
        while len < 16 {
            let more = stream.read(&mut buf[len..]);
            match tokio::time::timeout(Duration::from_millis(50), more).await {
                Ok(Ok(m)) if m > 0 => len += m,
                _ => break,
            }
        }
        buf.truncate(len);
        return Heard::Bytes(buf);
    }
    Heard::Nothing
}

#[derive(Debug, PartialEq, Eq)]
enum Speaks {
    Postgres,
    /// With the server version from its greeting.
    MySql(Option<String>),
    Http,
    Tls,
    Redis,
    Amqp,
    Nats,
    Ssh,
    /// A line-based server greeting with a 220 (SMTP, FTP).
    Greeting220,
    Unknown,
}

fn identify(b: &[u8]) -> Speaks {
    let text = |prefix: &str| b.starts_with(prefix.as_bytes());
    match b {
        // The one-byte answer to an SSLRequest, or an error: an ErrorResponse ('E',
        // length, fields), or the bare 'E' and text the postmaster sends when it cannot
        // start a backend. Leniently: a false "PostgreSQL" only means a retry.
        [b'S' | b'N'] | [b'E', ..] => Speaks::Postgres,
        // A MySQL packet: 3-byte length, sequence 0, then protocol 10 or an error (0xff).
        [l0, l1, l2, 0, kind @ (10 | 0xff), ..]
            if (1..=4096)
                .contains(&(u32::from(*l0) | u32::from(*l1) << 8 | u32::from(*l2) << 16)) =>
        {
            let version = (*kind == 10)
                .then(|| {
                    let v: Vec<u8> = b[5..].iter().copied().take_while(|&c| c != 0).collect();
                    String::from_utf8(v).ok()
                })
                .flatten()
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic()));
            Speaks::MySql(version)
        }
        [0x15 | 0x16, 3, ..] => Speaks::Tls,
        _ if text("HTTP/") => Speaks::Http,
        _ if text("AMQP") => Speaks::Amqp,
        _ if text("INFO ") => Speaks::Nats,
        _ if text("SSH-") => Speaks::Ssh,
        _ if text("220") => Speaks::Greeting220,
        // A RESP simple string or error: `+PONG`, `-ERR unknown command`, `-NOAUTH …`.
        [b'+' | b'-', c, ..] if c.is_ascii_uppercase() => Speaks::Redis,
        _ => Speaks::Unknown,
    }
}

impl Speaks {
    fn describe(&self, heard: &[u8]) -> String {
        match self {
            Speaks::Postgres => "a PostgreSQL server".into(),
            Speaks::MySql(Some(v)) => format!("a MySQL or MariaDB server (version {v})"),
            Speaks::MySql(None) => "a MySQL or MariaDB server".into(),
            Speaks::Http => "an HTTP server".into(),
            Speaks::Tls => "a TLS server that expects TLS from the first byte".into(),
            Speaks::Redis => "a Redis server".into(),
            Speaks::Amqp => "an AMQP server (RabbitMQ)".into(),
            Speaks::Nats => "a NATS server".into(),
            Speaks::Ssh => "an SSH server".into(),
            Speaks::Greeting220 => "a mail or FTP server".into(),
            Speaks::Unknown => {
                let hex: Vec<String> = heard.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("an unknown protocol (first bytes {})", hex.join(" "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_name_the_protocol() {
        assert_eq!(identify(b"N"), Speaks::Postgres);
        assert_eq!(identify(b"S"), Speaks::Postgres);
        assert_eq!(identify(b"SSH-2.0-OpenSSH_9.2"), Speaks::Ssh);
        assert_eq!(
            identify(b"\x5b\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB\x00\x08"),
            Speaks::MySql(Some("5.5.5-10.11.6-MariaDB".into()))
        );
        assert_eq!(identify(b"HTTP/1.0 400 Bad Request\r\n"), Speaks::Http);
        assert_eq!(identify(b"-ERR unknown command\r\n"), Speaks::Redis);
        assert_eq!(identify(b"AMQP\x00\x00\x09\x01"), Speaks::Amqp);
        assert_eq!(identify(b"INFO {\"server_id\":1}\r\n"), Speaks::Nats);
        assert_eq!(identify(b"\x15\x03\x03\x00\x02\x02\x32"), Speaks::Tls);
        assert_eq!(identify(b"\x01\x02"), Speaks::Unknown);
    }
}
