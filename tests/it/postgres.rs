//! The core suite on PostgreSQL: races between real processes, crashes and signals in the
//! middle of a migration, `wait` in all its endings, drift, and bad input.

use std::time::Duration;

use crate::harness::*;

fn migrate(db: &PgDb, src: &Migrations) -> std::process::Command {
    let mut c = schemagate(&db.url);
    c.args(["migrate", "--source", src.path()]);
    c
}

/// N migrations, each creating a table and logging which backend applied it.
fn logged_migrations(n: usize) -> Migrations {
    let src = Migrations::new(&[]);
    for i in 1..=n {
        src.write(
            &format!("{i:04}_step_{i}.sql"),
            &format!(
                "CREATE TABLE IF NOT EXISTS apply_log (version int, pid int);
                 CREATE TABLE t{i} (id int);
                 INSERT INTO apply_log VALUES ({i}, pg_backend_pid());"
            ),
        );
    }
    src
}

/// reliability: 20 racing `migrate` processes, 20 migrations | one backend applies all 20 (checked by `pg_backend_pid`); all exit 0; one marker | nothing
#[test]
fn twenty_racing_migrators_apply_each_migration_exactly_once() {
    let db = PgDb::new("race20");
    let src = logged_migrations(20);
    let children: Vec<_> = (0..20).map(|_| spawn(&mut migrate(&db, &src))).collect();
    for child in children {
        let out = finish(child);
        assert_exit(&out, 0);
    }
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 20);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 20);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT version) FROM apply_log"),
        20
    );
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT pid) FROM apply_log"),
        1,
        "more than one run applied migrations"
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker WHERE status = 'succeeded'"
        ),
        1
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
}

/// reliability: 10 racing `migrate` with a `-- no-transaction` `CREATE INDEX CONCURRENTLY` | no deadlock (the lock is polled, never a blocking `pg_advisory_lock` that holds a snapshot); all exit 0; the index is valid | nothing
#[test]
fn racing_create_index_concurrently_does_not_deadlock() {
    let db = PgDb::new("cic");
    let src = Migrations::new(&[
        (
            "1_orders.sql",
            "CREATE TABLE orders (id int, user_id int); INSERT INTO orders SELECT g, g % 100 FROM generate_series(1, 20000) g;",
        ),
        (
            "2_index.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_user_idx ON orders (user_id);",
        ),
        ("3_more.sql", "ALTER TABLE orders ADD COLUMN note text;"),
    ]);
    let children: Vec<_> = (0..10)
        .map(|_| spawn(migrate(&db, &src).args(["--lock-wait", "60s"])))
        .collect();
    for child in children {
        let out = finish(child);
        assert_exit(&out, 0);
    }
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_index WHERE indexrelid = 'orders_user_idx'::regclass AND indisvalid"
        ),
        1,
        "the concurrently built index is not valid"
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 3);
}

/// Migration 2 creates a table, then sleeps while `ctl.slow` is true.
fn slow_second_migration() -> Migrations {
    Migrations::new(&[
        ("1_first.sql", "CREATE TABLE first (id int);"),
        (
            "2_slow.sql",
            "CREATE TABLE second (id int);
             SELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) THEN 60 ELSE 0 END);",
        ),
    ])
}

fn wait_until_sleeping(db: &PgDb) {
    until(
        "the migration to reach pg_sleep",
        Duration::from_secs(30),
        || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(CASE%' AND state = 'active' AND pid <> pg_backend_pid()",
            ) == 1
        },
    );
}

/// reliability: SIGKILL during a slow migration | the server notices the dead client within a second (`client_connection_check_interval`), rolls back and frees the advisory lock: no stale lock, no partial table | nothing
#[test]
fn sigkilled_migrator_partial_state_is_not_visible() {
    let db = PgDb::new("kill9b");
    pg_exec(
        &db.url,
        "CREATE TABLE ctl (slow bool); INSERT INTO ctl VALUES (true);",
    );
    let src = slow_second_migration();
    let mut child = spawn(&mut migrate(&db, &src));
    wait_until_sleeping(&db);
    child.kill().unwrap();
    let _ = child.wait();
    // The server notices the dead client and rolls back: the lock frees, `second` is gone.
    until("the killed session to end", Duration::from_secs(30), || {
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        ) == 0
    });
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'second'"
        ),
        0
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 1);
}

/// The advisory lock key, as `status --json` reports it.
fn lock_key(db: &PgDb) -> i64 {
    let out = run(schemagate(&db.url).args(["status", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A string: the key is beyond what JSON readers hold exactly.
    v["lock"]["key"].as_str().unwrap().parse().unwrap()
}

fn simple_source() -> Migrations {
    Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ])
}

#[test]
fn wait_listen_started_before_migrate_passes_when_the_marker_commits() {
    let db = PgDb::new("waitlisten");
    let src = simple_source();
    let mut w = schemagate(&db.url);
    // A long interval: only the NOTIFY can wake it before the timeout.
    w.args([
        "wait",
        "--expect",
        "2",
        "--interval",
        "60s",
        "--timeout",
        "30s",
        "--listen",
    ]);
    let mut waiter = spawn(&mut w);
    // The waiter has checked once and found nothing.
    wait_for_stderr_line(
        &mut waiter,
        "waiting for schema version 2",
        Duration::from_secs(30),
    );
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait exited before the marker existed"
    );
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    let status = waiter.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn second_migrate_takes_the_fast_path_without_the_lock() {
    let db = PgDb::new("fastpath");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    // Hold the lock from another session: a run that needed it would time out.
    let key = lock_key(&db);
    block_on(async {
        use sqlx::Connection;
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        let out = tokio::process::Command::new(bin())
            .env("SCHEMAGATE_DATABASE_URL", &db.url)
            .args(["migrate", "--source", src.path(), "--lock-wait", "1s"])
            .output()
            .await
            .unwrap();
        assert_no_secret(&out);
        assert_exit(&out, 0);
        // A new migration needs the lock: it waits, names the holder, and times out.
        src.write("3_c.sql", "CREATE TABLE c (id int);");
        let out = tokio::process::Command::new(bin())
            .env("SCHEMAGATE_DATABASE_URL", &db.url)
            .args(["migrate", "--source", src.path(), "--lock-wait", "1s"])
            .output()
            .await
            .unwrap();
        assert_no_secret(&out);
        assert_exit(&out, 124);
        assert_stderr_has(&out, "held by pid");
    });
}

#[test]
fn status_json_shows_markers_pending_and_lock() {
    let db = PgDb::new("status");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(schemagate(&db.url).args(["status", "--json", "--source", src.path()]));
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["markers"][0]["status"], "succeeded");
    assert_eq!(v["markers"][0]["version"], "2");
    assert_eq!(v["markers"][0]["applied"], 2);
    assert_eq!(v["migrations"]["pending"][0]["version"], 3);
    assert_eq!(v["migrations"]["applied"][1]["source"], "ok");
    assert_eq!(v["lock"]["holder"], serde_json::Value::Null);
    assert!(v["database"].as_str().unwrap().contains(":***@") || !db.url.contains('@'));
}

// ----- bad input -----

/// reliability: wrong password | exit 2 at once (no retry), the password never printed | nothing
#[test]
fn wrong_password_fails_at_once_with_2() {
    let db = PgDb::new("auth");
    let role = format!("sg_auth_{}", std::process::id());
    pg_exec(
        &db.url,
        &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'right-one'"),
    );
    let bad = db
        .url
        .replacen("//postgres:", &format!("//{role}:"), 1)
        .replacen(PASSWORD, "wrong-one", 1);
    let src = simple_source();
    let started = std::time::Instant::now();
    let out = run(schemagate(&bad).args([
        "migrate",
        "--source",
        src.path(),
        "--connect-timeout",
        "30s",
    ]));
    assert_exit(&out, 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "authentication failure was retried"
    );
    assert_stderr_has(&out, "password authentication failed");
    assert_stderr_lacks(&out, "wrong-one");
    pg_exec(&db.url, &format!("DROP ROLE {role}"));
}

/// reliability: missing source directory | exit 2 naming it, before connecting | nothing
#[test]
fn missing_source_directory_is_2() {
    let out = run(schemagate("postgres://postgres:x@127.0.0.1:1/db").args([
        "migrate",
        "--source",
        "/no/such/dir",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "/no/such/dir");
}

/// reliability: a `.sql` file named `<something>_<description>.sql` whose version does not parse | exit 2 naming the file (not silently skipped; a name without `_`, such as `schema.sql`, is skipped with a warning, as sqlx-cli does) | nothing
#[test]
fn malformed_migration_file_name_is_2() {
    let src = Migrations::new(&[("1_a.sql", "SELECT 1;"), ("v2_add_users.sql", "SELECT 1;")]);
    let out = run(schemagate("postgres://postgres:x@127.0.0.1:1/db").args([
        "migrate",
        "--source",
        src.path(),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "malformed migration file name \"v2_add_users.sql\"");
}

/// reliability: malformed URL or unknown scheme | exit 2; a URL that does not parse is never echoed, only its scheme and host | nothing
#[test]
fn malformed_url_is_2_and_redacted() {
    let src = simple_source();
    for (url, shown) in [
        (
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/db"),
            "postgres://…@127.0.0.1:notaport",
        ),
        (format!("ftp://postgres:{PASSWORD}@127.0.0.1/db"), "ftp://…"),
    ] {
        let out = run(schemagate(&url).args([
            "migrate",
            "--source",
            src.path(),
            "--connect-timeout",
            "5s",
        ]));
        assert_eq!(code(&out), 2, "{url}: {}", stderr(&out));
        assert_stderr_has(&out, shown);
    }
}

#[test]
fn database_url_from_file_and_termination_log() {
    let db = PgDb::new("urlfile");
    let src = simple_source();
    let secret = src.dir.join("url.secret");
    std::fs::write(&secret, format!("{}\n", db.url)).unwrap();
    let tlog = src.dir.join("termination-log");
    std::fs::write(&tlog, "").unwrap();
    let mut cmd = schemagate("");
    cmd.env_remove("SCHEMAGATE_DATABASE_URL")
        .args(["migrate", "--source", src.path(), "--database-url-file"])
        .arg(&secret)
        .arg("--termination-log")
        .arg(&tlog);
    let out = run(&mut cmd);
    assert_exit(&out, 0);
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&tlog).unwrap().trim()).unwrap();
    assert_eq!(line["exit_code"], 0);
    assert_eq!(line["version"], "2");
    assert_eq!(line["applied"], 2);
}

/// reliability: SIGTERM while waiting for the lock | exit 143 at once; no marker written (another run may be doing the work) | nothing
#[test]
fn sigterm_while_waiting_for_the_lock_exits_143_and_records_nothing() {
    let db = PgDb::new("termwait");
    let src = simple_source();
    let key = lock_key(&db);
    block_on(async {
        use sqlx::Connection;
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        let mut child = spawn(&mut migrate(&db, &src));
        wait_for_stderr_line(
            &mut child,
            "waiting for the migration lock",
            Duration::from_secs(30),
        );
        sigterm(child.id());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143));
        let _ = holder.close().await;
    });
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'schemagate_marker'"
        ),
        0
    );
}

/// reliability: SIGTERM to a waiting `wait` (schemagate as PID 1 of an initContainer) | exits 143 at once instead of ignoring the signal as PID 1 would by default | nothing
#[test]
fn sigterm_stops_a_waiting_wait_with_143() {
    let db = PgDb::new("termwaiter");
    let mut waiter = spawn(schemagate(&db.url).args(["wait", "--expect", "9", "--timeout", "60s"]));
    wait_for_stderr_line(
        &mut waiter,
        "waiting for schema version 9",
        Duration::from_secs(30),
    );
    sigterm(waiter.id());
    assert_eq!(waiter.wait().unwrap().code(), Some(143));
}

/// reliability: a transactional migration that ends its own transaction (`…; COMMIT; …`, `BEGIN; …; ROLLBACK;`, a psql-style `BEGIN; … COMMIT;` file, also with `--single-transaction`) | refused with exit 2 before anything runs, naming the statement and its line and saying to remove it or use `-- no-transaction` | nothing: no part committed early, nothing recorded as applied that was not
#[test]
fn migration_that_ends_its_own_transaction_is_refused() {
    let cases = [
        (
            "CREATE TABLE c1 (id int);\nCOMMIT;\nCREATE TABLE c2 (id int);\nSELECT 1/0;",
            "`COMMIT` at line 2",
            "c1",
        ),
        (
            "BEGIN;\nCREATE TABLE r1 (id int);\nROLLBACK;",
            "`BEGIN` at line 1",
            "r1",
        ),
        (
            "-- psql style\nBEGIN;\nCREATE TABLE p1 (id int);\nCOMMIT;",
            "`BEGIN` at line 2",
            "p1",
        ),
    ];
    for (sql, named, table) in cases {
        for extra in [&[][..], &["--single-transaction"][..]] {
            let db = PgDb::new("txctl");
            let src =
                Migrations::new(&[("1_ok.sql", "CREATE TABLE ok (id int);"), ("2_tx.sql", sql)]);
            let out = run(migrate(&db, &src).args(extra));
            assert_exit(&out, 2);
            assert!(
                stderr(&out).contains(named) && stderr(&out).contains("-- no-transaction"),
                "{}",
                stderr(&out)
            );
            for t in ["ok", table] {
                assert_eq!(
                    pg_i64(
                        &db.url,
                        &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{t}'")
                    ),
                    0,
                    "{t} exists: something ran"
                );
            }
        }
    }
}

/// reliability: a transactional down migration that ends its own transaction (`…; COMMIT; …`) | `rollback` refuses it with exit 2 before undoing anything, naming the down migration, the statement and its line | nothing: no part committed early
#[test]
fn down_migration_that_ends_its_own_transaction_is_refused() {
    let db = PgDb::new("txdown");
    let src = Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ("2_b.down.sql", "DROP TABLE b;\nCOMMIT;\nSELECT 1/0;"),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    let out = run(schemagate(&db.url).args(["rollback", "--to", "1", "--source", src.path()]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "down migration 2 (b) has `COMMIT` at line 2");
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'b'"
        ),
        1,
        "b was dropped: part of the down migration committed"
    );
}

/// reliability: a `-- no-transaction` file with several statements (two `CREATE INDEX CONCURRENTLY`) | its statements run one at a time, as psql would, so it applies | nothing
#[test]
fn no_transaction_file_with_several_statements_applies() {
    let db = PgDb::new("notxmulti");
    let src = Migrations::new(&[
        ("1_t.sql", "CREATE TABLE t (x int, y int);"),
        (
            "2_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\n\
             /* a; comment */ CREATE INDEX CONCURRENTLY t_y ON t (y);\n",
        ),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 't'"
        ),
        2
    );
}

/// reliability: a `-- no-transaction` file whose first statement fails, or whose second fails after the first took effect | first: nothing took effect, so it is not recorded dirty and the next run retries it; second: recorded dirty, the error names statement 2 and its line, and the next run exits 4 | nothing unreported
#[test]
fn no_transaction_failure_is_dirty_only_when_something_took_effect() {
    let db = PgDb::new("notxfail");
    let src = Migrations::new(&[
        ("1_t.sql", "CREATE TABLE t (x int);"),
        (
            "2_idx.sql",
            "-- no-transaction\nINSERT INTO missing VALUES (1);\nCREATE INDEX CONCURRENTLY t_x ON t (x);",
        ),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "statement 1 of 2 (line 2)");
    assert_stderr_has(&out, "nothing of it took effect");
    pg_exec(&db.url, "CREATE TABLE missing (id int)");
    let out = run(&mut migrate(&db, &src));
    assert_eq!(code(&out), 0, "the retry must run it: {}", stderr(&out));

    let db = PgDb::new("notxfail2");
    let src = Migrations::new(&[
        ("1_t.sql", "CREATE TABLE t (x int);"),
        (
            "2_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\nINSERT INTO missing VALUES (1);",
        ),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "statement 2 of 2 (line 3), after statement 1 took effect",
    );
    assert_stderr_has(&out, "recorded as dirty");
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert_stderr_has(&out, "migration 2 is dirty");
}

/// A trigger that makes the marker's commit take a second, so that a test can stop the
/// migrator with the commit in flight.
fn slow_marker_commit(db: &PgDb) {
    pg_exec(
        &db.url,
        "CREATE TABLE schemagate_marker (
            id BIGSERIAL PRIMARY KEY, version TEXT NOT NULL, digest TEXT,
            status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
            action TEXT NOT NULL DEFAULT 'migrate', started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied INTEGER NOT NULL DEFAULT 0,
            runner TEXT NOT NULL, tool_version TEXT NOT NULL, detail TEXT);
         CREATE FUNCTION slow_marker() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.status = 'succeeded' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_marker AFTER INSERT ON schemagate_marker
           FOR EACH ROW EXECUTE FUNCTION slow_marker();",
    );
}

/// reliability: SIGTERM reaches `migrate` after its `succeeded` marker committed but before it saw the acknowledgement (the process was paused with the commit in flight) | the run reads from a side connection that the marker committed: the run is done, exit 0, no `failed` marker after the `succeeded` one, so waiters pass | nothing
#[test]
fn sigterm_after_the_marker_committed_is_not_a_failure() {
    for round in 0..3 {
        let db = PgDb::new("termdone");
        slow_marker_commit(&db);
        let src = simple_source();
        let child = spawn(&mut migrate(&db, &src));
        until("the marker insert to run", Duration::from_secs(30), || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%INSERT INTO schemagate_marker%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            ) == 1
        });
        signal(child.id(), "STOP");
        until("the marker to commit", Duration::from_secs(30), || {
            pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker") == 1
        });
        sigterm(child.id());
        signal(child.id(), "CONT");
        let out = finish(child);
        assert_eq!(code(&out), 0, "round {round}: {}", stderr(&out));
        assert_eq!(
            pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
            vec!["succeeded".to_owned()]
        );
        let out = run(schemagate(&db.url).args(["wait", "--expect", "2", "--once"]));
        assert_exit(&out, 0);
    }
}

/// reliability: SIGTERM while a migration's transaction commits (the process paused while the server ran and committed it) | the run cancels what is still running, reads which migrations committed, and records the `failed` marker with the true `applied` count and a detail saying the in-flight migration committed | nothing: the marker and `_sqlx_migrations` agree
#[test]
fn sigterm_while_a_migration_commits_records_the_true_count() {
    for round in 0..3 {
        let db = PgDb::new("termcommit");
        let src = Migrations::new(&[
            ("1_a.sql", "CREATE TABLE a (id int);"),
            (
                "2_slowish.sql",
                "CREATE TABLE b (id int); SELECT pg_sleep(1);",
            ),
            ("3_c.sql", "CREATE TABLE c (id int); SELECT pg_sleep(30);"),
        ]);
        let child = spawn(&mut migrate(&db, &src));
        until("migration 2 to run", Duration::from_secs(30), || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(1)%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            ) == 1
        });
        signal(child.id(), "STOP");
        until("migration 2 to commit", Duration::from_secs(30), || {
            pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations") == 2
        });
        sigterm(child.id());
        signal(child.id(), "CONT");
        let out = finish(child);
        assert_eq!(code(&out), 143, "round {round}: {}", stderr(&out));
        let applied = pg_i64(
            &db.url,
            "SELECT count(*) FROM _sqlx_migrations WHERE success",
        );
        assert_eq!(applied, 2, "3 must have been rolled back");
        assert_eq!(
            pg_i64(&db.url, "SELECT applied::int8 FROM schemagate_marker"),
            applied,
            "round {round}: the marker's count disagrees with _sqlx_migrations: {}",
            stderr(&out)
        );
        assert_stderr_lacks(&out, "rolling back");
    }
}

// ----- waiting for the lock: LISTEN on the lock connection (issue 16) -----

/// Migration 2 holds the lock until the test sets `ctl.go` (it re-reads the row every 20 ms).
fn held_until_go() -> Migrations {
    Migrations::new(&[
        ("1_first.sql", "CREATE TABLE first (id int);"),
        (
            "2_gate.sql",
            "CREATE TABLE second (id int);
             DO $$ BEGIN
               WHILE NOT (SELECT go FROM ctl) LOOP PERFORM pg_sleep(0.02); END LOOP;
             END $$;",
        ),
    ])
}

/// reliability: a run waits for the lock while another applies the same migrations | it LISTENs on the connection it holds and leaves when the holder's marker commits, without proving the advisory lock (no second connection) or ever taking it; one marker | nothing
#[test]
fn a_waiter_for_the_lock_leaves_at_the_holders_marker_without_probing() {
    let db = PgDb::new("waitlock_listen");
    pg_exec(
        &db.url,
        "CREATE TABLE ctl (go bool); INSERT INTO ctl VALUES (false);",
    );
    let src = held_until_go();
    let mut holder = spawn(migrate(&db, &src).args(["--lock-wait", "60s"]));
    wait_for_stderr_line(&mut holder, "applying 2 (gate)", Duration::from_secs(30));
    let mut waiter = spawn(migrate(&db, &src).args(["--lock-wait", "60s"]));
    let seen = wait_for_stderr_line(
        &mut waiter,
        "leaving when its marker is committed",
        Duration::from_secs(30),
    );
    assert!(seen.contains("held by pid"), "{seen}");
    pg_exec(&db.url, "UPDATE ctl SET go = true");
    let holder = finish(holder);
    assert_exit(&holder, 0);
    let status = waiter.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // Its stderr was consumed by wait_for_stderr_line up to the line; what it logged first
    // is in `seen`: it never chose (probed) a lock, since the lock was held throughout.
    assert!(!seen.contains("lock: advisory"), "{seen}");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: the session holding the lock ends without a marker while a run LISTENs for it | the waiter's fallback poll sees the lock free, proves it, takes it over and applies everything; exit 0 | nothing
#[test]
fn a_listening_waiter_takes_over_when_the_holder_ends_without_a_marker() {
    let db = PgDb::new("waitlock_takeover");
    let src = simple_source();
    let key = lock_key(&db);
    block_on(async {
        use sqlx::Connection;
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        let mut child = spawn(migrate(&db, &src).args(["--lock-wait", "60s"]));
        wait_for_stderr_line(
            &mut child,
            "leaving when its marker is committed",
            Duration::from_secs(30),
        );
        // The holder goes away (a crash): no marker, no NOTIFY.
        holder.close().await.unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    });
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker WHERE status = 'succeeded'"
        ),
        1
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: a run proving the advisory lock is slow (simulated: another session holds the lock's probe key) | a run that would only wait for the marker waits for that proof instead of opening a second connection of its own, and says so; once the key is free, its poll proves the lock itself, takes it and applies | nothing
#[test]
fn a_run_waits_for_another_runs_proof_instead_of_proving_too() {
    let db = PgDb::new("probe_gate");
    let src = simple_source();
    // The probe key `migrate` proves on (`lock/probe.rs`): the lock key with fixed bits
    // flipped.
    let probe_key = lock_key(&db) ^ 0x5052_4f42_455f_6b65;
    block_on(async {
        use sqlx::Connection;
        let mut prover = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(probe_key)
            .execute(&mut prover)
            .await
            .unwrap();
        let mut child = spawn(migrate(&db, &src).args(["--lock-wait", "60s"]));
        let seen = wait_for_stderr_line(
            &mut child,
            "waiting for the migration lock",
            Duration::from_secs(30),
        );
        assert!(seen.contains("another run is proving"), "{seen}");
        assert!(!seen.contains("lock: advisory"), "{seen}");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations'",
        )
        .fetch_one(&mut prover)
        .await
        .unwrap();
        assert_eq!(
            tables, 0,
            "nothing is taken while the proof is another run's"
        );
        prover.close().await.unwrap();
        let out = finish(child);
        assert_exit(&out, 0);
        assert_stderr_has(&out, "lock: advisory");
    });
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

// ----- the build-time digest (issue 16) -----

fn digest(src: &Migrations) -> std::process::Output {
    let mut c = std::process::Command::new(bin());
    c.args(["digest", "--source", src.path()]);
    let out = run(&mut c);
    assert_exit(&out, 0);
    out
}

#[test]
fn digest_file_takes_the_fast_path_and_prints_the_sources_digest() {
    let db = PgDb::new("digest_fast");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    let out = digest(&src);
    let printed = String::from_utf8_lossy(&out.stdout);
    let recorded = pg_strings(&db.url, "SELECT digest FROM schemagate_marker");
    assert!(
        printed.starts_with(&recorded[0]),
        "{printed} vs {recorded:?}"
    );
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "already applied");
    assert_stderr_lacks(&out, "ignoring");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
}

/// reliability: a migration is changed after `schemagate digest` wrote the digest file (another size, or the same size later) | the digest file is ignored with a warning, every file is read and hashed, and the change is drift: exit 4 | nothing
#[test]
fn a_migration_changed_after_the_digest_is_still_noticed() {
    let db = PgDb::new("digest_changed");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    digest(&src);
    // Another size.
    src.write("1_a.sql", "CREATE TABLE a (id bigint);");
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert_stderr_has(&out, "ignoring");
    assert_stderr_has(&out, "has been modified");
    // The same size, written after the digest file.
    src.write("1_a.sql", "CREATE TABLE a (id int);");
    digest(&src);
    src.write("1_a.sql", "CREATE TABLE z (id int);");
    let written = std::fs::metadata(src.dir.join(".schemagate-digest"))
        .and_then(|m| m.modified())
        .unwrap();
    set_modified(&src.dir.join("1_a.sql"), written + Duration::from_secs(1));
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 4);
    assert_stderr_has(&out, "modified after");
}

/// reliability: the digest value in the digest file is edited by hand | the fast path misses (markers only record digests computed from the files), the run reads every migration, warns that the file disagrees with them, and finds the version applied: exit 0, no new marker | nothing
#[test]
fn a_tampered_digest_file_is_noticed() {
    let db = PgDb::new("digest_tampered");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    digest(&src);
    let file = src.dir.join(".schemagate-digest");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().find(|l| l.starts_with("digest ")).unwrap();
    let forged = format!("digest {}", "0".repeat(64));
    std::fs::write(&file, text.replace(line, &forged)).unwrap();
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "but the migrations hash to");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
}

/// reliability: a migration is added after `schemagate digest` wrote the digest file, so the newest marker matches what the file claims | the marker's answer counts only once the directory check has passed, and it fails: the file is ignored with a warning, and the new migration is applied | nothing
#[test]
fn the_marker_answer_counts_only_after_the_digest_check() {
    let db = PgDb::new("digest_added");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    digest(&src);
    // The digest file still names versions 1 and 2, whose marker is there.
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "3_c.sql is not listed");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 3);
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT version FROM schemagate_marker ORDER BY id DESC LIMIT 1"
        ),
        ["3"]
    );
    // Renamed: the same migration under another description.
    digest(&src);
    std::fs::rename(src.dir.join("3_c.sql"), src.dir.join("3_see.sql")).unwrap();
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "3_see.sql is not listed");
    // Removed: the database is then ahead of the source, which is no drift.
    digest(&src);
    std::fs::remove_file(src.dir.join("3_see.sql")).unwrap();
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "it lists 3 migration file(s), the directory holds 2");
}

fn set_modified(path: &std::path::Path, time: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time))
        .unwrap();
}

/// Make `name` in `src` invalid UTF-8 of the same size, with the modification time it had:
/// an edit the digest file's check (names, sizes, times) cannot see.
fn corrupt_unseen(src: &Migrations, name: &str) {
    let path = src.dir.join(name);
    let before = std::fs::metadata(&path).unwrap();
    std::fs::write(&path, vec![0xff; before.len() as usize]).unwrap();
    set_modified(&path, before.modified().unwrap());
}

/// reliability: a run trusts the digest file, takes the lease, and only then reads the migrations (a waiting run never reads them), where one turns out unreadable (an edit the file's check cannot see) | exit 2 naming the file; the lease is let go at once and nothing is recorded | nothing: the next run takes the lease without waiting for its TTL
#[test]
fn a_bad_source_found_under_the_lease_lets_the_lease_go() {
    let db = PgDb::new("digest_bad_under_lock");
    let src = simple_source();
    digest(&src);
    corrupt_unseen(&src, "2_b.sql");
    let out = run(migrate(&db, &src).args(["--lock", "lease"]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "2_b.sql is not valid UTF-8");
    let exists = |table: &str| {
        pg_i64(
            &db.url,
            &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"),
        ) == 1
    };
    if exists("schemagate_marker_lease") {
        assert_eq!(
            pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker_lease"),
            0,
            "the lease is still held"
        );
    }
    if exists("schemagate_marker") {
        assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 0);
    }
    src.write("2_b.sql", "CREATE TABLE b (id int);");
    let out = run(migrate(&db, &src).args(["--lock", "lease", "--lock-wait", "5s"]));
    assert_exit(&out, 0);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

fn wait_source(db: &PgDb, src: &Migrations) -> std::process::Output {
    run(schemagate(&db.url).args(["wait", "--once", "--source", src.path()]))
}

/// `wait --source` takes the digest file's word for the migrations, as `migrate` does: a
/// same-size edit that keeps an older modification time is what its check cannot see (the
/// documented limit of a check by names, sizes and times), so with the file it is ready,
/// and without it the edit is noticed.
#[test]
fn wait_source_with_a_digest_file_reads_no_migration() {
    let db = PgDb::new("digest_wait");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    digest(&src);
    let out = wait_source(&db, &src);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "marker succeeded");
    let before = std::fs::metadata(src.dir.join("1_a.sql"))
        .and_then(|m| m.modified())
        .unwrap();
    src.write("1_a.sql", "CREATE TABLE z (id int);");
    set_modified(&src.dir.join("1_a.sql"), before);
    let out = wait_source(&db, &src);
    assert_exit(&out, 0);
    std::fs::remove_file(src.dir.join(".schemagate-digest")).unwrap();
    let out = wait_source(&db, &src);
    assert_exit(&out, 1);
}

/// reliability: `wait --source` where a migration changed after `schemagate digest` wrote the digest file | the digest file is ignored with a warning, every migration is read, and the changed one keeps the wait from passing | nothing
#[test]
fn wait_source_notices_a_migration_changed_after_the_digest() {
    let db = PgDb::new("digest_wait_changed");
    let src = simple_source();
    assert_exit(&run(&mut migrate(&db, &src)), 0);
    digest(&src);
    src.write("1_a.sql", "CREATE TABLE a (id bigint);");
    let out = wait_source(&db, &src);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "ignoring");
    // A digest file whose value was edited: the marker disagrees, the migrations are read,
    // and they are all applied unchanged.
    src.write("1_a.sql", "CREATE TABLE a (id int);");
    digest(&src);
    let file = src.dir.join(".schemagate-digest");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().find(|l| l.starts_with("digest ")).unwrap();
    std::fs::write(
        &file,
        text.replace(line, &format!("digest {}", "0".repeat(64))),
    )
    .unwrap();
    let out = wait_source(&db, &src);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "but the migrations hash to");
}

#[test]
fn digest_of_a_missing_directory_is_2_naming_it() {
    let out = run(std::process::Command::new(bin()).args([
        "digest",
        "--source",
        "/nonexistent/schemagate-migrations",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "/nonexistent/schemagate-migrations");
}

/// A failing migration's message carries what PostgreSQL said beyond the first line: the
/// SQLSTATE and the DETAIL (here, which key is duplicated) reach stderr and the marker
/// once each, instead of being dropped when the error was turned into text.
#[test]
fn migration_failure_keeps_the_servers_sqlstate_and_detail() {
    let db = PgDb::new("errdetail");
    let src = Migrations::new(&[
        (
            "1_t.sql",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (1);",
        ),
        ("2_unique.sql", "CREATE UNIQUE INDEX t_id ON t (id);"),
    ]);
    let out = run(&mut migrate(&db, &src));
    assert_exit(&out, 1);
    let err = stderr(&out);
    for part in ["SQLSTATE 23505", "DETAIL: Key (id)=(1) is duplicated."] {
        assert_eq!(err.matches(part).count(), 1, "{part:?} once in: {err}");
    }
    let detail = pg_strings(
        &db.url,
        "SELECT detail FROM schemagate_marker WHERE status = 'failed'",
    );
    assert!(
        detail[0].contains("DETAIL: Key (id)=(1) is duplicated."),
        "{detail:?}"
    );
}

/// A database error that retrying cannot cure keeps its class through the cause it now
/// carries: an unknown database is exit 2 at once, and the message names the database and
/// the SQLSTATE once.
#[test]
fn unknown_database_is_a_configuration_error_with_its_cause() {
    let db = PgDb::new("errclass");
    let url = db.url.rsplit_once('/').unwrap().0.to_owned() + "/no_such_database_here";
    let out = run(schemagate(&url).args(["status"]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert_eq!(err.matches("SQLSTATE 3D000").count(), 1, "{err}");
    assert!(err.contains("no_such_database_here"), "{err}");
}

/// `--ddl-lock-timeout` and `--statement-timeout` bound `-- no-transaction` migrations too:
/// they used to be set only inside the transaction of a transactional migration, so a
/// no-transaction one ran with no limit while the flags claimed one. The migration sees the
/// limits, a statement that exceeds one is cancelled (and retried, then fails, as a
/// transactional one would), and the session is left as it was.
#[test]
fn timeouts_apply_to_no_transaction_migrations() {
    let db = PgDb::new("notxlimits");
    let src = Migrations::new(&[(
        "1_seen.sql",
        "-- no-transaction\nCREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lt, \
         current_setting('statement_timeout') AS st;",
    )]);
    let out = run(migrate(&db, &src).args([
        "--ddl-lock-timeout",
        "1500ms",
        "--statement-timeout",
        "20s",
    ]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT lt || ' ' || st FROM seen"),
        vec!["1500ms 20s".to_owned()]
    );

    src.write("2_slow.sql", "-- no-transaction\nSELECT pg_sleep(30);");
    let out = run(migrate(&db, &src).args(["--statement-timeout", "300ms", "--ddl-retries", "1"]));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("statement timeout") && err.contains("after 2 tries"),
        "{err}"
    );
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"),
        1,
        "the timed-out migration is not recorded (nothing of it took effect)"
    );
}

/// `--ddl-lock-timeout` is not applied to `CREATE INDEX CONCURRENTLY` in a
/// `-- no-transaction` migration: it waits for older transactions by design, and cut short
/// it would leave an invalid index and the migration dirty (a manual repair) instead of a
/// wait. The statements around it keep the limit.
#[test]
fn concurrent_index_build_is_not_cut_short_by_the_lock_timeout() {
    let db = PgDb::new("notxcic");
    pg_exec(
        &db.url,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    );
    let src = Migrations::new(&[(
        "1_index.sql",
        "-- no-transaction\nCREATE TABLE before_it AS SELECT current_setting('lock_timeout') AS lt;\n\
         CREATE INDEX CONCURRENTLY t_id ON t (id);\n\
         CREATE TABLE after_it AS SELECT current_setting('lock_timeout') AS lt;",
    )]);
    // An older transaction the index build must wait for.
    let url = db.url.clone();
    let holder = std::thread::spawn(move || {
        pg_exec(
            &url,
            "BEGIN; SELECT count(*) FROM t; SELECT pg_sleep(3); COMMIT;",
        )
    });
    until(
        "the older transaction to run",
        Duration::from_secs(30),
        || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE '%pg_sleep(3)%' AND state = 'active' AND pid <> pg_backend_pid()",
            ) == 1
        },
    );
    let out = run(migrate(&db, &src).args(["--ddl-lock-timeout", "200ms"]));
    holder.join().unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT (SELECT lt FROM before_it) || ' ' || (SELECT lt FROM after_it)"
        ),
        vec!["200ms 200ms".to_owned()]
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_index WHERE indexrelid = 't_id'::regclass AND indisvalid"
        ),
        1
    );
}

/// A version read from a file with its line end (`v1\r`, `v1\n` from a CRLF checkout or
/// `$(cat HEAD)` in a script) names the same version for `migrate --version` and `wait
/// --expect`: both trim it, so the waiter passes.
#[test]
fn version_with_a_line_end_matches_on_both_sides() {
    let db = PgDb::new("vtrim");
    let out =
        run(schemagate(&db.url).args(["migrate", "--version", "0003_head\r\n", "--", "true"]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT version FROM schemagate_marker"),
        vec!["0003_head".to_owned()]
    );
    for expect in ["0003_head\r", " 0003_head", "0003_head"] {
        let out = run(schemagate(&db.url).args(["wait", "--expect", expect, "--once"]));
        assert_eq!(code(&out), 0, "{expect:?}: {}", stderr(&out));
    }
}

/// `schemagate ARGS` run under GNU time: its output, and its peak RSS in bytes.
fn peak_rss(url: &str, args: &[&str]) -> (std::process::Output, u64) {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(time.exists(), "GNU time is needed: apt-get install time");
    let report = Migrations::new(&[]);
    let rss = report.dir.join("rss");
    let mut cmd = std::process::Command::new(time);
    for (k, _) in std::env::vars() {
        if k.starts_with("SCHEMAGATE_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SCHEMAGATE_DATABASE_URL", url)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(bin())
        .args(args);
    let out = run(&mut cmd);
    let kib: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (out, kib * 1024)
}

/// reliability (PostgreSQL, SQLite): a 64 MiB migration, applied by `migrate` and read by `wait --source` (no digest file), `status --source` and `digest` | each stays within 2× the file + 16 MiB of memory (measured peak RSS): the source is hashed as it streams, a migration is read when it is applied and run in pieces of whole statements | nothing
#[test]
fn a_large_migration_is_applied_within_twice_its_size_of_memory() {
    let db = PgDb::new("largefile");
    let src = Migrations::new(&[("1_big.sql", "CREATE TABLE big (id serial, v text);\n")]);
    let row = "x".repeat(256 * 1024 - 64);
    let fill: String = (0..256)
        .map(|i| format!("INSERT INTO big (v) VALUES ('{i}{row}');\n"))
        .collect();
    src.write("2_fill.sql", &fill);
    let size = std::fs::metadata(src.dir.join("2_fill.sql")).unwrap().len();
    assert!(size > 63 << 20, "{size}");
    let bound = 2 * size + (16 << 20);
    for args in [
        vec!["migrate", "--source", src.path()],
        vec!["wait", "--once", "--source", src.path()],
        vec!["status", "--source", src.path()],
        vec!["digest", "--source", src.path()],
    ] {
        let (out, peak) = peak_rss(&db.url, &args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(
            peak <= bound,
            "{args:?}: peak RSS {} MiB for a {} MiB migration: more than 2× + 16 MiB",
            peak >> 20,
            size >> 20
        );
    }
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM big WHERE length(v) > 1000"),
        256
    );
    // SQLite runs a query's statements through sqlx, which keeps each one prepared, a copy
    // of its text each, until the query ends: pieces there too.
    let lite = TestDb::new(Kind::Lite, "largefile");
    std::fs::remove_file(src.dir.join(".schemagate-digest")).unwrap();
    let (out, peak) = peak_rss(lite.url(), &["migrate", "--source", src.path()]);
    assert_eq!(code(&out), 0, "SQLite: {}", stderr(&out));
    assert!(
        peak <= bound,
        "SQLite migrate: peak RSS {} MiB for a {} MiB migration: more than 2× + 16 MiB",
        peak >> 20,
        size >> 20
    );
    assert_eq!(
        lite.i64("SELECT count(*) FROM big WHERE length(v) > 1000"),
        256
    );
}
