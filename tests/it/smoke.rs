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

/// `smoke --rolling`: rolling updates with expand/contract and faults pass, with every
/// acceptance figure printed; on a server, old instances are also partitioned.
fn assert_rolled(out: &std::process::Output, partitions: bool) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(out), 0, "{stdout}\n{}", stderr(out));
    for row in [
        "| rolling updates | 5 of 5 (1 skipping a release)",
        "| contracts started while an older app was alive | 0 |",
        "| N -> N+2 updates: expand refused (75), completed, failed | 1, 1, 0 |",
        "| every migration applied (`wait --once --source`) | yes |",
        "| `check` findings unaccepted in expands (accepted in contracts) | 0 (7) |",
    ] {
        assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
    }
    assert!(
        stdout.contains("partitions need a server --database-url") != partitions,
        "{stdout}"
    );
    assert!(stdout.contains("smoke --rolling passed"), "{stdout}");
}

/// reliability (SQLite): 5 rolling updates with expand/contract (`smoke --rolling`): old instances (`wait --release -- APP`) ended by random SIGTERM or SIGKILL of their process group, a new instance SIGKILLed at random, one update skipping a release (N -> N+2) | no contract starts while an app of an older release is alive; the N -> N+2 update completes (its expand refused with 75 first); every migration applied; `check` finds nothing breaking in the expands | nothing
#[test]
fn smoke_rolling_on_sqlite() {
    assert_rolled(&smoke(&["--rolling", "--updates", "5"]), false);
}

/// reliability (PostgreSQL): 5 rolling updates with expand/contract (`smoke --rolling`): old instances (`wait --release -- APP`) ended by random SIGTERM, SIGKILL of their process group or a network partition (their proxy drops every packet), a new instance SIGKILLed at random, one update skipping a release (N -> N+2) | no contract starts while an app of an older release is alive; every partitioned app stops before its registry row expires; the N -> N+2 update completes (its expand refused with 75 first); every migration applied; `check` finds nothing breaking in the expands | nothing
#[test]
fn smoke_rolling_on_postgres() {
    let db = PgDb::new("smokerolling");
    assert_rolled(
        &smoke(&["--rolling", "--updates", "5", "--database-url", &db.url]),
        true,
    );
}

/// reliability (MariaDB): the rolling updates of `smoke_rolling_on_postgres`, partitions included | the same | nothing
#[test]
fn smoke_rolling_on_mariadb() {
    let db = TestDb::new(Kind::My, "smokerolling");
    assert_rolled(
        &smoke(&["--rolling", "--updates", "5", "--database-url", db.url()]),
        true,
    );
}

#[test]
fn updates_without_rolling_is_a_usage_error() {
    let out = smoke(&["--updates", "5"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--rolling"), "{}", stderr(&out));
}
