//! Redaction: every secret in play (the database URL's password, `password=` parameters,
//! `PGPASSWORD` / `MYSQL_PWD`) is registered once, in every form it can take in text
//! (raw, percent-encoded in either case, percent-decoded, form-encoded, JSON-escaped), and
//! masked wherever it turns up: logs, errors, the marker's detail, `status`, the
//! termination log. Independently of what is registered, a password in a URL's user-info
//! or after `password=` / `pwd=`, and every query value of an `http(s)://` URL (where
//! webhooks and probes carry their tokens), is masked whatever its length.

use std::sync::{Mutex, OnceLock};

const MASK: &str = "***";

/// Masking a one- or two-letter secret everywhere would mangle every message; such a
/// secret is still masked in URL user-info and `password=` contexts.
const MIN_BARE: usize = 3;

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remember one secret, in every form it can take in text.
pub fn register_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut forms = vec![secret.to_owned()];
    forms.push(percent_encode(secret));
    forms.push(percent_encode(secret).to_ascii_lowercase());
    forms.push(userinfo_encode(secret));
    forms.push(lower_escapes(&userinfo_encode(secret)));
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    let json = serde_json::to_string(secret).expect("a string serializes");
    let json = &json[1..json.len() - 1];
    forms.push(json.to_owned());
    forms.push(json.replace('/', "\\/"));
    // A JSON document that holds a URL: the encoded form, escaped again.
    let encoded_json = serde_json::to_string(&userinfo_encode(secret)).expect("serializes");
    forms.push(encoded_json[1..encoded_json.len() - 1].to_owned());
    let mut secrets = secrets().lock().expect("secrets lock");
    for f in forms {
        if f.len() >= MIN_BARE && !secrets.contains(&f) {
            secrets.push(f);
        }
    }
    // Longest first, so a form that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Remember the password in a database URL (or connection string), raw and decoded, and
/// any `password=` value in it.
pub fn register_secrets(raw_url: &str) {
    if let Some(pw) = loose_password(raw_url) {
        register_secret(pw);
        register_secret(&percent_decode(pw));
    }
    if let Ok(url) = url::Url::parse(raw_url)
        && let Some(pw) = url.password()
    {
        register_secret(pw);
        register_secret(&percent_decode(pw));
    }
    for value in keyed_values(raw_url) {
        register_secret(&value);
        register_secret(&percent_decode(&value));
        register_secret(&value.replace('+', " "));
    }
}

/// Remember what an HTTP URL (`--notify-url`, `wait --http`) carries that may be a
/// credential: its user-info, every query value (`?token=…`) and its fragment, in every
/// form. Such tokens may reach text beyond our own messages: the HTTP client's errors.
pub fn register_http_secrets(raw_url: &str) {
    let Ok(url) = url::Url::parse(raw_url) else {
        return;
    };
    let mut values: Vec<String> = vec![url.username().to_owned()];
    values.extend(url.password().map(str::to_owned));
    values.extend(url.fragment().map(str::to_owned));
    if let Some(query) = url.query() {
        // As written, and as decoded (form decoding: `+` is a space).
        for pair in query.split('&') {
            values.push(pair.split_once('=').map_or(pair, |(_, v)| v).to_owned());
        }
        values.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
    }
    // JSON's words are no credential, and masked they would break every JSON log line.
    for value in values
        .iter()
        .filter(|v| !matches!(v.as_str(), "true" | "false" | "null"))
    {
        register_secret(value);
        register_secret(&percent_decode(value));
    }
}

/// The passwords the drivers may use without a URL saying so.
pub fn register_environment() {
    for var in ["PGPASSWORD", "MYSQL_PWD"] {
        if let Ok(v) = std::env::var(var) {
            register_secret(&v);
        }
    }
    // libpq's password file, which sqlx reads when the URL has no password.
    let pgpass = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")));
    if let Some(text) = pgpass.and_then(|p| crate::files::read_small(&p, 16 << 20).ok()) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // host:port:database:user:password, with \: and \\ escapes.
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                    c => field.push(c),
                }
            }
            if fields.len() == 4 {
                register_secret(&field);
            }
        }
    }
    for var in ["SCHEMAGATE_DATABASE_URL", "DATABASE_URL"] {
        if let Ok(v) = std::env::var(var) {
            register_secrets(&v);
        }
    }
}

/// Mask every registered secret, every URL user-info password and every `password=` value
/// in `text`.
pub fn redact(text: &str) -> String {
    // Registered secrets first, whole: a generic mask below may end inside one.
    let mut out = text.to_owned();
    let secrets = secrets().lock().expect("secrets lock");
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    drop(secrets);
    out = mask_userinfo(&out);
    mask_keyed(&out)
}

/// Where logs go: stderr, every line redacted (a driver's own log line may quote a URL
/// parameter). tracing-subscriber writes each event with one call.
pub struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The password of a URL-like string, found without a full parse (so a malformed URL is
/// covered too): between the first `:` after `://` and the last `@` of the token.
fn loose_password(raw: &str) -> Option<&str> {
    let after = &raw[raw.find("://")? + 3..];
    let end = after
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .unwrap_or(after.len());
    let token = &after[..end];
    let at = token.rfind('@')?;
    let info = &token[..at];
    info.split_once(':').map(|(_, pw)| pw)
}

/// Keys whose value is a secret: `password`, `passwd`, `pwd`, and anything ending so
/// (`PGPASSWORD`, `MYSQL_PWD`, `sslpassword`).
const KEYS: [&str; 3] = ["password", "passwd", "pwd"];

/// Where each `key=value` / `key: value` secret value is in `text`: (start, end) byte
/// offsets of the value.
fn keyed_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while from < lower.len() {
        let Some((pos, key)) = KEYS
            .iter()
            .filter_map(|k| lower[from..].find(k).map(|p| (from + p, *k)))
            .min_by_key(|(p, k)| (*p, std::cmp::Reverse(k.len())))
        else {
            break;
        };
        let mut i = pos + key.len();
        from = i;
        // The key may be quoted (JSON, possibly escaped): `"password": "x"`.
        while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b'\\' | b' ' | b'\t') {
            i += 1;
        }
        if i >= bytes.len() || !matches!(bytes[i], b'=' | b':') {
            continue;
        }
        i += 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        // An opening quote, possibly escaped; the value then runs to the same quote.
        let mut quote = None;
        while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b'\\') {
            if bytes[i] != b'\\' {
                quote = Some(bytes[i]);
            }
            i += 1;
        }
        let start = i;
        while i < bytes.len() {
            let b = bytes[i];
            let stop = match quote {
                Some(q) => b == q || b == b'\\' || b == b'\n',
                None => {
                    b.is_ascii_whitespace()
                        || matches!(b, b'&' | b';' | b',' | b'"' | b'\'' | b')' | b'}' | b'\\')
                }
            };
            if stop {
                break;
            }
            i += 1;
        }
        if i > start && &text[start..i] != MASK {
            spans.push((start, i));
        }
        from = i.max(from);
    }
    spans
}

fn keyed_values(text: &str) -> Vec<String> {
    keyed_spans(text)
        .into_iter()
        .map(|(s, e)| text[s..e].to_owned())
        .collect()
}

fn mask_keyed(text: &str) -> String {
    let spans = keyed_spans(text);
    if spans.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e) in spans {
        out.push_str(&text[last..s]);
        out.push_str(MASK);
        last = e;
    }
    out.push_str(&text[last..]);
    out
}

/// Mask the password of every `scheme://user:password@` in `text`, whatever it is.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(p) = rest.find("://") {
        let (head, tail) = rest.split_at(p + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let masked;
        let mut token = &tail[..end];
        if is_http(head) {
            masked = mask_query(token);
            token = &masked;
        }
        match token.rfind('@').and_then(|at| {
            let colon = token[..at].find(':')?;
            Some((colon, at))
        }) {
            Some((colon, at)) if &token[colon + 1..at] != MASK => {
                out.push_str(&token[..=colon]);
                out.push_str(MASK);
                out.push_str(&token[at..]);
            }
            _ => out.push_str(token),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Whether the text before a `://` ends in the scheme `http` or `https`.
fn is_http(before: &str) -> bool {
    let before = before[..before.len() - 3].to_ascii_lowercase();
    let scheme_start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .map_or(0, |i| i + 1);
    matches!(&before[scheme_start..], "http" | "https")
}

/// An HTTP URL's query values and fragment masked, whatever their length: `?token=***`.
/// The query ends at a `)` (text such as an HTTP client's error may wrap the URL in parentheses);
/// whatever that leaves of a registered token was masked before this runs.
fn mask_query(token: &str) -> String {
    let Some(q) = token.find(['?', '#']) else {
        return token.to_owned();
    };
    let end = token[q..].find(')').map_or(token.len(), |i| q + i);
    let (url, trailer) = token.split_at(end);
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, _)) => (rest, Some(MASK)),
        None => (url, None),
    };
    let mut out = match rest.split_once('?') {
        Some((base, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) => format!("{key}={MASK}"),
                    None if pair.is_empty() => String::new(),
                    None => MASK.to_owned(),
                })
                .collect();
            format!("{base}?{}", pairs.join("&"))
        }
        None => rest.to_owned(),
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out.push_str(trailer);
    out
}

/// Every byte outside RFC 3986's unreserved set as `%XX` (upper case).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The password as the `url` crate writes it into user-info.
fn userinfo_encode(s: &str) -> String {
    let mut u = url::Url::parse("x://u@h").expect("a fixed URL parses");
    let _ = u.set_password(Some(s));
    u.password().unwrap_or(s).to_owned()
}

/// `%2F` -> `%2f`, leaving everything else as is.
fn lower_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending = 0;
    for c in s.chars() {
        if c == '%' {
            pending = 2;
            out.push(c);
        } else if pending > 0 {
            pending -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

// ----- URLs for display -----

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

/// An HTTP URL (`--notify-url`, `wait --http`) for display: its user-info, every query
/// value and its fragment masked, since webhooks and probes carry their tokens there
/// (`?token=***`). Its secrets are registered at the edge (`http::validate`).
pub fn redact_http_url(raw: &str) -> String {
    let Ok(url) = url::Url::parse(raw) else {
        return redact_url(raw);
    };
    let mut shown = url.clone();
    if !url.username().is_empty() {
        let _ = shown.set_username("***");
    }
    if url.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=***"),
                None if pair.is_empty() => String::new(),
                None => "***".into(),
            })
            .collect();
        shown.set_query(Some(&masked.join("&")));
    }
    if url.fragment().is_some() {
        shown.set_fragment(Some("***"));
    }
    redact(&shown.to_string().replace("%2A%2A%2A", "***"))
}

/// What of an unparseable URL can be shown: `scheme://…@host`, or `<unparseable URL>`.
pub(crate) fn safe_form(raw: &str) -> String {
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

pub(crate) fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Path, query and fragment: where an `@` means a password's special characters were not
/// encoded (the URL then names another host, and its "path" holds the rest).
pub(crate) fn after_authority(url: &url::Url) -> String {
    format!(
        "{}{}{}",
        url.path(),
        url.query().unwrap_or(""),
        url.fragment().unwrap_or("")
    )
}

/// A parsed URL with the password and any password-like parameter masked.
pub(crate) fn display_of(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string().replace("%2A%2A%2A", "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_userinfo_and_keyed_values_of_any_length() {
        assert_eq!(
            redact("echo postgres://app:x@db/app"),
            "echo postgres://app:***@db/app"
        );
        assert_eq!(
            redact("mysql://db/app?user=x&password=ab&ssl-mode=off"),
            "mysql://db/app?user=x&password=***&ssl-mode=off"
        );
        assert_eq!(redact("PGPASSWORD=zz psql"), "PGPASSWORD=*** psql");
        assert_eq!(redact(r#"{"password": "q"}"#), r#"{"password": "***"}"#);
        assert_eq!(redact("Server=db;Pwd=k;"), "Server=db;Pwd=***;");
        assert_eq!(
            redact("password authentication failed for user \"app\""),
            "password authentication failed for user \"app\""
        );
    }

    #[test]
    fn masks_http_query_values_and_fragments_whatever_their_length() {
        assert_eq!(
            redact("error sending request for url (https://h:8/hook?token=ab&v=1#x): refused"),
            "error sending request for url (https://h:8/hook?token=***&v=***#***): refused"
        );
        assert_eq!(redact("see HTTP://h/p?k"), "see HTTP://h/p?***");
        // Other schemes keep their parameters (a database URL's sslmode is shown).
        assert_eq!(
            redact("postgres://h/db?sslmode=require"),
            "postgres://h/db?sslmode=require"
        );
        register_http_secrets("http://hookuser:hookpass@h/x?token=T0k%2Fen+1&a=b");
        for form in [
            "hookuser",
            "hookpass",
            "T0k/en 1",
            "T0k%2Fen+1",
            "T0k%2Fen%201",
        ] {
            assert_eq!(redact(&format!("[{form}]")), "[***]", "{form}");
        }
    }

    #[test]
    fn masks_every_form_of_a_registered_secret() {
        register_secrets("postgres://u:R%2Fq%3Fz%40W@h/d");
        for form in ["R/q?z@W", "R%2Fq%3Fz%40W", "R%2fq%3fz%40W", "R\\/q?z@W"] {
            assert_eq!(redact(&format!("[{form}]")), "[***]", "{form}");
        }
    }

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
    fn http_urls_are_shown_without_credentials_query_values_or_fragment() {
        assert_eq!(
            redact_http_url("https://u:p@hooks.example/x?token=abc&v=1&flag#frag"),
            "https://***:***@hooks.example/x?token=***&v=***&***#***"
        );
        assert_eq!(
            redact_http_url("http://h:8080/healthz"),
            "http://h:8080/healthz"
        );
    }
}
