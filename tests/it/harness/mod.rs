//! Test harness: real databases, the real binary, one database per test.
//!
//! PostgreSQL comes from `TEST_POSTGRES_URL` (a superuser URL), or else from a throwaway
//! cluster started here from the installed server binaries (initdb on a free port, password
//! authentication over TCP, stopped when the test process exits). Nothing is ever skipped:
//! when neither is possible the tests fail and say what to install.

/// `on_every_backend!(case_a, case_b)`: a `#[test]` per case and backend, in modules
/// `postgres`, `mysql` and `sqlite`, each calling `case(Kind::…)` of the module it is used in.
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $( #[test] fn $case() { super::$case(super::Kind::Pg) } )*
        }
        mod mysql {
            $( #[test] fn $case() { super::$case(super::Kind::My) } )*
        }
        mod sqlite {
            $( #[test] fn $case() { super::$case(super::Kind::Lite) } )*
        }
    };
}

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod backends;
mod bouncer;
mod http;
mod mysql;
mod pg;

pub use backends::*;
pub use bouncer::*;
pub use http::*;
pub use mysql::*;
pub use pg::*;

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

/// Fail unless `out` exited with `expected`, showing what it printed.
#[track_caller]
pub fn assert_exit(out: &Output, expected: i32) {
    let got = code(out);
    assert!(
        got == expected,
        "exit code {got} ({}), expected {expected}\n{}",
        out.status,
        printed(out)
    );
}

/// Fail unless `needle` is in what `out` wrote to stderr, showing what it printed.
#[track_caller]
pub fn assert_stderr_has(out: &Output, needle: &str) {
    assert!(
        stderr(out).contains(needle),
        "stderr lacks {needle:?}\n{}",
        printed(out)
    );
}

/// Fail if `needle` is in what `out` wrote to stderr, showing what it printed.
#[track_caller]
pub fn assert_stderr_lacks(out: &Output, needle: &str) {
    assert!(
        !stderr(out).contains(needle),
        "stderr has {needle:?}\n{}",
        printed(out)
    );
}

/// What `out` printed, for a failed assertion: stdout and stderr, each cut to its last
/// 16 KiB.
fn printed(out: &Output) -> String {
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let cut = text.len().saturating_sub(16 * 1024);
        let cut = (cut..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let dots = if cut > 0 { "[…]" } else { "" };
        format!("{dots}{}", &text[cut..])
    };
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        tail(&out.stdout),
        tail(&out.stderr)
    )
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

// ----- Python tools -----

/// A venv under target/ with `requirements` (a path in the repository) installed, once:
/// the tests run in parallel in one process, so one pip at a time.
pub fn venv(name: &str, requirements: &str, probe: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    if !venv.join("bin").join(probe).exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "python3 -m venv failed: install python3 and python3-venv"
        );
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(root.join(requirements))
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    venv
}

/// The venv with the Alembic example's requirements (alembic, SQLAlchemy, psycopg).
pub fn alembic_venv() -> PathBuf {
    venv(
        "alembic-venv",
        "examples/alembic/requirements.txt",
        "alembic",
    )
}
