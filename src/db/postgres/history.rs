//! Other migrators' history tables (`--format`), and the marker reads `formats` makes.

use super::*;

/// `SELECT expr, age(xmin)` of another migrator's history table (`Conn::history_rows`).
pub async fn history_rows(
    c: &mut PgConnection,
    expr: &str,
    table: &str,
) -> Result<crate::db::HistoryRows, sqlx::Error> {
    let sql = format!("SELECT {expr}, age(xmin)::int8 FROM {table}");
    let rows = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(&mut *c).await?;
    let mut out: crate::db::HistoryRows = (Vec::new(), None);
    for r in rows {
        out.0.push(r.try_get(0)?);
        let age: i64 = r.try_get(1)?;
        out.1 = Some(out.1.map_or(age, |a| a.min(age)));
    }
    Ok(out)
}

/// `Conn::newest_marker_row`, with the row's `age(xmin)`.
pub async fn newest_marker_row(
    c: &mut PgConnection,
    t: &Table,
    version: &str,
) -> Result<Option<(String, Option<String>, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT status, detail, age(xmin)::int8 FROM {} WHERE version = {} \
         OR action = 'rollback' ORDER BY id DESC LIMIT 1",
        t.qualified,
        lit(version)
    );
    match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_optional(&mut *c)
        .await?
    {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
        None => Ok(None),
    }
}

/// `Conn::newest_succeeded_detail`.
pub async fn newest_succeeded_detail(
    c: &mut PgConnection,
    t: &Table,
    prefix: &str,
) -> Result<Option<String>, sqlx::Error> {
    let sql = format!(
        "SELECT detail FROM {} WHERE status = 'succeeded' AND detail LIKE {} \
         ORDER BY id DESC LIMIT 1",
        t.qualified,
        lit(&format!("{prefix}%"))
    );
    match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_optional(&mut *c)
        .await?
    {
        Some(r) => r.try_get(0),
        None => Ok(None),
    }
}
