//! `schemagate rollback --to V`: down migrations under the lock, newest first, and a
//! `rollback` marker so that waiters for V pass and waiters for newer versions wait.

use std::time::Instant;

use sqlx::migrate::AppliedMigration;

use super::Outcome;
use super::RollbackConfig;
use crate::db::{ApplyError, Conn, Engine, NewMarker, Status};
use crate::error::{Error, Result};
use crate::settings::Config;
use crate::source::Source;

pub async fn run(args: &RollbackConfig) -> Result<Outcome> {
    let cfg = &args.db;
    let started = Instant::now();
    let source = Source::load(&args.source)?;
    let to = args.to;
    if to != 0 && !source.ups.iter().any(|m| m.version == to) {
        return Err(Error::Config(format!(
            "--to {to} is not a migration in {} (use 0 to undo every migration)",
            source.dir.display()
        )));
    }
    let undone = super::with_lock(cfg, async |conn, lock| {
        undo(conn, cfg, &source, args, started, lock).await
    })
    .await?;
    Ok(outcome(
        to,
        undone,
        format!("rolled back to {to} ({undone} undone)"),
    ))
}

fn outcome(to: i64, undone: usize, message: String) -> Outcome {
    Outcome {
        version: Some(to.to_string()),
        applied: Some(undone),
        message,
        exec: None,
    }
}

async fn undo(
    conn: &mut Conn,
    cfg: &Config,
    source: &Source,
    args: &RollbackConfig,
    started: Instant,
    lock: &crate::lock::Lock,
) -> Result<usize> {
    let fence = lock.fence(cfg);
    let fence = fence.as_ref();
    let engine = lock.engine();
    let migrations = &cfg.migrations_table;
    // What is applied must match the source, or the down migrations may not fit; and --to
    // must be applied, or the marker would claim a version the database does not show.
    let (applied, dirty) = conn.applied(migrations).await?;
    source.plan(&applied, dirty, migrations)?;
    let to_undo = versions_to_undo(&applied, source, args.to)?;
    if args.dry_run {
        print_undo_plan(source, args.to, &to_undo);
        return Ok(0);
    }
    conn.ensure_migrations_table(migrations).await?;
    conn.ensure_marker_table(&cfg.table).await?;
    let version = args.to.to_string();
    let digest = source.digest_upto(Some(args.to));
    let marker = |status, undone: usize, detail| NewMarker {
        version: &version,
        digest: Some(&digest),
        status,
        action: "rollback",
        elapsed: started.elapsed(),
        applied: undone as i64,
        runner: &cfg.runner,
        detail,
    };
    super::refuse_transaction_control(cfg, source, to_undo.iter().map(|v| &source.downs[v]))?;
    record_started(conn, cfg, args.to, &to_undo, started, fence, engine).await?;
    let mut undone = 0;
    for v in &to_undo {
        let down = &source.downs[v];
        let label = format!("{v} ({})", down.description);
        tracing::info!("undoing {label}");
        let t = Instant::now();
        // Read now, one at a time, and checked against the checksum read before.
        let reverted = match source.migration(down) {
            Ok(down) => conn.revert(migrations, down, fence).await,
            Err(e) => Err(ApplyError::unreadable(&e)),
        };
        if let Err(e) = reverted {
            let detail = format!("undoing migration {label} failed: {}", e.message);
            if !e.lease_lost {
                let failed = marker(Status::Failed, undone, Some(&detail));
                if let Err(m) = conn.insert_marker(&cfg.table, &failed, fence, engine).await {
                    tracing::warn!("{m:#}");
                }
            }
            return Err(match e.lease_lost {
                true => Error::LockLost(detail),
                false => e.class.error(detail),
            });
        }
        undone += 1;
        tracing::info!("undid {label} in {:.1?}", t.elapsed());
    }
    conn.insert_marker(
        &cfg.table,
        &marker(Status::Succeeded, undone, None),
        fence,
        engine,
    )
    .await?;
    tracing::info!(
        "rolled back to {}: {undone} undone in {:.1?}",
        args.to,
        started.elapsed()
    );
    Ok(undone)
}

/// The applied versions newer than `to`, newest first; each must have a `.down.sql`. `to`
/// itself must be applied (unless 0): a rollback to it ends with it the newest applied
/// version, which a version not applied cannot become (newer than the newest, or one
/// skipped).
fn versions_to_undo(applied: &[AppliedMigration], source: &Source, to: i64) -> Result<Vec<i64>> {
    if to != 0 && !applied.iter().any(|a| a.version == to) {
        let newest = match applied.iter().map(|a| a.version).max() {
            Some(v) => format!("the newest applied migration is {v}"),
            None => "no migration is applied".to_owned(),
        };
        return Err(Error::Config(format!(
            "cannot roll back to {to}: it is not applied ({newest}), so it cannot become the \
             newest applied version; nothing was changed. Roll back to an applied version, \
             or run `migrate` to go forward"
        )));
    }
    let mut to_undo: Vec<i64> = applied
        .iter()
        .map(|a| a.version)
        .filter(|v| *v > to)
        .collect();
    to_undo.sort_unstable_by(|a, b| b.cmp(a));
    let missing: Vec<String> = to_undo
        .iter()
        .filter(|v| !source.downs.contains_key(v))
        .map(|v| v.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "cannot roll back to {to}: no .down.sql for {} in {}",
            missing.join(", "),
            source.dir.display()
        )));
    }
    Ok(to_undo)
}

fn print_undo_plan(source: &Source, to: i64, to_undo: &[i64]) {
    if to_undo.is_empty() {
        outln!("nothing to undo: no migration newer than {to} is applied");
        return;
    }
    outln!("would undo {} migration(s), newest first:", to_undo.len());
    for v in to_undo {
        outln!("  {} {}", v, source.downs[v].description);
    }
}

/// Before the first down migration: a marker that takes the newest applied version off the
/// ready list, so a rollback interrupted half-way (SIGTERM, SIGKILL, a lost connection)
/// never leaves an undone version looking ready. It names the version being undone, so its
/// waiters stop (exit 3) while waiters for --to keep waiting until the `succeeded` rollback
/// marker lands.
async fn record_started(
    conn: &mut Conn,
    cfg: &Config,
    to: i64,
    to_undo: &[i64],
    started: Instant,
    fence: Option<&crate::db::Fence>,
    engine: Engine,
) -> Result<()> {
    let Some(newest) = to_undo.first() else {
        return Ok(());
    };
    let newest = newest.to_string();
    let detail = format!(
        "rollback to {to} started: undoing {}; this marker stays the newest if the rollback \
         is interrupted",
        to_undo
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let marker = NewMarker {
        version: &newest,
        digest: None,
        status: Status::Failed,
        action: "rollback",
        elapsed: started.elapsed(),
        applied: 0,
        runner: &cfg.runner,
        detail: Some(&detail),
    };
    conn.insert_marker(&cfg.table, &marker, fence, engine).await
}
