//! MySQL/MariaDB: `TEST_MYSQL_URL`, the local server, or a throwaway `mariadbd`; a database per test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection};

use super::*;

// ----- MySQL / MariaDB -----

/// The MySQL/MariaDB server to test against: `TEST_MYSQL_URL`, else the local server on
/// 127.0.0.1:3306 (root, no password), else a throwaway `mariadbd` started here.
fn mysql_admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_MYSQL_URL")
            && !url.is_empty()
        {
            return url;
        }
        let local = "mysql://root@127.0.0.1:3306/mysql".to_owned();
        if block_on(async { sqlx::MySqlConnection::connect(&local).await.is_ok() }) {
            return local;
        }
        start_mariadb()
    })
}

fn start_mariadb() -> String {
    let server = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "no MySQL/MariaDB to test against: set TEST_MYSQL_URL, run a server on \
                 127.0.0.1:3306 (root, empty password), or install one (Debian: apt-get install \
                 mariadb-server) so the tests can start a throwaway server"
            )
        });
    let dir = std::env::temp_dir().join(format!("schemagate-mariadb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("mariadb-install-db")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .output()
        .expect("run mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut child = Command::new(server)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--user=root",
            "--max-connections=300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mariadbd");
    let url = format!("mysql://root@127.0.0.1:{port}/mysql");
    until(
        "the throwaway MariaDB to accept connections",
        Duration::from_secs(60),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "mariadbd exited at start"
            );
            block_on(async { sqlx::MySqlConnection::connect(&url).await.is_ok() })
        },
    );
    let watchdog = format!(
        "while [ -d /proc/{} ]; do sleep 0.5; done; kill {}; sleep 2; rm -rf {}",
        std::process::id(),
        child.id(),
        dir.display()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn watchdog");
    std::mem::forget(child);
    url
}

pub struct MyDb {
    pub url: String,
    name: String,
}

impl MyDb {
    pub fn new(test: &str) -> MyDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sg_{test}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        my_exec(mysql_admin_url(), &format!("CREATE DATABASE {name}"));
        MyDb {
            url: replace_db(mysql_admin_url(), &name),
            name,
        }
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::panic::catch_unwind(move || {
            my_exec(
                mysql_admin_url(),
                &format!("DROP DATABASE IF EXISTS {name}"),
            )
        });
    }
}

pub fn my_exec(url: &str, sql: &str) {
    block_on(async {
        let mut c = sqlx::MySqlConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to MySQL: {e}"));
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

/// `hold_session` for MySQL: run `sql` on a connection of the test's own and keep that
/// session (and the locks it holds) until the returned sender is dropped.
pub fn hold_my_session(url: &str, sql: &str) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        block_on(async {
            let mut c = sqlx::MySqlConnection::connect(&url)
                .await
                .expect("connect the gate");
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .expect("close the gate");
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            let _ = c.close().await;
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gate held");
    tx
}
