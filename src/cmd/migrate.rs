//! `schemagate migrate --source DIR`: the fast path, the lock, the pending migrations on the
//! lock-holding connection, and the marker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::migrate::Migration;

use super::Outcome;
use crate::cli::MigrateArgs;
use crate::config::{Config, redact};
use crate::db::{self, Conn, MIGRATIONS_TABLE, NewMarker, Status};
use crate::error::{Error, Result};
use crate::lock::{self, Acquired, Expected, Lock};
use crate::signals::Signals;
use crate::source::{Source, hex};

pub async fn run(cfg: &Config, args: &MigrateArgs, mut signals: Signals) -> Result<Outcome> {
    let started = Instant::now();
    // Read the source before touching the database: a bad file is a usage error.
    let source = Source::load(&args.source)?;
    let version = source.version();
    let digest = source.digest();
    let expected = Expected {
        version: &version,
        digest: Some(&digest),
    };
    let done = |message: String, applied| Outcome {
        version: Some(version.clone()),
        applied: Some(applied),
        message,
    };

    // Until we hold the lock nothing is ours to record: a signal just ends the run.
    let (mut conn, lock) = tokio::select! {
        r = connect_and_lock(cfg, args, &source, &expected) => match r? {
            Before::Done(message) => return Ok(done(message, 0)),
            Before::Locked(conn, lock) => (conn, lock),
        },
        sig = signals.recv() => return Err(Error::Interrupted(sig)),
    };
    let session = conn.session_id().await?;
    let mut progress = Progress::default();

    let result = tokio::select! {
        r = apply_under_lock(&mut conn, cfg, &source, &expected, started, &mut progress) => r,
        sig = signals.recv() => {
            // Leave the dropped query to the server: record the failure from another
            // connection while our session still holds the lock, then end our session so
            // its transaction rolls back and the lock is freed for the next run.
            let detail = format!(
                "interrupted by {sig} while applying {}",
                progress.current.as_deref().unwrap_or("the marker")
            );
            tracing::warn!("{detail}; rolling back");
            db::interrupt_local();
            record_interrupt(cfg, &version, &digest, started, progress.applied, &detail, session).await;
            return Err(Error::Interrupted(sig));
        }
    };
    let release = lock.release(&mut conn, cfg).await;
    conn.close().await;
    let applied = result?;
    release?;
    Ok(done(
        format!("schema version {version} ready ({applied} applied)"),
        applied,
    ))
}

/// How the run stands before any migration is applied.
enum Before {
    /// Nothing to do (already applied, applied by another run, or a dry run).
    Done(String),
    /// We hold the lock on this connection.
    Locked(Conn, Lock),
}

async fn connect_and_lock(
    cfg: &Config,
    args: &MigrateArgs,
    source: &Source,
    expected: &Expected<'_>,
) -> Result<Before> {
    let version = expected.version;
    let mut conn = db::connect(cfg).await?;
    if args.dry_run {
        let plan = plan(&mut conn, source).await;
        conn.close().await;
        let plan = plan?;
        print_plan(source, &plan);
        return Ok(Before::Done(format!("dry run: {} pending", plan.len())));
    }
    // The fast path every replica pays at every start: one query, no lock.
    if lock::is_done(&mut conn, cfg, expected).await? {
        tracing::info!("schema version {version} is already applied; nothing to do");
        conn.close().await;
        return Ok(Before::Done(format!(
            "schema version {version} already applied"
        )));
    }
    conn.prepare_for_lock().await?;
    match lock::acquire(&mut conn, cfg, args.lock_wait, expected).await? {
        Acquired::AlreadyDone => {
            tracing::info!("schema version {version} was applied by another run; nothing to do");
            conn.close().await;
            Ok(Before::Done(format!(
                "schema version {version} applied by another run"
            )))
        }
        Acquired::Held(lock) => Ok(Before::Locked(conn, lock)),
    }
}

/// What `apply_under_lock` has got to, readable after it is cancelled.
#[derive(Default)]
struct Progress {
    applied: usize,
    current: Option<String>,
}

async fn apply_under_lock(
    conn: &mut Conn,
    cfg: &Config,
    source: &Source,
    expected: &Expected<'_>,
    started: Instant,
    progress: &mut Progress,
) -> Result<usize> {
    conn.migrate()
        .ensure_migrations_table(MIGRATIONS_TABLE)
        .await
        .map_err(|e| {
            Error::Failed(format!(
                "cannot create {MIGRATIONS_TABLE}: {}",
                redact(&e.to_string())
            ))
        })?;
    conn.ensure_marker_table(&cfg.table).await?;
    // Another run may have finished between our fast path and taking the lock.
    if lock::is_done(conn, cfg, expected).await? {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            expected.version
        );
        return Ok(0);
    }
    let pending = plan(conn, source).await?;
    let marker = |status, applied, detail| NewMarker {
        version: expected.version,
        digest: expected.digest,
        status,
        action: "migrate",
        elapsed: started.elapsed(),
        applied: applied as i64,
        runner: &cfg.runner,
        detail,
    };
    for m in &pending {
        let label = format!("{} ({})", m.version, m.description);
        progress.current = Some(label.clone());
        tracing::info!(
            "applying {label}{}",
            if m.no_tx {
                " without a transaction"
            } else {
                ""
            }
        );
        let t = Instant::now();
        if let Err(e) = conn.migrate().apply(MIGRATIONS_TABLE, m).await {
            let detail = format!(
                "migration {label} failed: {}",
                redact(&migrate_error_text(&e))
            );
            tracing::error!("{detail}");
            conn.insert_marker(
                &cfg.table,
                &marker(Status::Failed, progress.applied, Some(&detail)),
            )
            .await?;
            return Err(Error::Failed(detail));
        }
        progress.applied += 1;
        tracing::info!("applied {label} in {:.1?}", t.elapsed());
    }
    progress.current = None;
    conn.insert_marker(
        &cfg.table,
        &marker(Status::Succeeded, progress.applied, None),
    )
    .await?;
    tracing::info!(
        "schema version {} ready: {} applied in {:.1?}",
        expected.version,
        progress.applied,
        started.elapsed()
    );
    Ok(progress.applied)
}

/// The error text without sqlx's "while executing migration N:" prefix (we name it).
fn migrate_error_text(e: &sqlx::migrate::MigrateError) -> String {
    match e {
        sqlx::migrate::MigrateError::ExecuteMigration(inner, _) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The pending migrations, after checking that what is applied matches the source.
async fn plan<'s>(conn: &mut Conn, source: &'s Source) -> Result<Vec<&'s Migration>> {
    let (applied, dirty) = conn.applied().await?;
    if let Some(v) = dirty {
        return Err(Error::Drift(format!(
            "migration {v} is dirty: it failed part-way on a previous run and some of its \
             statements may have taken effect (DDL is not transactional on this database). \
             Repair by hand: either undo what it did and `DELETE FROM {MIGRATIONS_TABLE} WHERE \
             version = {v}` to run it again, or finish it and `UPDATE {MIGRATIONS_TABLE} SET \
             success = TRUE WHERE version = {v}`"
        )));
    }
    let by_version: HashMap<i64, &Migration> = source.ups.iter().map(|m| (m.version, m)).collect();
    for a in &applied {
        match by_version.get(&a.version) {
            None => {
                return Err(Error::Drift(format!(
                    "migration {} was applied to the database but is missing from {}",
                    a.version,
                    source.dir.display()
                )));
            }
            Some(m) if *m.checksum != *a.checksum => {
                return Err(Error::Drift(format!(
                    "migration {} ({}) was previously applied but has been modified: \
                     checksum {} in the database, {} on disk",
                    a.version,
                    m.description,
                    short(&a.checksum),
                    short(&m.checksum)
                )));
            }
            Some(_) => {}
        }
    }
    let applied: std::collections::HashSet<i64> = applied.iter().map(|a| a.version).collect();
    Ok(source
        .ups
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect())
}

fn short(checksum: &[u8]) -> String {
    hex(&checksum[..checksum.len().min(6)])
}

fn print_plan(source: &Source, pending: &[&Migration]) {
    if pending.is_empty() {
        println!(
            "nothing to apply: the database has every migration in {}",
            source.dir.display()
        );
        return;
    }
    println!(
        "would apply {} migration(s) from {}:",
        pending.len(),
        source.dir.display()
    );
    for m in pending {
        let tx = if m.no_tx { "  (no transaction)" } else { "" };
        println!("  {} {}{tx}", m.version, m.description);
    }
}

/// After a signal: write the `failed` marker from a fresh connection, then end the session
/// that held the lock. Best effort: the database may be the reason we are stopping.
async fn record_interrupt(
    cfg: &Config,
    version: &str,
    digest: &str,
    started: Instant,
    applied: usize,
    detail: &str,
    session: i64,
) {
    let mut short_cfg = cfg.clone();
    short_cfg.connect_timeout = Duration::from_secs(5);
    let attempt = async {
        let mut side = db::connect(&short_cfg).await?;
        side.insert_marker(
            &cfg.table,
            &NewMarker {
                version,
                digest: Some(digest),
                status: Status::Failed,
                action: "migrate",
                elapsed: started.elapsed(),
                applied: applied as i64,
                runner: &cfg.runner,
                detail: Some(detail),
            },
        )
        .await?;
        side.kill_session(session).await?;
        side.close().await;
        Ok::<_, Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(8), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("could not record the interruption: {e}"),
        Err(_) => tracing::warn!("could not record the interruption in time"),
    }
}
