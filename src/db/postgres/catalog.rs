//! PostgreSQL's catalog as a `Snapshot` (`Conn::catalog`).

use sqlx::{PgConnection, Row};

use super::rows;
use crate::db::catalog::{Column, Relation, Snapshot, display, excluded};

/// Read the catalog. Long on purpose: one query per kind of object, each filling its
/// own part of the snapshot, read top to bottom; split, they would only pass `s` around.
pub async fn take(c: &mut PgConnection) -> Result<Snapshot, sqlx::Error> {
    let mut s = Snapshot::default();
    let nsp = excluded("n.nspname");
    for r in rows(
        &mut *c,
        format!(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, \
               coalesce(pg_relation_filenode(c.oid)::int8, 0) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {nsp}"
        ),
    )
    .await?
    {
        let kind: String = r.try_get(3)?;
        s.relations.insert(
            r.try_get(0)?,
            Relation {
                schema: r.try_get(1)?,
                name: r.try_get(2)?,
                kind: kind.chars().next().unwrap_or('r'),
                filenode: r.try_get(4)?,
            },
        );
    }
    for r in rows(
        &mut *c,
        format!(
            "SELECT a.attrelid::int8, a.attnum::int4, a.attname::text, \
               format_type(a.atttypid, a.atttypmod), a.attnotnull, \
               (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {nsp}"
        ),
    )
    .await?
    {
        s.columns.entry(r.try_get(0)?).or_default().insert(
            r.try_get(1)?,
            Column {
                name: r.try_get(2)?,
                type_name: r.try_get(3)?,
                not_null: r.try_get(4)?,
                has_default: r.try_get(5)?,
            },
        );
    }
    for r in rows(
        &mut *c,
        format!(
            "SELECT x.indrelid::int8, i.relname::text FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_namespace n ON n.oid = i.relnamespace \
             WHERE x.indisunique AND {nsp}"
        ),
    )
    .await?
    {
        s.unique.insert((r.try_get(0)?, r.try_get(1)?));
    }
    for r in rows(
        &mut *c,
        format!(
            "SELECT k.conrelid::int8, k.conname::text FROM pg_constraint k \
             JOIN pg_namespace n ON n.oid = k.connamespace \
             WHERE k.contype = 'c' AND k.conrelid <> 0 AND {nsp}"
        ),
    )
    .await?
    {
        s.checks.insert((r.try_get(0)?, r.try_get(1)?));
    }
    for r in rows(
        &mut *c,
        format!(
            "SELECT n.nspname::text, t.typname::text, e.enumlabel::text FROM pg_enum e \
             JOIN pg_type t ON t.oid = e.enumtypid \
             JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE {nsp} ORDER BY t.oid, e.enumsortorder"
        ),
    )
    .await?
    {
        let name = display(&r.try_get::<String, _>(0)?, &r.try_get::<String, _>(1)?);
        s.enums.entry(name).or_default().push(r.try_get(2)?);
    }
    for r in rows(
        &mut *c,
        format!(
            "SELECT n.nspname::text, p.oid::regprocedure::text \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE {nsp} AND NOT EXISTS (SELECT 1 FROM pg_depend d \
               WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
        ),
    )
    .await?
    {
        // regprocedure qualifies the name itself when the schema is not on the path.
        s.functions.insert(r.try_get(1)?);
    }
    Ok(s)
}
