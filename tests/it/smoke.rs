//! `schemagate smoke`: the rehearsal passes on each backend's example migrations (and
//! rehearses a rollback where they have down migrations), and fails, naming the check,
//! when the rollout would fail.

use std::time::Duration;

use crate::harness::*;

fn smoke(args: &[&str]) -> std::process::Output {
    let mut c = schemagate("");
    c.env_remove("SCHEMAGATE_DATABASE_URL")
        .arg("smoke")
        .args(args);
    run(&mut c)
}

fn assert_passed(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(out), 0, "{stdout}\n{}", stderr(out));
    for check in [
        "every process exited 0",
        "each migration applied exactly once",
        "one succeeded marker",
        "every waiter passed only once the schema was complete",
    ] {
        let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(check)).collect();
        assert!(!lines.is_empty(), "no {check:?} in\n{stdout}");
        for line in lines {
            assert!(line.contains(" ok "), "{line}");
        }
    }
    stdout
}

#[test]
fn smoke_on_the_embedded_sqlite_default() {
    let out = smoke(&["--source", "examples/migrations/sqlite", "--replicas", "8"]);
    let stdout = assert_passed(&out);
    assert!(
        stdout.contains("8 migrate + 8 wait processes against sqlite://"),
        "{stdout}"
    );
    // The SQLite examples have down migrations: the rollback is rehearsed too.
    let rollback = stdout
        .lines()
        .find(|l| l.starts_with("rollback: down one version"))
        .expect("no rollback rehearsal");
    assert!(rollback.contains(" ok "), "{rollback}");
    assert!(
        stdout.contains("up again: each migration applied exactly once"),
        "{stdout}"
    );
}

#[test]
fn smoke_on_postgres() {
    let db = PgDb::new("smoke");
    assert_passed(&smoke(&[
        "--source",
        "examples/migrations/postgres",
        "--replicas",
        "10",
        "--database-url",
        &db.url,
    ]));
}

#[test]
fn smoke_on_mariadb() {
    let db = TestDb::new(Kind::My, "smoke");
    assert_passed(&smoke(&[
        "--source",
        "examples/migrations/mysql",
        "--replicas",
        "10",
        "--database-url",
        db.url(),
    ]));
}

#[test]
fn smoke_fails_and_names_the_check_when_a_migration_fails() {
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_bad.sql", "INSERT INTO nope VALUES (1);"),
    ]);
    let out = smoke(&["--source", src.path(), "--replicas", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rollout: every process exited 0"))
        .unwrap();
    assert!(line.contains("FAIL"), "{stdout}");
    assert!(
        stderr(&out).contains("smoke failed: rollout: every process exited 0"),
        "{}",
        stderr(&out)
    );
}

/// reliability (SQLite): `smoke` run by a caller whose environment sets `SCHEMAGATE_LOG_FORMAT=json`, `SCHEMAGATE_LOG=warn` and `SCHEMAGATE_TABLE=x` | the rehearsed processes get a clean, explicit environment, and "applied exactly once" is counted from the database (the history and the markers, which name their runner's pid), not from their logs: the rehearsal passes | nothing
#[test]
fn smoke_passes_whatever_schemagate_settings_the_caller_has() {
    let mut c = schemagate("");
    c.env_remove("SCHEMAGATE_DATABASE_URL")
        .env("SCHEMAGATE_LOG_FORMAT", "json")
        .env("SCHEMAGATE_LOG", "warn")
        .env("SCHEMAGATE_TABLE", "x")
        .args([
            "smoke",
            "--source",
            "examples/migrations/sqlite",
            "--replicas",
            "4",
        ]);
    let out = run(&mut c);
    let stdout = assert_passed(&out);
    assert!(
        stdout.contains("applied 4"),
        "the applier is named: {stdout}"
    );
}

/// SIGTERM in the middle of a rehearsal on a server: smoke exits 143 and drops the scratch
/// databases it created, its own and the one its `check` summary rehearses in (both used
/// to be left behind, `schemagate_smoke_<pid>_…` and `schemagate_check_<pid>_…`).
#[test]
fn smoke_interrupted_drops_its_scratch_database() {
    let db = PgDb::new("smoketerm");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_slow.sql", "SELECT pg_sleep(60);"),
    ]);
    let mut c = schemagate("");
    c.env_remove("SCHEMAGATE_DATABASE_URL").args([
        "smoke",
        "--source",
        src.path(),
        "--replicas",
        "2",
        "--database-url",
        &db.url,
    ]);
    let child = spawn(&mut c);
    // schemagate_smoke_<pid>_… and schemagate_check_<pid>_…
    let scratch = format!("schemagate\\_%\\_{}\\_%", child.id());
    until(
        "the slow migration to run in a scratch database",
        Duration::from_secs(60),
        || {
            pg_i64(
                &db.url,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{scratch}' \
                 AND query LIKE '%pg_sleep(60)%' AND state = 'active'"
                ),
            ) == 1
        },
    );
    sigterm(child.id());
    let out = finish(child);
    assert_eq!(code(&out), 143, "{}", stderr(&out));
    assert_eq!(
        pg_i64(
            &db.url,
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch}'")
        ),
        0,
        "{}",
        stderr(&out)
    );
}
