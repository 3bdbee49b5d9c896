//! Test harness: real databases, the real binary, one database per test.
//!
//! PostgreSQL comes from `TEST_POSTGRES_URL` (a superuser URL), or else from a throwaway
//! cluster started here from the installed server binaries (initdb on a free port, password
//! authentication over TCP, stopped when the test process exits). Nothing is ever skipped:
//! when neither is possible the tests fail and say what to install.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The superuser password of the throwaway cluster: every test checks that it never shows
/// up in anything schemagate prints.
pub const PASSWORD: &str = "sg-Secret-pw-7731";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_schemagate")
}

/// A `schemagate` command with a clean environment (no inherited database settings).
pub fn schemagate(url: &str) -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SCHEMAGATE_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SCHEMAGATE_DATABASE_URL", url).stdin(Stdio::null());
    cmd
}

/// Run to completion; fail the test if any secret leaked into the output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot run schemagate");
    assert_no_secret(&out);
    out
}

pub fn assert_no_secret(out: &Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_form_of(PASSWORD, &text, "the output");
}

/// Every form a password can take in text: as is, percent-encoded (upper and lower case
/// hex), form-encoded, JSON-escaped.
pub fn forms_of(secret: &str) -> Vec<String> {
    let mut upper = String::new();
    let mut form = String::new();
    for b in secret.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            upper.push(b as char);
            form.push(b as char);
        } else {
            upper.push_str(&format!("%{b:02X}"));
            form.push_str(&if b == b' ' {
                "+".into()
            } else {
                format!("%{b:02X}")
            });
        }
    }
    let json = serde_json::to_string(secret).unwrap();
    let mut forms = vec![
        secret.to_owned(),
        upper.clone(),
        upper.to_ascii_lowercase(),
        form,
        json[1..json.len() - 1].to_owned(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// Fail when any form of `secret` is in `text` (`where_` says what `text` is).
pub fn assert_no_form_of(secret: &str, text: &str, where_: &str) {
    for form in forms_of(secret) {
        assert!(
            !text.contains(&form),
            "the password leaked into {where_} (as {form:?}):\n{text}"
        );
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Send SIGTERM to a child process (what `docker stop` / the kubelet send first).
pub fn sigterm(pid: u32) {
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
}

/// Send `kill -<name>` (STOP, CONT, KILL …) to a process.
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// Spawn with piped output, for processes that run concurrently.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn schemagate")
}

/// Wait for a spawned child; its whole stderr (also what `wait_for_stderr_line` read) is
/// in the output, checked for secrets.
pub fn finish(child: Child) -> Output {
    let pid = child.id();
    let mut out = child.wait_with_output().expect("wait for schemagate");
    let reader = stderr_readers().lock().unwrap().remove(&pid);
    if let Some(reader) = reader {
        let mut all = reader.join().expect("stderr reader").into_bytes();
        all.extend_from_slice(&out.stderr);
        out.stderr = all;
    }
    assert_no_secret(&out);
    out
}

/// The threads that took a child's stderr to watch for a line, by pid: each returns the
/// whole stream at EOF, so `finish` still checks all of it.
fn stderr_readers() -> &'static std::sync::Mutex<HashMap<u32, std::thread::JoinHandle<String>>> {
    static READERS: OnceLock<std::sync::Mutex<HashMap<u32, std::thread::JoinHandle<String>>>> =
        OnceLock::new();
    READERS.get_or_init(Default::default)
}

/// Read a child's stderr until a line contains `needle` (the event the test waits for);
/// returns what was read. Panics after `limit`. The reader keeps the rest of the stream
/// for `finish`.
pub fn wait_for_stderr_line(child: &mut Child, needle: &str, limit: Duration) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let needle_owned = needle.to_owned();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut found = false;
        let mut stderr = BufReader::new(stderr);
        let mut line = Vec::new();
        while stderr.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            seen.push_str(&text);
            if !found && text.contains(&needle_owned) {
                found = true;
                let _ = tx.send(seen.clone());
            }
        }
        if !found {
            let _ = tx.send(format!("EOF without the line; saw:\n{seen}"));
        }
        seen
    });
    stderr_readers().lock().unwrap().insert(child.id(), reader);
    let seen = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no stderr line with {needle:?} within {limit:?}"));
    assert!(!seen.starts_with("EOF without"), "{seen}");
    assert!(!seen.contains(PASSWORD), "password leaked: {seen}");
    seen
}

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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// initdb refuses to run as root: run the server binaries as `postgres` then.
fn as_postgres(program: &Path) -> Command {
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
    // Stop the shared cluster when the test process is gone: statics are never dropped.
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
    server
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

fn replace_db(url: &str, db: &str) -> String {
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

// ----- migration sources -----

/// A temporary migrations directory.
pub struct Migrations {
    pub dir: PathBuf,
}

impl Migrations {
    pub fn new(files: &[(&str, &str)]) -> Migrations {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "schemagate-src-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let m = Migrations { dir };
        for (name, sql) in files {
            m.write(name, sql);
        }
        m
    }

    pub fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.dir.join(name), sql).unwrap();
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Migrations {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `cond` until it holds (an event the test waits for, not a sleep that hopes).
pub fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

// ----- a tiny HTTP server on loopback -----

/// One request as the test server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with `respond(n, request)`:
/// a status code, or `None` to hold the connection without answering (a slow endpoint).
pub struct HttpServer {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

impl HttpServer {
    pub fn start(
        respond: impl Fn(usize, &Request) -> Option<u16> + Send + Sync + 'static,
    ) -> HttpServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>> = Default::default();
        let seen = requests.clone();
        let respond = std::sync::Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let seen = seen.clone();
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let header_end = loop {
                        let n = stream.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < header_end + length {
                        let n = stream.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let mut first = head.lines().next().unwrap_or("").split(' ');
                    let request = Request {
                        method: first.next().unwrap_or("").to_owned(),
                        path: first.next().unwrap_or("").to_owned(),
                        body: String::from_utf8_lossy(&buf[header_end..]).into_owned(),
                    };
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request.clone());
                        seen.len()
                    };
                    match respond(n, &request) {
                        Some(code) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            );
                        }
                        None => std::thread::sleep(Duration::from_secs(30)),
                    }
                });
            }
        });
        HttpServer { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

// ----- PgBouncer -----

/// A PgBouncer in transaction pooling mode in front of `server`, started for one test.
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    pid: u32,
}

impl PgBouncer {
    /// Transaction pooling, 6 server connections per pool.
    pub fn start(server: &PgServer) -> PgBouncer {
        Self::start_with(server, "transaction", 6)
    }

    /// `pool_mode` (`transaction` or `session`) and `default_pool_size` as given.
    pub fn start_with(server: &PgServer, pool_mode: &str, pool_size: u32) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
            });
        let dir = server.dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={sp} user=postgres password={PASSWORD}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/users.txt\npool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\nserver_round_robin = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                sp = server.port,
                d = dir.display()
            ),
        )
        .unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
        }
        // PgBouncer refuses to run as root.
        let out = as_postgres(Path::new(bin))
            .arg("-d")
            .arg(dir.join("pgbouncer.ini"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbouncer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pidfile = dir.join("pgbouncer.pid");
        until(
            "pgbouncer to write its pid",
            Duration::from_secs(10),
            || std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim().parse::<u32>().is_ok()),
        );
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        PgBouncer { port, dir, pid }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hold `n` idle connections to `url` until the returned sender is dropped.
pub fn hold_connections(url: &str, n: usize) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let url = url.to_owned();
    std::thread::spawn(move || {
        block_on(async {
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(
                    PgConnection::connect(&url)
                        .await
                        .expect("hold a connection"),
                );
            }
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            drop(held);
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("connections held");
    tx
}
