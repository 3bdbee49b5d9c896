//! What a rehearsal must never change, read before and after it: a fingerprint of the
//! database the URL names (its catalog, the rows of migration history tables, its
//! database-level settings, comment, owner and privileges, and the role check connects as)
//! and, for a warning only, the server's roles. Read-only and cheap: catalog queries and
//! the history tables, never the application's data.
//!
//! The same fingerprint of the scratch database says whether an external migrator changed
//! it at all. Roles are shared by every database on the server, and other sessions create
//! and drop them while a rehearsal runs: a change there is reported, not failed on.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::catalog::excluded;

/// Tables that record which migrations ran, by the names migrators give them (matched in
/// any schema), besides the configured sqlx table: a migrator that ignored DATABASE_URL
/// and migrated the real database shows there even when it changed no other table.
const HISTORY_TABLES: [&str; 14] = [
    "_sqlx_migrations",
    "alembic_version",
    "django_migrations",
    "schema_migrations",
    "__diesel_schema_migrations",
    "flyway_schema_history",
    "goose_db_version",
    "knex_migrations",
    "_prisma_migrations",
    "databasechangelog",
    "refinery_schema_history",
    "seaql_migrations",
    "SequelizeMeta",
    "gorp_migrations",
];

/// Object -> how it is defined, for every object the fingerprint covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(BTreeMap<String, String>);

async fn rows(c: &mut PgConnection, sql: String) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(c).await
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Fingerprint {
    /// The database `c` is connected to; `migrations_table` is the sqlx history table as
    /// configured (`name` or `schema.name`).
    pub async fn take(
        c: &mut PgConnection,
        migrations_table: &str,
    ) -> Result<Fingerprint, sqlx::Error> {
        let nsp = excluded("n.nspname");
        let db = "(SELECT oid FROM pg_database WHERE datname = current_database())";
        // One round trip: each line of the UNION is one kind of object, as `key, value`.
        let sql = format!(
            "SELECT 'relation ' || n.nspname || '.' || c.relname, c.relkind::text || ' (' || \
               coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
                 || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END \
                 || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum) \
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')' \
               || CASE WHEN c.relkind IN ('v', 'm') THEN ' AS ' || pg_get_viewdef(c.oid) ELSE '' END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c') AND {nsp} \
             UNION ALL \
             SELECT 'index ' || n.nspname || '.' || c.relname, pg_get_indexdef(c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('i', 'I') AND {nsp} \
             UNION ALL \
             SELECT 'constraint ' || n.nspname || '.' || k.conname || ' on ' \
               || CASE WHEN k.conrelid <> 0 THEN k.conrelid::regclass::text ELSE k.contypid::regtype::text END, \
               pg_get_constraintdef(k.oid) \
             FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE {nsp} \
             UNION ALL \
             SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text, pg_get_triggerdef(t.oid) \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {nsp} \
             UNION ALL \
             SELECT 'function ' || p.oid::regprocedure::text, p.prokind::text || ' ' \
               || p.prorettype::regtype::text || ' ' || md5(coalesce(p.prosrc, '')) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {nsp} \
             UNION ALL \
             SELECT 'type ' || n.nspname || '.' || t.typname, t.typtype::text || ' ' \
               || coalesce((SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) \
                 FROM pg_enum e WHERE e.enumtypid = t.oid), format_type(t.typbasetype, t.typtypmod)) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype IN ('e', 'd') AND {nsp} \
             UNION ALL \
             SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner)::text \
             FROM pg_namespace n WHERE {nsp} \
             UNION ALL \
             SELECT 'extension ' || x.extname, x.extversion FROM pg_extension x \
             UNION ALL \
             SELECT 'database owner', pg_get_userbyid(d.datdba)::text FROM pg_database d WHERE d.oid = {db} \
             UNION ALL \
             SELECT 'database privileges', coalesce(d.datacl::text, 'default') FROM pg_database d WHERE d.oid = {db} \
             UNION ALL \
             SELECT 'database options', 'connection limit ' || d.datconnlimit || ', allow connections ' \
               || d.datallowconn || ', template ' || d.datistemplate FROM pg_database d WHERE d.oid = {db} \
             UNION ALL \
             SELECT 'database comment', coalesce(shobj_description({db}, 'pg_database'), '') \
             UNION ALL \
             SELECT 'database setting' || coalesce(' for role ' || r.rolname, ''), array_to_string(s.setconfig, ', ') \
             FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = {db} \
             UNION ALL \
             SELECT 'role ' || r.rolname, row(r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                 r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil)::text \
               || coalesce(', member of ' || (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) \
                 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '') \
               || coalesce(', settings ' || (SELECT array_to_string(s.setconfig, ', ') FROM pg_db_role_setting s \
                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '') \
             FROM pg_roles r WHERE r.rolname = current_user \
               OR r.oid = (SELECT datdba FROM pg_database WHERE oid = {db})"
        );
        let mut map = BTreeMap::new();
        for r in rows(c, sql).await? {
            map.insert(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
        }
        let names: Vec<String> = HISTORY_TABLES.iter().map(|t| lit(t)).collect();
        let tables = rows(
            c,
            format!(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND {nsp} \
                   AND (c.relname IN ({}) OR c.oid = to_regclass({})) ORDER BY 1",
                names.join(", "),
                lit(migrations_table)
            ),
        )
        .await?;
        for t in tables {
            let table: String = t.try_get(0)?;
            let sql = format!(
                "SELECT count(*) || ' row(s), ' || coalesce(md5(string_agg(t::text, E'\\n' \
                 ORDER BY t::text)), '') FROM {table} t"
            );
            // A history table this role may not read still counts, as unreadable.
            let value = match rows(c, sql).await {
                Ok(r) => r[0].try_get::<String, _>(0)?,
                Err(_) => "unreadable".into(),
            };
            map.insert(format!("rows of {table}"), value);
        }
        Ok(Fingerprint(map))
    }

    /// What changed from `self` to `after`, one line per object, the database's and the
    /// role's own values shown (they are short; table definitions are not).
    pub fn changes(&self, after: &Fingerprint) -> Vec<String> {
        let shown = |k: &str, v: &str| {
            if k.starts_with("database ") || k.starts_with("role ") {
                format!("{k} ({v:?})")
            } else {
                k.to_owned()
            }
        };
        let mut out = Vec::new();
        for (k, v) in &after.0 {
            match self.0.get(k) {
                None => out.push(format!("new {}", shown(k, v))),
                Some(old) if old != v => out.push(if k.starts_with("database ") {
                    format!("changed {k}: {old:?} -> {v:?}")
                } else {
                    format!("changed {k}")
                }),
                Some(_) => {}
            }
        }
        for (k, v) in &self.0 {
            if !after.0.contains_key(k) {
                out.push(format!("gone: {}", shown(k, v)));
            }
        }
        out
    }
}

/// The server's roles and their attributes (not their passwords).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles(BTreeMap<String, String>);

impl Roles {
    pub async fn take(c: &mut PgConnection) -> Result<Roles, sqlx::Error> {
        let mut map = BTreeMap::new();
        for r in rows(
            c,
            "SELECT r.rolname::text, row(r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, \
               r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil)::text \
             FROM pg_roles r WHERE r.rolname !~ '^pg_'"
                .into(),
        )
        .await?
        {
            map.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(Roles(map))
    }

    /// `created role x`, `dropped role y`, `changed role z`.
    pub fn changes(&self, after: &Roles) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &after.0 {
            match self.0.get(k) {
                None => out.push(format!("created role {k}")),
                Some(old) if old != v => out.push(format!("changed role {k}")),
                Some(_) => {}
            }
        }
        for k in self.0.keys().filter(|k| !after.0.contains_key(*k)) {
            out.push(format!("dropped role {k}"));
        }
        out
    }
}

/// At most `n` items of a list, then how many more.
pub fn list(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > n {
        s.push_str(&format!("; and {} more", items.len() - n));
    }
    s
}
