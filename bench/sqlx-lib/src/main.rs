//! `sqlx-lib-migrate DIR`: run sqlx's Migrator (locking on) against DATABASE_URL.

use std::path::Path;

use sqlx::Connection;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: sqlx-lib-migrate DIR")?;
    let url = std::env::var("DATABASE_URL")?;
    let migrator = sqlx::migrate::Migrator::new(Path::new(&dir)).await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    migrator.run(&mut conn).await?;
    Ok(())
}
