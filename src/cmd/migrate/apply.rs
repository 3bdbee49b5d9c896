//! The pending SQL migrations, applied on the lock-holding connection: in groups (each
//! alone, or with --single-transaction the transactional ones together), retried on a lock
//! or statement timeout, a failure recorded in a `failed` marker.

use std::time::{Duration, Instant};

use super::interrupt::{Progress, interrupted};
use super::record::{Ctx, Ran, prepare_under_lock, record_failed, record_success};
use crate::cmd::MigrateConfig;
use crate::db::{ApplyOptions, Conn};
use crate::error::{Error, Result};
use crate::lock::{self};
use crate::signals::{self, Signals};
use crate::source::{Entry, Source};

/// `prepare_under_lock` for a SQL source, with what the migrations table holds read in the
/// same round trip where the backend allows (PostgreSQL): `None` when there is nothing
/// left to do.
pub(super) async fn prepare_sql_under_lock(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
) -> Result<Option<(Vec<sqlx::migrate::AppliedMigration>, Option<i64>)>> {
    let migrations = &ctx.cfg.migrations_table;
    let Some((decisive, applied)) = conn
        .ensure_tables_and_read(
            &ctx.cfg.table,
            migrations,
            ctx.expected.version,
            ctx.expected.upto(),
        )
        .await?
    else {
        if prepare_under_lock(conn, ctx, true).await? {
            return Ok(None);
        }
        return conn.applied(migrations).await.map(Some);
    };
    // A SQL source has no other migrator's table to consult (`Expected::foreign`).
    if lock::marked(&decisive, ctx.expected) {
        tracing::info!(
            "schema version {} was applied by another run; nothing to do",
            ctx.expected.version
        );
        return Ok(None);
    }
    Ok(Some(applied))
}

pub(super) async fn apply_sql(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    settings: &MigrateConfig,
    signals: &mut Signals,
) -> Result<Ran> {
    // With a lease, the session may be a pooler's: there is nothing of ours to end.
    let session = match ctx.lock.session() {
        _ if ctx.lock.is_lease() => None,
        Some(known) => Some(known),
        None => Some(conn.session_id().await?),
    };
    let opts = ApplyOptions {
        lock_timeout: settings.timeouts.lock_timeout,
        statement_timeout: settings.timeouts.statement_timeout,
        fence: ctx.fence.clone(),
    };
    let mut progress = Progress::default();
    tokio::select! {
        r = apply_pending(conn, ctx, source, settings, &opts, &mut progress) => r,
        sig = signals.recv() => {
            signals::stop_local_statements();
            interrupted(ctx, &progress, sig, session).await
        }
    }
}

/// Pending migrations in the groups applied together: each alone, or with
/// --single-transaction every run of transactional ones in one group.
pub(super) fn batches<'m>(pending: &[&'m Entry], single_transaction: bool) -> Vec<Vec<&'m Entry>> {
    let mut out: Vec<Vec<&Entry>> = Vec::new();
    for m in pending {
        match out.last_mut() {
            Some(group) if single_transaction && !m.no_tx && !group[0].no_tx => group.push(m),
            _ => out.push(vec![m]),
        }
    }
    out
}

pub(super) fn label(group: &[&Entry]) -> String {
    match group {
        [m] => format!("{} ({})", m.version, m.description),
        [first, .., last] => format!(
            "{} migrations {}..{} in one transaction",
            group.len(),
            first.version,
            last.version
        ),
        [] => String::new(),
    }
}

pub(super) async fn apply_pending(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    source: &Source,
    settings: &MigrateConfig,
    opts: &ApplyOptions,
    progress: &mut Progress,
) -> Result<Ran> {
    let Some((applied, dirty)) = prepare_sql_under_lock(conn, ctx).await? else {
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
            ..Ran::default()
        });
    };
    let plan = source.plan(&applied, dirty, &ctx.cfg.migrations_table)?;
    if let Some(message) = plan.ahead_message(source) {
        // An older release against a newer schema (an image rolled back): not drift, and
        // nothing to record: the newer release's marker stands.
        tracing::info!("{message}");
        return Ok(Ran {
            applied: 0,
            wrote_marker: false,
            ..Ran::default()
        });
    }
    crate::cmd::refuse_transaction_control(ctx.cfg, source, plan.pending.iter().copied())?;
    let run = Run {
        source,
        settings,
        opts,
    };
    // Contracts wait for the gate (`phased.rs`); what comes before one is applied first.
    let phase = (settings.phase, settings.wait_for_drain);
    let apply = async |conn: &mut Conn, ms: &[&Entry], progress: &mut Progress| {
        apply_in_order(conn, ctx, &run, ms, progress).await
    };
    if let Some(stop) =
        super::phased::walk(conn, ctx, phase, &plan.pending, progress, apply).await?
    {
        return super::phased::stopped(conn, ctx, source, &plan.pending, progress, stop).await;
    }
    record_success(conn, ctx, progress.applied).await?;
    tracing::info!(
        "schema version {} ready: {} applied in {:.1?}",
        ctx.expected.version,
        progress.applied,
        ctx.started.elapsed()
    );
    Ok(Ran {
        applied: progress.applied,
        wrote_marker: true,
        ..Ran::default()
    })
}

/// What applying a run of pending migrations needs besides the connection.
struct Run<'a> {
    source: &'a Source,
    settings: &'a MigrateConfig,
    opts: &'a ApplyOptions,
}

/// Apply `migrations` (pending, in order) in their groups.
async fn apply_in_order(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    run: &Run<'_>,
    migrations: &[&Entry],
    progress: &mut Progress,
) -> Result<()> {
    let Run {
        source,
        settings,
        opts,
    } = *run;
    for group in batches(migrations, settings.single_transaction) {
        if ctx.lock.lease_lost() {
            return Err(Error::LockLost(format!(
                "the migration lease lapsed before {}; stopped (applied {})",
                label(&group),
                progress.applied
            )));
        }
        let label = label(&group);
        progress.current = Some(label.clone());
        progress.group = group.iter().map(|m| m.version).collect();
        let no_tx = group[0].no_tx;
        tracing::info!(
            "applying {label}{}",
            if no_tx { " without a transaction" } else { "" }
        );
        let t = Instant::now();
        let run = Group {
            source,
            migrations: &group,
            label: &label,
        };
        apply_group(conn, ctx, &run, settings, opts, progress.applied).await?;
        progress.applied += group.len();
        progress.group.clear();
        tracing::info!("applied {label} in {:.1?}", t.elapsed());
    }
    progress.current = None;
    Ok(())
}

/// A group of migrations applied together, and the source that reads their SQL.
pub(super) struct Group<'a> {
    source: &'a Source,
    migrations: &'a [&'a Entry],
    label: &'a str,
}

/// Apply one group (a migration, or with --single-transaction several), retrying a lock
/// or statement timeout with backoff up to --ddl-retries. A failure is recorded in a
/// `failed` marker (from a fresh connection if ours is gone), except when the lease was
/// taken over: then another run's marker stands. Each migration's SQL is read as it is
/// applied, and let go after.
pub(super) async fn apply_group(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    group: &Group<'_>,
    settings: &MigrateConfig,
    opts: &ApplyOptions,
    applied: usize,
) -> Result<()> {
    let label = group.label;
    let no_tx = group.migrations[0].no_tx;
    let mut attempt = 0;
    loop {
        let sql = group.migrations.iter().map(|m| group.source.migration(m));
        let e = match conn.apply(&ctx.cfg.migrations_table, sql, opts).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Never again once part of it took effect (a `-- no-transaction` file recorded
        // dirty): its first statements would run twice.
        if e.retryable && !e.dirty && !e.took_effect && attempt < settings.timeouts.retries {
            attempt += 1;
            let pause = Duration::from_millis(250) * 2u32.pow(attempt.min(6));
            tracing::warn!(
                "migration {label} timed out ({}); rolled back, retry {attempt}/{} in {pause:?}",
                e.message,
                settings.timeouts.retries
            );
            tokio::time::sleep(pause).await;
            continue;
        }
        if e.lease_lost {
            // Another run owns the lease now, and any marker we wrote could contradict the
            // new holder's. A migration without a transaction may have run in part: its
            // message says how far.
            return Err(Error::LockLost(if e.took_effect {
                format!(
                    "migration {label}: {}; stopped (applied {applied})",
                    e.message
                )
            } else {
                format!(
                    "the migration lease was taken over by another run before {label}; \
                     stopped without running it (applied {applied})"
                )
            }));
        }
        return Err(record_failed(conn, ctx, &e, label, attempt, no_tx, applied).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: i64, no_tx: bool) -> Entry {
        Entry {
            version,
            description: format!("m{version}"),
            migration_type: sqlx::migrate::MigrationType::Simple,
            checksum: Vec::new(),
            no_tx,
            phase: crate::phase::Phase::Expand,
            path: format!("{version}_m{version}.sql").into(),
        }
    }

    fn versions(groups: &[Vec<&Entry>]) -> Vec<Vec<i64>> {
        groups
            .iter()
            .map(|g| g.iter().map(|m| m.version).collect())
            .collect()
    }

    #[test]
    fn each_migration_is_its_own_group_by_default() {
        let (a, b) = (entry(1, false), entry(2, false));
        assert_eq!(versions(&batches(&[&a, &b], false)), [vec![1], vec![2]]);
    }

    #[test]
    fn single_transaction_groups_runs_of_transactional_migrations() {
        let ms = [
            entry(1, false),
            entry(2, false),
            entry(3, true),
            entry(4, false),
            entry(5, false),
        ];
        let refs: Vec<&Entry> = ms.iter().collect();
        assert_eq!(
            versions(&batches(&refs, true)),
            [vec![1, 2], vec![3], vec![4, 5]]
        );
    }
}
