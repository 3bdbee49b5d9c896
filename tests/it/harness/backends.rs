//! Every backend behind one `TestDb`, for the cases that run on all three.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::*;

// ----- every backend -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pg,
    My,
    Lite,
}

/// A database of its own on one backend, with the few helpers the generic tests need.
pub enum TestDb {
    Pg(PgDb),
    My(MyDb),
    Lite { url: String, dir: PathBuf },
}

impl TestDb {
    pub fn new(kind: Kind, test: &str) -> TestDb {
        match kind {
            Kind::Pg => TestDb::Pg(PgDb::new(test)),
            Kind::My => TestDb::My(MyDb::new(test)),
            Kind::Lite => {
                static N: AtomicU32 = AtomicU32::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "schemagate-lite-{test}-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                TestDb::Lite {
                    url: format!("sqlite://{}/app.db", dir.display()),
                    dir,
                }
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            TestDb::Pg(_) => Kind::Pg,
            TestDb::My(_) => Kind::My,
            TestDb::Lite { .. } => Kind::Lite,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Pg(d) => &d.url,
            TestDb::My(d) => &d.url,
            TestDb::Lite { url, .. } => url,
        }
    }

    pub fn exec(&self, sql: &str) {
        match self {
            TestDb::Pg(d) => pg_exec(&d.url, sql),
            TestDb::My(d) => my_exec(&d.url, sql),
            TestDb::Lite { url, .. } => block_on(async {
                let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
                    .await
                    .unwrap();
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }),
        }
    }

    pub fn i64(&self, sql: &str) -> i64 {
        let sql = AssertSqlSafe(sql.to_owned());
        block_on(async {
            match self {
                TestDb::Pg(d) => {
                    let mut c = PgConnection::connect(&d.url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut c).await
                }
                TestDb::My(d) => {
                    let mut c = sqlx::MySqlConnection::connect(&d.url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut c).await
                }
                TestDb::Lite { url, .. } => {
                    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut c).await
                }
            }
        })
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    pub fn strings(&self, sql: &str) -> Vec<String> {
        let sql = AssertSqlSafe(sql.to_owned());
        block_on(async {
            match self {
                TestDb::Pg(d) => {
                    let mut c = PgConnection::connect(&d.url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_all(&mut c).await
                }
                TestDb::My(d) => {
                    let mut c = sqlx::MySqlConnection::connect(&d.url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_all(&mut c).await
                }
                TestDb::Lite { url, .. } => {
                    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_all(&mut c).await
                }
            }
        })
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    pub fn table_exists(&self, table: &str) -> bool {
        let sql = match self.kind() {
            Kind::Pg => format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = '{table}'"
            ),
            Kind::My => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ),
            Kind::Lite => format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
        };
        self.i64(&sql) == 1
    }

    /// A statement that runs for a minute while `ctl.slow` is true, and at once otherwise
    /// (the test creates `ctl` with `create_ctl`).
    pub fn slow_sql(&self) -> &'static str {
        match self.kind() {
            Kind::Pg => "SELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) = 1 THEN 60 ELSE 0 END);",
            Kind::My => "SELECT SLEEP(IF((SELECT slow FROM ctl) = 1, 60, 0));",
            Kind::Lite => {
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                 WHERE x < (SELECT CASE WHEN slow = 1 THEN 10000000000 ELSE 1 END FROM ctl)) \
                 SELECT count(*) FROM c;"
            }
        }
    }

    /// Wait until the server runs `slow_sql` for another session. SQLite runs in the
    /// migrator's process, where only its log line shows the migration has started.
    pub fn wait_until_slow_sql_runs(&self) {
        let sql = match self.kind() {
            Kind::Pg => {
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE '%pg_sleep(CASE%' AND state = 'active' AND pid <> pg_backend_pid()"
            }
            Kind::My => {
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
                 AND INFO LIKE '%SLEEP(IF%' AND ID <> CONNECTION_ID()"
            }
            Kind::Lite => return,
        };
        until("the slow statement to run", Duration::from_secs(30), || {
            self.i64(sql) == 1
        });
    }

    pub fn create_ctl(&self) {
        self.exec("CREATE TABLE ctl (slow int); INSERT INTO ctl VALUES (1);");
    }

    pub fn set_fast(&self) {
        self.exec("UPDATE ctl SET slow = 0");
    }

    /// Hold the table `gate` (the test creates it) locked in a session of the test's own
    /// until the returned sender is dropped: a migration's `SELECT count(*) FROM gate`
    /// waits on it (`waiting_at_gate`). PostgreSQL and MySQL.
    pub fn hold_gate(&self) -> std::sync::mpsc::Sender<()> {
        match self {
            TestDb::Pg(d) => {
                hold_session(&d.url, "BEGIN; LOCK TABLE gate IN ACCESS EXCLUSIVE MODE;")
            }
            TestDb::My(d) => hold_my_session(&d.url, "LOCK TABLES gate WRITE"),
            TestDb::Lite { .. } => unreachable!("SQLite runs in the migrator's process"),
        }
    }

    /// How many other sessions wait on the table `gate` (see `hold_gate`).
    pub fn waiting_at_gate(&self) -> i64 {
        self.i64(match self.kind() {
            Kind::Pg => {
                "SELECT count(*) FROM pg_locks WHERE relation = 'gate'::regclass AND NOT granted"
            }
            Kind::My => {
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
                 AND STATE LIKE 'Waiting for table%' AND ID <> CONNECTION_ID()"
            }
            Kind::Lite => unreachable!("SQLite runs in the migrator's process"),
        })
    }

    /// A URL for this backend's server that refuses connections.
    pub fn unreachable_url(kind: Kind) -> String {
        match kind {
            Kind::Pg => format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/db"),
            Kind::My => format!("mysql://root:{PASSWORD}@127.0.0.1:1/db"),
            Kind::Lite => "sqlite:///no/such/dir/app.db".into(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Lite { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
