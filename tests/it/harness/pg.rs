//! PostgreSQL: a throwaway cluster (or `TEST_POSTGRES_URL`), a database per test, SQL helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::*;

// ----- PostgreSQL -----

struct Cluster {
    admin_url: String,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Cluster { admin_url: url },
        _ => start_cluster(&[]).into_shared(),
    })
}

/// A throwaway PostgreSQL cluster owned by a test (to stop, restart or configure it).
pub struct PgServer {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    keep_running: bool,
}

impl PgServer {
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    fn into_shared(mut self) -> Cluster {
        self.keep_running = true;
        Cluster {
            admin_url: self.url("postgres"),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    pub fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start(&self) {
        let out = self.pg_ctl(&["-w", "-l", &self.dir.join("log").to_string_lossy(), "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.keep_running {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn pg_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(dir) = candidates
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
    {
        return dir;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "no PostgreSQL to test against: set TEST_POSTGRES_URL to a superuser URL, or install \
         the server binaries (Debian: apt-get install postgresql) so the tests can start a \
         throwaway cluster"
    );
}

pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// initdb refuses to run as root: run the server binaries as `postgres` then.
pub(super) fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start a cluster with password auth over TCP and `settings` (`name=value`) on top.
pub fn start_cluster(settings: &[&str]) -> PgServer {
    let bin = pg_bin_dir();
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "schemagate-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), PASSWORD).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", dir.join("pw").display()))
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
        dir.display()
    );
    for s in settings {
        conf.push_str(s);
        conf.push('\n');
    }
    std::fs::write(dir.join("data/postgresql.auto.conf"), conf).unwrap();
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
    }
    let server = PgServer {
        dir,
        port,
        bin,
        keep_running: false,
    };
    server.start();
    stop_when_gone(&server);
    server
}

/// Stop the server when the test process is gone: statics are never dropped, and a
/// panicking test may not drop its server either.
fn stop_when_gone(server: &PgServer) {
    let watchdog = format!(
        "while [ -d /proc/{pid} ]; do sleep 0.5; done; {ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        ctl = server.bin.join("pg_ctl").display(),
        data = server.dir.join("data").display(),
        dir = server.dir.display(),
    );
    let mut w = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &watchdog]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &watchdog]);
        c
    };
    w.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Detached on purpose: it outlives this process to stop the cluster.
    #[allow(clippy::zombie_processes)]
    w.spawn().expect("spawn watchdog");
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Run SQL (possibly several statements) against `url`.
pub fn pg_exec(url: &str, sql: &str) {
    block_on(async {
        let mut c = PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

pub fn pg_i64(url: &str, sql: &str) -> i64 {
    block_on(async {
        let mut c = PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

pub fn pg_strings(url: &str, sql: &str) -> Vec<String> {
    block_on(async {
        let mut c = PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
        sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// A database of its own for one test, dropped afterwards.
pub struct PgDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDb {
    pub fn new(test: &str) -> PgDb {
        Self::on(&cluster().admin_url, test)
    }

    pub fn on(admin_url: &str, test: &str) -> PgDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sg_{test}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        pg_exec(admin_url, &format!("CREATE DATABASE {name}"));
        let url = replace_db(admin_url, &name);
        PgDb {
            url,
            admin_url: admin_url.to_owned(),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin_url.clone();
        let _ = std::panic::catch_unwind(move || {
            pg_exec(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        });
    }
}

pub(super) fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..path_start])
}

/// Run `sql` on a connection of the test's own and keep that session (and what it holds: a
/// lock, an open transaction) until the returned sender is dropped (or sent to): a gate a
/// migration's statement can wait on, visible in `pg_locks` while it waits.
pub fn hold_session(url: &str, sql: &str) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        block_on(async {
            let mut c = PgConnection::connect(&url).await.expect("connect the gate");
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
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("gate held");
    tx
}

/// Hold the session advisory lock `key` (see `hold_session`): a statement waits on it with
/// `pg_advisory_xact_lock_shared(key)`.
pub fn hold_advisory_lock(url: &str, key: i64) -> std::sync::mpsc::Sender<()> {
    hold_session(url, &format!("SELECT pg_advisory_lock({key})"))
}

/// How many sessions of this database other than the caller's wait on the advisory lock
/// `key` (a gate from `hold_advisory_lock`).
pub fn waiting_on_advisory(url: &str, key: i64) -> i64 {
    pg_i64(
        url,
        &format!(
            "SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND NOT l.granted \
               AND l.classid = (({key}::int8 >> 32) & 4294967295)::oid \
               AND l.objid = ({key}::int8 & 4294967295)::oid AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    )
}

/// A hot standby of `primary` (`pg_basebackup -R`, streaming replication) on a port of its
/// own: read-only, in recovery, with the primary's data as it replicates.
pub fn start_standby(primary: &PgServer) -> PgServer {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "schemagate-standby-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let out = as_postgres(&primary.bin.join("pg_basebackup"))
        .env("PGPASSWORD", PASSWORD)
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-R", "-X", "stream", "--no-sync"])
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The copied settings name the primary's port and socket directory: later lines win.
    let port = free_port();
    let conf = dir.join("data/postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
        dir.display()
    ));
    std::fs::write(&conf, text).unwrap();
    let server = PgServer {
        dir,
        port,
        bin: primary.bin.clone(),
        keep_running: false,
    };
    server.start();
    stop_when_gone(&server);
    server
}
