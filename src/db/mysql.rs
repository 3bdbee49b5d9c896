//! MySQL / MariaDB: `GET_LOCK(name, 0)` polled (released on disconnect); the same marker.
//! There is no NOTIFY, so `wait --listen` is refused before it gets here.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, MySqlConnection, Row};

use sqlx::migrate::Migration;

use super::backend::{Boxed, Fut, Migrations};
use super::catalog::{Column, Relation, Snapshot, id};
use super::dialect::Dialect;
use super::{Engine, Fence, Holder, Marker, NewMarker, ServerInfo};
use crate::settings::{Config, LockConfig, MigrationsTable, Table};

pub async fn connect(cfg: &Config) -> Result<MySqlConnection, sqlx::Error> {
    MySqlConnectOptions::from_str(&cfg.url)?
        .disable_statement_logging()
        .connect()
        .await
}

// GET_LOCK names are server-wide and at most 64 characters: scope the name to the current
// database and hash it to a fixed length.
const LOCK_NAME: &str = "CONCAT('schemagate:', LEFT(SHA2(CONCAT(DATABASE(), ':', ?), 256), 40))";

pub async fn try_lock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<bool, sqlx::Error> {
    let got: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({LOCK_NAME}, 0)")))
            .bind(&lock.name)
            .fetch_one(c)
            .await?;
    Ok(got == Some(1))
}

pub async fn unlock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({LOCK_NAME})")))
        .bind(&lock.name)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn holds_lock(c: &mut MySqlConnection, lock: &LockConfig) -> Result<bool, sqlx::Error> {
    let held: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(IS_USED_LOCK({LOCK_NAME}) = CONNECTION_ID() AS SIGNED)"
    )))
    .bind(&lock.name)
    .fetch_one(c)
    .await?;
    Ok(held == Some(1))
}

pub async fn lock_holder(
    c: &mut MySqlConnection,
    lock: &LockConfig,
) -> Result<Option<Holder>, sqlx::Error> {
    let row: Option<(i64, String, String, f64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT CAST(p.ID AS SIGNED), CONCAT('user ', COALESCE(p.USER, '')), COALESCE(p.HOST, ''), \
                CAST(p.TIME AS DOUBLE) \
         FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK({LOCK_NAME})"
    )))
    .bind(&lock.name)
    .fetch_optional(c)
    .await?;
    Ok(
        row.map(|(pid, application_name, client, held_for_secs)| Holder {
            pid,
            application_name,
            client,
            held_for_secs,
        }),
    )
}

/// How many more connections could be opened now: `max_connections` less those open
/// (MariaDB's `information_schema.GLOBAL_STATUS`; MySQL 8 has it elsewhere: an error).
pub async fn free_slots(c: &mut MySqlConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(@@max_connections AS SIGNED) - CAST(VARIABLE_VALUE AS SIGNED) \
         FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED'",
    )
    .fetch_optional(c)
    .await
}

/// The connection's database (`DATABASE()`), if one is selected.
pub async fn current_database(c: &mut MySqlConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DATABASE()").fetch_one(c).await
}

pub async fn session_id(c: &mut MySqlConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(c)
        .await
}

pub async fn cancel_and_settle(c: &mut MySqlConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {id}")))
        .execute(&mut *c)
        .await?;
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE ID = ? AND COMMAND <> 'Sleep'",
        )
        .bind(id)
        .fetch_one(&mut *c)
        .await?;
        if busy == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn kill_session(c: &mut MySqlConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("KILL CONNECTION {id}")))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn ensure_marker_table(c: &mut MySqlConnection, t: &Table) -> Result<(), sqlx::Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {q} (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            version VARCHAR(255) NOT NULL,
            digest CHAR(64) NULL,
            status VARCHAR(16) NOT NULL,
            action VARCHAR(16) NOT NULL DEFAULT 'migrate',
            started_at DATETIME(6) NOT NULL,
            finished_at DATETIME(6) NOT NULL,
            applied INT NOT NULL DEFAULT 0,
            runner VARCHAR(255) NOT NULL,
            tool_version VARCHAR(64) NOT NULL,
            detail TEXT NULL,
            KEY {n}_version_idx (version, id)
        )",
        q = t.qualified,
        n = t.name,
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await?;
    Ok(())
}

pub async fn insert_marker(
    c: &mut MySqlConnection,
    t: &Table,
    m: &NewMarker<'_>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {q} (version, digest, status, action, started_at, finished_at, applied,
                          runner, tool_version, detail)
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6),
                 ?, ?, ?, ?)",
        q = t.qualified
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(m.version)
        .bind(m.digest)
        .bind(m.status.as_str())
        .bind(m.action)
        .bind(i64::try_from(m.elapsed.as_micros()).unwrap_or(i64::MAX))
        .bind(m.applied)
        .bind(m.runner)
        .bind(super::TOOL_VERSION)
        .bind(m.detail)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn newest_marker(
    c: &mut MySqlConnection,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<super::Upto<'_>>,
    newest: bool,
) -> Result<Vec<super::NewestRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(super::newest_marker_sql(
        t,
        migrations,
        "?",
        "CAST(0 AS SIGNED)",
        upto,
        newest,
    )))
    .bind(version)
    .fetch_all(c)
    .await
}

/// This session's database, and the databases holding a table named as the migrations
/// table.
pub async fn history_whereabouts(
    c: &mut MySqlConnection,
    migrations: &MigrationsTable,
) -> Result<super::Whereabouts, sqlx::Error> {
    let (current, found): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT DATABASE(), (SELECT GROUP_CONCAT(table_schema ORDER BY table_schema) \
         FROM information_schema.tables WHERE table_name = ?)",
    )
    .bind(super::Whereabouts::bare_table(migrations))
    .fetch_one(c)
    .await?;
    Ok(super::Whereabouts {
        scope: "database".into(),
        current: current.unwrap_or_default(),
        found_in: found
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

pub async fn markers(
    c: &mut MySqlConnection,
    t: &Table,
    limit: u32,
) -> Result<Vec<Marker>, sqlx::Error> {
    let sql = format!(
        "SELECT id, version, digest, status, action, \
           DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%s.%fZ'), \
           DATE_FORMAT(finished_at, '%Y-%m-%dT%H:%i:%s.%fZ'), \
           CAST(applied AS SIGNED), runner, tool_version, detail \
         FROM {q} ORDER BY id DESC LIMIT ?",
        q = t.qualified
    );
    let rows = sqlx::query_as(AssertSqlSafe(sql))
        .bind(i64::from(limit))
        .fetch_all(c)
        .await?;
    Ok(rows.into_iter().map(super::marker_from_row).collect())
}

/// Record a migration as applied in `table` without running it, or mark a dirty one done.
pub async fn stamp(
    c: &mut MySqlConnection,
    table: &MigrationsTable,
    m: &sqlx::migrate::Migration,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES (?, ?, TRUE, ?, -1) \
         ON DUPLICATE KEY UPDATE success = TRUE, checksum = VALUES(checksum)"
    )))
    .bind(m.version)
    .bind(&*m.description)
    .bind(&*m.checksum)
    .execute(c)
    .await?;
    Ok(())
}

// ----- the backend -----

/// MySQL's spelling of what portable statements need.
pub const DIALECT: Dialect = Dialect {
    key_text: "VARCHAR(255)",
    int64: "SIGNED",
    now_ms: "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
    backslash_escapes: true,
    e_strings: false,
    on_duplicate_key: true,
};

impl super::backend::Backend for MySqlConnection {
    sqlx_connection_backend!();
    question_mark_backend!();

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    fn cast_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS CHAR)")
    }

    fn concat(&self, parts: &[&str]) -> String {
        format!("CONCAT({})", parts.join(", "))
    }

    fn quote_table(&self, name: &str) -> String {
        format!("`{name}`")
    }

    fn prepare_for_lock(&mut self, _busy: Option<(i64, i64)>) -> Fut<'_, Option<ServerInfo>> {
        Box::pin(async { Ok(None) })
    }

    fn try_lock<'a>(
        &'a mut self,
        lock: &'a LockConfig,
        _token: &'a str,
        _then_release: Option<i64>,
    ) -> Fut<'a, bool> {
        Box::pin(try_lock(self, lock))
    }

    fn unlock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(async move { unlock(self, lock).await.map(|()| true) })
    }

    fn holds_lock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(holds_lock(self, lock))
    }

    fn lock_holder<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, Option<Holder>> {
        Box::pin(lock_holder(self, lock))
    }

    fn table_home<'a>(&'a mut self, table: &'a Table) -> Fut<'a, (Option<String>, Option<String>)> {
        Box::pin(async move {
            match &table.schema {
                Some(s) => Ok((Some(s.clone()), current_database(self).await?)),
                None => Ok((None, None)),
            }
        })
    }

    fn free_slots(&mut self) -> Fut<'_, Option<i64>> {
        Box::pin(free_slots(self))
    }

    fn session_id(&mut self) -> Fut<'_, i64> {
        Box::pin(session_id(self))
    }

    fn cancel_and_settle(&mut self, id: i64) -> Fut<'_, ()> {
        Box::pin(cancel_and_settle(self, id))
    }

    fn kill_session(&mut self, id: i64) -> Fut<'_, ()> {
        Box::pin(kill_session(self, id))
    }

    fn ensure_marker_table<'a>(&'a mut self, t: &'a Table) -> Fut<'a, ()> {
        Box::pin(ensure_marker_table(self, t))
    }

    fn insert_marker<'a>(
        &'a mut self,
        t: &'a Table,
        m: &'a NewMarker<'a>,
        _fence: Option<&'a Fence>,
        _engine: Engine,
        _unless_done: bool,
    ) -> Fut<'a, ()> {
        Box::pin(insert_marker(self, t, m))
    }

    fn newest_marker<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<super::Upto<'a>>,
        newest: bool,
    ) -> Fut<'a, Vec<super::NewestRow>> {
        Box::pin(newest_marker(self, t, migrations, version, upto, newest))
    }

    fn history_whereabouts<'a>(
        &'a mut self,
        migrations: &'a MigrationsTable,
    ) -> Fut<'a, super::Whereabouts> {
        Box::pin(history_whereabouts(self, migrations))
    }

    fn markers<'a>(&'a mut self, t: &'a Table, limit: u32) -> Fut<'a, Vec<Marker>> {
        Box::pin(markers(self, t, limit))
    }

    fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        migrations: Migrations<'a>,
        _opts: &'a super::ApplyOptions,
    ) -> Boxed<'a, Result<(), super::ApplyError>> {
        // sqlx records a failed `-- no-transaction` migration dirty itself here.
        Box::pin(super::apply_each(self, table, migrations, None, None))
    }

    fn stamp<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        m: &'a Migration,
        _fence: Option<&'a Fence>,
    ) -> Fut<'a, ()> {
        Box::pin(stamp(self, table, m))
    }

    fn catalog(&mut self) -> Fut<'_, crate::db::catalog::Snapshot> {
        Box::pin(catalog(self))
    }

    fn create_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            self.execute(format!("CREATE DATABASE {name}"))
                .await
                .map(drop)
        })
    }

    fn drop_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            self.execute(format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .map(drop)
        })
    }

    fn prepare_scratch<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            super::stale::sweep_mysql(self).await;
            super::stale::hold_mysql(self, name).await
        })
    }

    fn mark_scratch<'a>(&'a mut self, name: &'a str, what: &'a str) -> Fut<'a, ()> {
        Box::pin(super::stale::mark_mysql(self, name, what))
    }

    fn table_count(&mut self) -> Fut<'_, i64> {
        Box::pin(
            sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
            )
            .fetch_one(self),
        )
    }
}

// ----- the catalog (`check`) -----

/// MySQL's catalog as a `Snapshot`. Long on purpose: one information_schema query per kind
/// of object, as PostgreSQL's `catalog::take` does.
async fn catalog(c: &mut MySqlConnection) -> Result<Snapshot, sqlx::Error> {
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
