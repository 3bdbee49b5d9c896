//! `schemagate stamp V`: the repair. Mark a version done without running anything: record
//! the source's migrations up to V as applied (a dirty one becomes done), then write a
//! `stamp` marker, all under the lock.

use std::time::Instant;

use super::Outcome;
use super::StampConfig;
use crate::db::{Conn, Fence, NewMarker, Status};
use crate::error::{Drift, Error, Result};
use crate::settings::MigrationsTable;
use crate::source::Source;

pub async fn run(args: &StampConfig) -> Result<Outcome> {
    let cfg = &args.db;
    let started = Instant::now();
    let version = args.version.clone();
    let (source, upto) = match &args.source {
        Some((dir, v)) => {
            let source = Source::load(dir)?;
            if !source.ups.iter().any(|m| m.version == *v) {
                return Err(Error::Config(format!(
                    "{v} is not a migration in {}",
                    source.dir.display()
                )));
            }
            (Some(source), Some(*v))
        }
        None => (None, None),
    };
    let recorded = super::with_lock(cfg, async |conn, lock| {
        let fence = lock.fence(cfg);
        conn.ensure_marker_table(&cfg.table).await?;
        let recorded = match (&source, upto) {
            (Some(source), Some(upto)) => {
                record_applied(conn, &cfg.migrations_table, source, upto, fence.as_ref()).await?
            }
            _ => 0,
        };
        let digest = source.as_ref().map(|s| s.digest_upto(upto));
        conn.insert_marker(
            &cfg.table,
            &NewMarker {
                version: &version,
                digest: digest.as_deref(),
                status: Status::Succeeded,
                action: "stamp",
                elapsed: started.elapsed(),
                applied: recorded as i64,
                runner: &cfg.runner,
                detail: Some("marked done by `schemagate stamp`"),
            },
            fence.as_ref(),
            lock.engine(),
        )
        .await?;
        tracing::info!("stamped schema version {version} ({recorded} migration(s) recorded)");
        Ok::<_, Error>(recorded)
    })
    .await?;
    Ok(Outcome {
        version: Some(version),
        applied: Some(recorded),
        message: "stamped".into(),
        exec: None,
    })
}

/// Record the source's migrations up to `upto` that are pending, and a dirty one (finished
/// by hand), as applied without running them; returns how many.
async fn record_applied(
    conn: &mut Conn,
    table: &MigrationsTable,
    source: &Source,
    upto: i64,
    fence: Option<&Fence>,
) -> Result<usize> {
    conn.ensure_migrations_table(table).await?;
    let (applied, dirty) = conn.applied(table).await?;
    let compared = source.compare(&applied);
    // The marker will claim this source's digest up to `upto`: not over a migration applied
    // with another checksum, or applied and missing here (the dirty one excepted: stamping
    // it records it as it is now). That is drift for `migrate` to report, not to hide.
    let drift = compared.modified.iter().chain(&compared.missing);
    if let Some(v) = drift.filter(|v| **v <= upto && dirty != Some(**v)).min() {
        return Err(Error::Drift(Drift::Stamp {
            upto,
            version: *v,
            dir: source.dir.clone(),
        }));
    }
    let pending = compared.pending;
    let to_record = source.ups.iter().filter(|m| {
        m.version <= upto
            && (dirty == Some(m.version) || pending.iter().any(|p| p.version == m.version))
    });
    let mut recorded = 0;
    for m in to_record {
        // Read again, checked against the checksum the source was read with.
        conn.stamp(table, &source.migration(m)?, fence).await?;
        recorded += 1;
        tracing::info!(
            "recorded {} ({}) as applied without running it",
            m.version,
            m.description
        );
    }
    Ok(recorded)
}
