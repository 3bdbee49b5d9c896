//! `Backend` for PostgreSQL's connection: what `Conn` asks, answered by this folder.

use super::*;

/// PostgreSQL's spelling of what portable statements need.
pub const DIALECT: Dialect = Dialect {
    key_text: "TEXT",
    int64: "BIGINT",
    now_ms: "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    backslash_escapes: false,
    e_strings: true,
    on_duplicate_key: false,
};

impl Backend for PgConnection {
    sqlx_connection_backend!();
    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    fn cast_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }

    fn concat(&self, parts: &[&str]) -> String {
        parts.join(" || ")
    }

    fn quote_table(&self, name: &str) -> String {
        name.split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn as_pg(&mut self) -> Option<&mut PgConnection> {
        Some(self)
    }

    fn into_pg(self: Box<Self>) -> Option<PgConnection> {
        Some(*self)
    }

    fn prepare_for_lock(&mut self, busy: Option<(i64, i64)>) -> Fut<'_, Option<ServerInfo>> {
        Box::pin(async move { prepare_for_lock(self, busy).await.map(Some) })
    }

    fn try_lock<'a>(
        &'a mut self,
        lock: &'a LockConfig,
        token: &'a str,
        then_release: Option<i64>,
    ) -> Fut<'a, bool> {
        Box::pin(try_lock(self, lock.key, token, then_release))
    }

    fn unlock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(unlock(self, lock.key))
    }

    fn holds_lock<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, bool> {
        Box::pin(holds_lock(self, lock.key))
    }

    fn lock_holder<'a>(&'a mut self, lock: &'a LockConfig) -> Fut<'a, Option<Holder>> {
        Box::pin(lock_holder(self, lock.key))
    }

    fn table_home<'a>(&'a mut self, table: &'a Table) -> Fut<'a, (Option<String>, Option<String>)> {
        Box::pin(async move {
            let schema = match &table.schema {
                Some(s) => Some(s.clone()),
                None => table_schema(self, &table.name.to_ascii_lowercase()).await?,
            };
            Ok((schema, Some("public".to_owned())))
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

    fn ensure_tables<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
    ) -> Option<Fut<'a, ()>> {
        Some(Box::pin(ensure_tables(self, t, migrations)))
    }

    fn ensure_tables_and_read<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<crate::db::Upto<'a>>,
    ) -> Option<Fut<'a, NewestAndApplied>> {
        Some(Box::pin(ensure_tables_and_read(
            self, t, migrations, version, upto,
        )))
    }

    fn insert_marker<'a>(
        &'a mut self,
        t: &'a Table,
        m: &'a NewMarker<'a>,
        fence: Option<&'a Fence>,
        engine: Engine,
        unless_done: bool,
    ) -> Fut<'a, ()> {
        if unless_done {
            Box::pin(insert_marker_unless_done(self, t, m, fence, engine))
        } else {
            Box::pin(insert_marker(self, t, m, fence, engine))
        }
    }

    fn newest_marker<'a>(
        &'a mut self,
        t: &'a Table,
        migrations: &'a MigrationsTable,
        version: &'a str,
        upto: Option<crate::db::Upto<'a>>,
        newest: bool,
    ) -> Fut<'a, Vec<crate::db::NewestRow>> {
        Box::pin(newest_marker(self, t, migrations, version, upto, newest))
    }

    fn history_whereabouts<'a>(
        &'a mut self,
        migrations: &'a MigrationsTable,
    ) -> Fut<'a, crate::db::Whereabouts> {
        Box::pin(history_whereabouts(self, migrations))
    }

    fn markers<'a>(&'a mut self, t: &'a Table, limit: u32) -> Fut<'a, Vec<Marker>> {
        Box::pin(markers(self, t, limit))
    }

    fn applied<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
    ) -> Boxed<'a, crate::error::Result<(Vec<AppliedMigration>, Option<i64>)>> {
        Box::pin(async move { crate::db::settle_applied(applied(self, table).await) })
    }

    fn history_rows<'a>(
        &'a mut self,
        expr: &'a str,
        table: &'a str,
    ) -> Fut<'a, crate::db::HistoryRows> {
        Box::pin(history_rows(self, expr, table))
    }

    fn newest_marker_row<'a>(
        &'a mut self,
        t: &'a Table,
        version: &'a str,
    ) -> Fut<'a, Option<(String, Option<String>, i64)>> {
        Box::pin(newest_marker_row(self, t, version))
    }

    fn newest_succeeded_detail<'a>(
        &'a mut self,
        t: &'a Table,
        prefix: &'a str,
    ) -> Fut<'a, Option<String>> {
        Box::pin(newest_succeeded_detail(self, t, prefix))
    }

    /// Transactional migrations together in one transaction; a `-- no-transaction` one
    /// alone, statement by statement.
    fn apply<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        mut migrations: Migrations<'a>,
        opts: &'a ApplyOptions,
    ) -> Boxed<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let Some(first) = migrations.next() else {
                return Ok(());
            };
            let first = first.map_err(|e| ApplyError::unreadable(&e))?;
            if !first.no_tx {
                let all = std::iter::once(Ok(first)).chain(migrations);
                return apply_in_tx(self, table, all, opts).await;
            }
            apply_no_tx(self, table, &first, opts)
                .await
                .map_err(ApplyError::from_no_tx)
        })
    }

    fn revert<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        down: Migration,
        fence: Option<&'a Fence>,
    ) -> Boxed<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            revert(self, table, down, fence)
                .await
                .map_err(ApplyError::from_no_tx)
        })
    }

    fn stamp<'a>(
        &'a mut self,
        table: &'a MigrationsTable,
        m: &'a Migration,
        fence: Option<&'a Fence>,
    ) -> Fut<'a, ()> {
        Box::pin(stamp(self, table, m, fence))
    }

    fn invalid_indexes(&mut self) -> Fut<'_, Vec<String>> {
        Box::pin(invalid_indexes(self))
    }

    fn catalog(&mut self) -> Fut<'_, crate::db::catalog::Snapshot> {
        Box::pin(catalog::take(self))
    }

    fn create_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(exec(self, format!("CREATE DATABASE {name}")))
    }

    fn drop_database<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(exec(
            self,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ))
    }

    fn prepare_scratch<'a>(&'a mut self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            crate::db::stale::sweep_pg(self).await;
            crate::db::stale::hold_pg(self, name).await
        })
    }

    fn mark_scratch<'a>(&'a mut self, name: &'a str, what: &'a str) -> Fut<'a, ()> {
        Box::pin(crate::db::stale::mark_pg(self, name, what))
    }

    fn table_count(&mut self) -> Fut<'_, i64> {
        Box::pin(
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            )
            .fetch_one(self),
        )
    }
}
