//! `migrate --version V -- CMD`: an external migrator under the lock; `wait -- CMD`;
//! `wait --http`; `migrate --notify-url`. On PostgreSQL.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn external(db: &PgDb, version: &str, script: &str) -> Command {
    external_with(db, version, &[], script)
}

fn external_with(db: &PgDb, version: &str, flags: &[&str], script: &str) -> Command {
    let mut c = schemagate(&db.url);
    c.args(["migrate", "--version", version])
        .args(flags)
        .args(["--", "sh", "-c", script]);
    c
}

#[test]
fn external_migrator_runs_once_under_the_lock_and_records_the_version() {
    let db = PgDb::new("ext");
    let dir = Migrations::new(&[]);
    let log = dir.dir.join("runs");
    let script = format!(
        "echo \"run $SCHEMAGATE_VERSION $SCHEMAGATE_LOCK_KEY\" >> {}; echo hello-from-cmd; echo warn-from-cmd >&2",
        log.display()
    );
    let out = run(&mut external(&db, "rev-1", &script));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "[sh] hello-from-cmd");
    assert_stderr_has(&out, "[sh] warn-from-cmd");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(runs.starts_with("run rev-1 "), "{runs}");
    let marker = pg_strings(
        &db.url,
        "SELECT version || ' ' || status || ' ' || coalesce(digest, 'null') FROM schemagate_marker",
    );
    assert_eq!(marker, vec!["rev-1 succeeded null".to_string()]);
    // The fast path: the command does not run again.
    let out = run(&mut external(&db, "rev-1", &script));
    assert_exit(&out, 0);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    // Ready for waiters.
    let out = run(schemagate(&db.url).args(["wait", "--expect", "rev-1", "--timeout", "5s"]));
    assert_exit(&out, 0);
}

/// reliability: 20 racing `migrate --version V -- CMD` | CMD runs once, under the lock; the others exit 0 | nothing
#[test]
fn twenty_racing_external_migrators_run_the_command_once() {
    let db = PgDb::new("extrace");
    let dir = Migrations::new(&[]);
    let log = dir.dir.join("runs");
    let script = format!("echo $$ >> {}; sleep 0.3", log.display());
    let children: Vec<_> = (0..20)
        .map(|_| spawn(&mut external(&db, "v7", &script)))
        .collect();
    for c in children {
        let out = finish(c);
        assert_exit(&out, 0);
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
}

/// reliability: the external migrator exits non-zero | exit 1; `failed` marker with its last 20 stderr lines, passwords masked | nothing
#[test]
fn failing_external_migrator_records_the_tail_of_its_stderr() {
    let db = PgDb::new("extfail");
    let script = format!(
        "for i in $(seq 1 30); do echo line-$i >&2; done; echo 'using {PASSWORD}' >&2; exit 3"
    );
    let out = run(&mut external(&db, "v2", &script));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "sh exited with 3");
    let detail = pg_strings(
        &db.url,
        "SELECT detail FROM schemagate_marker WHERE status = 'failed'",
    );
    assert_eq!(detail.len(), 1);
    let d = &detail[0];
    assert!(
        d.starts_with("sh exited with 3; last stderr lines:\n"),
        "{d}"
    );
    assert!(
        d.contains("line-30") && d.contains("line-12") && !d.contains("line-11\n"),
        "not the last 20 lines: {d}"
    );
    assert!(
        !d.contains(PASSWORD) && d.contains("using ***"),
        "not redacted: {d}"
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "v2", "--timeout", "5s"]));
    assert_exit(&out, 3);
}

/// reliability: the external migrator is killed by a signal | exit 1; the marker names the signal | nothing
#[test]
fn external_migrator_killed_by_a_signal_is_named() {
    let db = PgDb::new("extkill");
    let out = run(&mut external(&db, "v3", "kill -9 $$"));
    assert_exit(&out, 1);
    let detail = pg_strings(&db.url, "SELECT detail FROM schemagate_marker");
    assert!(
        detail[0].starts_with("sh was killed by signal 9 (SIGKILL)"),
        "{detail:?}"
    );
}

#[test]
fn external_bad_input_is_2() {
    let out = run(schemagate("postgres://u:p@127.0.0.1:1/db").args([
        "migrate",
        "--version",
        "v1",
        "--",
        "no-such-migrator-xyz",
        "up",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "command not found: no-such-migrator-xyz");
    let out = run(schemagate("postgres://u:p@127.0.0.1:1/db").args(["migrate", "--", "true"]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--version");
}

/// reliability: SIGTERM while an external migrator runs | forwarded to its process group; once it exits, a `failed` marker; exit 143 | nothing
#[test]
fn sigterm_is_forwarded_to_the_external_migrator() {
    let db = PgDb::new("extterm");
    let script = "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.1; done";
    let mut child = spawn(&mut external(&db, "v4", script));
    wait_for_stderr_line(&mut child, "[sh] started", Duration::from_secs(30));
    sigterm(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let detail = pg_strings(
        &db.url,
        "SELECT status || ': ' || detail FROM schemagate_marker",
    );
    assert_eq!(
        detail,
        vec!["failed: interrupted by SIGTERM; sh exited with 0".to_string()]
    );
}

/// reliability: an external migrator that ignores SIGTERM | SIGKILL after `--grace`; `failed` marker; exit 143 | nothing
#[test]
fn external_migrator_ignoring_sigterm_is_killed_after_the_grace() {
    let db = PgDb::new("extgrace");
    let script = "trap '' TERM; echo started; while true; do sleep 0.1; done";
    let mut cmd = schemagate(&db.url);
    cmd.args([
        "migrate",
        "--version",
        "v5",
        "--grace",
        "1s",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let mut child = spawn(&mut cmd);
    wait_for_stderr_line(&mut child, "[sh] started", Duration::from_secs(30));
    let t = Instant::now();
    sigterm(child.id());
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "killed before the grace period"
    );
    let detail = pg_strings(&db.url, "SELECT detail FROM schemagate_marker");
    assert_eq!(
        detail,
        vec!["interrupted by SIGTERM; sh was killed by signal 9 (SIGKILL)".to_string()]
    );
}

/// reliability: `pg_terminate_backend` on the lock connection while an external migrator runs | the lost lock is noticed within 2 s; the migrator gets SIGTERM (SIGKILL after the grace); `failed` marker; exit 1 | nothing: no second migrator ran beside it
#[test]
fn losing_the_lock_connection_stops_the_external_migrator() {
    let db = PgDb::new("extlost");
    let mut child = spawn(&mut external(&db, "v6", "echo started; sleep 60"));
    wait_for_stderr_line(&mut child, "[sh] started", Duration::from_secs(30));
    let killed = pg_i64(
        &db.url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'schemagate migrate%'",
    );
    assert_eq!(
        killed,
        1,
        "{:?}",
        pg_strings(
            &db.url,
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        )
    );
    // (stderr was taken by the watcher above: the marker carries the message.)
    let t = Instant::now();
    let out = finish(child);
    assert_exit(&out, 1);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the child ran on after the lock was lost"
    );
    let detail = pg_strings(
        &db.url,
        "SELECT status || ': ' || detail FROM schemagate_marker",
    );
    assert_eq!(detail.len(), 1);
    assert!(
        detail[0].starts_with("failed: lost the migration lock while sh ran"),
        "{detail:?}"
    );
}

#[test]
fn wait_execs_the_command_once_ready() {
    let db = PgDb::new("waitexec");
    assert_exit(&run(&mut external(&db, "v1", "true")), 0);
    let child = spawn(schemagate(&db.url).args([
        "wait",
        "--expect",
        "v1",
        "--",
        "sh",
        "-c",
        "echo pid=$$ app=$0",
        "my-app",
    ]));
    let pid = child.id();
    let out = finish(child);
    assert_exit(&out, 0);
    // The same process, replaced: the app gets the signals.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pid={pid} app=my-app")
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "v1", "--", "no-such-app-xyz"]));
    assert_exit(&out, 2);
}

#[test]
fn wait_http_polls_until_2xx() {
    let db = PgDb::new("waithttp");
    assert_exit(&run(&mut external(&db, "v1", "true")), 0);
    let server = HttpServer::start(|n, _| Some(if n < 3 { 503 } else { 204 }));
    let out = run(schemagate(&db.url).args([
        "wait",
        "--expect",
        "v1",
        "--interval",
        "50ms",
        "--http",
        &server.url("/healthz"),
    ]));
    assert_exit(&out, 0);
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.method == "GET" && r.path == "/healthz")
    );
    // Never healthy: the same deadline as the database wait.
    let down = HttpServer::start(|_, _| Some(503));
    let out = run(schemagate(&db.url).args([
        "wait",
        "--expect",
        "v1",
        "--interval",
        "50ms",
        "--timeout",
        "1s",
        "--http",
        &down.url("/"),
    ]));
    assert_exit(&out, 124);
}

#[test]
fn notify_url_posts_the_outcome_and_never_changes_it() {
    let db = PgDb::new("notify");
    let hook = HttpServer::start(|_, _| Some(200));
    let broken = HttpServer::start(|_, _| Some(500));
    let (good_url, broken_url) = (hook.url("/hook"), broken.url("/hook"));
    let mut ok = external_with(
        &db,
        "v1",
        &["--notify-url", &good_url, "--notify-url", &broken_url],
        "true",
    );
    let out = run(&mut ok);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("could not notify") && stderr(&out).contains("HTTP 500"),
        "{}",
        stderr(&out)
    );
    assert_eq!(broken.requests().len(), 3, "three tries");
    let events = hook.requests();
    assert_eq!(events.len(), 1);
    let e: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(e["event"], "schemagate.migrate");
    assert_eq!(e["version"], "v1");
    assert_eq!(e["status"], "succeeded");
    assert!(e["runner"].as_str().unwrap().contains("pid"));
    assert!(e["duration_ms"].is_u64() && e["error"].is_null());

    let mut bad = external_with(
        &db,
        "v2",
        &["--notify-url", &good_url],
        "echo nope >&2; exit 1",
    );
    assert_exit(&run(&mut bad), 1);
    let e: serde_json::Value = serde_json::from_str(&hook.requests()[1].body).unwrap();
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"], "sh exited with 1");
}

/// reliability: a `--notify-url` endpoint that never answers | 3 tries of 5 s, a warning; the run still succeeds | nothing
#[test]
fn a_silent_notify_endpoint_does_not_change_the_outcome() {
    let db = PgDb::new("notifyslow");
    let silent = HttpServer::start(|_, _| None);
    let mut cmd = external_with(&db, "v1", &["--notify-url", &silent.url("/hook")], "true");
    let out = run(&mut cmd);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "could not notify");
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker"),
        vec!["succeeded".to_string()]
    );
}

#[test]
fn json_logs_wrap_the_migrators_output_lines() {
    let db = PgDb::new("extjson");
    let out = run(&mut external_with(
        &db,
        "v1",
        &["--log-format", "json"],
        "echo out-line; echo err-line >&2",
    ));
    assert_exit(&out, 0);
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let child_lines: Vec<_> = lines.iter().filter(|v| v["child"] == "sh").collect();
    assert_eq!(child_lines.len(), 2, "{lines:?}");
    assert!(
        child_lines
            .iter()
            .any(|v| v["stream"] == "stdout" && v["message"] == "[sh] out-line")
    );
    assert!(
        child_lines
            .iter()
            .any(|v| v["stream"] == "stderr" && v["message"] == "[sh] err-line")
    );
}
