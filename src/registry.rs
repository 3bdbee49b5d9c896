//! The release registry: a table beside the marker (`<marker>_instances`) where every gated
//! instance of the application announces itself, so that a contract migration knows when
//! the older release is gone (`docs/src/phases.md`).
//!
//! A row is `(instance, release, expects, started, seen, expires)`: `expects` is the schema
//! version the instance was built for. Times are milliseconds on the **database server's**
//! clock, never the pod's: a row is live while `expires_ms` is ahead of the server's now.
//! Every write is one autocommit statement, so it works behind a transaction pooler
//! (PgBouncer), and the same SQL shape runs on PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! The row named [`BARRIER`] is not an instance: it holds the newest contract migration
//! that has run or is about to run. A contract run raises it *before* it reads which
//! instances are live; an instance writes its row *before* it reads the barrier. Each side
//! commits its write before it reads, so of two that race at least one sees the other: a
//! contract never runs while an instance built before it starts unseen, and an instance
//! built before a contract never starts once the contract may run.

use std::time::Duration;

use serde::Serialize;

use crate::db::{self, Conn, Dialect};
use crate::error::{Drift, Error, Result};
use crate::settings::{Config, Table};

/// The barrier row's `instance`: ids starting with `#` are refused for instances.
pub const BARRIER: &str = "#contract";

/// The default `--instance-ttl`: a row not renewed for this long is dead.
pub const DEFAULT_TTL: &str = "30s";

/// Who this instance is, as it announces itself.
#[derive(Debug, Clone)]
pub struct Me {
    pub instance: String,
    pub release: String,
    /// The schema version this build expects (its source's newest, or `--expect`).
    pub expects: String,
    pub ttl: Duration,
}

/// A live row, as `status` shows it and the gate reads it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Instance {
    pub instance: String,
    pub release: String,
    pub expects: String,
    /// Milliseconds since its last renewal, and until it expires, on the server's clock.
    pub seen_ms_ago: i64,
    pub expires_in_ms: i64,
}

/// `<marker table>_instances`, in the marker table's schema.
pub fn table(t: &Table) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}_instances", t.name),
        None => format!("{}_instances", t.name),
    }
}

/// An instance id or release name as given: not empty, at most 255 bytes, no control
/// characters; `what` names the flag in the error.
pub fn checked_name(value: &str, what: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "{what} {value:?} must be 1 to 255 characters without control characters"
        )));
    }
    if what == "--instance" && v.starts_with('#') {
        return Err(Error::Config(format!(
            "--instance {value:?}: ids starting with '#' are schemagate's own"
        )));
    }
    Ok(v.to_owned())
}

fn create_sql(d: &Dialect, t: &str) -> String {
    let text = d.key_text;
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            instance {text} NOT NULL PRIMARY KEY,
            release_name {text} NOT NULL,
            expects {text} NOT NULL,
            started_ms BIGINT NOT NULL,
            seen_ms BIGINT NOT NULL,
            expires_ms BIGINT NOT NULL
        )"
    )
}

/// One statement that writes (or renews) a row: its expiry `ttl` ahead of the server's now.
fn upsert_sql(d: &Dialect, t: &str, me: &Me) -> String {
    let now = d.now_ms;
    let ttl = me.ttl.as_millis().max(1);
    let values = format!(
        "({}, {}, {}, {now}, {now}, {now} + {ttl})",
        d.lit(&me.instance),
        d.lit(&me.release),
        d.lit(&me.expects),
    );
    let insert = format!(
        "INSERT INTO {t} (instance, release_name, expects, started_ms, seen_ms, expires_ms) VALUES {values}"
    );
    d.upsert(
        &insert,
        "instance",
        &["release_name", "expects", "seen_ms", "expires_ms"],
    )
}

async fn exec(conn: &mut Conn, sql: String) -> Result<u64, sqlx::Error> {
    conn.execute(sql).await
}

/// Rows of text and 64-bit integer columns: `(texts, ints)` per row.
async fn fetch(
    conn: &mut Conn,
    sql: String,
    texts: usize,
    ints: usize,
) -> Result<Vec<(Vec<String>, Vec<i64>)>, sqlx::Error> {
    conn.fetch(sql, texts, ints).await
}

/// Create the registry table when it is missing (by whoever writes first: the marker
/// table's role for `migrate`, the app's for `wait` and `heartbeat`).
async fn ensure(conn: &mut Conn, cfg: &Config) -> Result<()> {
    let t = table(&cfg.table);
    match exec(conn, create_sql(conn.dialect(), &t)).await {
        Ok(_) => Ok(()),
        // Racing creators (PostgreSQL): the loser sees the table or its type appear.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("23505" | "42P07" | "42710")) =>
        {
            Ok(())
        }
        Err(e) => Err(db::db_err(
            &format!("cannot create the registry table {t}"),
            e,
        )),
    }
}

/// Run `sql`, creating the table first if it is missing.
async fn exec_creating(conn: &mut Conn, cfg: &Config, sql: String, what: &str) -> Result<u64> {
    match exec(conn, sql.clone()).await {
        Err(e) if db::is_undefined_table(&e) => {
            ensure(conn, cfg).await?;
            exec(conn, sql).await.map_err(|e| db::db_err(what, e))
        }
        r => r.map_err(|e| db::db_err(what, e)),
    }
}

/// Write or renew this instance's row (one statement).
pub async fn renew(conn: &mut Conn, cfg: &Config, me: &Me) -> Result<()> {
    let t = table(&cfg.table);
    let what = format!("cannot record instance {} in {t}", me.instance);
    exec_creating(conn, cfg, upsert_sql(conn.dialect(), &t, me), &what)
        .await
        .map(drop)
}

/// Announce this instance, then read the barrier (the order matters: see the module
/// comment). Refused (exit 4, the row removed again) when a contract migration newer than
/// the version this build expects has run or may be running: this release can no longer
/// start against the schema.
pub async fn register(conn: &mut Conn, cfg: &Config, me: &Me) -> Result<()> {
    renew(conn, cfg, me).await?;
    let Some(barrier) = barrier(conn, cfg).await? else {
        return Ok(());
    };
    let Ok(expects) = me.expects.parse::<i64>() else {
        return Ok(());
    };
    if barrier <= expects {
        return Ok(());
    }
    remove(conn, cfg, &me.instance).await?;
    Err(Error::Drift(Drift::Superseded {
        release: me.release.clone(),
        instance: me.instance.clone(),
        expects: me.expects.clone(),
        barrier,
    }))
}

/// Remove an instance's row (SIGTERM, or a refused registration).
pub async fn remove(conn: &mut Conn, cfg: &Config, instance: &str) -> Result<()> {
    let t = table(&cfg.table);
    let sql = format!(
        "DELETE FROM {t} WHERE instance = {}",
        conn.dialect().lit(instance)
    );
    match exec(conn, sql).await {
        Err(e) if db::is_undefined_table(&e) => Ok(()),
        r => r
            .map(drop)
            .map_err(|e| db::db_err(&format!("cannot remove instance {instance} from {t}"), e)),
    }
}

/// The live instances, oldest expectation first (none when the table does not exist).
pub async fn live(conn: &mut Conn, cfg: &Config) -> Result<Vec<Instance>> {
    let t = table(&cfg.table);
    let now = conn.dialect().now_ms;
    let sql = format!(
        "SELECT instance, release_name, expects, \
           CAST({now} - seen_ms AS {int}), CAST(expires_ms - {now} AS {int}) \
         FROM {t} WHERE instance <> {b} AND expires_ms > {now} ORDER BY instance",
        int = conn.dialect().int64,
        b = conn.dialect().lit(BARRIER),
    );
    let rows = match fetch(conn, sql, 3, 2).await {
        Err(e) if db::is_undefined_table(&e) => return Ok(Vec::new()),
        r => r.map_err(|e| db::db_err(&format!("cannot read the registry {t}"), e))?,
    };
    let mut out: Vec<Instance> = rows
        .into_iter()
        .map(|(t, n)| Instance {
            instance: t[0].clone(),
            release: t[1].clone(),
            expects: t[2].clone(),
            seen_ms_ago: n[0],
            expires_in_ms: n[1],
        })
        .collect();
    out.sort_by_key(|i| {
        (
            i.expects.parse::<i64>().unwrap_or(i64::MIN),
            i.instance.clone(),
        )
    });
    Ok(out)
}

/// The newest contract that has run or is about to (the barrier), if any.
pub async fn barrier(conn: &mut Conn, cfg: &Config) -> Result<Option<i64>> {
    let t = table(&cfg.table);
    let sql = format!(
        "SELECT expects FROM {t} WHERE instance = {}",
        conn.dialect().lit(BARRIER)
    );
    match fetch(conn, sql, 1, 0).await {
        Err(e) if db::is_undefined_table(&e) => Ok(None),
        Err(e) => Err(db::db_err(&format!("cannot read the registry {t}"), e)),
        Ok(rows) => Ok(rows.first().and_then(|(t, _)| t[0].parse().ok())),
    }
}

/// Raise the barrier to `version` (never lower it: see `lower_barrier`); returns what it
/// was. Run under the migration lock, so only one run moves it at a time.
pub async fn raise_barrier(conn: &mut Conn, cfg: &Config, version: i64) -> Result<Option<i64>> {
    let before = barrier(conn, cfg).await?;
    if before.is_some_and(|b| b >= version) {
        return Ok(before);
    }
    let me = Me {
        instance: BARRIER.into(),
        release: BARRIER.into(),
        expects: version.to_string(),
        ttl: Duration::from_millis(i64::MAX as u64 / 4),
    };
    renew(conn, cfg, &me).await?;
    Ok(before)
}

/// Put the barrier back to `before` after the gate refused `version`: the contract did not
/// run, so the older release may start again (a rollback of the rollout).
pub async fn lower_barrier(
    conn: &mut Conn,
    cfg: &Config,
    version: i64,
    before: Option<i64>,
) -> Result<()> {
    let t = table(&cfg.table);
    let b = conn.dialect().lit(BARRIER);
    let v = conn.dialect().lit(&version.to_string());
    let sql = match before {
        Some(prev) => format!(
            "UPDATE {t} SET expects = {} WHERE instance = {b} AND expects = {v}",
            conn.dialect().lit(&prev.to_string())
        ),
        None => format!("DELETE FROM {t} WHERE instance = {b} AND expects = {v}"),
    };
    exec(conn, sql)
        .await
        .map(drop)
        .map_err(|e| db::db_err(&format!("cannot lower the contract barrier in {t}"), e))
}

/// What keeps contract migration `version` from running: the live instances built for an
/// older schema version (or one that is not a number, which cannot be compared), as one
/// line naming each release and its instances. `None`: it may run.
pub fn holding_back(live: &[Instance], version: i64) -> Option<String> {
    holding_back_unless(live, |e| e.parse::<i64>().is_ok_and(|e| e >= version))
}

/// What keeps a contract from running: the live instances whose `expects` does not
/// `know` it (an Alembic or Django head below which the contract is not), named as
/// `holding_back` names them. `None`: it may run.
pub fn holding_back_unless(live: &[Instance], knows: impl Fn(&str) -> bool) -> Option<String> {
    let older: Vec<&Instance> = live.iter().filter(|i| !knows(&i.expects)).collect();
    if older.is_empty() {
        return None;
    }
    let mut releases: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for i in &older {
        match releases
            .iter_mut()
            .find(|(r, e, _)| *r == i.release && *e == i.expects)
        {
            Some((_, _, names)) => names.push(&i.instance),
            None => releases.push((&i.release, &i.expects, vec![&i.instance])),
        }
    }
    let named: Vec<String> = releases
        .iter()
        .map(|(r, e, names)| {
            let shown: Vec<&str> = names.iter().take(5).copied().collect();
            let more = names.len().saturating_sub(5);
            format!(
                "release {r} (built for {e}) has {} live instance(s): {}{}",
                names.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        })
        .collect();
    Some(format!(
        "{} built before it: {}",
        if older.len() == 1 {
            "an instance is live that was"
        } else {
            "instances are live that were"
        },
        named.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(instance: &str, release: &str, expects: &str) -> Instance {
        Instance {
            instance: instance.into(),
            release: release.into(),
            expects: expects.into(),
            seen_ms_ago: 0,
            expires_in_ms: 1,
        }
    }

    #[test]
    fn a_contract_waits_for_every_instance_built_before_it() {
        let live = [
            at("web-new-1", "v2", "4"),
            at("web-old-1", "v1", "2"),
            at("web-old-2", "v1", "2"),
        ];
        let why = holding_back(&live, 4).unwrap();
        assert!(
            why.contains("release v1 (built for 2) has 2 live instance(s)"),
            "{why}"
        );
        assert!(why.contains("web-old-1, web-old-2"), "{why}");
        assert!(!why.contains("web-new-1"), "{why}");
        assert_eq!(holding_back(&live[..1], 4), None);
        // A version that is not a number cannot be compared: it holds the contract back.
        assert!(holding_back(&[at("x", "alembic", "ae1027a6acf")], 4).is_some());
    }

    #[test]
    fn literals_are_quoted_for_each_backend() {
        use crate::settings::Backend;
        let lit = |b, s| crate::db::dialect_of(b).lit(s);
        assert_eq!(lit(Backend::MySql, r"a\'b"), r"'a\\''b'");
        assert_eq!(lit(Backend::Postgres, r"a\'b"), r"E'a\\''b'");
        assert_eq!(lit(Backend::Sqlite, r"a\'b"), r"'a\''b'");
    }
}
