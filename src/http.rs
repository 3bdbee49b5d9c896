//! HTTP, both ways it is used: `migrate --notify-url` webhooks, and `wait --http`
//! readiness probes. TLS is rustls on ring with the webpki roots compiled in, so a
//! `FROM scratch` image needs no CA bundle.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::redact::{redact, redact_http_url};

pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Failed(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .user_agent(concat!("schemagate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Failed(format!("cannot build the HTTP client: {e}")))
}

/// Check that each URL parses, so a typo is a usage error before anything runs; and
/// register what each carries that may be a credential (its user-info and query values)
/// as secrets, so no form of it is printed.
pub fn validate(urls: &[String], flag: &str) -> Result<()> {
    for u in urls {
        crate::redact::register_http_secrets(u);
        match reqwest::Url::parse(u) {
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
    let client = match client(Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot send notifications: {e:#}");
            return;
        }
    };
    for url in urls {
        let shown = redact_http_url(url);
        let mut last = String::new();
        for attempt in 1..=NOTIFY_TRIES {
            match client.post(url).json(event).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!("notified {shown}");
                    last.clear();
                    break;
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = redact(&error_chain(&e)),
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
pub async fn wait_ready(client: &reqwest::Client, url: &str, interval: Duration) {
    let shown = redact_http_url(url);
    let mut logged = false;
    loop {
        let why = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!("{shown} answered {}", r.status());
                return;
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => redact(&error_chain(&e)),
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
