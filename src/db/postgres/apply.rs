//! Migrations in sqlx's `_sqlx_migrations` layout, applied over the simple query protocol:
//! a transactional one with its bookkeeping row in one round trip, a `-- no-transaction`
//! one statement by statement, each fenced on the lease; and reverting and stamping.

use super::*;

/// This session's search_path, and the schemas holding a table named as the migrations
/// table.
pub async fn history_whereabouts<'c>(
    c: impl PgExecutor<'c>,
    migrations: &MigrationsTable,
) -> Result<crate::db::Whereabouts, sqlx::Error> {
    let sql = format!(
        "SELECT current_setting('search_path'), coalesce((SELECT string_agg(n.nspname, ',' \
           ORDER BY n.nspname) FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
           WHERE t.relname = {} AND t.relkind IN ('r', 'p')), '')",
        lit(crate::db::Whereabouts::bare_table(migrations))
    );
    let r = row(c, sql)
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("no row from the catalog".into()))?;
    let found: String = r.try_get(1)?;
    Ok(crate::db::Whereabouts {
        scope: "search_path".into(),
        current: r.try_get(0)?,
        found_in: found
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Applied migrations, in version order, and the first dirty one (`success = false`).
pub async fn applied<'c>(
    c: impl PgExecutor<'c>,
    table: &MigrationsTable,
) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
    applied_from(rows(c, applied_sql(table)).await?)
}

pub(super) fn applied_sql(table: &MigrationsTable) -> String {
    format!("SELECT version, encode(checksum, 'hex'), success FROM {table} ORDER BY version")
}

pub(super) fn applied_from(
    rs: Vec<PgRow>,
) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
    let mut applied = Vec::with_capacity(rs.len());
    let mut dirty = None;
    for r in rs {
        let version: i64 = r.try_get(0)?;
        let checksum: String = r.try_get(1)?;
        if !r.try_get::<bool, _>(2)? && dirty.is_none() {
            dirty = Some(version);
        }
        applied.push(AppliedMigration {
            version,
            checksum: unhex(&checksum).into(),
        });
    }
    Ok((applied, dirty))
}

pub(super) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn bookkeeping_sql(table: &MigrationsTable, m: &Migration, success: bool) -> String {
    // execution_time: nanoseconds since the transaction began (sqlx writes -1, then
    // updates it in another round trip).
    format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time) \
         VALUES ({v}, {d}, {success}, decode('{c}', 'hex'), \
           (extract(epoch FROM clock_timestamp() - now()) * 1e9)::int8)",
        v = m.version,
        d = lit(&m.description),
        c = hex(&m.checksum),
    )
}

/// The SQL that applies one transactional migration with its bookkeeping row in `table`,
/// without BEGIN/COMMIT (so several can share one transaction).
pub fn migration_in_tx_sql(table: &MigrationsTable, m: &Migration) -> String {
    // Newlines around the migration's SQL: it may end in a `--` comment.
    format!(
        "{}\n;\n{};\n",
        m.sql.as_str(),
        bookkeeping_sql(table, m, true)
    )
}

/// For the transaction it runs in: the server checks every second that the client is still
/// there (see `settings_sql`).
const CHECK_CONNECTION_LOCAL: &str = "SELECT set_config('client_connection_check_interval', \
     '1s', true) WHERE current_setting('server_version_num')::int >= 140000;\n";

fn settings_sql(opts: &ApplyOptions) -> String {
    // If this process dies, the server aborts the transaction within a second instead of
    // finishing it: a lease taken over after its TTL never overlaps a dead run's
    // migration. LOCAL, so it works through a transaction pooler too (PostgreSQL 14+).
    // Under the advisory lock the session is our own and `prepare_for_lock` set it for the
    // whole session: one statement less per migration.
    let mut s = String::new();
    if opts.fence.is_some() {
        s.push_str(CHECK_CONNECTION_LOCAL);
    }
    for set in timeout_settings(opts, "SET LOCAL") {
        s.push_str(&set);
        s.push('\n');
    }
    s
}

/// Migrations up to this size share the transaction's one query (one round trip). A larger
/// one is sent on its own, in pieces of its statements of about this size, so that memory
/// holds its text once, not twice more (a copy in the query, and sqlx's send buffer).
const INLINE_MAX: usize = crate::db::PIECE;

/// Apply transactional migrations in one transaction, in one round trip unless they are
/// large (`INLINE_MAX`); on error the transaction is rolled back. Each migration is read as
/// `migrations` yields it and let go once sent.
pub async fn apply_in_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    migrations: impl Iterator<Item = crate::error::Result<Migration>>,
    opts: &ApplyOptions,
) -> Result<(), ApplyError> {
    let mut began = false;
    match send_in_tx(c, table, migrations, opts, &mut began).await {
        Ok(()) => Ok(()),
        Err(InTx::Db(e)) => {
            end_failed_transaction(c).await;
            Err(ApplyError::from_sqlx(&e))
        }
        Err(InTx::Unreadable(e)) => {
            // Everything sent so far succeeded: the transaction is open, and must end here.
            if began {
                let _ = exec(c, "ROLLBACK".into()).await;
            }
            Err(ApplyError::unreadable(&e))
        }
    }
}

/// Why `send_in_tx` stopped.
enum InTx {
    Db(sqlx::Error),
    Unreadable(crate::error::Error),
}

async fn send_in_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    migrations: impl Iterator<Item = crate::error::Result<Migration>>,
    opts: &ApplyOptions,
    began: &mut bool,
) -> Result<(), InTx> {
    let mut sql = format!("BEGIN;\n{}", settings_sql(opts));
    // The lease's fence: a run that lost its lease stops before any statement of the
    // migration; and the last statement before COMMIT renews the lease under a row lock,
    // so the migration commits only while the lease is ours. (Holding the row for the
    // whole migration would starve the heartbeat of a long one.)
    if let Some(fence) = &opts.fence {
        sql.push_str(&fence.check);
        sql.push_str(";\n");
    }
    for m in migrations {
        let m = m.map_err(InTx::Unreadable)?;
        let len = m.sql.as_str().len();
        if len <= INLINE_MAX && sql.len() + len <= INLINE_MAX {
            sql.push_str(&migration_in_tx_sql(table, &m));
            continue;
        }
        exec(c, std::mem::take(&mut sql)).await.map_err(InTx::Db)?;
        *began = true;
        if len <= INLINE_MAX {
            sql.push_str(&migration_in_tx_sql(table, &m));
            continue;
        }
        sql = format!("{};\n", bookkeeping_sql(table, &m, true));
        send_large(c, m.sql).await.map_err(InTx::Db)?;
    }
    if let Some(fence) = &opts.fence {
        sql.push_str(&fence.hold);
        sql.push_str(";\n");
    }
    sql.push_str("COMMIT;");
    exec(c, sql).await.map_err(InTx::Db)
}

/// Send a large migration's SQL inside the open transaction, in pieces of whole statements
/// of about `INLINE_MAX` (`sql::pieces`; as psql sends a file's statements one by one: the
/// same, inside a transaction block), so that memory holds the text and one piece. When one
/// statement alone is larger than that, the whole text is sent as one query, moved rather
/// than copied.
async fn send_large(c: &mut PgConnection, sql: SqlStr) -> Result<(), sqlx::Error> {
    let r = async {
        let pieces = crate::sql::pieces(sql.as_str(), INLINE_MAX);
        if pieces.iter().any(|p| p.len() > INLINE_MAX) {
            drop(pieces);
            return sqlx::raw_sql(sql).execute(&mut *c).await.map(|_| ());
        }
        for piece in pieces {
            exec(c, piece.to_owned()).await?;
        }
        Ok(())
    }
    .await;
    // sqlx's send buffer grew to the largest query: let it go.
    sqlx::Connection::shrink_buffers(c);
    r
}

/// After a failed batch: roll back if the session is still in the aborted transaction
/// block. A plain ROLLBACK when the server already ended it makes PostgreSQL warn "there
/// is no transaction in progress", a second, misleading line for one failure.
async fn end_failed_transaction(c: &mut PgConnection) {
    if let Err(sqlx::Error::Database(db)) = exec(c, "SELECT 1".into()).await
        && db.code().as_deref() == Some("25P02")
    {
        let _ = exec(c, "ROLLBACK".into()).await;
    }
}

/// Apply a `-- no-transaction` migration one statement at a time, as psql would (one
/// multi-statement query would be one implicit transaction, where `CREATE INDEX
/// CONCURRENTLY` refuses to run). On failure it is recorded dirty (`success = false`) only
/// when something took effect: a statement before the failing one, or a failed `CREATE
/// INDEX CONCURRENTLY`, which leaves an invalid index. Otherwise nothing happened and the
/// next run simply tries again.
///
/// Under the lease every statement is fenced (`fenced_statement`), and so is the
/// bookkeeping row, success or dirty: a run whose lease another run has taken over (it was
/// paused past the TTL) stops at its next statement and records nothing.
pub async fn apply_no_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    opts: &ApplyOptions,
) -> Result<(), NoTxError> {
    let fence = opts.fence.as_ref();
    // --ddl-lock-timeout / --statement-timeout: each statement is a transaction of its
    // own, so the limits are set for the session around the statements they bound, and
    // reset after. Not around a statement that leaves debris when it fails (`CREATE INDEX
    // CONCURRENTLY`, which waits for older transactions by design): cut short, it would
    // leave an invalid index and the migration dirty, a manual repair instead of a wait.
    // Under the lease (possibly behind a transaction pooler) the statements may each land
    // on another server session, where a session setting would not follow them (and would
    // linger for other clients): said, not pretended.
    let limits = session_limits_sql(opts);
    if limits.is_empty() {
        return run_no_tx(c, table, m, None, fence).await;
    }
    if fence.is_some() {
        tracing::warn!(
            "--ddl-lock-timeout and --statement-timeout do not apply to the -- no-transaction \
             migration {} under the lease: its statements may run on different server \
             sessions",
            m.version
        );
        return run_no_tx(c, table, m, None, fence).await;
    }
    let r = run_no_tx(c, table, m, Some(&limits), None).await;
    if let Err(e) = exec(c, RESET_LIMITS.into()).await {
        tracing::warn!("could not reset the session's timeouts: {e}");
    }
    r
}

const RESET_LIMITS: &str = "RESET lock_timeout; RESET statement_timeout";

/// The session-level form of `settings_sql`'s limits, for `-- no-transaction` migrations.
fn session_limits_sql(opts: &ApplyOptions) -> String {
    timeout_settings(opts, "SET").join(" ")
}

/// One `{set} <timeout> = <value>;` statement per timeout `opts` gives (`set`: `SET LOCAL`
/// for a transaction, `SET` for the session).
fn timeout_settings(opts: &ApplyOptions, set: &str) -> Vec<String> {
    [
        ("lock_timeout", opts.lock_timeout),
        ("statement_timeout", opts.statement_timeout),
    ]
    .iter()
    .filter_map(|(name, d)| d.map(|d| format!("{set} {name} = {};", timeout_ms(d))))
    .collect()
}

/// `apply_no_tx`'s statements and bookkeeping.
async fn run_no_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    limits: Option<&str>,
    fence: Option<&Fence>,
) -> Result<(), NoTxError> {
    let statements = crate::sql::split(m.sql.as_str());
    let n = statements.len();
    if let Err(stop) = run_statements(c, &statements, limits, fence).await {
        let record = if stop.took_effect() && !stop.lease_lost() {
            Some(fenced(c, bookkeeping_sql(table, m, false), fence).await)
        } else {
            None
        };
        if let Some(Err(e)) = &record {
            tracing::warn!(
                "could not record migration {} as dirty: {}",
                m.version,
                crate::db::describe(e)
            );
        }
        return Err(stop.into_error(n, record));
    }
    fenced(c, bookkeeping_sql(table, m, true), fence)
        .await
        .map_err(|e| NoTxError {
            message: unrecorded(&e, table, n, m.version),
            took_effect: n > 0,
            dirty: false,
            error: e,
        })
}

/// Why the bookkeeping row of a `-- no-transaction` migration whose `n` statements all ran
/// could not be written: said as it is, never "nothing took effect".
fn unrecorded(e: &sqlx::Error, table: &MigrationsTable, n: usize, version: i64) -> String {
    let ran = all_ran(n);
    if crate::db::is_lease_lost(e) {
        return format!(
            "{ran}, but the migration lease was taken over by another run before it was \
             recorded in {table}: it is not recorded"
        );
    }
    if matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505")) {
        return format!(
            "{ran}, but another run recorded migration {version} in {table} \
             meanwhile (duplicate key): both runs may have applied it"
        );
    }
    format!(
        "{ran}, but recording it in {table} failed: {}",
        crate::db::describe(e)
    )
}

/// "All `n` statements took effect", as said of a migration without a transaction.
fn all_ran(n: usize) -> String {
    match n {
        0 => "it has no statement".to_owned(),
        1 => "its statement took effect".to_owned(),
        n => format!("all {n} of its statements took effect"),
    }
}

/// Where the statements of a migration without a transaction stopped.
struct Stopped {
    error: sqlx::Error,
    /// The failing statement: its index, and the line it starts on.
    index: usize,
    line: usize,
    /// The failing statement itself may have left something behind (it ran, and a failed
    /// `CREATE INDEX CONCURRENTLY` leaves an invalid index).
    debris: bool,
}

impl Stopped {
    fn lease_lost(&self) -> bool {
        crate::db::is_lease_lost(&self.error)
    }

    /// Whether anything of the migration took effect: a statement before this one, or this
    /// one's debris.
    fn took_effect(&self) -> bool {
        self.index > 0 || self.debris
    }

    /// The error, saying what took effect; `record`: how writing the dirty row went, when
    /// it was tried.
    fn into_error(self, n: usize, record: Option<Result<(), sqlx::Error>>) -> NoTxError {
        let k = self.index + 1;
        let before = match self.index {
            0 => String::new(),
            1 => ", after statement 1 took effect".into(),
            i => format!(", after statements 1-{i} took effect"),
        };
        let took_effect = self.took_effect();
        let message = if self.lease_lost() {
            format!(
                "the migration lease was taken over by another run: stopped at statement {k} \
                 of {n} (line {}), which did not take effect{}",
                self.line,
                if self.index > 0 {
                    format!("{before}; they are not recorded")
                } else {
                    String::new()
                }
            )
        } else {
            let recorded = match &record {
                Some(Err(e)) if crate::db::is_lease_lost(e) => {
                    "; it is not recorded as dirty: the migration lease was taken over by \
                     another run"
                        .to_owned()
                }
                Some(Err(e)) => {
                    format!(
                        "; recording it as dirty failed too: {}",
                        crate::db::describe(e)
                    )
                }
                _ => String::new(),
            };
            format!(
                "statement {k} of {n} (line {}){before}: {}{recorded}",
                self.line,
                crate::db::describe(&self.error)
            )
        };
        NoTxError {
            message,
            took_effect,
            dirty: took_effect && matches!(record, Some(Ok(()))),
            error: self.error,
        }
    }
}

/// Run `statements` one by one, each a transaction of its own (fenced, under the lease).
/// With `limits`, the session's timeouts are set before each statement they may bound
/// and reset before one they must not (see `apply_no_tx`).
async fn run_statements(
    c: &mut PgConnection,
    statements: &[crate::sql::Statement<'_>],
    limits: Option<&str>,
    fence: Option<&Fence>,
) -> Result<(), Stopped> {
    let mut limited = false;
    for (i, st) in statements.iter().enumerate() {
        let debris = crate::sql::leaves_debris_on_failure(st.text);
        let mut ran = false;
        let mut result = Ok(());
        if let Some(limits) = limits
            && limited == debris
        {
            let sql = if debris { RESET_LIMITS } else { limits };
            result = exec(c, sql.to_owned()).await;
            limited = !debris;
        }
        if result.is_ok() {
            ran = true;
            result = match fence {
                Some(fence) => fenced_statement(c, st.text, fence).await,
                None => exec(c, st.text.to_owned()).await,
            };
        }
        if let Err(error) = result {
            let lost = crate::db::is_lease_lost(&error);
            return Err(Stopped {
                error,
                index: i,
                line: st.line,
                debris: ran && debris && !lost,
            });
        }
    }
    Ok(())
}

/// One statement of a `-- no-transaction` migration under the lease. Where it may run in
/// a transaction block, the fence's check, the statement and the fence's hold are sent in
/// one query, which PostgreSQL runs as one implicit transaction: a run whose lease was
/// taken over runs nothing, and one deposed while the statement ran (paused past the TTL)
/// has it rolled back at the hold, as a transactional migration would. A statement that
/// must run outside a transaction block (`CREATE INDEX CONCURRENTLY`, `VACUUM`,
/// transaction control, or any the server refuses there) is sent alone right after the
/// check. That is all that can be done for it: once sent it cannot be recalled, so a run
/// paused after the check or during the statement lets it finish after the lease is lost;
/// the next statement's check (or the bookkeeping's fence) then stops the run.
async fn fenced_statement(
    c: &mut PgConnection,
    text: &str,
    fence: &Fence,
) -> Result<(), sqlx::Error> {
    if !crate::sql::runs_outside_transaction(text) {
        // Newlines around the statement: it may end in a `--` comment.
        let sql = format!(
            "{CHECK_CONNECTION_LOCAL}{};\n{text}\n;\n{};",
            fence.check, fence.hold
        );
        match exec(c, sql).await {
            // Refused in a transaction block (25001), or a procedure's COMMIT refused
            // there (2D000): raised before anything of it could commit. Send it alone.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("25001" | "2D000")) => {}
            r => return r,
        }
    }
    exec(c, fence.check.clone()).await?;
    exec(c, text.to_owned()).await
}

/// A `-- no-transaction` migration that failed: what it left behind, said in `message`.
pub struct NoTxError {
    pub error: sqlx::Error,
    /// The whole message: where it stopped, what took effect, the error.
    pub message: String,
    /// Something of it took effect (a statement ran before the failure, or the failure
    /// left debris, or every statement ran and the bookkeeping failed).
    pub took_effect: bool,
    /// It is recorded dirty.
    pub dirty: bool,
}

/// Undo a migration and delete its row, fenced by the lease when `fence` is given. A
/// `-- no-transaction` down migration runs as an up one does: statement by statement, each
/// fenced, and the row deleted in a fenced transaction; a failure says what took effect.
pub async fn revert(
    c: &mut PgConnection,
    table: &MigrationsTable,
    down: Migration,
    fence: Option<&Fence>,
) -> Result<(), NoTxError> {
    let delete = format!("DELETE FROM {table} WHERE version = {}", down.version);
    if down.no_tx {
        // One statement at a time, as for an up migration: one multi-statement query is an
        // implicit transaction, where `DROP INDEX CONCURRENTLY` refuses to run.
        let statements = crate::sql::split(down.sql.as_str());
        let n = statements.len();
        if let Err(stop) = run_statements(c, &statements, None, fence).await {
            return Err(stop.into_error(n, None));
        }
        return fenced(c, delete, fence).await.map_err(|e| NoTxError {
            message: unrecorded_revert(&e, table, n, down.version),
            took_effect: n > 0,
            dirty: false,
            error: e,
        });
    }
    let (check, hold) = fence
        .map(|f| (format!("{};\n", f.check), format!("{};\n", f.hold)))
        .unwrap_or_default();
    let r = if down.sql.as_str().len() > INLINE_MAX {
        // As in `apply_in_tx`: a large down migration is sent in batches, not copied whole.
        async {
            exec(c, format!("BEGIN;\n{check}")).await?;
            send_large(c, down.sql).await?;
            exec(c, format!("{delete};\n{hold}COMMIT;")).await
        }
        .await
    } else {
        exec(
            c,
            format!(
                "BEGIN;\n{check}{}\n;\n{delete};\n{hold}COMMIT;",
                down.sql.as_str()
            ),
        )
        .await
    };
    if r.is_err() {
        end_failed_transaction(c).await;
    }
    r.map_err(|e| NoTxError {
        message: crate::db::describe(&e),
        took_effect: false,
        dirty: false,
        error: e,
    })
}

/// `unrecorded`, for a `-- no-transaction` down migration whose row could not be deleted.
fn unrecorded_revert(e: &sqlx::Error, table: &MigrationsTable, n: usize, version: i64) -> String {
    let ran = all_ran(n);
    if crate::db::is_lease_lost(e) {
        format!(
            "{ran}, but the migration lease was taken over by another run before migration \
             {version} was deleted from {table}: it is still recorded as applied"
        )
    } else {
        format!(
            "{ran}, but deleting migration {version} from {table} failed: {}",
            crate::db::describe(e)
        )
    }
}

/// Record a migration as applied without running it, or mark a dirty one done.
pub async fn stamp(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
    fence: Option<&Fence>,
) -> Result<(), sqlx::Error> {
    fenced(
        c,
        format!(
            "{} ON CONFLICT (version) DO UPDATE SET success = TRUE, checksum = EXCLUDED.checksum",
            bookkeeping_sql(table, m, true)
        ),
        fence,
    )
    .await
}

/// Run `sql`, in one transaction after the lease's fence when there is one.
pub(super) async fn fenced(
    c: &mut PgConnection,
    sql: String,
    fence: Option<&Fence>,
) -> Result<(), sqlx::Error> {
    let Some(fence) = fence else {
        return exec(c, sql).await;
    };
    let r = exec(c, format!("BEGIN;\n{};\n{sql};\nCOMMIT;", fence.hold)).await;
    if r.is_err() {
        end_failed_transaction(c).await;
    }
    r
}
