//! LISTEN for `wait --listen`: woken by the marker's NOTIFY, polling between.

use super::*;

/// A LISTEN connection for `wait --listen`.
pub struct Listener(PgListener);

/// Why `Listener::wait` returned.
pub enum Wake {
    /// A marker was committed (or the connection was re-established and a NOTIFY may
    /// have been missed): check again.
    Check,
    /// Nothing arrived within the interval.
    Idle,
}

impl Listener {
    pub(crate) async fn connect(cfg: &Config) -> Result<Listener, sqlx::Error> {
        // Bounded as any connect of ours (the pool's own default is 30 s).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(cfg.connect_timeout)
            .connect_lazy_with(options(cfg)?);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Listener(listener))
    }

    /// The listening connection runs the checks too: `--listen` holds one connection. True
    /// beside the rows when the history was asked for but is missing (read as
    /// `Conn::newest_marker` reads it).
    pub async fn newest_marker(
        &mut self,
        t: &Table,
        migrations: &MigrationsTable,
        version: &str,
        upto: Option<i64>,
    ) -> Result<(Vec<crate::db::NewestRow>, bool), sqlx::Error> {
        match newest_marker(
            &mut self.0,
            t,
            migrations,
            version,
            upto.map(crate::db::Upto::Version),
            true,
        )
        .await
        {
            Err(e) if upto.is_some() && crate::db::is_undefined_table(&e) => {
                match newest_marker(&mut self.0, t, migrations, version, None, true).await {
                    Ok(rows) => Ok((rows, true)),
                    Err(_) => Err(e),
                }
            }
            r => r.map(|rows| (rows, false)),
        }
    }

    pub async fn history_whereabouts(
        &mut self,
        migrations: &MigrationsTable,
    ) -> crate::db::Whereabouts {
        history_whereabouts(&mut self.0, migrations)
            .await
            .unwrap_or_default()
    }

    pub async fn applied(
        &mut self,
        table: &MigrationsTable,
    ) -> Result<(Vec<AppliedMigration>, Option<i64>), sqlx::Error> {
        applied(&mut self.0, table).await
    }

    pub async fn wait(&mut self, interval: Duration) -> Result<Wake, sqlx::Error> {
        match tokio::time::timeout(interval, self.0.try_recv()).await {
            Err(_) => Ok(Wake::Idle),
            Ok(Ok(_)) => Ok(Wake::Check),
            Ok(Err(e)) => Err(e),
        }
    }
}
