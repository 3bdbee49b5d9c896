//! HTTP, both ways it is used: `migrate --notify-url` webhooks, and `wait --http`
//! readiness probes. The client is ureq: TLS is rustls on ring with the webpki roots
//! compiled in (so a `FROM scratch` image needs no CA bundle); `HTTP(S)_PROXY`,
//! `ALL_PROXY` and `NO_PROXY` are honoured, up to 10 redirects are followed, and
//! user-info in a URL is sent as basic auth.
//!
//! ureq blocks, so each request runs on tokio's blocking pool. A deadline or a signal
//! that drops the waiting future leaves that request to end at the client's timeout on
//! its own thread; it never holds up exit (`main` shuts the runtime down in the
//! background).

use std::time::Duration;

use serde::Serialize;
use ureq::http::StatusCode;

use crate::error::{Error, Result};
use crate::redact::{redact, redact_http_url};

pub type Client = ureq::Agent;

/// A client whose every request, redirects included, ends within `timeout`.
pub fn client(timeout: Duration) -> Result<Client> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // A 4xx or 5xx is an answer to report, not a transport error.
        .http_status_as_error(false)
        .user_agent(concat!("schemagate/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(config.into())
}

/// Check that each URL parses, so a typo is a usage error before anything runs; and
/// register what each carries that may be a credential (its user-info and query values)
/// as secrets, so no form of it is printed.
pub fn validate(urls: &[String], flag: &str) -> Result<()> {
    for u in urls {
        crate::redact::register_http_secrets(u);
        match url::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => {
                return Err(Error::Config(format!(
                    "invalid {flag} {:?}: expected an http:// or https:// URL",
                    redact_http_url(u)
                )));
            }
        }
    }
    Ok(())
}

crate::error::reason! {
    /// Why a request got no answer (redacted).
    struct NoAnswer;
}

/// One request, on the blocking pool: the status it was answered with, or why there was
/// none (redacted). A JSON `body` makes it a POST, none a GET.
async fn send(client: &Client, url: &str, body: Option<Vec<u8>>) -> Result<StatusCode, NoAnswer> {
    let (client, url) = (client.clone(), url.to_owned());
    let sent = tokio::task::spawn_blocking(move || {
        match body {
            Some(json) => client
                .post(&url)
                .content_type("application/json")
                .send(json),
            None => client.get(&url).call(),
        }
        .map(|r| r.status())
    })
    .await;
    match sent {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(NoAnswer(redact(&error_chain(&e)))),
        Err(e) => Err(NoAnswer(format!("the request did not complete: {e}"))),
    }
}

/// One GET: whether `url` answered 2xx.
pub async fn answers_2xx(client: &Client, url: &str) -> bool {
    send(client, url, None).await.is_ok_and(|s| s.is_success())
}

/// The webhook body `migrate --notify-url` posts.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub event: &'static str,
    pub version: &'a str,
    pub status: &'a str,
    pub applied: usize,
    pub duration_ms: u128,
    pub runner: &'a str,
    pub error: Option<String>,
}

const NOTIFY_TRIES: u32 = 3;

/// POST the event to every URL: 5 s per try, 3 tries, a warning when all fail. Never
/// changes the outcome of the run.
pub async fn notify(urls: &[String], event: &Event<'_>) {
    if urls.is_empty() {
        return;
    }
    let prepared = client(Duration::from_secs(5)).and_then(|c| {
        serde_json::to_vec(event)
            .map(|body| (c, body))
            .map_err(|e| Error::Failed(format!("cannot encode the event: {e}")))
    });
    let (client, body) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot send notifications: {e:#}");
            return;
        }
    };
    for url in urls {
        let shown = redact_http_url(url);
        let mut last = String::new();
        for attempt in 1..=NOTIFY_TRIES {
            match send(&client, url, Some(body.clone())).await {
                Ok(s) if s.is_success() => {
                    tracing::debug!("notified {shown}");
                    last.clear();
                    break;
                }
                Ok(s) => last = format!("HTTP {s}"),
                Err(why) => last = why.0,
            }
            if attempt < NOTIFY_TRIES {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
        }
        if !last.is_empty() {
            tracing::warn!("could not notify {shown} after {NOTIFY_TRIES} tries: {last}");
        }
    }
}

/// Poll `url` until it answers 2xx. The caller bounds it with the wait's deadline.
pub async fn wait_ready(client: &Client, url: &str, interval: Duration) {
    let shown = redact_http_url(url);
    let mut logged = false;
    loop {
        let why = match send(client, url, None).await {
            Ok(s) if s.is_success() => {
                tracing::info!("{shown} answered {s}");
                return;
            }
            Ok(s) => format!("HTTP {s}"),
            Err(why) => why.0,
        };
        if !logged {
            tracing::info!("waiting for {shown}: {why}");
            logged = true;
        }
        tokio::time::sleep(interval).await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
