//! The core suite on every backend (PostgreSQL, MySQL/MariaDB, SQLite): racing processes,
//! SIGKILL and SIGTERM in the middle of a migration, `wait`, drift and bad input.
//! Each case is one function taking the backend; the macro at the bottom makes a test of
//! it per backend, so a failure names both.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn migrate(db: &TestDb, src: &Migrations) -> Command {
    let mut c = schemagate(db.url());
    c.args(["migrate", "--source", src.path()]);
    c
}

fn ok(out: &std::process::Output) {
    assert_exit(out, 0);
}

fn simple_source() -> Migrations {
    Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ])
}

/// reliability: 20 `migrate` processes started at once on an empty database | exactly one takes the lock and applies; the others wait on the polled lock and exit 0 when its marker appears | nothing: each migration applied once, one `succeeded` marker
fn race(kind: Kind) {
    let db = TestDb::new(kind, "race");
    let src = Migrations::new(&[]);
    for i in 1..=20 {
        src.write(
            &format!("{:04}_step_{i}.sql", i + 1),
            &format!("CREATE TABLE t{i} (id int); INSERT INTO apply_log VALUES ({i});"),
        );
    }
    src.write("0001_log.sql", "CREATE TABLE apply_log (version int);");
    let children: Vec<_> = (0..20).map(|_| spawn(&mut migrate(&db, &src))).collect();
    let outs: Vec<_> = children.into_iter().map(finish).collect();
    outs.iter().for_each(ok);
    let appliers = outs
        .iter()
        .filter(|o| stderr(o).contains("INFO applying "))
        .count();
    assert_eq!(appliers, 1, "exactly one run must apply the migrations");
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 21);
    assert_eq!(db.i64("SELECT count(*) FROM apply_log"), 20);
    assert_eq!(db.i64("SELECT count(DISTINCT version) FROM apply_log"), 20);
    assert_eq!(db.i64("SELECT count(*) FROM schemagate_marker"), 1);
    assert_eq!(
        db.i64("SELECT count(*) FROM schemagate_marker WHERE status = 'succeeded'"),
        1
    );
}

fn slow_source(db: &TestDb) -> Migrations {
    Migrations::new(&[
        ("1_first.sql", "CREATE TABLE first (id int);"),
        (
            "2_slow.sql",
            &format!("CREATE TABLE second (id int);\n{}", db.slow_sql()),
        ),
    ])
}

/// Spawn a migrator and return once it is inside migration 2.
fn migrator_in_slow_migration(db: &TestDb, src: &Migrations) -> std::process::Child {
    let mut child = spawn(&mut migrate(db, src));
    wait_for_stderr_line(&mut child, "applying 2 (slow)", Duration::from_secs(30));
    db.wait_until_slow_sql_runs();
    child
}

/// reliability: the migrator is killed with SIGKILL in the middle of a migration | PostgreSQL and SQLite roll the transaction back and free the lock with the dead session or process, and the next run applies the migration; on MySQL the DDL had committed implicitly, so the next run exits 4 naming the dirty migration and the repair | nothing that was reported as applied
fn sigkill_mid_migration(kind: Kind) {
    let db = TestDb::new(kind, "kill9");
    db.create_ctl();
    let src = slow_source(&db);
    let mut child = migrator_in_slow_migration(&db, &src);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    db.set_fast();
    let out = run(migrate(&db, &src).args(["--lock-wait", "30s"]));
    if kind == Kind::My {
        // MySQL commits DDL implicitly: `second` was created, so the migration is dirty and
        // the next run refuses, naming it and the repair.
        assert_exit(&out, 4);
        assert_stderr_has(&out, "migration 2 is dirty");
        assert_stderr_has(&out, "DELETE FROM _sqlx_migrations WHERE version = 2");
        db.exec("DROP TABLE second; DELETE FROM _sqlx_migrations WHERE version = 2;");
        ok(&run(&mut migrate(&db, &src)));
    } else {
        ok(&out);
        // The second run applied migration 2 itself: nothing of the killed run survived.
        assert_stderr_has(&out, "applying 2 (slow)");
    }
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 2);
    assert!(db.table_exists("second"));
    assert_eq!(
        db.i64("SELECT count(*) FROM schemagate_marker WHERE status = 'succeeded'"),
        1
    );
}

/// reliability: SIGTERM in the middle of a migration | exit 143; the in-flight migration is rolled back (its session ended, or SQLite's statement interrupted); a `failed` marker names it; the lock is free for the next run | nothing that was reported as applied (MySQL: DDL already committed stays, as the marker says)
fn sigterm_mid_migration(kind: Kind) {
    let db = TestDb::new(kind, "sigterm");
    db.create_ctl();
    let src = slow_source(&db);
    let child = migrator_in_slow_migration(&db, &src);
    sigterm(child.id());
    let out = finish(child);
    assert_exit(&out, 143);
    let newest = db.strings("SELECT status FROM schemagate_marker ORDER BY id DESC");
    assert_eq!(newest, vec!["failed".to_string()]);
    let detail = db.strings("SELECT detail FROM schemagate_marker");
    assert!(
        detail[0].starts_with("interrupted by SIGTERM while applying 2 (slow)"),
        "{detail:?}"
    );
    if kind == Kind::My {
        assert!(db.table_exists("second"), "MySQL DDL commits at once");
        return;
    }
    assert!(
        !db.table_exists("second"),
        "migration 2 was not rolled back"
    );
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 1);
    db.set_fast();
    ok(&run(migrate(&db, &src).args(["--lock-wait", "30s"])));
    assert!(db.table_exists("second"));
}

/// reliability: `wait` started before `migrate` | polls without holding a connection and exits 0 after the marker commits | nothing
fn wait_started_before_migrate(kind: Kind) {
    let db = TestDb::new(kind, "waitpoll");
    let src = simple_source();
    let mut waiter = spawn(schemagate(db.url()).args([
        "wait",
        "--expect",
        "2",
        "--interval",
        "100ms",
        "--timeout",
        "60s",
    ]));
    wait_for_stderr_line(
        &mut waiter,
        "waiting for schema version 2",
        Duration::from_secs(30),
    );
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait exited before the marker existed"
    );
    ok(&run(&mut migrate(&db, &src)));
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
}

/// reliability: `wait` for a version that is never written | exit 124 after `--timeout`, naming the version and why it is not ready | nothing
fn wait_times_out(kind: Kind) {
    let db = TestDb::new(kind, "waittimeout");
    let out = run(schemagate(db.url()).args([
        "wait",
        "--expect",
        "42",
        "--timeout",
        "1s",
        "--interval",
        "100ms",
    ]));
    assert_exit(&out, 124);
    assert_stderr_has(&out, "schema version 42 not ready after 1s");
}

/// reliability: a migration fails (SQL error) | rolled back; `failed` marker with the redacted error; exit 1; waiters exit 3 at once (or keep waiting with `--ignore-failed`); a fixed re-run succeeds | nothing
fn failed_migration_then_wait_exits_3(kind: Kind) {
    let db = TestDb::new(kind, "failed");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        (
            "2_bad.sql",
            "INSERT INTO a VALUES (1); INSERT INTO no_such_table VALUES (1);",
        ),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "migration 2 (bad) failed");
    assert_eq!(
        db.i64("SELECT count(*) FROM a"),
        0,
        "the failed migration's insert was kept"
    );
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 1);
    let out = run(schemagate(db.url()).args(["wait", "--source", src.path(), "--timeout", "30s"]));
    assert_exit(&out, 3);
    assert_stderr_has(&out, "no_such_table");
    let out = run(schemagate(db.url()).args([
        "wait",
        "--source",
        src.path(),
        "--ignore-failed",
        "--timeout",
        "1s",
    ]));
    assert_exit(&out, 124);
    // Fixed and re-run: the newest marker is succeeded and waiters pass.
    src.write("2_bad.sql", "INSERT INTO a VALUES (1);");
    ok(&run(&mut migrate(&db, &src)));
    ok(&run(schemagate(db.url()).args([
        "wait",
        "--source",
        src.path(),
        "--timeout",
        "5s",
    ])));
}

/// reliability: `wait --source` from an older build while the database is ahead | passes when every migration of the build is applied unchanged; refuses (times out) when one of them differs | nothing
fn wait_source_when_database_is_ahead(kind: Kind) {
    let db = TestDb::new(kind, "ahead");
    let newer = simple_source();
    newer.write("3_c.sql", "CREATE TABLE c (id int);");
    ok(&run(&mut migrate(&db, &newer)));
    let older = simple_source();
    ok(&run(schemagate(db.url()).args([
        "wait",
        "--source",
        older.path(),
        "--timeout",
        "5s",
    ])));
    older.write("2_b.sql", "CREATE TABLE b (id bigint);");
    let out = run(schemagate(db.url()).args(["wait", "--source", older.path(), "--timeout", "1s"]));
    assert_eq!(
        code(&out),
        124,
        "a build whose migration 2 differs must not pass: {}",
        stderr(&out)
    );
}

fn wait_once(kind: Kind) {
    let db = TestDb::new(kind, "once");
    let out = run(schemagate(db.url()).args(["wait", "--once", "--expect", "2"]));
    assert_exit(&out, 1);
    ok(&run(&mut migrate(&db, &simple_source())));
    ok(&run(
        schemagate(db.url()).args(["wait", "--once", "--expect", "2"])
    ));
}

/// reliability: an applied migration edited on disk | exit 4 naming the version and both checksums; nothing newer is applied | nothing
fn modified_migration_is_drift(kind: Kind) {
    let db = TestDb::new(kind, "drift");
    let src = simple_source();
    ok(&run(&mut migrate(&db, &src)));
    src.write("1_a.sql", "CREATE TABLE a (id bigint);");
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert_stderr_has(
        &out,
        "migration 1 (a) was previously applied but has been modified",
    );
    assert!(!db.table_exists("c"), "applied despite drift");
}

/// reliability: an applied migration deleted from the source | exit 4 naming the version | nothing
fn missing_migration_is_drift(kind: Kind) {
    let db = TestDb::new(kind, "missing");
    let src = simple_source();
    ok(&run(&mut migrate(&db, &src)));
    std::fs::remove_file(src.dir.join("2_b.sql")).unwrap();
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert_stderr_has(
        &out,
        "migration 2 was applied to the database but is missing",
    );
}

fn dry_run_changes_nothing(kind: Kind) {
    let db = TestDb::new(kind, "dryrun");
    let src = simple_source();
    let out = run(migrate(&db, &src).arg("--dry-run"));
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would apply 2 migration(s)") && stdout.contains("  2 b"),
        "{stdout}"
    );
    assert!(!db.table_exists("a"));
    assert!(!db.table_exists("schemagate_marker"));
}

/// A dry run whose reader has gone (`migrate --dry-run | head -1`) stops printing; it
/// used to panic on the closed pipe (exit 101) and print a Rust backtrace.
fn dry_run_into_a_closed_pipe_does_not_panic(kind: Kind) {
    let db = TestDb::new(kind, "drypipe");
    let src = simple_source();
    let (reader, writer) = std::io::pipe().unwrap();
    // Closed before the process starts: its first write fails with EPIPE, every time.
    drop(reader);
    let out = run(migrate(&db, &src).arg("--dry-run").stdout(writer));
    assert_exit(&out, 0);
    assert_stderr_lacks(&out, "panicked");
}

/// reliability: the database is unreachable (refused port; SQLite file in a missing directory) | retried with jittered backoff until `--connect-timeout`, then exit 124 (SQLite: exit 2 at once), URL redacted | nothing
fn unreachable_database(kind: Kind) {
    let url = TestDb::unreachable_url(kind);
    let src = simple_source();
    let out =
        run(schemagate(&url).args(["migrate", "--source", src.path(), "--connect-timeout", "1s"]));
    if kind == Kind::Lite {
        // A file that cannot be created is a configuration error, not a wait.
        assert_exit(&out, 2);
        assert_stderr_has(&out, "/no/such/dir/app.db");
    } else {
        assert_exit(&out, 124);
        assert_stderr_has(&out, "within 1s (--connect-timeout)");
        assert_stderr_has(&out, ":***@127.0.0.1:1/db");
    }
}

fn no_transaction_migration(kind: Kind) {
    let db = TestDb::new(kind, "notx");
    // Each of these refuses to run inside a transaction block.
    let stmt = match kind {
        Kind::Pg => "CREATE INDEX CONCURRENTLY a_id_idx ON a (id);",
        Kind::My => "CREATE INDEX a_id_idx ON a (id);",
        Kind::Lite => "VACUUM;",
    };
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_outside.sql", &format!("-- no-transaction\n{stmt}")),
    ]);
    ok(&run(&mut migrate(&db, &src)));
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 2);
}

fn reversible_source() -> Migrations {
    Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ("2_b.down.sql", "DROP TABLE b;"),
        ("3_c.up.sql", "CREATE TABLE c (id int);"),
        ("3_c.down.sql", "DROP TABLE c;"),
    ])
}

/// reliability: `rollback --to V` then `migrate` again | down migrations run under the lock, newest first; a `rollback` marker makes waiters for V pass and waiters for the newer version wait; the next `migrate` re-applies | nothing
fn rollback_and_up_again(kind: Kind) {
    let db = TestDb::new(kind, "rollback");
    let src = reversible_source();
    ok(&run(&mut migrate(&db, &src)));
    let out = run(schemagate(db.url()).args(["rollback", "--to", "1", "--source", src.path()]));
    ok(&out);
    assert!(
        stderr(&out).contains("undoing 3 (c)") && stderr(&out).contains("undoing 2 (b)"),
        "{}",
        stderr(&out)
    );
    assert!(!db.table_exists("c") && !db.table_exists("b") && db.table_exists("a"));
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 1);
    let newest = db.strings(
        "SELECT action || ' ' || version || ' ' || status FROM schemagate_marker ORDER BY id DESC",
    );
    assert_eq!(newest[0], "rollback 1 succeeded");
    // The app built for 3 waits again; one built for 1 starts.
    let out = run(schemagate(db.url()).args(["wait", "--expect", "3", "--timeout", "1s"]));
    assert_exit(&out, 124);
    let old = Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
    ]);
    ok(&run(schemagate(db.url()).args([
        "wait",
        "--source",
        old.path(),
        "--timeout",
        "5s",
    ])));
    // And up again.
    let out = run(&mut migrate(&db, &src));
    ok(&out);
    assert_stderr_has(&out, "applying 2 (b)");
    assert!(db.table_exists("c"));
    ok(&run(schemagate(db.url()).args([
        "wait",
        "--expect",
        "3",
        "--timeout",
        "5s",
    ])));
}

/// reliability: `rollback` past a migration that has no `.down.sql` | refused with exit 2 naming the versions, before anything is undone | nothing
fn rollback_without_down_migration_is_refused(kind: Kind) {
    let db = TestDb::new(kind, "rollbacknodown");
    let src = simple_source();
    ok(&run(&mut migrate(&db, &src)));
    let out = run(schemagate(db.url()).args(["rollback", "--to", "1", "--source", src.path()]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "no .down.sql for 2");
    assert!(db.table_exists("b"));
}

/// A migration larger than 1 MiB, whose statements run in pieces (PostgreSQL, SQLite):
/// rows with `;` in strings and comments, and a block of many statements (a `DO` body; a
/// SQLite trigger body) that straddles the first piece's end.
fn large_sql(kind: Kind, fail_at_end: bool) -> String {
    let pad = "y".repeat(1000);
    let mut sql =
        String::from("CREATE TABLE big (n int, v text);\nCREATE TABLE seen (n int, v text);\n");
    for i in 0..950 {
        sql.push_str(&format!(
            "INSERT INTO big VALUES ({i}, '{pad};{i}'); -- row {i}; ok\n"
        ));
    }
    let body: String = (0..100)
        .map(|i| format!("INSERT INTO seen VALUES ({i}, '{pad}');\n"))
        .collect();
    sql.push_str(&match kind {
        Kind::Lite => format!("CREATE TRIGGER big_seen AFTER INSERT ON big BEGIN\n{body}END;\n"),
        _ => format!("DO $$ BEGIN\n{body}END $$;\n"),
    });
    for i in 950..1000 {
        sql.push_str(&format!("INSERT INTO big VALUES ({i}, '{pad};{i}');\n"));
    }
    if fail_at_end {
        sql.push_str("INSERT INTO no_such_table VALUES (1);\n");
    }
    assert!(sql.len() > 1 << 20);
    sql
}

/// reliability (PostgreSQL, SQLite): a migration larger than 1 MiB, run in pieces of whole statements so that memory never holds it twice over: a block straddling a piece's end, `;` in strings and comments; then one whose last statement fails | every statement runs once, as written, in the migration's one transaction; the failing one rolls all of it back, exit 1 | nothing
fn a_large_migration_runs_in_pieces_as_one(kind: Kind) {
    let db = TestDb::new(kind, "largesql");
    let failing = Migrations::new(&[("1_big.sql", &large_sql(kind, true))]);
    let out = run(&mut migrate(&db, &failing));
    assert_exit(&out, 1);
    assert!(!db.table_exists("big"), "part of a failed migration stayed");
    let src = Migrations::new(&[("1_big.sql", &large_sql(kind, false))]);
    ok(&run(&mut migrate(&db, &src)));
    assert_eq!(db.i64("SELECT count(*) FROM big"), 1000);
    assert_eq!(
        db.i64("SELECT count(*) FROM big WHERE v LIKE '%;' || n"),
        1000
    );
    let seen = if kind == Kind::Lite { 50 * 100 } else { 100 };
    assert_eq!(db.i64("SELECT count(*) FROM seen"), seen);
    assert_eq!(
        db.i64("SELECT count(*) FROM _sqlx_migrations WHERE success"),
        1
    );
}

/// reliability: `rollback --to V` where V is not applied: newer than the newest applied, or one skipped (applied out of band around it), with and without `--dry-run` | refused with exit 2 naming the newest applied version, before anything is undone; no marker written, so `wait --expect V` keeps waiting | nothing
fn rollback_to_a_version_not_applied_is_refused(kind: Kind) {
    let db = TestDb::new(kind, "rollbacknotapplied");
    let first = Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
    ]);
    ok(&run(&mut migrate(&db, &first)));
    let src = reversible_source();
    let markers = "SELECT count(*) FROM schemagate_marker";
    let refused = |to: &str, dry_run: bool, newest: &str| {
        let mut cmd = schemagate(db.url());
        cmd.args(["rollback", "--to", to, "--source", src.path()]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = run(&mut cmd);
        assert_eq!(code(&out), 2, "--to {to}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("cannot roll back to {to}: it is not applied"))
                && stderr(&out).contains(&format!("the newest applied migration is {newest}")),
            "--to {to}: {}",
            stderr(&out)
        );
    };
    // Newer than what is applied: only migration 1 is.
    for (to, dry_run) in [("3", false), ("2", false), ("3", true)] {
        refused(to, dry_run, "1");
        assert_eq!(db.i64(markers), 1, "--to {to} wrote a marker");
    }
    assert!(db.table_exists("a"));
    let out = run(schemagate(db.url()).args(["wait", "--expect", "3", "--once"]));
    assert_ne!(
        code(&out),
        0,
        "a rollback marker claimed 3: {}",
        stderr(&out)
    );
    // One skipped: 1..3 applied, then 2's row removed out of band.
    ok(&run(&mut migrate(&db, &src)));
    db.exec("DELETE FROM _sqlx_migrations WHERE version = 2");
    let before = db.i64(markers);
    refused("2", false, "3");
    assert_eq!(db.i64(markers), before, "--to 2 wrote a marker");
    assert!(db.table_exists("c"), "undone despite the refusal");
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: `stamp V --source` over drift: an applied migration up to V edited on disk, or applied and missing from the source | refused with exit 4 naming the version, nothing recorded: its marker would claim the edited source's digest, and `migrate` would then take the fast path over the drift | nothing
fn stamp_over_drift_is_refused(kind: Kind) {
    let db = TestDb::new(kind, "stampdrift");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
        ("3_c.sql", "CREATE TABLE c (id int);"),
    ]);
    ok(&run(&mut migrate(&db, &src)));
    src.write("2_b.sql", "CREATE TABLE b (id bigint);");
    let markers = "SELECT count(*) FROM schemagate_marker";
    for upto in ["2", "3"] {
        let out = run(schemagate(db.url()).args(["stamp", upto, "--source", src.path()]));
        assert_eq!(code(&out), 4, "stamp {upto}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("cannot stamp {upto}: migration 2 ")),
            "stamp {upto}: {}",
            stderr(&out)
        );
        assert_eq!(db.i64(markers), 1, "stamp {upto} wrote a marker");
    }
    // A stamp up to a version below the edited one claims nothing about it.
    ok(&run(schemagate(db.url()).args([
        "stamp",
        "1",
        "--source",
        src.path(),
    ])));
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    // Missing: applied, then deleted from the source.
    src.write("2_b.sql", "CREATE TABLE b (id int);");
    std::fs::remove_file(src.dir.join("2_b.sql")).unwrap();
    let out = run(schemagate(db.url()).args(["stamp", "3", "--source", src.path()]));
    assert_exit(&out, 4);
}

/// reliability: a `-- no-transaction` migration that fails part-way, then `stamp` | the run exits 1 and records the migration dirty; the next `migrate` exits 4 naming it and the repair; after the operator finishes it by hand, `stamp V --source` marks it done under the lock and `migrate` / `wait` pass | nothing: the partial effects are reported, never re-run blindly
fn dirty_then_stamp(kind: Kind) {
    let db = TestDb::new(kind, "stamp");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        (
            "2_half.sql",
            "-- no-transaction
CREATE TABLE half (id int);
INSERT INTO no_such_table VALUES (1);",
        ),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 1);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert!(
        stderr(&out).contains("migration 2 is dirty")
            && stderr(&out).contains("schemagate stamp 2"),
        "{}",
        stderr(&out)
    );
    // The operator finishes it by hand, then stamps it.
    if !db.table_exists("half") {
        db.exec("CREATE TABLE half (id int)");
    }
    let out = run(schemagate(db.url()).args(["stamp", "2", "--source", src.path()]));
    ok(&out);
    let out = run(&mut migrate(&db, &src));
    ok(&out);
    assert_stderr_has(&out, "already applied");
    ok(&run(schemagate(db.url()).args([
        "wait",
        "--source",
        src.path(),
        "--timeout",
        "5s",
    ])));
    assert_eq!(
        db.strings("SELECT action || ' ' || status FROM schemagate_marker ORDER BY id DESC")[0],
        "stamp succeeded"
    );
}

/// reliability: `stamp V` with a source on an empty database (the schema was created by other means) | records every migration up to V as applied without running it; `migrate` then takes the fast path | nothing
fn stamp_without_running(kind: Kind) {
    let db = TestDb::new(kind, "stampfresh");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        (
            "2_fails_if_run.sql",
            "INSERT INTO no_such_table VALUES (1);",
        ),
    ]);
    ok(&run(schemagate(db.url()).args([
        "stamp",
        "2",
        "--source",
        src.path(),
    ])));
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 2);
    assert!(!db.table_exists("a"), "stamp ran a migration");
    ok(&run(&mut migrate(&db, &src)));
}

/// A reversible 1..3 source whose down migration for 2 runs slowly while `ctl.slow` is 1
/// (the slow statement first, so that on MySQL nothing has been dropped when it is
/// interrupted).
fn slow_down_source(db: &TestDb) -> Migrations {
    Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ("2_b.down.sql", &format!("{}\nDROP TABLE b;", db.slow_sql())),
        ("3_c.up.sql", "CREATE TABLE c (id int);"),
        ("3_c.down.sql", "DROP TABLE c;"),
    ])
}

/// Migrate 1..3, then start `rollback --to 1` and return once it is in the slow down
/// migration of 2 (after 3 was undone).
fn rollback_in_slow_down(db: &TestDb, src: &Migrations) -> std::process::Child {
    db.create_ctl();
    db.set_fast();
    ok(&run(&mut migrate(db, src)));
    db.exec("UPDATE ctl SET slow = 1");
    let mut child =
        spawn(schemagate(db.url()).args(["rollback", "--to", "1", "--source", src.path()]));
    wait_for_stderr_line(&mut child, "undoing 2 (b)", Duration::from_secs(30));
    db.wait_until_slow_sql_runs();
    child
}

/// After an interrupted rollback: version 3 must not look ready, and `migrate` must put it
/// back.
fn assert_undone_version_not_ready(db: &TestDb, src: &Migrations) {
    assert!(
        !db.table_exists("c"),
        "3 was undone before the interruption"
    );
    let out = run(schemagate(db.url()).args(["wait", "--expect", "3", "--once"]));
    assert_ne!(
        code(&out),
        0,
        "wait passed on a schema without 3: {}",
        stderr(&out)
    );
    db.set_fast();
    let out = run(&mut migrate(db, src));
    if db.kind() == Kind::My {
        // sqlx marks a MySQL down migration dirty before running it (its DDL commits
        // at once): the next run stops and names it, as for an interrupted up migration.
        assert_exit(&out, 4);
        assert_stderr_has(&out, "migration 2 is dirty");
        return;
    }
    ok(&out);
    assert!(
        !stderr(&out).contains("already applied"),
        "the fast path trusted the old marker: {}",
        stderr(&out)
    );
    assert!(db.table_exists("c"), "migrate did not re-apply 3");
    ok(&run(
        schemagate(db.url()).args(["wait", "--expect", "3", "--once"])
    ));
}

/// reliability: `rollback --to 1` from 3 interrupted by SIGTERM in the down migration of 2 (3 already undone) | a `failed` rollback marker naming 3 was written before anything was undone, so `wait --expect 3` does not pass and `migrate` does not take the fast path: it re-applies 3 (MySQL: sqlx marked the interrupted down migration dirty, so `migrate` exits 4 naming it) | nothing: the schema and the markers agree
fn interrupted_rollback_by_sigterm_leaves_the_undone_version_not_ready(kind: Kind) {
    let db = TestDb::new(kind, "rbterm");
    let src = slow_down_source(&db);
    let child = rollback_in_slow_down(&db, &src);
    sigterm(child.id());
    let out = finish(child);
    assert_exit(&out, 143);
    assert_undone_version_not_ready(&db, &src);
}

/// reliability: `rollback --to 1` from 3 killed with SIGKILL in the down migration of 2 | as with SIGTERM: the marker written before the first down migration keeps 3 from looking ready; `migrate` re-applies it | nothing
fn interrupted_rollback_by_sigkill_leaves_the_undone_version_not_ready(kind: Kind) {
    let db = TestDb::new(kind, "rbkill");
    let src = slow_down_source(&db);
    let mut child = rollback_in_slow_down(&db, &src);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_undone_version_not_ready(&db, &src);
}

/// reliability: `migrate` to 3, `rollback --to 2`, then an app built for 1 waits (`wait --expect 1`) | the database has passed 1 (applied, and the newest succeeded marker is for 2): ready; an app built for 3 waits | nothing
fn wait_for_a_version_the_database_has_passed(kind: Kind) {
    let db = TestDb::new(kind, "passed");
    let src = reversible_source();
    ok(&run(&mut migrate(&db, &src)));
    ok(&run(schemagate(db.url()).args([
        "rollback",
        "--to",
        "2",
        "--source",
        src.path(),
    ])));
    let out = run(schemagate(db.url()).args(["wait", "--expect", "1", "--once"]));
    ok(&out);
    let out = run(schemagate(db.url()).args(["wait", "--expect", "2", "--once"]));
    ok(&out);
    let out = run(schemagate(db.url()).args(["wait", "--expect", "3", "--once"]));
    assert_exit(&out, 1);
    // Rolled back below 1: an app built for 1 waits again.
    ok(&run(schemagate(db.url()).args([
        "rollback",
        "--to",
        "0",
        "--source",
        src.path(),
    ])));
    let out = run(schemagate(db.url()).args(["wait", "--expect", "1", "--once"]));
    assert_exit(&out, 1);
}

/// reliability: another tool reverts migrations out of band (the SQL `sqlx migrate revert` runs: the down migration, then its `_sqlx_migrations` row deleted) after a `succeeded` marker | the fast path reads the history in the same query as the marker, sees it disagree, and takes the slow path: `migrate` re-applies; `wait --source` does not pass meanwhile | nothing
fn out_of_band_revert_is_seen_by_the_fast_path(kind: Kind) {
    let db = TestDb::new(kind, "oob");
    let src = reversible_source();
    ok(&run(&mut migrate(&db, &src)));
    db.exec("DROP TABLE c");
    db.exec("DELETE FROM _sqlx_migrations WHERE version = 3");
    let out = run(schemagate(db.url()).args(["wait", "--source", src.path(), "--once"]));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "records 2 of this build's 3");
    let out = run(&mut migrate(&db, &src));
    ok(&out);
    assert_stderr_has(&out, "applying 3 (c)");
    assert!(db.table_exists("c"));
}

/// reliability: an image rolled back to an older release runs `migrate --source` against a database that is ahead (every migration of the release applied unchanged, plus newer ones) | not drift: exit 0 with one line saying the database is ahead; a modified older migration is still drift (exit 4) | nothing
fn database_ahead_of_the_source_is_not_drift(kind: Kind) {
    let db = TestDb::new(kind, "ahead");
    let new = simple_source();
    new.write("3_c.sql", "CREATE TABLE c (id int);");
    ok(&run(&mut migrate(&db, &new)));
    let old = simple_source();
    // No marker for the old release's version: the slow path decides.
    let fresh = TestDb::new(kind, "ahead2");
    ok(&run(&mut migrate(&fresh, &new)));
    for target in [&db, &fresh] {
        let out = run(&mut migrate(target, &old));
        ok(&out);
    }
    fresh.exec("DELETE FROM schemagate_marker");
    let out = run(&mut migrate(&fresh, &old));
    ok(&out);
    assert_stderr_has(&out, "the database is ahead of this build");
    let modified = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int); -- changed"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ]);
    let out = run(&mut migrate(&fresh, &modified));
    assert_exit(&out, 4);
}

/// reliability (PostgreSQL, MariaDB): the server ends the migrator's session in the middle of a migration (`pg_terminate_backend`, MySQL `KILL CONNECTION`: a failover, a restart) | exit 1; the `failed` marker is written from a fresh connection, so a `wait` for the version exits 3 at once instead of waiting to its timeout | nothing reported as applied
fn lost_lock_connection_records_a_failed_marker(kind: Kind) {
    let db = TestDb::new(kind, "lostconn");
    db.create_ctl();
    let src = slow_source(&db);
    let child = migrator_in_slow_migration(&db, &src);
    match kind {
        Kind::Pg => db.exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE '%pg_sleep(CASE%' AND state = 'active' AND pid <> pg_backend_pid()",
        ),
        Kind::My => {
            let id = db.i64(
                "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE '%SLEEP(IF%' AND ID <> CONNECTION_ID()",
            );
            db.exec(&format!("KILL CONNECTION {id}"));
        }
        Kind::Lite => unreachable!("SQLite runs in the migrator's process"),
    }
    let out = finish(child);
    assert_exit(&out, 1);
    assert_eq!(
        db.strings("SELECT status FROM schemagate_marker ORDER BY id DESC"),
        vec!["failed".to_string()]
    );
    let out = run(schemagate(db.url()).args(["wait", "--expect", "2", "--timeout", "60s"]));
    assert_exit(&out, 3);
}

/// reliability: two migration tracks in one history (`--ignore-missing`, quickwit's deferred track): 8 `migrate` runs of one track race, then 5 more run one after another | the marker's history check counts only this track's versions, so the racers that wait leave at the first run's marker, and every later run takes the fast path (no lock, no marker): one marker in all | nothing
fn ignore_missing_runs_take_the_fast_path(kind: Kind) {
    let db = TestDb::new(kind, "tracks");
    let main = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("3_c.sql", "CREATE TABLE c (id int);"),
    ]);
    let deferred = Migrations::new(&[
        ("2_b.sql", "CREATE TABLE b (id int);"),
        ("4_d.sql", "CREATE TABLE d (id int);"),
    ]);
    let go = |src: &Migrations| {
        let mut c = migrate(&db, src);
        c.arg("--ignore-missing");
        c
    };
    // The other track first: its rows sit among this track's, older and newer.
    ok(&run(&mut go(&deferred)));
    let racers: Vec<_> = (0..8).map(|_| spawn(&mut go(&main))).collect();
    for out in racers.into_iter().map(finish) {
        ok(&out);
    }
    let markers = || db.i64("SELECT count(*) FROM schemagate_marker WHERE version = '3'");
    assert_eq!(markers(), 1, "one marker for the race");
    for _ in 0..5 {
        let out = run(&mut go(&main));
        ok(&out);
        assert_stderr_has(&out, "schema version 3 is already applied");
        assert_stderr_lacks(&out, "lock: ");
    }
    assert_eq!(markers(), 1, "a no-op run appended a marker");
    // The check still sees this track's history: reverted out of band, it runs again.
    db.exec("DELETE FROM _sqlx_migrations WHERE version = 3; DROP TABLE c;");
    let out = run(&mut go(&main));
    ok(&out);
    assert_stderr_has(&out, "applying 3");
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 4);
}

/// Two `migrate` runs at once whose `--table` names one marker table in two spellings: the
/// second must wait for the first's lock (its log says so) and never reach the migration,
/// which the first holds at the test's gate; then both exit 0, the migration applied once.
fn one_table_two_spellings(db: &TestDb, first: &str, second: &str) {
    db.exec("CREATE TABLE gate (id int); CREATE TABLE apply_log (id int);");
    let src = Migrations::new(&[(
        "1_gated.sql",
        "INSERT INTO apply_log VALUES (1); SELECT count(*) FROM gate;",
    )]);
    let gate = db.hold_gate();
    let a = spawn(migrate(db, &src).args(["--table", first]));
    until(
        "the first run to wait at the gate",
        Duration::from_secs(60),
        || db.waiting_at_gate() == 1,
    );
    let mut b = spawn(migrate(db, &src).args(["--table", second]));
    wait_for_stderr_line(
        &mut b,
        "waiting for the migration lock",
        Duration::from_secs(60),
    );
    assert_eq!(db.waiting_at_gate(), 1, "the second run got past the lock");
    drop(gate);
    let (a, b) = (finish(a), finish(b));
    ok(&a);
    ok(&b);
    assert_eq!(db.i64("SELECT count(*) FROM apply_log"), 1);
    let appliers = [&a, &b]
        .iter()
        .filter(|o| stderr(o).contains("INFO applying "))
        .count();
    assert_eq!(appliers, 1);
    // `status` shows the lock as `migrate` takes it: one key for both spellings.
    let key = |table: &str| {
        let out = run(schemagate(db.url()).args(["status", "--json", "--table", table]));
        ok(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["lock"]["key"].as_str().unwrap().to_owned()
    };
    assert_eq!(key(first), key(second));
}

/// reliability: two `migrate` runs at once whose `--table` spells one marker table differently (`schemagate_marker` and `Public.Schemagate_Marker`; with the search_path on schema `app`, `marker` and `app.marker`; MySQL: `schemagate_marker` and `<database>.schemagate_marker`) | the default lock is named after the table as the server resolves it (lower-cased; `public`, or the connection's database, left out), so the second waits for the first's lock; the migration runs once and both exit 0 | nothing
fn spellings_of_one_marker_table_take_one_lock(kind: Kind) {
    let db = TestDb::new(kind, "spelling");
    match &db {
        TestDb::Pg(_) => {
            one_table_two_spellings(&db, "schemagate_marker", "Public.Schemagate_Marker");
            let db = TestDb::new(kind, "searchpath");
            let name = db.url().rsplit('/').next().unwrap().to_owned();
            db.exec(&format!(
                "CREATE SCHEMA app; ALTER DATABASE {name} SET search_path = app"
            ));
            one_table_two_spellings(&db, "marker", "App.Marker");
        }
        TestDb::My(d) => {
            let name = d.url.rsplit('/').next().unwrap().to_owned();
            one_table_two_spellings(
                &db,
                "schemagate_marker",
                &format!("{name}.schemagate_marker"),
            );
        }
        TestDb::Lite { .. } => unreachable!("SQLite's lock is a file beside the database"),
    }
}

mod spellings {
    use super::*;
    #[test]
    fn postgres() {
        spellings_of_one_marker_table_take_one_lock(Kind::Pg)
    }
    #[test]
    fn mysql() {
        spellings_of_one_marker_table_take_one_lock(Kind::My)
    }
}

mod lost_connection {
    use super::*;
    #[test]
    fn postgres() {
        lost_lock_connection_records_a_failed_marker(Kind::Pg)
    }
    #[test]
    fn mysql() {
        lost_lock_connection_records_a_failed_marker(Kind::My)
    }
}

mod large_migration {
    use super::*;
    #[test]
    fn postgres() {
        a_large_migration_runs_in_pieces_as_one(Kind::Pg)
    }
    #[test]
    fn sqlite() {
        a_large_migration_runs_in_pieces_as_one(Kind::Lite)
    }
}

on_every_backend!(
    race,
    sigkill_mid_migration,
    sigterm_mid_migration,
    wait_started_before_migrate,
    wait_times_out,
    failed_migration_then_wait_exits_3,
    wait_source_when_database_is_ahead,
    wait_once,
    modified_migration_is_drift,
    missing_migration_is_drift,
    dry_run_changes_nothing,
    dry_run_into_a_closed_pipe_does_not_panic,
    unreachable_database,
    no_transaction_migration,
    rollback_and_up_again,
    rollback_without_down_migration_is_refused,
    rollback_to_a_version_not_applied_is_refused,
    stamp_over_drift_is_refused,
    dirty_then_stamp,
    stamp_without_running,
    interrupted_rollback_by_sigterm_leaves_the_undone_version_not_ready,
    interrupted_rollback_by_sigkill_leaves_the_undone_version_not_ready,
    wait_for_a_version_the_database_has_passed,
    out_of_band_revert_is_seen_by_the_fast_path,
    database_ahead_of_the_source_is_not_drift,
    ignore_missing_runs_take_the_fast_path,
);
