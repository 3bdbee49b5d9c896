//! `check` on MySQL/MariaDB and SQLite: what their catalogs allow. The new migrations are
//! rehearsed on a scratch database (a new database on the MySQL server, a file in a temp
//! directory for SQLite) and the catalog is compared before and after each one: dropped
//! tables, views and columns, changed types, NOT NULL, defaults, unique indexes (and checks
//! and routines on MySQL), and tables rebuilt (a new InnoDB table id, a new SQLite root
//! page). Locks are not observed: MySQL commits each DDL statement on its own and has no
//! lock table to read before commit, SQLite locks the whole file for any write.

use sqlx::migrate::Migration;

use super::catalog::Snapshot;
use super::outside::{self, Outside};
use super::{ApplyFailed, MigrationReport, Observed};
use crate::db::{self, Conn, Scratch};
use crate::error::{Error, Result};
use crate::redact::redact;
use crate::settings::{Backend, Config, MigrationsTable};
use crate::source::Source;

fn fail(context: &str, e: sqlx::Error) -> Error {
    Error::Failed(format!("{context}: {}", redact(&e.to_string())))
}

/// The scratch database (dropped, or its directory removed, on drop: a cancelled check
/// leaves nothing behind either), and a connection to it.
async fn open(cfg: &Config) -> Result<(Scratch, Conn)> {
    let scratch = Scratch::create(cfg, "check", |name, e| {
        fail(&format!("cannot create the scratch database {name}"), e)
    })
    .await?;
    let c = db::connect(&scratch.config(cfg)).await?;
    Ok((scratch, c))
}

/// `migrate`'s history table, as `migrate` creates it (sqlx's own code).
async fn ensure_history(c: &mut Conn, table: &MigrationsTable) -> Result<()> {
    let table = table.qualified();
    c.migrate()
        .ensure_migrations_table(table)
        .await
        .map_err(|e| {
            Error::Failed(format!(
                "cannot create {table} on the scratch database: {}",
                redact(&e.to_string())
            ))
        })
}

/// Apply a migration as `migrate` does on these backends: sqlx's `apply`, history row
/// included.
async fn apply(c: &mut Conn, table: &MigrationsTable, m: &Migration) -> Result<(), ApplyFailed> {
    let r = c.migrate().apply(table.qualified(), m).await;
    r.map(|_| ())
        .map_err(|e| ApplyFailed(redact(&e.to_string())))
}

async fn snapshot(c: &mut Conn) -> Result<Snapshot> {
    c.catalog()
        .await
        .map_err(|e| fail("cannot read the scratch database's catalog", e))
}

/// Rehearse `source`'s migrations newer than `since`; returns the scratch database's name,
/// the baseline in words and a report per migration. Long on purpose: create, baseline,
/// each migration between two snapshots, drop on every way out, in one visible sequence.
pub async fn rehearse(
    cfg: &Config,
    source: &Source,
    since: i64,
    allowed: &[(String, String)],
) -> Result<(String, String, Vec<MigrationReport>)> {
    let (scratch, mut c) = open(cfg).await?;
    let (old, new): (Vec<_>, Vec<_>) = source.ups.iter().partition(|m| m.version <= since);
    ensure_history(&mut c, &cfg.migrations_table).await?;
    // As on PostgreSQL, statements that act outside the scratch database are left out
    // (and are findings in the new migrations).
    let mut skipped = Vec::new();
    let mysql = cfg.backend == Backend::MySql;
    super::baseline(source, &old, mysql, &mut skipped, async |m| {
        apply(&mut c, &cfg.migrations_table, m).await
    })
    .await?;
    let how = match cfg.backend {
        Backend::MySql => {
            "catalog only: MySQL commits each DDL statement on its own, so there is no \
             transaction to read locks in before commit; a rebuilt table is seen by its new \
             InnoDB table id"
        }
        Backend::Sqlite => {
            "catalog only: SQLite locks the whole database for any write; a re-created table \
             is seen by its new root page"
        }
        Backend::Postgres => unreachable!("check/rehearse.rs rehearses on PostgreSQL"),
    };
    let mut reports = Vec::new();
    for m in &new {
        let phase = m.phase;
        let m = &source.migration(m)?;
        let name = format!("{} {}", m.version, m.description);
        let outside = Outside::find(m, mysql, &mut skipped);
        let before = snapshot(&mut c).await?;
        let started = std::time::Instant::now();
        apply(
            &mut c,
            &cfg.migrations_table,
            &outside::runnable(m, &outside),
        )
        .await
        .map_err(|e| {
            Error::Failed(format!(
                "migration {name} failed on the scratch database: {e}{}",
                outside::hint(&skipped)
            ))
        })?;
        let observed = Observed {
            duration: started.elapsed(),
            how: how.into(),
            catalog_only: true,
            ..Observed::default()
        };
        let after = snapshot(&mut c).await?;
        let mut allow = super::allows(m.sql.as_str());
        allow.extend(allowed.iter().cloned());
        let mut report = super::report(name, Some(m.version), &before, &after, observed, &allow);
        outside::report(&mut report, &outside, &allow);
        report.judge_phase(phase);
        reports.push(report);
    }
    c.close().await;
    let baseline = if old.is_empty() {
        "an empty database".to_owned()
    } else {
        format!("the migrations up to {since}")
    };
    let name = scratch.name.clone();
    scratch.drop_it().await;
    Ok((name, baseline, reports))
}
