//! The marker table on PostgreSQL: created with the migrations table in one statement,
//! written with NOTIFY in its transaction (fenced by the lease when there is one), read
//! with the history it is cross-checked against.

use super::apply::{applied_from, applied_sql, fenced};
use super::*;

pub async fn ensure_marker_table(c: &mut PgConnection, t: &Table) -> Result<(), sqlx::Error> {
    rows_creating(c, t.schema.as_deref(), &[&t.qualified], |e| {
        marker_table_sql(t, e.schema, e.tables[0])
    })
    .await
    .map(drop)
}

/// The migrations table as sqlx's own `ensure_migrations_table` creates it, then the
/// marker table, in one statement (one implicit transaction).
pub async fn ensure_tables(
    c: &mut PgConnection,
    t: &Table,
    migrations: &MigrationsTable,
) -> Result<(), sqlx::Error> {
    rows_creating(c, t.schema.as_deref(), &tables_of(t, migrations), |e| {
        tables_sql(t, migrations, e)
    })
    .await
    .map(drop)
}

/// The tables `tables_sql` creates, as `Existing::tables` reports them.
fn tables_of<'a>(t: &'a Table, migrations: &'a MigrationsTable) -> [&'a str; 2] {
    [migrations.qualified(), &t.qualified]
}

fn tables_sql(t: &Table, migrations: &MigrationsTable, e: &Existing) -> String {
    // The migrations table is created first: when it lives in the marker's schema, that
    // schema is created before it (`--table app.marker --migrations-table
    // app._sqlx_migrations` on a new database, or a fleet's schema per target).
    let same_schema = t.schema.as_deref().is_some_and(|s| {
        migrations
            .qualified()
            .split_once('.')
            .is_some_and(|(m, _)| m.eq_ignore_ascii_case(s))
    });
    let schema_first = !e.tables[0] && !e.schema && same_schema;
    let migrations = if e.tables[0] {
        String::new()
    } else {
        format!(
            "{}CREATE TABLE IF NOT EXISTS {} (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            success BOOLEAN NOT NULL,
            checksum BYTEA NOT NULL,
            execution_time BIGINT NOT NULL
        );",
            if schema_first {
                create_schema_sql(t)
            } else {
                String::new()
            },
            migrations
        )
    };
    format!(
        "{migrations}\n{}",
        marker_table_sql(t, e.schema || schema_first, e.tables[1])
    )
}

/// The marker table and its index, after its schema: what does not exist yet.
fn marker_table_sql(t: &Table, schema_exists: bool, table_exists: bool) -> String {
    if table_exists {
        return String::new();
    }
    let schema = if schema_exists {
        String::new()
    } else {
        create_schema_sql(t)
    };
    format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {q} (
            id BIGSERIAL PRIMARY KEY,
            version TEXT NOT NULL,
            digest TEXT,
            status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
            action TEXT NOT NULL DEFAULT 'migrate',
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            applied INTEGER NOT NULL DEFAULT 0,
            runner TEXT NOT NULL,
            tool_version TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX IF NOT EXISTS {n}_version_idx ON {q} (version, id);",
        q = t.qualified,
        n = t.name,
    )
}

/// The INSERT (and NOTIFY, where `engine` has it) for a marker row, as one statement:
/// `wait --listen` wakes at the commit that makes the row visible.
pub fn insert_marker_sql(t: &Table, m: &NewMarker<'_>, engine: Engine) -> String {
    insert_marker_sql_when(t, m, "", engine)
}

/// The marker INSERT, written only when `condition` (a `WHERE …` clause, or empty) holds
/// in the statement's own snapshot.
fn insert_marker_sql_when(t: &Table, m: &NewMarker<'_>, condition: &str, engine: Engine) -> String {
    let notify = if engine.notifies() {
        format!("SELECT pg_notify('{CHANNEL}', version) FROM ins")
    } else {
        "SELECT version FROM ins".to_owned()
    };
    format!(
        "WITH ins AS (
            INSERT INTO {q} (version, digest, status, action, started_at, finished_at,
                             applied, runner, tool_version, detail)
            SELECT {v}, {d}, '{s}', {a}, clock_timestamp() - make_interval(secs => {e}),
                    clock_timestamp(), {n}, {r}, {tv}, {det} {condition}
            RETURNING version)
         {notify}",
        q = t.qualified,
        v = lit(m.version),
        d = lit_opt(m.digest),
        s = m.status.as_str(),
        a = lit(m.action),
        e = m.elapsed.as_secs_f64(),
        n = i32::try_from(m.applied).unwrap_or(i32::MAX),
        r = lit(m.runner),
        tv = lit(crate::db::TOOL_VERSION),
        det = lit_opt(m.detail),
    )
}

pub async fn insert_marker(
    c: &mut PgConnection,
    t: &Table,
    m: &NewMarker<'_>,
    fence: Option<&Fence>,
    engine: Engine,
) -> Result<(), sqlx::Error> {
    fenced(c, insert_marker_sql(t, m, engine), fence).await
}

/// A `failed` marker written from a side connection, unless the marker that decides the
/// version is already `succeeded`. Checked in the INSERT's own snapshot, which is taken
/// after the lease's fence (run first in the same transaction) waited for any transaction
/// of ours still in flight: a `succeeded` marker committing meanwhile is seen, and no
/// `failed` one lands after it.
pub async fn insert_marker_unless_done(
    c: &mut PgConnection,
    t: &Table,
    m: &NewMarker<'_>,
    fence: Option<&Fence>,
    engine: Engine,
) -> Result<(), sqlx::Error> {
    let condition = format!(
        "WHERE NOT EXISTS (SELECT 1 FROM (SELECT version, status FROM {q} \
           WHERE version = {v} OR action = 'rollback' ORDER BY id DESC LIMIT 1) AS decisive \
           WHERE decisive.version = {v} AND decisive.status = 'succeeded')",
        q = t.qualified,
        v = lit(m.version),
    );
    fenced(c, insert_marker_sql_when(t, m, &condition, engine), fence).await
}

pub async fn newest_marker<'c>(
    c: impl PgExecutor<'c>,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<crate::db::Upto<'_>>,
    newest: bool,
) -> Result<Vec<crate::db::NewestRow>, sqlx::Error> {
    rows(c, newest_marker_sql(t, migrations, version, upto, newest))
        .await?
        .iter()
        .map(newest_row)
        .collect()
}

fn newest_marker_sql(
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<crate::db::Upto<'_>>,
    newest: bool,
) -> String {
    crate::db::newest_marker_sql(t, migrations, &lit(version), "0::int8", upto, newest)
}

fn newest_row(r: &PgRow) -> Result<crate::db::NewestRow, sqlx::Error> {
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
    ))
}

/// `ensure_tables`, then the marker that decides `version` (`newest_marker`) and what
/// the migrations table holds (`applied`), in one round trip and one transaction: what the
/// lock holder reads before it applies anything.
pub async fn ensure_tables_and_read(
    c: &mut PgConnection,
    t: &Table,
    migrations: &MigrationsTable,
    version: &str,
    upto: Option<crate::db::Upto<'_>>,
) -> Result<NewestAndApplied, sqlx::Error> {
    let sql = |e: &Existing| {
        format!(
            "{}\n{};\n{}",
            tables_sql(t, migrations, e),
            newest_marker_sql(t, migrations, version, upto, false),
            applied_sql(migrations)
        )
    };
    // One statement's rows after the other's: told apart by their width.
    let (newest, applied): (Vec<PgRow>, Vec<PgRow>) =
        rows_creating(c, t.schema.as_deref(), &tables_of(t, migrations), sql)
            .await?
            .into_iter()
            .partition(|r| r.len() == 7);
    Ok((
        newest.iter().map(newest_row).collect::<Result<_, _>>()?,
        applied_from(applied)?,
    ))
}

pub async fn markers(
    c: &mut PgConnection,
    t: &Table,
    limit: u32,
) -> Result<Vec<Marker>, sqlx::Error> {
    let sql = format!(
        "SELECT id, version, digest, status, action, \
           to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
           to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
           applied::int8, runner, tool_version, detail \
         FROM {q} ORDER BY id DESC LIMIT {limit}",
        q = t.qualified
    );
    rows(c, sql)
        .await?
        .iter()
        .map(|r| {
            Ok(Marker {
                id: r.try_get(0)?,
                version: r.try_get(1)?,
                digest: r.try_get(2)?,
                status: r.try_get(3)?,
                action: r.try_get(4)?,
                started_at: r.try_get(5)?,
                finished_at: r.try_get(6)?,
                applied: r.try_get(7)?,
                runner: r.try_get(8)?,
                tool_version: r.try_get(9)?,
                detail: r.try_get(10)?,
            })
        })
        .collect()
}

/// Indexes left invalid (a failed `CREATE INDEX CONCURRENTLY`), as `schema.index`.
pub async fn invalid_indexes(c: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT n.nspname || '.' || i.relname FROM pg_index x \
               JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace \
               WHERE NOT x.indisvalid ORDER BY 1";
    rows(c, sql.into())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}
