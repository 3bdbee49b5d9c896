//! The fault suite: each fault users were burned by, reproduced on this machine, and what
//! schemagate does about it. Server faults run on a throwaway cluster the test controls.
//!
//! Every test carries a `/// reliability:` line (fault | what schemagate did | what was
//! lost); RELIABILITY.md is generated from those lines (tests/reliability_doc.rs), so the
//! table only ever states what a test asserts.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn slow_source() -> Migrations {
    Migrations::new(&[
        ("1_first.sql", "CREATE TABLE first (id int);"),
        (
            "2_slow.sql",
            "CREATE TABLE second (id int);\nSELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) = 1 THEN 60 ELSE 0 END);",
        ),
    ])
}

fn wait_until_slow(url: &str) {
    until("the slow migration to run", Duration::from_secs(30), || {
        pg_i64(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE '%pg_sleep(CASE%' AND state = 'active' AND pid <> pg_backend_pid()",
        ) == 1
    });
}

/// reliability: PostgreSQL restarts while `wait` polls and while `wait --listen` listens | both keep waiting through the outage (connection errors count as "not yet") and exit 0 once the marker lands | nothing
#[test]
fn server_restart_while_waiting() {
    let server = start_cluster(&[]);
    let db = PgDb::on(&server.url("postgres"), "restartwait");
    let mut poll = spawn(schemagate(&db.url).args([
        "wait",
        "--expect",
        "2",
        "--interval",
        "100ms",
        "--timeout",
        "90s",
    ]));
    let mut listen = spawn(schemagate(&db.url).args([
        "wait",
        "--expect",
        "2",
        "--interval",
        "300ms",
        "--timeout",
        "90s",
        "--listen",
    ]));
    wait_for_stderr_line(
        &mut poll,
        "waiting for schema version 2",
        Duration::from_secs(30),
    );
    wait_for_stderr_line(
        &mut listen,
        "waiting for schema version 2",
        Duration::from_secs(30),
    );
    server.stop();
    server.start();
    assert!(
        poll.try_wait().unwrap().is_none() && listen.try_wait().unwrap().is_none(),
        "a waiter gave up during the restart"
    );
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(poll.wait().unwrap().code(), Some(0));
    assert_eq!(listen.wait().unwrap().code(), Some(0));
}

/// reliability: PostgreSQL stops in the middle of a migration | `migrate` exits 1 naming the migration and the lost connection; the migration's transaction is rolled back; a re-run after the restart completes | nothing: the half-done migration left no trace
#[test]
fn server_stop_during_migration() {
    let server = start_cluster(&[]);
    let db = PgDb::on(&server.url("postgres"), "stopmid");
    pg_exec(
        &db.url,
        "CREATE TABLE ctl (slow int); INSERT INTO ctl VALUES (1);",
    );
    let src = slow_source();
    let child = spawn(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    wait_until_slow(&db.url);
    server.stop();
    let out = finish(child);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("migration 2 (slow) failed"),
        "{}",
        stderr(&out)
    );
    server.start();
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'second'"
        ),
        0,
        "half-applied"
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 1);
    pg_exec(&db.url, "UPDATE ctl SET slow = 0");
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

fn logged_source(n: usize) -> Migrations {
    let src = Migrations::new(&[(
        "0001_log.sql",
        "CREATE TABLE apply_log (version int, pid int);",
    )]);
    for i in 1..=n {
        src.write(
            &format!("{:04}_step.sql", i + 1),
            &format!(
                "CREATE TABLE t{i} (id int); INSERT INTO apply_log VALUES ({i}, pg_backend_pid());"
            ),
        );
    }
    src
}

/// reliability: 20 racing `migrate --lock lease` through PgBouncer in transaction pooling mode, plus 5 waiters | one run applies every migration once (lease row with expiry and heartbeat); the others see the marker and exit 0; waiters pass | nothing
#[test]
fn lease_lock_through_pgbouncer_transaction_pooling() {
    let server = start_cluster(&[]);
    let db = PgDb::on(&server.url("postgres"), "lease");
    let bouncer = PgBouncer::start(&server);
    let url = bouncer.url(db.url.rsplit('/').next().unwrap());
    let src = logged_source(10);
    let migrators: Vec<_> = (0..20)
        .map(|_| {
            spawn(schemagate(&url).args([
                "migrate",
                "--source",
                src.path(),
                "--lock",
                "lease",
                "--lock-wait",
                "60s",
            ]))
        })
        .collect();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            spawn(schemagate(&url).args([
                "wait",
                "--source",
                src.path(),
                "--interval",
                "100ms",
                "--timeout",
                "60s",
            ]))
        })
        .collect();
    let outs: Vec<_> = migrators.into_iter().map(finish).collect();
    for out in &outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
    }
    for w in waiters {
        let out = finish(w);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert_eq!(
        outs.iter()
            .filter(|o| stderr(o).contains("INFO applying "))
            .count(),
        1
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 10);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT version) FROM apply_log"),
        10
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker"), 1);
    // Released at the end: nobody holds it.
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker_lease"),
        0
    );
}

/// reliability: the default advisory lock used through PgBouncer in transaction pooling mode | refused with exit 2 and a message pointing to `--lock lease` (the next statement ran in another server session, so a session lock would protect nothing) | nothing: refused before any migration ran
#[test]
fn advisory_lock_behind_a_transaction_pooler_is_refused() {
    let server = start_cluster(&[]);
    let db = PgDb::on(&server.url("postgres"), "pooled");
    let bouncer = PgBouncer::start(&server);
    let url = bouncer.url(db.url.rsplit('/').next().unwrap());
    // Warm the pool: several server connections at once, then handed out round-robin.
    block_on(async {
        use sqlx::Connection;
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(sqlx::PgConnection::connect(&url).await.unwrap());
        }
        let mut tasks = Vec::new();
        for mut c in conns {
            tasks.push(tokio::spawn(async move {
                sqlx::raw_sql("SELECT pg_sleep(0.3)")
                    .execute(&mut c)
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let src = logged_source(2);
    let out = run(schemagate(&url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("transaction pooler") && stderr(&out).contains("--lock lease"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't1'"
        ),
        0
    );
}

/// reliability: connection exhaustion: `max_connections = 30`, 20 of its 27 non-superuser slots held by other clients, 100 `wait` processes, then one `migrate` | "too many clients" is retried as transient everywhere; the migrator gets a slot and completes; every waiter exits 0 | nothing
#[test]
fn connection_exhaustion() {
    let server = start_cluster(&["max_connections = 30"]);
    let admin = server.url("postgres");
    pg_exec(
        &admin,
        &format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"),
    );
    pg_exec(&admin, "CREATE DATABASE exhaust OWNER app");
    let url = format!(
        "postgres://app:{PASSWORD}@127.0.0.1:{}/exhaust",
        server.port
    );
    let release = hold_connections(&url, 20);
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            spawn(schemagate(&url).args([
                "wait",
                "--expect",
                "1",
                "--interval",
                "500ms",
                "--timeout",
                "120s",
            ]))
        })
        .collect();
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let migrate = spawn(schemagate(&url).args(["migrate", "--source", src.path()]));
    let out = finish(migrate);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut saw_too_many = stderr(&out).contains("too many clients");
    for w in waiters {
        let out = finish(w);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        saw_too_many |= stderr(&out).contains("too many clients");
    }
    assert!(saw_too_many, "the test did not exhaust the connections");
    drop(release);
}

/// reliability: a migration blocked by another session's table lock, with `--ddl-lock-timeout 200ms --ddl-retries 2` | each attempt gives up after 200 ms instead of queueing every query on the table behind it, rolls back, logs, retries with backoff; still blocked after the retries: exit 1 and a `failed` marker | nothing: each attempt rolled back whole
#[test]
fn ddl_lock_timeout_retries_then_fails() {
    let db = PgDb::new("ddllock");
    pg_exec(&db.url, "CREATE TABLE busy (id int)");
    let src = Migrations::new(&[("1_alter.sql", "ALTER TABLE busy ADD COLUMN note text;")]);
    block_on(async {
        use sqlx::Connection;
        let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE;")
            .execute(&mut blocker)
            .await
            .unwrap();
        let out = tokio::process::Command::new(bin())
            .env("SCHEMAGATE_DATABASE_URL", &db.url)
            .args([
                "migrate",
                "--source",
                src.path(),
                "--ddl-lock-timeout",
                "200ms",
                "--ddl-retries",
                "2",
            ])
            .output()
            .await
            .unwrap();
        assert_no_secret(&out);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("retry 1/2") && err.contains("retry 2/2"),
            "{err}"
        );
        assert!(err.contains("lock timeout"), "{err}");
        assert!(err.contains("failed after 3 tries"), "{err}");
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut blocker)
            .await
            .unwrap();
    });
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker"),
        vec!["failed".to_string()]
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy'"
        ),
        1
    );
}

/// reliability: a migration blocked by a table lock that is released while it retries | the retry after the release applies it; exit 0 | nothing
#[test]
fn ddl_lock_timeout_retry_succeeds_once_the_lock_is_gone() {
    let db = PgDb::new("ddlretry");
    pg_exec(&db.url, "CREATE TABLE busy (id int)");
    let src = Migrations::new(&[("1_alter.sql", "ALTER TABLE busy ADD COLUMN note text;")]);
    block_on(async {
        use sqlx::Connection;
        let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE;")
            .execute(&mut blocker)
            .await
            .unwrap();
        let mut child = spawn(schemagate(&db.url).args([
            "migrate",
            "--source",
            src.path(),
            "--ddl-lock-timeout",
            "200ms",
            "--ddl-retries",
            "5",
        ]));
        // The first attempt has timed out and rolled back: now let go of the table.
        let seen = wait_for_stderr_line(&mut child, "retry 1/5", Duration::from_secs(30));
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut blocker)
            .await
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{seen}");
    });
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy'"
        ),
        2
    );
}

/// reliability: a migration that runs longer than `--statement-timeout 200ms` | cancelled, rolled back, retried per `--ddl-retries`, then exit 1 with a `failed` marker naming the timeout | nothing: rolled back
#[test]
fn statement_timeout_fails_the_run() {
    let db = PgDb::new("stmttimeout");
    let src = Migrations::new(&[("1_slow.sql", "CREATE TABLE s (id int); SELECT pg_sleep(5);")]);
    let t = Instant::now();
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--statement-timeout",
        "200ms",
        "--ddl-retries",
        "1",
    ]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("statement timeout"),
        "{}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the timeout did not cut the statement short"
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 's'"
        ),
        0
    );
}

/// reliability: a `-- no-transaction` `CREATE UNIQUE INDEX CONCURRENTLY` that fails on duplicate rows | exit 1 saying it ran without a transaction; recorded dirty so the next `migrate` exits 4 naming the version instead of silently running it again; `status` lists the invalid index it left | nothing applied is lost; the invalid index is reported for the operator to drop
#[test]
fn failed_no_transaction_index_is_recorded_and_reported() {
    let db = PgDb::new("cicfail");
    let src = Migrations::new(&[
        (
            "1_t.sql",
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (1);",
        ),
        (
            "2_uniq.sql",
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY t_x_key ON t (x);",
        ),
    ]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ran without a transaction"),
        "{}",
        stderr(&out)
    );
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("migration 2 is dirty"),
        "{}",
        stderr(&out)
    );
    let out = run(schemagate(&db.url).args(["status", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["migrations"]["dirty"], 2);
    assert_eq!(
        v["migrations"]["invalid_indexes"],
        serde_json::json!(["public.t_x_key"])
    );
    // The repair: fix the data, drop the invalid index, run it again.
    pg_exec(
        &db.url,
        "DELETE FROM t WHERE ctid <> (SELECT min(ctid) FROM t); DROP INDEX t_x_key; DELETE FROM _sqlx_migrations WHERE version = 2;",
    );
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// reliability: `--lock lease`: a migration that outlives the lease TTL while another migrator waits | the heartbeat renews the lease on its own connection every third of the TTL, so the waiting run never takes it over; both exit 0 and the migration runs once | nothing
#[test]
fn lease_heartbeat_outlives_the_ttl() {
    let db = PgDb::new("leasebeat");
    let src = Migrations::new(&[
        ("1_log.sql", "CREATE TABLE apply_log (pid int);"),
        (
            "2_slow.sql",
            "INSERT INTO apply_log VALUES (pg_backend_pid()); SELECT pg_sleep(5);",
        ),
    ]);
    let args = [
        "migrate",
        "--source",
        src.path(),
        "--lock",
        "lease",
        "--lease-ttl",
        "3s",
    ];
    let mut first = spawn(schemagate(&db.url).args(args));
    wait_for_stderr_line(&mut first, "applying 2 (slow)", Duration::from_secs(30));
    let second = spawn(schemagate(&db.url).args(args));
    assert_eq!(first.wait().unwrap().code(), Some(0));
    let out = finish(second);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains("took over"), "{}", stderr(&out));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 1);
}

/// reliability: `--lock lease`: the lease holder is killed with SIGKILL | its lease is not renewed; the next run waits until it expires (`--lease-ttl`), takes it over with a warning naming the previous owner, and completes | nothing: the killed run's transaction rolled back
#[test]
fn expired_lease_of_a_killed_run_is_taken_over() {
    let db = PgDb::new("leasetake");
    pg_exec(
        &db.url,
        "CREATE TABLE ctl (slow int); INSERT INTO ctl VALUES (1);",
    );
    let src = slow_source();
    let mut first = spawn(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--lock",
        "lease",
        "--lease-ttl",
        "3s",
    ]));
    wait_until_slow(&db.url);
    first.kill().unwrap();
    first.wait().unwrap();
    pg_exec(&db.url, "UPDATE ctl SET slow = 0");
    let t = Instant::now();
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--lock",
        "lease",
        "--lease-ttl",
        "3s",
    ]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("took over an expired lease from"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: `--lock lease` on MySQL or SQLite | refused with exit 2: they have their own lock | nothing
#[test]
fn lease_is_refused_off_postgres() {
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let out = run(schemagate("sqlite:///tmp/never-created.db").args([
        "migrate",
        "--source",
        src.path(),
        "--lock",
        "lease",
    ]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--lock lease is for PostgreSQL"),
        "{}",
        stderr(&out)
    );
}
