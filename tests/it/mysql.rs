//! MySQL / MariaDB specifics: non-transactional DDL leaves a failed migration dirty, and
//! the next run must refuse and say how to repair; no LISTEN; password errors.

use crate::harness::*;

/// reliability: MySQL: a migration fails after its DDL committed implicitly | exit 1 and a `failed` marker; the next run exits 4 naming the dirty version and the repair; after the repair it completes | nothing reported as applied; the half-applied DDL is reported
#[test]
fn half_applied_migration_is_dirty_and_the_next_run_refuses_with_4() {
    let db = TestDb::new(Kind::My, "dirty");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        // The first statement commits implicitly; the second fails.
        (
            "2_half.sql",
            "CREATE TABLE half (id int);\nINSERT INTO no_such_table VALUES (1);",
        ),
    ]);
    let out = run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 1);
    assert!(
        db.table_exists("half"),
        "expected the DDL to have committed"
    );
    let out = run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 4);
    let err = stderr(&out);
    assert!(err.contains("migration 2 is dirty"), "{err}");
    assert!(
        err.contains("DELETE FROM _sqlx_migrations WHERE version = 2"),
        "{err}"
    );
    // `wait --source` does not pass on a dirty database either.
    let out = run(schemagate(db.url()).args(["wait", "--source", src.path(), "--timeout", "1s"]));
    assert_eq!(
        code(&out),
        3,
        "the newest marker is failed: {}",
        stderr(&out)
    );
    // The repair the message names works.
    src.write("2_half.sql", "CREATE TABLE half (id int);");
    db.exec("DROP TABLE half; DELETE FROM _sqlx_migrations WHERE version = 2;");
    let out = run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
}

#[test]
fn listen_is_refused_with_2() {
    let db = TestDb::new(Kind::My, "listen");
    let out = run(schemagate(db.url()).args(["wait", "--expect", "1", "--listen"]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--listen needs PostgreSQL");
}

/// reliability: MariaDB: wrong password | exit 2 at once, password never printed | nothing
#[test]
fn wrong_password_fails_at_once_with_2() {
    let db = TestDb::new(Kind::My, "auth");
    let user = format!("sg_auth_{}", std::process::id());
    db.exec(&format!(
        "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY 'right-one';"
    ));
    let (_, rest) = db.url().split_once("://").unwrap();
    let (_, host_and_db) = rest.split_once('@').unwrap();
    let bad = format!("mariadb://{user}:{PASSWORD}@{host_and_db}");
    let out = run(schemagate(&bad).args([
        "wait",
        "--expect",
        "1",
        "--connect-timeout",
        "30s",
        "--timeout",
        "30s",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "Access denied");
    db.exec(&format!("DROP USER '{user}'@'%'"));
}

/// reliability: MySQL: `migrate --version` longer than the marker's column (300 characters) | refused with exit 2 before the migrator runs (it used to run, then fail to record, and run again next time) | nothing
#[test]
fn version_longer_than_the_marker_column_is_refused_before_running() {
    let db = TestDb::new(Kind::My, "longver");
    let dir = Migrations::new(&[]);
    let ran = dir.dir.join("ran");
    let version = "v".repeat(300);
    let out = run(schemagate(db.url()).args([
        "migrate",
        "--version",
        &version,
        "--",
        "sh",
        "-c",
        &format!("touch {}", ran.display()),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "300 characters");
    assert!(!ran.exists(), "the migrator ran");
}

/// reliability: MySQL: a failing external migrator that prints a 70 KB line on stderr | the marker's `detail` is cut to fit (saying how much was cut), so the `failed` marker is written and waiters exit 3 | nothing: the error is recorded
#[test]
fn huge_migrator_output_still_records_the_failed_marker() {
    let db = TestDb::new(Kind::My, "hugeerr");
    let out = run(schemagate(db.url()).args([
        "migrate",
        "--version",
        "v1",
        "--",
        "sh",
        "-c",
        "head -c 70000 /dev/zero | tr '\\0' x >&2; echo >&2; exit 1",
    ]));
    assert_exit(&out, 1);
    assert_eq!(
        db.strings("SELECT status FROM schemagate_marker"),
        vec!["failed".to_string()]
    );
    assert!(
        db.strings("SELECT detail FROM schemagate_marker")[0].contains("bytes cut]"),
        "the detail was not cut"
    );
    let out = run(schemagate(db.url()).args(["wait", "--expect", "v1", "--once"]));
    assert_exit(&out, 3);
}
