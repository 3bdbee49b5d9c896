//! `check` on MySQL/MariaDB and SQLite: what their catalogs allow. The new migrations are
//! rehearsed on a scratch database (a new database on the MySQL server, a file in a temp
//! directory for SQLite) and the catalog is compared before and after each one: dropped
//! tables, views and columns, changed types, NOT NULL, defaults, unique indexes (and checks
//! and routines on MySQL), and tables rebuilt (a new InnoDB table id, a new SQLite root
//! page). Locks are not observed: MySQL commits each DDL statement on its own and has no
//! lock table to read before commit, SQLite locks the whole file for any write.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::migrate::{Migrate, Migration};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, MySqlConnection, Row, SqliteConnection};

use super::catalog::{Column, Relation, Snapshot};
use super::outside::{self, Outside};
use super::{MigrationReport, Observed};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Backend, Config, MigrationsTable};
use crate::source::Source;

/// A stable id for a relation name: these catalogs have no oid, so a renamed table looks
/// like a dropped one.
fn id(name: &str) -> i64 {
    let hash = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

fn fail(context: &str, e: sqlx::Error) -> Error {
    Error::Failed(format!("{context}: {}", redact(&e.to_string())))
}

enum Conn {
    My(MySqlConnection),
    Lite(SqliteConnection),
}

/// The scratch database; dropped (or its directory removed) on drop, so a cancelled
/// check leaves nothing behind either.
struct Scratch {
    name: String,
    mysql_admin: Option<MySqlConnectOptions>,
    /// Holds the lock that says the database is in use (`stale.rs`) until it is dropped.
    mysql_guard: Option<MySqlConnection>,
    dir: Option<PathBuf>,
    /// The same for a SQLite scratch directory.
    dir_lock: Option<super::stale::DirLock>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            match self.dir_lock.take() {
                Some(lock) => lock.release(dir),
                None => {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        if let Some(options) = self.mysql_admin.take() {
            let name = self.name.clone();
            // From a thread with its own runtime: this one may be shutting down.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    let mut c = options.connect().await.ok()?;
                    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                        .execute(&mut c)
                        .await
                        .ok()?;
                    c.close().await.ok()
                })
            })
            .join();
            match dropped {
                Ok(Some(())) => tracing::info!("dropped scratch database {}", self.name),
                _ => tracing::error!(
                    "cannot drop the scratch database {}; drop it by hand",
                    self.name
                ),
            }
        }
    }
}

async fn open(cfg: &Config) -> Result<(Scratch, Conn)> {
    let name = super::pg::scratch_name();
    match cfg.backend {
        Backend::MySql => {
            let admin = MySqlConnectOptions::from_str(&cfg.url)
                .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?
                .disable_statement_logging();
            let mut c = admin
                .connect()
                .await
                .map_err(|e| fail(&format!("cannot connect to {}", cfg.display_url), e))?;
            // Scratch databases whose run was killed; then ours, locked before it exists.
            super::stale::sweep_mysql(&mut c).await;
            if let Err(e) = super::stale::hold_mysql(&mut c, &name).await {
                return Err(fail(
                    &format!("cannot create the scratch database {name}"),
                    e,
                ));
            }
            // Armed before CREATE DATABASE is sent, as on PostgreSQL.
            let mut scratch = Scratch {
                name: name.clone(),
                mysql_admin: Some(admin.clone()),
                mysql_guard: None,
                dir: None,
                dir_lock: None,
            };
            let created = sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                .execute(&mut c)
                .await;
            if let Err(e) = created {
                scratch.mysql_admin = None;
                return Err(fail(
                    &format!("cannot create the scratch database {name}"),
                    e,
                ));
            }
            if let Err(e) = super::stale::mark_mysql(&mut c, &name, "check").await {
                tracing::warn!(
                    "cannot mark the scratch database {name} as check's: {}",
                    redact(&e.to_string())
                );
            }
            tracing::info!("created scratch database {name}");
            scratch.mysql_guard = Some(c);
            let c = admin
                .database(&name)
                .connect()
                .await
                .map_err(|e| fail("cannot connect to the scratch database", e))?;
            Ok((scratch, Conn::My(c)))
        }
        _ => {
            super::stale::sweep_dirs();
            let dir = std::env::temp_dir().join(&name);
            let lock = super::stale::lock_dir(&dir)
                .map_err(|e| Error::Failed(format!("cannot lock {}: {e}", dir.display())))?;
            let scratch = Scratch {
                name: dir.join("scratch.db").display().to_string(),
                mysql_admin: None,
                mysql_guard: None,
                dir: Some(dir.clone()),
                dir_lock: Some(lock),
            };
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let c = SqliteConnectOptions::new()
                .filename(dir.join("scratch.db"))
                .create_if_missing(true)
                .disable_statement_logging()
                .connect()
                .await
                .map_err(|e| fail("cannot open the scratch database", e))?;
            Ok((scratch, Conn::Lite(c)))
        }
    }
}

impl Conn {
    /// `migrate`'s history table, as `migrate` creates it (sqlx's own code).
    async fn ensure_history(&mut self, table: &MigrationsTable) -> Result<()> {
        let table = table.qualified();
        let r = match self {
            Conn::My(c) => c.ensure_migrations_table(table).await,
            Conn::Lite(c) => c.ensure_migrations_table(table).await,
        };
        r.map_err(|e| {
            Error::Failed(format!(
                "cannot create {table} on the scratch database: {}",
                redact(&e.to_string())
            ))
        })
    }

    /// Apply a migration as `migrate` does on these backends: sqlx's `apply`, history row
    /// included.
    async fn apply(&mut self, table: &MigrationsTable, m: &Migration) -> Result<(), String> {
        let table = table.qualified();
        let r = match self {
            Conn::My(c) => c.apply(table, m).await,
            Conn::Lite(c) => c.apply(table, m).await,
        };
        r.map(|_| ()).map_err(|e| redact(&e.to_string()))
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        match self {
            Conn::My(c) => mysql_snapshot(c)
                .await
                .map_err(|e| fail("cannot read the scratch database's catalog", e)),
            Conn::Lite(c) => sqlite_snapshot(c)
                .await
                .map_err(|e| fail("cannot read the scratch database's catalog", e)),
        }
    }
}

/// Rehearse `source`'s migrations newer than `since`; returns the scratch database's name,
/// the baseline in words and a report per migration. Long on purpose: create, baseline,
/// each migration between two snapshots, drop on every way out, in one visible sequence.
pub async fn rehearse(
    cfg: &Config,
    source: &Source,
    since: i64,
    allowed: &[(String, String)],
) -> Result<(String, String, Vec<MigrationReport>)> {
    let (scratch, mut c) = open(cfg).await?;
    let (old, new): (Vec<_>, Vec<_>) = source.ups.iter().partition(|m| m.version <= since);
    c.ensure_history(&cfg.migrations_table).await?;
    // As on PostgreSQL, statements that act outside the scratch database are left out
    // (and are findings in the new migrations).
    let mut skipped = Vec::new();
    let mysql = cfg.backend == Backend::MySql;
    for m in &old {
        let m = &source.migration(m)?;
        let outside = Outside::find(m, mysql, &mut skipped);
        c.apply(&cfg.migrations_table, &outside::runnable(m, &outside))
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "baseline migration {} failed on the scratch database: {e}{}",
                    m.version,
                    outside::hint(&skipped)
                ))
            })?;
    }
    let how = match cfg.backend {
        Backend::MySql => {
            "catalog only: MySQL commits each DDL statement on its own, so there is no \
             transaction to read locks in before commit; a rebuilt table is seen by its new \
             InnoDB table id"
        }
        _ => {
            "catalog only: SQLite locks the whole database for any write; a re-created table \
             is seen by its new root page"
        }
    };
    let mut reports = Vec::new();
    for m in &new {
        let phase = m.phase;
        let m = &source.migration(m)?;
        let name = format!("{} {}", m.version, m.description);
        let outside = Outside::find(m, mysql, &mut skipped);
        let before = c.snapshot().await?;
        let started = std::time::Instant::now();
        c.apply(&cfg.migrations_table, &outside::runnable(m, &outside))
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "migration {name} failed on the scratch database: {e}{}",
                    outside::hint(&skipped)
                ))
            })?;
        let observed = Observed {
            duration: started.elapsed(),
            how: how.into(),
            catalog_only: true,
            ..Observed::default()
        };
        let after = c.snapshot().await?;
        let mut allow = super::allows(m.sql.as_str());
        allow.extend(allowed.iter().cloned());
        let mut report = super::report(name, Some(m.version), &before, &after, observed, &allow);
        outside::report(&mut report, &outside, &allow);
        report.judge_phase(phase);
        reports.push(report);
    }
    match c {
        Conn::My(c) => c.close().await.ok(),
        Conn::Lite(c) => c.close().await.ok(),
    };
    let baseline = if old.is_empty() {
        "an empty database".to_owned()
    } else {
        format!("the migrations up to {since}")
    };
    let name = scratch.name.clone();
    drop(scratch);
    Ok((name, baseline, reports))
}

async fn sqlite_snapshot(c: &mut SqliteConnection) -> Result<Snapshot, sqlx::Error> {
    let mut s = Snapshot {
        by_name: true,
        ..Snapshot::default()
    };
    let rels = sqlx::query(
        "SELECT name, type, coalesce(rootpage, 0) FROM sqlite_master \
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *c)
    .await?;
    for r in rels {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        let oid = id(&name);
        s.relations.insert(
            oid,
            Relation {
                schema: "public".into(),
                name: name.clone(),
                kind: if kind == "view" { 'v' } else { 'r' },
                filenode: r.try_get(2)?,
            },
        );
        let cols = sqlx::query(
            "SELECT cid, name, type, \"notnull\", dflt_value IS NOT NULL OR pk > 0 \
             FROM pragma_table_info(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *c)
        .await?;
        let mut map = BTreeMap::new();
        for col in cols {
            let cid: i64 = col.try_get(0)?;
            map.insert(
                cid as i32,
                Column {
                    name: col.try_get(1)?,
                    type_name: col.try_get::<String, _>(2)?.to_lowercase(),
                    not_null: col.try_get::<i64, _>(3)? != 0,
                    has_default: col.try_get::<bool, _>(4)?,
                },
            );
        }
        s.columns.insert(oid, map);
        let unique = sqlx::query("SELECT name FROM pragma_index_list(?1) WHERE \"unique\"")
            .bind(&name)
            .fetch_all(&mut *c)
            .await?;
        for u in unique {
            s.unique.insert((oid, u.try_get(0)?));
        }
    }
    Ok(s)
}

/// MySQL's catalog as a `Snapshot`. Long on purpose: one information_schema query per kind
/// of object, as `Snapshot::take` does for PostgreSQL.
async fn mysql_snapshot(c: &mut MySqlConnection) -> Result<Snapshot, sqlx::Error> {
    let mut s = Snapshot {
        by_name: true,
        ..Snapshot::default()
    };
    // InnoDB's table id changes when a table is rebuilt (MariaDB and MySQL 5.7 name the
    // view INNODB_SYS_TABLES, MySQL 8 INNODB_TABLES); without either, no rewrites are seen.
    let mut table_ids: HashMap<String, i64> = HashMap::new();
    for view in ["INNODB_SYS_TABLES", "INNODB_TABLES"] {
        let sql = format!(
            "SELECT CAST(SUBSTRING_INDEX(NAME, '/', -1) AS CHAR), CAST(TABLE_ID AS SIGNED) \
             FROM information_schema.{view} WHERE NAME LIKE CONCAT(DATABASE(), '/%')"
        );
        if let Ok(rows) = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *c).await {
            for r in rows {
                table_ids.insert(r.try_get(0)?, r.try_get(1)?);
            }
            break;
        }
    }
    let rels = sqlx::query(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(TABLE_TYPE AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'schemagate_scratch_owner'",
    )
    .fetch_all(&mut *c)
    .await?;
    for r in rels {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        s.relations.insert(
            id(&name),
            Relation {
                schema: "public".into(),
                filenode: table_ids.get(&name).copied().unwrap_or(0),
                kind: if kind == "VIEW" { 'v' } else { 'r' },
                name,
            },
        );
    }
    let cols = sqlx::query(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(ORDINAL_POSITION AS SIGNED), \
           CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), IS_NULLABLE = 'NO', \
           (COLUMN_DEFAULT IS NOT NULL AND COLUMN_DEFAULT <> 'NULL') OR EXTRA LIKE '%auto_increment%' \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()",
    )
    .fetch_all(&mut *c)
    .await?;
    for col in cols {
        let table: String = col.try_get(0)?;
        let pos: i64 = col.try_get(1)?;
        s.columns.entry(id(&table)).or_default().insert(
            pos as i32,
            Column {
                name: col.try_get(2)?,
                type_name: mysql_type(&col.try_get::<String, _>(3)?),
                not_null: col.try_get::<i64, _>(4)? != 0,
                has_default: col.try_get::<i64, _>(5)? != 0,
            },
        );
    }
    for r in sqlx::query(
        "SELECT DISTINCT CAST(TABLE_NAME AS CHAR), CAST(INDEX_NAME AS CHAR) \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND NON_UNIQUE = 0",
    )
    .fetch_all(&mut *c)
    .await?
    {
        s.unique
            .insert((id(&r.try_get::<String, _>(0)?), r.try_get(1)?));
    }
    if let Ok(rows) = sqlx::query(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR) \
         FROM information_schema.TABLE_CONSTRAINTS \
         WHERE TABLE_SCHEMA = DATABASE() AND CONSTRAINT_TYPE = 'CHECK'",
    )
    .fetch_all(&mut *c)
    .await
    {
        for r in rows {
            s.checks
                .insert((id(&r.try_get::<String, _>(0)?), r.try_get(1)?));
        }
    }
    for r in sqlx::query(
        "SELECT CAST(ROUTINE_NAME AS CHAR) FROM information_schema.ROUTINES \
         WHERE ROUTINE_SCHEMA = DATABASE()",
    )
    .fetch_all(&mut *c)
    .await?
    {
        s.functions
            .insert(format!("{}()", r.try_get::<String, _>(0)?));
    }
    Ok(s)
}

/// MySQL's column type in the spelling `widens` knows: no integer display width
/// (`int(11)` is `int`), lower case.
fn mysql_type(t: &str) -> String {
    let t = t.to_lowercase();
    for int in ["tinyint", "smallint", "mediumint", "bigint", "int"] {
        if let Some(rest) = t.strip_prefix(int)
            && rest.starts_with('(')
            && let Some(end) = rest.find(')')
        {
            return format!("{int}{}", &rest[end + 1..]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::mysql_type;

    #[test]
    fn integer_display_width_is_dropped() {
        assert_eq!(mysql_type("int(11)"), "int");
        assert_eq!(mysql_type("bigint(20) unsigned"), "bigint unsigned");
        assert_eq!(mysql_type("varchar(50)"), "varchar(50)");
        assert_eq!(mysql_type("enum('a','b')"), "enum('a','b')");
    }
}
