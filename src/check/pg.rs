//! The rehearsal on PostgreSQL: the scratch database (created and dropped, or a given empty
//! one), and the observers: pg_locks of the migration's own backend before commit, a side
//! connection sampling pg_locks, and a `ddl_command_end` event trigger that records the
//! locks and scans of whatever session runs DDL (an external migrator included).

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::migrate::Migration;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::watch;

use super::catalog::{Snapshot, excluded};
use super::guard::{Fingerprint, Roles};
use super::{ApplyFailed, Observed};
use crate::db::pg as postgres;
use crate::db::{self, ApplyOptions, db_err};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Config, MigrationsTable, Table};

/// The comment that marks a database as check's own, so a given database check used
/// before is accepted (and reset) instead of refused.
const OURS: &str = "schemagate check scratch database";

async fn exec(c: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(c)
        .await
        .map(|_| ())
}

async fn rows(c: &mut PgConnection, sql: String) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).fetch_all(c).await
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The URL's database and the server's roles as the rehearsal found them.
pub struct Guarded {
    /// The URL's database, by name.
    pub database: String,
    fingerprint: Fingerprint,
    roles: Roles,
    table: String,
}

/// The scratch database: where every migration is rehearsed. Never the app's.
pub struct Scratch {
    /// The database we created (dropped at the end, or by its own `Drop` when a signal
    /// ends the future first), with the connection to the URL's database that holds its
    /// lock. None for a given database (reset at the end instead).
    made: Option<db::Scratch>,
    /// For a given database: a connection to the URL's own database, to read its settings
    /// and fingerprint (never to change it). None when the URL names the scratch database
    /// itself.
    given_admin: Option<PgConnection>,
    pub name: String,
    options: PgConnectOptions,
    /// The scratch URL for an external migrator's environment.
    pub url: String,
    /// Whether the ddl_command_end event trigger is installed.
    pub event_trigger: bool,
    /// A given database proven empty (or ours): only then may `close` reset it.
    accepted: bool,
    /// The settings copied from the URL's database, reset on a given one at the end.
    copied: Vec<String>,
}

impl Scratch {
    /// Create a fresh database on the server `cfg.url` names, or take the given one once
    /// it is proven empty.
    pub async fn open(cfg: &Config, given: Option<&str>) -> Result<Scratch> {
        let base = PgConnectOptions::from_str(&cfg.url)
            .map_err(|e| db_err("invalid database URL", e))?
            .application_name("schemagate check")
            .statement_cache_capacity(0)
            .disable_statement_logging();
        let own_database = base.get_database().map(str::to_owned);
        let (made, name, url) = match given {
            None => {
                let made = db::Scratch::create(cfg, "check", |name, e| {
                    db_err(
                        &format!(
                            "cannot create the scratch database {name} (the role needs \
                             CREATEDB, or give an empty one with --scratch-database)"
                        ),
                        e,
                    )
                })
                .await?;
                let (name, url) = (made.name.clone(), made.url.clone());
                (Some(made), name, url)
            }
            Some(name) => {
                let mut url = url::Url::parse(&cfg.url)
                    .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?;
                url.set_path(&format!("/{name}"));
                (None, name.to_owned(), url.to_string())
            }
        };
        let mut scratch = Scratch {
            made,
            given_admin: None,
            options: base.database(&name),
            name,
            url,
            event_trigger: false,
            accepted: false,
            copied: Vec::new(),
        };
        if scratch.made.is_none() && own_database.as_deref() != Some(scratch.name.as_str()) {
            let admin = db::connect(cfg).await?;
            scratch.given_admin = Some(
                admin
                    .into_pg()
                    .ok_or_else(|| Error::Config("check needs PostgreSQL".into()))?,
            );
        }
        if let Err(e) = scratch.prepare().await {
            scratch.close().await;
            return Err(e);
        }
        Ok(scratch)
    }

    /// The connection to the URL's own database, if there is one apart from the scratch.
    fn admin(&mut self) -> Option<&mut PgConnection> {
        match &mut self.made {
            Some(made) => made.admin().and_then(db::Conn::pg),
            None => self.given_admin.as_mut(),
        }
    }

    /// What must not change while the rehearsal runs: the URL's database (`None` when the
    /// URL names the scratch database itself) and the server's roles.
    pub async fn guard(&mut self, migrations_table: &str) -> Result<Option<Guarded>> {
        let Some(admin) = self.admin() else {
            return Ok(None);
        };
        let read = async {
            let database: String =
                rows(admin, "SELECT current_database()::text".into()).await?[0].try_get(0)?;
            Ok::<_, sqlx::Error>(Guarded {
                database,
                fingerprint: Fingerprint::take(admin, migrations_table).await?,
                roles: Roles::take(admin).await?,
                table: migrations_table.to_owned(),
            })
        };
        read.await
            .map(Some)
            .map_err(|e| db_err("cannot read the catalog of the database the URL names", e))
    }

    /// What changed since `guard`: in the URL's database, and in the server's roles.
    pub async fn changes(&mut self, guarded: &Guarded) -> Result<(Vec<String>, Vec<String>)> {
        let Some(admin) = self.admin() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let read = async {
            let now = Fingerprint::take(admin, &guarded.table).await?;
            let roles = Roles::take(admin).await?;
            Ok::<_, sqlx::Error>((
                guarded.fingerprint.changes(&now),
                guarded.roles.changes(&roles),
            ))
        };
        read.await
            .map_err(|e| db_err("cannot read the catalog of the database the URL names", e))
    }

    /// The database-level settings of the URL's database (and this role's in it), copied to
    /// the scratch database: its sessions then start as `migrate`'s would (search_path,
    /// where an unqualified `_sqlx_migrations` goes; lock_timeout; ...).
    async fn copy_settings(&mut self, c: &mut PgConnection) {
        let Some(admin) = self.admin() else {
            return;
        };
        let settings = rows(
            admin,
            "SELECT unnest(setconfig) FROM pg_db_role_setting \
             WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user)) \
             ORDER BY setrole"
                .into(),
        )
        .await
        .unwrap_or_default();
        for r in settings {
            let Ok(setting) = r.try_get::<String, _>(0) else {
                continue;
            };
            let Some((name, value)) = setting.split_once('=') else {
                continue;
            };
            // set_config parses the value as the server does (a list for search_path);
            // FROM CURRENT then stores it as the database's default.
            let sql = format!(
                "SELECT set_config({}, {}, false); ALTER DATABASE {} SET {} FROM CURRENT",
                lit(name),
                lit(value),
                ident(&self.name),
                ident(name)
            );
            match exec(c, sql).await {
                Ok(()) => self.copied.push(name.to_owned()),
                Err(e) => {
                    tracing::debug!("cannot copy the setting {name} to the scratch database: {e}")
                }
            }
        }
    }

    pub async fn connect(&self) -> Result<PgConnection> {
        self.options.connect().await.map_err(|e| {
            db_err(
                &format!("cannot connect to the scratch database {}", self.name),
                e,
            )
        })
    }

    /// Refuse a given database that holds objects we did not create; install the event
    /// trigger where the role may.
    async fn prepare(&mut self) -> Result<()> {
        let mut c = self.connect().await?;
        if self.made.is_none() {
            let nsp = excluded("n.nspname");
            let r = rows(
                &mut c,
                format!(
                    "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {nsp}) \
                      + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                         WHERE t.typtype IN ('e', 'd') AND {nsp}) \
                      + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {nsp}), \
                     coalesce(shobj_description((SELECT oid FROM pg_database WHERE datname = current_database()), 'pg_database'), '')"
                ),
            )
            .await
            .map_err(|e| db_err("cannot inspect the scratch database", e))?;
            let objects: i64 = r[0].try_get(0).unwrap_or(0);
            let comment: String = r[0].try_get(1).unwrap_or_default();
            if objects > 0 && !comment.starts_with(OURS) {
                c.close().await.ok();
                return Err(Error::Config(format!(
                    "refusing --scratch-database {}: it holds {objects} table(s), type(s) or \
                     function(s) check did not create; give an empty database, or leave the \
                     flag out to let check create (and drop) one",
                    self.name
                )));
            }
            self.accepted = true;
            if objects > 0 {
                reset(&mut c).await?;
            }
            if let Err(e) = exec(
                &mut c,
                format!("COMMENT ON DATABASE {} IS '{OURS}'", ident(&self.name)),
            )
            .await
            {
                tracing::debug!("cannot mark the scratch database as ours: {e}");
            }
        }
        self.copy_settings(&mut c).await;
        match exec(&mut c, EVENT_TRIGGER.into()).await {
            Ok(()) => self.event_trigger = true,
            Err(e) => {
                tracing::info!(
                    "no event trigger on the scratch database ({}): external migrators are \
                     observed by sampling only",
                    redact(&e.to_string())
                );
                let _ = exec(
                    &mut c,
                    "DROP SCHEMA IF EXISTS schemagate_check CASCADE".into(),
                )
                .await;
            }
        }
        c.close().await.ok();
        Ok(())
    }

    /// Drop the scratch database we created (its sessions are ended), or reset a given one.
    pub async fn close(&mut self) {
        if let Some(made) = self.made.take() {
            made.drop_it().await;
        } else if self.accepted
            // A refused database is left exactly as it was.
            && let Ok(mut c) = self.connect().await
        {
            // End the migrator's leftover sessions, then empty the database for next time.
            let _ = exec(
                &mut c,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    .into(),
            )
            .await;
            if let Err(e) = reset(&mut c).await {
                tracing::error!("cannot reset the scratch database {}: {e:#}", self.name);
            }
            for name in &self.copied {
                let sql = format!("ALTER DATABASE {} RESET {}", ident(&self.name), ident(name));
                let _ = exec(&mut c, sql).await;
            }
            c.close().await.ok();
        }
        if let Some(admin) = self.given_admin.take() {
            admin.close().await.ok();
        }
    }
}

/// Empty a database check owns: every schema but the system's, then a fresh `public`.
async fn reset(c: &mut PgConnection) -> Result<()> {
    exec(
        c,
        "DO $$ DECLARE s text; BEGIN \
           FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
             AND nspname NOT LIKE 'pg\\_%' LOOP \
             EXECUTE format('DROP SCHEMA %I CASCADE', s); \
           END LOOP; \
           CREATE SCHEMA public; \
         END $$"
            .into(),
    )
    .await
    .map_err(|e| db_err("cannot reset the scratch database", e))
}

/// A ddl_command_end trigger that logs, for whatever session runs DDL, the relation locks
/// its transaction holds and the tables it has read in full so far. Exact where sampling
/// can miss a short lock; needs a superuser (event triggers do).
const EVENT_TRIGGER: &str = "
CREATE SCHEMA schemagate_check;
CREATE TABLE schemagate_check.lock_log (relid int8 NOT NULL, mode text NOT NULL);
CREATE TABLE schemagate_check.scan_log (relid int8 NOT NULL, seq_scan int8 NOT NULL);
CREATE TABLE schemagate_check.ddl_log (tag text NOT NULL, lock_timeout text NOT NULL);
CREATE FUNCTION schemagate_check.log_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
BEGIN
  INSERT INTO schemagate_check.lock_log
  SELECT l.relation::int8, l.mode FROM pg_locks l
  WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
  INSERT INTO schemagate_check.scan_log
  SELECT relid::int8, seq_scan FROM pg_stat_xact_user_tables WHERE seq_scan > 0;
  INSERT INTO schemagate_check.ddl_log VALUES (tg_tag, current_setting('lock_timeout'));
END $f$;
CREATE EVENT TRIGGER schemagate_check_ddl ON ddl_command_end
  EXECUTE FUNCTION schemagate_check.log_ddl();
";

/// Empty the event trigger's log before a migration.
pub async fn clear_log(c: &mut PgConnection, scratch: &Scratch) -> Result<()> {
    if scratch.event_trigger {
        exec(
            c,
            "TRUNCATE schemagate_check.lock_log, schemagate_check.scan_log, schemagate_check.ddl_log"
                .into(),
        )
        .await
        .map_err(|e| db_err("cannot clear the event trigger's log", e))?;
    }
    Ok(())
}

/// Merge what the event trigger logged into `observed`.
pub async fn read_log(
    c: &mut PgConnection,
    scratch: &Scratch,
    observed: &mut Observed,
) -> Result<()> {
    if !scratch.event_trigger {
        return Ok(());
    }
    let locks = rows(
        c,
        "SELECT relid, mode FROM schemagate_check.lock_log".into(),
    )
    .await
    .map_err(|e| db_err("cannot read the event trigger's log", e))?;
    for r in locks {
        let oid: i64 = r.try_get(0).unwrap_or(0);
        let mode: String = r.try_get(1).unwrap_or_default();
        observed.lock(oid, &mode);
    }
    let scans = rows(
        c,
        "SELECT relid, max(seq_scan) FROM schemagate_check.scan_log GROUP BY relid".into(),
    )
    .await
    .map_err(|e| db_err("cannot read the event trigger's log", e))?;
    for r in scans {
        let oid: i64 = r.try_get(0).unwrap_or(0);
        let n: i64 = r.try_get(1).unwrap_or(0);
        let e = observed.scanned.entry(oid).or_default();
        *e = (*e).max(n);
    }
    // The lock_timeout each DDL statement really ran with (an external migrator may set
    // its own): not in force if any statement ran without one.
    let timeouts = rows(
        c,
        "SELECT DISTINCT lock_timeout FROM schemagate_check.ddl_log ORDER BY 1".into(),
    )
    .await
    .map_err(|e| db_err("cannot read the event trigger's log", e))?;
    let timeouts: Vec<String> = timeouts
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    if !timeouts.is_empty() {
        observed.lock_timeout = if timeouts.iter().any(|t| t == "0") {
            None
        } else {
            Some(timeouts.join(", "))
        };
    }
    Ok(())
}

/// Apply a migration as `migrate` does, history row included, without observing it (the
/// baseline): transactional ones in one transaction with their row, `-- no-transaction`
/// ones a statement at a time, then their row.
pub async fn apply_plain(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
) -> Result<(), ApplyFailed> {
    let opts = ApplyOptions::default();
    if m.no_tx {
        return apply_no_tx(c, table, m).await.map(|_| ());
    }
    postgres::apply_in_tx(c, table, std::iter::once(Ok(m.clone())), &opts)
        .await
        .map_err(|e| ApplyFailed(e.message))
}

/// Run a transactional migration as `migrate` does (its statements, then its history row,
/// in one transaction) and, before committing, read the locks its backend holds, the
/// tables its transaction read in full and the lock_timeout in force.
pub async fn apply_in_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
) -> Result<Observed, ApplyFailed> {
    let started = Instant::now();
    let fail = |e: sqlx::Error| ApplyFailed(redact(&e.to_string()));
    let mut observed = Observed {
        how: "in its own transaction: pg_locks of its backend, read before commit".into(),
        rewrite_lock: Some("AccessExclusiveLock"),
        ..Observed::default()
    };
    let r = async {
        exec(
            c,
            format!("BEGIN;\n{}", postgres::migration_in_tx_sql(table, m)),
        )
        .await?;
        let duration = started.elapsed();
        for r in rows(
            c,
            "SELECT l.relation::int8, l.mode FROM pg_locks l \
             WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                .into(),
        )
        .await?
        {
            observed.lock(r.try_get(0)?, &r.try_get::<String, _>(1)?);
        }
        for r in rows(
            c,
            "SELECT relid::int8, seq_scan FROM pg_stat_xact_user_tables WHERE seq_scan > 0".into(),
        )
        .await?
        {
            observed.scanned.insert(r.try_get(0)?, r.try_get(1)?);
        }
        let timeout = rows(c, "SELECT current_setting('lock_timeout')".into()).await?;
        let timeout: String = timeout[0].try_get(0)?;
        observed.lock_timeout = (timeout != "0").then_some(timeout);
        exec(c, "COMMIT".into()).await?;
        observed.duration = duration;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match r {
        Ok(()) => Ok(observed),
        Err(e) => {
            let _ = exec(c, "ROLLBACK".into()).await;
            Err(fail(e))
        }
    }
}

/// A side connection that samples pg_locks of every other session on the scratch
/// database until told to stop.
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Sampled>>,
}

#[derive(Debug, Default)]
pub struct Sampled {
    pub locks: Vec<(i64, String)>,
    /// Sessions of other programs seen on the scratch database, by backend pid.
    pub sessions: std::collections::BTreeSet<i32>,
    pub samples: u64,
    pub span: Duration,
}

impl Sampler {
    pub async fn start(scratch: &Scratch, interval: Duration) -> Result<Sampler> {
        let mut c = scratch.connect().await?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = Sampled::default();
            let started = Instant::now();
            // Catalog and bookkeeping relations are filtered out later: only tables that
            // existed before the migration are reported.
            // Also the other programs' sessions on the scratch database: proof that an
            // external migrator that changed nothing did connect here.
            let sql = "SELECT l.relation::int8, l.mode, NULL::int4 FROM pg_locks l \
                 WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid() \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 UNION ALL SELECT NULL, NULL, a.pid FROM pg_stat_activity a \
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
                   AND a.application_name IS DISTINCT FROM 'schemagate check'";
            loop {
                let rs = rows(&mut c, sql.to_owned())
                    .await
                    .map_err(|e| db_err("the lock sampler failed", e))?;
                out.samples += 1;
                for r in rs {
                    if let Ok(Some(pid)) = r.try_get::<Option<i32>, _>(2) {
                        out.sessions.insert(pid);
                        continue;
                    }
                    out.locks.push((
                        r.try_get(0).unwrap_or(0),
                        r.try_get::<String, _>(1).unwrap_or_default(),
                    ));
                }
                if *stopped.borrow() {
                    break;
                }
                // The sampling interval: this is the resolution the report states.
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stopped.changed() => {}
                }
            }
            out.span = started.elapsed();
            c.close().await.ok();
            Ok(out)
        });
        Ok(Sampler { stop, task })
    }

    pub async fn finish(self) -> Result<Sampled> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::Failed(format!("the lock sampler failed: {e}")))?
    }
}

/// Fold a sampler's result into `observed`, with the resolution in words.
pub fn merge_sampled(observed: &mut Observed, sampled: &Sampled, event_trigger: bool) {
    for (oid, mode) in &sampled.locks {
        observed.lock(*oid, mode);
    }
    let every = if sampled.samples > 1 {
        sampled.span.as_secs_f64() * 1000.0 / (sampled.samples - 1) as f64
    } else {
        sampled.span.as_secs_f64() * 1000.0
    };
    observed.how = format!(
        "side connection sampling pg_locks: {} samples, one every {every:.1} ms on average \
         (a lock held for less may be missed){}",
        sampled.samples,
        if event_trigger {
            "; plus a ddl_command_end event trigger recording each DDL statement's locks and scans"
        } else {
            "; no event trigger (needs a superuser): scans are not seen"
        }
    );
}

/// The catalog of the scratch database now, without `hidden` (the history and marker
/// tables: bookkeeping, not the application's schema).
pub async fn snapshot(c: &mut PgConnection, hidden: &[&str]) -> Result<Snapshot> {
    let read = async {
        let mut s = postgres::catalog(c).await?;
        for table in hidden {
            let r = rows(c, format!("SELECT to_regclass({})::oid::int8", lit(table))).await?;
            if let Some(oid) = r
                .first()
                .and_then(|r| r.try_get::<Option<i64>, _>(0).ok())
                .flatten()
            {
                s.hide(oid);
            }
        }
        Ok::<_, sqlx::Error>(s)
    };
    read.await
        .map_err(|e| db_err("cannot read the scratch database's catalog", e))
}

/// Run a `-- no-transaction` migration on `c` as `migrate` does (a statement at a time,
/// then its history row) while the sampler watches.
pub async fn apply_no_tx(
    c: &mut PgConnection,
    table: &MigrationsTable,
    m: &Migration,
) -> Result<Duration, ApplyFailed> {
    let started = Instant::now();
    postgres::apply_no_tx(c, table, m, &ApplyOptions::default())
        .await
        .map_err(|e| ApplyFailed(e.message))?;
    Ok(started.elapsed())
}

/// `migrate`'s history table (and marker table), where and as `migrate` creates them, so
/// a migration that edits its own history (`DELETE FROM _sqlx_migrations WHERE …`) finds it.
pub async fn ensure_history(
    c: &mut PgConnection,
    table: &Table,
    migrations: &MigrationsTable,
) -> Result<()> {
    postgres::ensure_tables(c, table, migrations)
        .await
        .map_err(|e| db_err("cannot create the history table on the scratch database", e))
}

/// The lock_timeout a new session gets on the scratch database (what an external
/// migrator starts with, unless it sets its own).
pub async fn default_lock_timeout(c: &mut PgConnection) -> Option<String> {
    let r = rows(c, "SELECT current_setting('lock_timeout')".into())
        .await
        .ok()?;
    let v: String = r.first()?.try_get(0).ok()?;
    (v != "0").then_some(v)
}
