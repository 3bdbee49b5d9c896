//! Scratch databases that outlive their run. `check` and `smoke` create
//! `schemagate_check_<pid>_<n>` / `schemagate_smoke_<pid>_<n>` and drop them on every way
//! out they see; a SIGKILL (or a lost host) is a way out they do not see. So each run, while
//! its scratch database exists, holds a lock named after it on a connection of its own
//! (PostgreSQL: a session advisory lock, seen cluster-wide in pg_locks; MySQL: `GET_LOCK`,
//! server-wide), taken before the database is created; the server releases it when the run
//! dies, wherever it ran. The database is marked as made this way (PostgreSQL: its comment,
//! with the run's host, pid and start; MySQL: a one-row table).
//!
//! A later run drops a scratch database only when all of these hold: it is marked, no
//! session is connected to it, and no session holds its lock. One that is not marked (left
//! by an older version) is named in a warning instead: nothing proves its owner is gone.
//! A SQLite rehearsal's scratch directory is held the same way, by an `flock` on a file
//! beside it.

use sqlx::{AssertSqlSafe, MySqlConnection, PgConnection, Row};

/// The names scratch databases get (`check`, `smoke`), as a regular expression.
const NAMES: &str = "^schemagate_(check|smoke)_[0-9]+_[0-9]+$";

/// The MySQL table that marks a scratch database (MySQL has no database comments).
pub const MYSQL_MARK: &str = "schemagate_scratch_owner";

/// The lock key a run holds while its scratch database `name` exists.
fn key(name: &str) -> i64 {
    crate::settings::lock_key(&format!("schemagate scratch database {name}"))
}

/// The mark's text: what the database is, and whose (`what`: `check` or `smoke`).
pub fn mark(what: &str) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "schemagate {what} scratch database; owner {}",
        serde_json::json!({
            "host": crate::settings::host_name(),
            "pid": std::process::id(),
            "started": started,
        })
    )
}

/// Whether a comment (or MySQL mark) is one `mark` wrote, and who it names, in words.
fn owner(mark: &str) -> Option<String> {
    let (_, json) = mark.split_once("; owner ")?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(format!(
        "pid {} on {}, started at {} (unix time)",
        v["pid"], v["host"], v["started"]
    ))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Take the lock for `name` on `c`, which stays open until the database is dropped.
pub async fn hold_pg(c: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    // Never contended: the name is this process's own.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT pg_try_advisory_lock({})",
        key(name)
    )))
    .execute(c)
    .await
    .map(|_| ())
}

pub async fn hold_mysql(c: &mut MySqlConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT GET_LOCK({}, 0)",
        quote(&format!("schemagate scratch {name}"))
    )))
    .execute(c)
    .await
    .map(|_| ())
}

/// Mark `name` (just created by this run) as `what`'s.
pub async fn mark_pg(c: &mut PgConnection, name: &str, what: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "COMMENT ON DATABASE \"{name}\" IS {}",
        quote(&mark(what))
    )))
    .execute(c)
    .await
    .map(|_| ())
}

pub async fn mark_mysql(
    c: &mut MySqlConnection,
    name: &str,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE `{name}`.{MYSQL_MARK} (owner TEXT NOT NULL); \
         INSERT INTO `{name}`.{MYSQL_MARK} VALUES ({})",
        quote(&mark(what))
    )))
    .execute(c)
    .await
    .map(|_| ())
}

/// One scratch database found on the server, and what is known of it.
struct Found {
    name: String,
    sessions: i64,
    locked: bool,
    mark: Option<String>,
}

/// Drop the scratch databases on `c`'s server whose run is gone; warn about unmarked ones.
/// Never fails the run that calls it: a database it cannot drop is named in a warning.
pub async fn sweep_pg(c: &mut PgConnection) {
    let sql = format!(
        "SELECT d.datname::text, \
           (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)::int8, \
           shobj_description(d.oid, 'pg_database') \
         FROM pg_database d WHERE d.datname ~ '{NAMES}'"
    );
    let found = match sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(&mut *c).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!("cannot look for stale scratch databases: {e}");
            return;
        }
    };
    let mut all = Vec::new();
    for r in found {
        let name: String = r.try_get(0).unwrap_or_default();
        let k = key(&name);
        // pg_locks shows every database's advisory locks: the owner's connection may be
        // to another database than ours. A bigint key is (classid, objid) = (high, low).
        let locked = sqlx::raw_sql(AssertSqlSafe(format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
               AND classid = {} AND objid = {}",
            (k >> 32) as u32,
            k as u32
        )))
        .fetch_one(&mut *c)
        .await
        .map_or(true, |l| l.try_get::<i64, _>(0).unwrap_or(1) > 0);
        all.push(Found {
            name,
            sessions: r.try_get(1).unwrap_or(1),
            locked,
            mark: r.try_get::<Option<String>, _>(2).ok().flatten(),
        });
    }
    for f in all {
        if let Some(owner) = settle(&f) {
            let dropped = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\"",
                f.name
            )))
            .execute(&mut *c)
            .await;
            report(&f.name, &owner, dropped.map(|_| ()));
        }
    }
}

pub async fn sweep_mysql(c: &mut MySqlConnection) {
    let sql = format!(
        "SELECT CAST(s.SCHEMA_NAME AS CHAR), \
           (SELECT COUNT(*) FROM information_schema.PROCESSLIST p WHERE p.DB = s.SCHEMA_NAME), \
           IS_USED_LOCK(CONCAT('schemagate scratch ', s.SCHEMA_NAME)) IS NOT NULL, \
           (SELECT COUNT(*) FROM information_schema.TABLES t \
             WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME AND t.TABLE_NAME = '{MYSQL_MARK}') \
         FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME REGEXP '{NAMES}'"
    );
    let rows = match sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(&mut *c).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!("cannot look for stale scratch databases: {e}");
            return;
        }
    };
    for r in rows {
        let name: String = r.try_get(0).unwrap_or_default();
        let marked = r.try_get::<i64, _>(3).unwrap_or(0) > 0;
        let mark = if marked {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "SELECT owner FROM `{name}`.{MYSQL_MARK} LIMIT 1"
            )))
            .fetch_optional(&mut *c)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<String, _>(0).ok())
        } else {
            None
        };
        let f = Found {
            sessions: r.try_get(1).unwrap_or(1),
            locked: r.try_get::<i64, _>(2).map_or(true, |l| l != 0),
            mark,
            name,
        };
        if let Some(owner) = settle(&f) {
            let dropped = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                f.name
            )))
            .execute(&mut *c)
            .await;
            report(&f.name, &owner, dropped.map(|_| ()));
        }
    }
}

/// Whether `f` is to be dropped (then: its owner, in words); an unmarked one nobody uses
/// is named in a warning.
fn settle(f: &Found) -> Option<String> {
    if f.sessions > 0 || f.locked {
        return None;
    }
    match f.mark.as_deref().and_then(owner) {
        Some(owner) => Some(owner),
        None => {
            tracing::warn!(
                "the scratch database {} looks left behind by a killed check or smoke (no \
                 session uses it), but it carries no owner mark, so it may belong to an older \
                 schemagate still running: if not, drop it (DROP DATABASE {})",
                f.name,
                f.name
            );
            None
        }
    }
}

fn report(name: &str, owner: &str, dropped: Result<(), sqlx::Error>) {
    match dropped {
        Ok(()) => tracing::warn!(
            "dropped the stale scratch database {name}: the run that made it ({owner}) is \
             gone"
        ),
        Err(e) => tracing::warn!(
            "the scratch database {name} was left by a run that is gone ({owner}), and \
             cannot be dropped: {}; drop it by hand",
            crate::redact::redact(&e.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mark_names_its_owner() {
        let m = super::mark("check");
        assert!(m.starts_with("schemagate check scratch database; owner {"));
        let owner = super::owner(&m).unwrap();
        assert!(
            owner.contains(&format!("pid {}", std::process::id())),
            "{owner}"
        );
        assert!(super::owner("schemagate check scratch database").is_none());
    }
}
