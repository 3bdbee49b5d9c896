//! `schemagate stamp V`: the repair. Mark a version done without running anything: record
//! the source's migrations up to V as applied (a dirty one becomes done), then write a
//! `stamp` marker, all under the lock.

use std::time::Instant;

use super::Outcome;
use crate::cli::StampArgs;
use crate::config::Config;
use crate::db::{NewMarker, Status};
use crate::error::{Error, Result};
use crate::lock;
use crate::source::Source;

pub async fn run(cfg: &Config, args: &StampArgs) -> Result<Outcome> {
    let started = Instant::now();
    let version = args.version.trim().to_owned();
    if version.is_empty() {
        return Err(Error::Config(
            "the version to stamp must not be empty".into(),
        ));
    }
    if version.chars().count() > crate::db::MAX_VERSION {
        return Err(Error::Config(format!(
            "the version to stamp is {} characters long; the marker stores at most {}",
            version.chars().count(),
            crate::db::MAX_VERSION
        )));
    }
    lock::validate(cfg, &args.lock)?;
    let source = args.source.as_deref().map(Source::load).transpose()?;
    let upto = match &source {
        Some(s) => {
            let v: i64 = version.parse().map_err(|_| {
                Error::Config(format!(
                    "{version:?} is not a migration version (an integer) of {}",
                    s.dir.display()
                ))
            })?;
            if !s.ups.iter().any(|m| m.version == v) {
                return Err(Error::Config(format!(
                    "{v} is not a migration in {}",
                    s.dir.display()
                )));
            }
            Some(v)
        }
        None => None,
    };
    let recorded = super::with_lock(cfg, &args.lock, async |conn, lock| {
        let fence = lock.fence(cfg);
        conn.ensure_marker_table(&cfg.table).await?;
        let mut recorded = 0;
        if let (Some(source), Some(upto)) = (&source, upto) {
            conn.ensure_migrations_table().await?;
            let (applied, dirty) = conn.applied().await?;
            for m in source.ups.iter().filter(|m| m.version <= upto) {
                let present = applied.iter().any(|a| a.version == m.version);
                if !present || dirty == Some(m.version) {
                    conn.stamp(m, fence.as_ref()).await?;
                    recorded += 1;
                    tracing::info!(
                        "recorded {} ({}) as applied without running it",
                        m.version,
                        m.description
                    );
                }
            }
        }
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
