//! The migrator's own history table, read over the connection schemagate already has:
//! which migrations it records, and (PostgreSQL) how recent its last change is, so that a
//! `failed` marker only ends a wait when nothing has changed in the history since.

use super::{Foreign, Format};
use crate::db::{self, Conn};
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
    match format {
        Format::Alembic => conn.cast_text("version_num"),
        Format::Django => conn.concat(&["app", "'.'", "name"]),
        Format::Reshape => "name".to_owned(),
        _ => conn.cast_text("version"),
    }
}

/// The table in SQL: the migrator's own name, or dbmate's `--migrations-table` quoted as
/// dbmate quotes it (so `MyHistory` keeps its case).
fn table_sql(f: &Foreign, conn: &Conn) -> String {
    match f.custom_table() {
        None => f.format.history_table().to_owned(),
        Some(t) => conn.quote_table(t),
    }
}

/// The rows of the migrator's history table; none when the table does not exist yet.
pub async fn read(conn: &mut Conn, f: &Foreign) -> Result<History> {
    let table = table_sql(f, conn);
    let expr = id_expr(f.format, conn);
    match conn.history_rows(&expr, &table).await {
        Ok((rows, newest_age)) => Ok(History { rows, newest_age }),
        Err(e) if db::is_undefined_table(&e) => Ok(History::default()),
        Err(e) => Err(Error::Failed(format!(
            "cannot read {}: {}",
            f.history_table(),
            db::describe(&e)
        ))),
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
    let r = conn.newest_marker_row(table, version).await;
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
    let r = conn.newest_succeeded_detail(table, &header).await;
    match r {
        Err(e) if db::is_undefined_table(&e) => Ok(None),
        r => r.map_err(|e| {
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

/// Reshape: the migrations started and not yet completed (`reshape.data`'s `state` row,
/// any state but `idle`); none when Reshape never ran.
pub async fn reshape_in_progress(conn: &mut Conn) -> Result<Vec<String>> {
    let expr = "jsonb_array_elements(value->'migrations')->>'name'";
    match conn
        .history_rows(expr, "reshape.data WHERE key = 'state'")
        .await
    {
        Ok((rows, _)) => Ok(rows),
        Err(e) if db::is_undefined_table(&e) => Ok(Vec::new()),
        Err(e) => Err(Error::Failed(format!(
            "cannot read reshape.data: {}",
            db::describe(&e)
        ))),
    }
}
