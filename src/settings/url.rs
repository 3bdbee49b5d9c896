//! The database URL: parsed once, checked for the mistakes drivers report badly (an
//! unencoded `@` in a password, a missing certificate file, a user given twice), and shown
//! only with its password masked.

use std::path::Path;

use super::Backend;
use crate::error::{Error, Result};
use crate::redact::{after_authority, display_of, is_scheme, redact, safe_form};

// ----- the database URL -----

const ENCODE_HINT: &str = "special characters in the user name or password must be \
    percent-encoded (@ as %40, / as %2F, ? as %3F, # as %23, % as %25, : as %3A)";

/// The backend a URL names, the URL as sqlx takes it, and its redacted form. Long on
/// purpose: each check refuses one mistake drivers report badly, in the order a URL is read.
pub(crate) fn parse_database_url(raw: &str) -> Result<(Backend, String, String)> {
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
    let mut modified = honour_query_credentials(&mut url).map_err(|why| bad(&shown, &why.0))?;
    if backend == Backend::MySql && !url.scheme().eq_ignore_ascii_case("mysql") {
        // mariadb:// is MySQL's protocol; sqlx knows it as mysql://.
        url = url::Url::parse(&format!("mysql:{rest}")).map_err(|e| bad(&shown, &e.to_string()))?;
        honour_query_credentials(&mut url).map_err(|why| bad(&shown, &why.0))?;
        modified = true;
    }
    let display = redact(&display_of(&url));
    let url = if modified {
        url.to_string()
    } else {
        raw.to_owned()
    };
    Ok((backend, url, display))
}

crate::error::reason! {
    /// Why the credentials in a URL's query are refused.
    struct Refused;
}

/// `?user=` and `?password=` in the query, in any case: MySQL URLs may carry them
/// (documented MySQL URI parameters) and sqlx ignores them, connecting as its default user
/// instead; PostgreSQL's are honoured by sqlx only in lower case, over the user-info. Either
/// way the URL would not say who connects: each is moved into the user-info, and a user or
/// password given twice (`?user=root&USER=x`), or differently before the host and in the
/// query, is refused. True when the URL changed.
fn honour_query_credentials(url: &mut url::Url) -> Result<bool, Refused> {
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let named = |k: &str| -> Vec<&(String, String)> {
        pairs
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(k))
            .collect()
    };
    let (users, passwords) = (named("user"), named("password"));
    if users.is_empty() && passwords.is_empty() {
        return Ok(false);
    }
    if users.len() > 1 {
        let each: Vec<String> = users.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        return Err(Refused(format!(
            "it names the user {} times in the query ({}): keep one",
            users.len(),
            each.join(", ")
        )));
    }
    if passwords.len() > 1 {
        // The keys only: never a password.
        let each: Vec<String> = passwords.iter().map(|(k, _)| format!("{k}=")).collect();
        return Err(Refused(format!(
            "it gives a password {} times in the query ({}): keep one",
            passwords.len(),
            each.join(", ")
        )));
    }
    let user = users.first().map(|(k, v)| (k.as_str(), v.as_str()));
    let password = passwords.first().map(|(k, v)| (k.as_str(), v.as_str()));
    if let Some((key, user)) = user {
        let current = crate::redact::percent_decode(url.username());
        if !current.is_empty() && current != user {
            return Err(Refused(format!(
                "it names two users, {current:?} before the host and {user:?} in ?{key}=: keep one"
            )));
        }
        url.set_username(&crate::redact::percent_encode(user))
            .map_err(|()| Refused("the URL cannot carry a user name".to_owned()))?;
    }
    if let Some((key, password)) = password {
        let current = url.password().map(crate::redact::percent_decode);
        if current.as_deref().is_some_and(|c| c != password) {
            return Err(Refused(format!(
                "it has two different passwords, before the host and in ?{key}=: keep one"
            )));
        }
        url.set_password(Some(&crate::redact::percent_encode(password)))
            .map_err(|()| Refused("the URL cannot carry a password".to_owned()))?;
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
    fn mysql_user_and_password_parameters_are_honoured() {
        let (_, url, shown) =
            parse_database_url("mysql://h:3306/db?user=app&password=p%26w&ssl-mode=disabled")
                .unwrap();
        assert_eq!(url, "mysql://app:p%26w@h:3306/db?ssl-mode=disabled");
        assert_eq!(shown, "mysql://app:***@h:3306/db?ssl-mode=disabled");
        assert!(parse_database_url("mysql://root@h/db?user=app").is_err());
    }

    #[test]
    fn a_user_or_password_given_twice_is_refused_in_any_case() {
        for url in [
            "mysql://h/db?user=root&USER=x",
            "mariadb://h/db?user=root&user=root",
            "mysql://root@h/db?User=x",
            "mysql://h/db?password=a1b2c&PASSWORD=d3e4f",
            "mysql://u:a1b2c@h/db?password=d3e4f",
            "postgres://h/db?user=a&user=b",
            "postgres://app@h/db?user=root",
            "postgresql://app:a1b2c@h/db?password=d3e4f",
        ] {
            let e = parse_database_url(url).unwrap_err().to_string();
            assert!(!e.contains("a1b2c") && !e.contains("d3e4f"), "{e}");
        }
        let (_, url, shown) =
            parse_database_url("postgres://h/db?USER=app&sslmode=require").unwrap();
        assert_eq!(url, "postgres://app@h/db?sslmode=require");
        assert_eq!(shown, url);
        let (_, url, _) = parse_database_url("postgres://app@h/db?user=app").unwrap();
        assert_eq!(url, "postgres://app@h/db");
    }
}
