//! `schemagate smoke`: the rehearsal passes on each backend's example migrations, and fails,
//! naming the check, when the rollout would fail.

mod common;

use common::*;

fn smoke(args: &[&str]) -> std::process::Output {
    let mut c = schemagate("");
    c.env_remove("SCHEMAGATE_DATABASE_URL")
        .arg("smoke")
        .args(args);
    run(&mut c)
}

fn assert_passed(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(out), 0, "{stdout}\n{}", stderr(out));
    for check in [
        "every process exited 0",
        "each migration applied exactly once",
        "one succeeded marker",
        "every waiter passed only once the schema was complete",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no {check:?} in\n{stdout}"));
        assert!(line.contains(" ok "), "{line}");
    }
}

#[test]
fn smoke_on_the_embedded_sqlite_default() {
    let out = smoke(&["--source", "examples/migrations/sqlite", "--replicas", "8"]);
    assert_passed(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("8 migrate + 8 wait processes against sqlite://")
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
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("every process exited 0"))
        .unwrap();
    assert!(line.contains("FAIL"), "{stdout}");
    assert!(
        stderr(&out).contains("smoke failed: every process exited 0"),
        "{}",
        stderr(&out)
    );
}
