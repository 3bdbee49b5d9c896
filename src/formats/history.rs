//! The migrator's own history table, read over the connection schemagate already has:
//! which migrations it records, and (PostgreSQL) how recent its last change is, so that a
//! `failed` marker only ends a wait when nothing has changed in the history since.

use sqlx::{AssertSqlSafe, Row};

use super::{Foreign, Format};
use crate::db::{self, Conn, postgres::lit};
use crate::error::{Drift, Error, Result};
use crate::settings::Table;

/// What the history table records.
#[derive(Debug, Default)]
pub struct History {
    /// Alembic revisions, `app.name` (Django), or versions.
    pub rows: Vec<String>,
    /// PostgreSQL: `age(xmin)` of the most recently written row (smaller is newer).
    pub newest_age: Option<i64>,
}

fn id_expr(format: Format, conn: &Conn) -> String {
    let text = match conn {
        Conn::My(_) => "CHAR",
        _ => "TEXT",
    };
    match format {
        Format::Alembic => format!("CAST(version_num AS {text})"),
        Format::Django => match conn {
            Conn::My(_) => "CONCAT(app, '.', name)".into(),
            _ => "app || '.' || name".into(),
        },
        _ => format!("CAST(version AS {text})"),
    }
}

/// The table in SQL: the migrator's own name, or dbmate's `--migrations-table` quoted as
/// dbmate quotes it (so `MyHistory` keeps its case): on PostgreSQL `schema.table` is two
/// identifiers, on MySQL and SQLite the whole name is one.
fn table_sql(f: &Foreign, conn: &Conn) -> String {
    match (f.custom_table(), conn) {
        (None, _) => f.format.history_table().to_owned(),
        (Some(t), Conn::Pg(_)) => t
            .split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join("."),
        (Some(t), Conn::My(_)) => format!("`{t}`"),
        (Some(t), Conn::Lite(_)) => format!("\"{t}\""),
    }
}

/// The rows of the migrator's history table; none when the table does not exist yet.
pub async fn read(conn: &mut Conn, f: &Foreign) -> Result<History> {
    let format = f.format;
    let table = table_sql(f, conn);
    let expr = id_expr(format, conn);
    let shown = f.history_table().to_owned();
    let fail = |e: sqlx::Error| Error::Failed(format!("cannot read {shown}: {}", db::describe(&e)));
    let r = match conn {
        Conn::Pg(c) => {
            let sql = format!("SELECT {expr}, age(xmin)::int8 FROM {table}");
            sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_all(&mut *c)
                .await
                .and_then(|rows| {
                    let mut h = History::default();
                    for r in rows {
                        h.rows.push(r.try_get(0)?);
                        let age: i64 = r.try_get(1)?;
                        h.newest_age = Some(h.newest_age.map_or(age, |a| a.min(age)));
                    }
                    Ok(h)
                })
        }
        Conn::My(c) => sqlx::query_scalar(AssertSqlSafe(format!("SELECT {expr} FROM {table}")))
            .fetch_all(&mut *c)
            .await
            .map(|rows| History {
                rows,
                newest_age: None,
            }),
        Conn::Lite(c) => sqlx::query_scalar(AssertSqlSafe(format!("SELECT {expr} FROM {table}")))
            .fetch_all(&mut *c)
            .await
            .map(|rows| History {
                rows,
                newest_age: None,
            }),
    };
    match r {
        Err(e) if db::is_undefined_table(&e) => Ok(History::default()),
        r => r.map_err(fail),
    }
}

/// The detail of the newest marker for `version` when it is `failed` and written after the
/// history's last change (on MySQL and SQLite, whose history rows carry no write order,
/// whenever it is `failed`). A migrator run since the failure (a retry, a manual run) makes
/// the failure old news: the wait goes on.
pub async fn failed_since(
    conn: &mut Conn,
    table: &Table,
    version: &str,
    history: &History,
) -> Result<Option<String>> {
    let t = &table.qualified;
    let r: std::result::Result<Option<(String, Option<String>, i64)>, sqlx::Error> = match conn {
        Conn::Pg(c) => {
            let sql = format!(
                "SELECT status, detail, age(xmin)::int8 FROM {t} WHERE version = {} \
                 OR action = 'rollback' ORDER BY id DESC LIMIT 1",
                lit(version)
            );
            match sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_optional(&mut *c)
                .await
            {
                Ok(Some(r)) => (|| Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        }
        Conn::My(c) => {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT status, detail, 0 FROM {t} WHERE version = ? OR action = 'rollback' \
             ORDER BY id DESC LIMIT 1"
            )))
            .bind(version)
            .fetch_optional(&mut *c)
            .await
        }
        Conn::Lite(c) => {
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT status, detail, 0 FROM {t} WHERE version = ? OR action = 'rollback' \
             ORDER BY id DESC LIMIT 1"
            )))
            .bind(version)
            .fetch_optional(&mut *c)
            .await
        }
    };
    let newest = match r {
        Err(e) if db::is_undefined_table(&e) => None,
        r => r.map_err(|e| {
            Error::Failed(format!(
                "cannot read the markers from {t}: {}",
                db::describe(&e)
            ))
        })?,
    };
    Ok(match newest {
        Some((status, detail, age)) if status == "failed" => {
            let newer = history.newest_age.is_none_or(|h| age < h);
            newer.then(|| detail.unwrap_or_else(|| "no detail recorded".into()))
        }
        _ => None,
    })
}

/// The file list the newest `succeeded` marker of `format` recorded (`Foreign::manifest`).
pub async fn last_manifest(
    conn: &mut Conn,
    table: &Table,
    format: Format,
) -> Result<Option<String>> {
    let t = &table.qualified;
    let header = format!("{} ({})", super::MANIFEST_HEADER, format.name());
    let r: std::result::Result<Option<Option<String>>, sqlx::Error> = match conn {
        Conn::Pg(c) => {
            let sql = format!(
                "SELECT detail FROM {t} WHERE status = 'succeeded' AND detail LIKE {} \
                 ORDER BY id DESC LIMIT 1",
                lit(&format!("{header}%"))
            );
            match sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_optional(&mut *c)
                .await
            {
                Ok(Some(r)) => r.try_get(0).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        }
        Conn::My(c) => {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT detail FROM {t} WHERE status = 'succeeded' AND detail LIKE ? \
             ORDER BY id DESC LIMIT 1"
            )))
            .bind(format!("{header}%"))
            .fetch_optional(&mut *c)
            .await
        }
        Conn::Lite(c) => {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT detail FROM {t} WHERE status = 'succeeded' AND detail LIKE ? \
             ORDER BY id DESC LIMIT 1"
            )))
            .bind(format!("{header}%"))
            .fetch_optional(&mut *c)
            .await
        }
    };
    match r {
        Err(e) if db::is_undefined_table(&e) => Ok(None),
        r => r.map(Option::flatten).map_err(|e| {
            Error::Failed(format!(
                "cannot read the markers from {t}: {}",
                db::describe(&e)
            ))
        }),
    }
}

/// Drift: a migration file of the image that differs from the one the newest `succeeded`
/// marker of this format recorded (exit 4, naming the files).
pub async fn check_unmodified(conn: &mut Conn, table: &Table, f: &super::Foreign) -> Result<()> {
    let Some(manifest) = last_manifest(conn, table, f.format).await? else {
        return Ok(());
    };
    let modified = f.modified_since(&manifest);
    if modified.is_empty() {
        return Ok(());
    }
    Err(Error::Drift(Drift::FilesModified {
        format: f.format.name(),
        files: modified
            .iter()
            .map(|i| format!("{} ({})", i.file, i.id))
            .collect(),
    }))
}
