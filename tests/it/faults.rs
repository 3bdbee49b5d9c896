//! The fault suite: each fault users were burned by, reproduced on this machine, and what
//! schemagate does about it. Server faults run on a throwaway cluster the test controls.
//!
//! Every test carries a `/// reliability:` line (fault | what schemagate did | what was
//! lost); RELIABILITY.md is generated from those lines (tests/reliability_doc.rs), so the
//! table only ever states what a test asserts.

use std::time::{Duration, Instant};

use crate::harness::*;

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
    assert_exit(&out, 0);
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
    assert_exit(&out, 1);
    assert_stderr_has(&out, "migration 2 (slow) failed");
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
    assert_exit(&out, 0);
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
        assert_exit(&out, 0);
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

/// 20 racing `migrate` (with `extra` flags) through `url`, on `logged_source(10)`;
/// returns their outputs.
fn race_through(url: &str, src: &Migrations, extra: &[&str]) -> Vec<std::process::Output> {
    let migrators: Vec<_> = (0..20)
        .map(|_| {
            spawn(
                schemagate(url)
                    .args(["migrate", "--source", src.path(), "--lock-wait", "90s"])
                    .args(extra),
            )
        })
        .collect();
    migrators.into_iter().map(finish).collect()
}

/// Every racer that took the lock path logged `lock: <want>`, and at least one did (the
/// others found the marker first).
fn assert_lock_chosen(outs: &[std::process::Output], want: &str) {
    let logged: Vec<String> = outs
        .iter()
        .map(stderr)
        .filter(|e| e.contains("INFO lock: "))
        .collect();
    assert!(
        !logged.is_empty(),
        "no run took the lock: {}",
        stderr(&outs[0])
    );
    for e in &logged {
        assert!(e.contains(&format!("INFO lock: {want}")), "{e}");
    }
}

/// Every racer exited 0, each migration ran once, and exactly one marker (`succeeded`)
/// was written.
fn assert_clean_race(db: &PgDb, outs: &[std::process::Output]) {
    for out in outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
    }
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 10);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT version) FROM apply_log"),
        10
    );
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker"),
        vec!["succeeded".to_owned()]
    );
}

fn bounced_db(server: &PgServer, bouncer: &PgBouncer, name: &str) -> (PgDb, String) {
    let db = PgDb::on(&server.url("postgres"), name);
    let url = bouncer.url(db.url.rsplit('/').next().unwrap());
    (db, url)
}

/// reliability: 20 racing `migrate` with default flags through PgBouncer in transaction pooling mode with `default_pool_size = 1`, where every statement of every client lands on one server session | `--lock auto` sees that the backend pid announced at startup (the pooler's) is not the server session's, logs why, and uses the lease; one run applies every migration once, the others see the marker | nothing: no failed marker, no double run
#[test]
fn default_lock_races_behind_a_transaction_pooler_with_one_server_connection() {
    default_lock_races_behind(("transaction", 1));
}

/// 20 racers with default flags through PgBouncer (`pool_mode`, `default_pool_size`):
/// a clean race on the lease.
fn default_lock_races_behind((pool_mode, pool_size): (&str, u32)) {
    let server = start_cluster(&[]);
    let bouncer = PgBouncer::start_with(&server, pool_mode, pool_size);
    let (db, url) = bounced_db(&server, &bouncer, pool_mode);
    let src = logged_source(10);
    let outs = race_through(&url, &src, &[]);
    assert_clean_race(&db, &outs);
    assert_lock_chosen(&outs, "lease (a connection pooler or proxy");
    // The pooler keeps its server sessions: none may be left holding an advisory key (the
    // probe key is taken while preparing only on a session proven direct).
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ),
        0,
        "a pooled server session kept an advisory lock"
    );
}

/// reliability: 20 racing `migrate` with default flags through PgBouncer in transaction pooling mode with `default_pool_size = 4` | the startup pid gives the pooler away whatever the traffic (a probe that watched statements move between server sessions was fooled here under load) and the lease is used; one run applies every migration once | nothing: no failed marker, no double run
#[test]
fn default_lock_races_behind_a_transaction_pooler_with_four_server_connections() {
    default_lock_races_behind(("transaction", 4));
}

/// reliability: `--lock advisory` given explicitly through PgBouncer in transaction pooling mode | refused with exit 2 before anything is applied; the message names the pooler that was detected and `--lock lease` | nothing: refused before any migration ran
#[test]
fn explicit_advisory_lock_behind_a_transaction_pooler_is_refused() {
    let server = start_cluster(&[]);
    for pool in [1, 4] {
        let bouncer = PgBouncer::start_with(&server, "transaction", pool);
        let (db, url) = bounced_db(&server, &bouncer, "pooled");
        let src = logged_source(2);
        let outs = race_through(&url, &src, &["--lock", "advisory"]);
        for out in &outs {
            assert_eq!(code(out), 2, "{}", stderr(out));
            assert!(
                stderr(out).contains("connection pooler or proxy")
                    && stderr(out).contains("--lock lease"),
                "{}",
                stderr(out)
            );
        }
        assert_eq!(
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('apply_log', 't1')"
            ),
            0
        );
        drop(bouncer);
    }
}

/// reliability: 20 racing `migrate` with default flags through PgBouncer in session pooling mode | the pooler announces its own backend key at startup, so `--lock auto` cannot prove a server session of its own (a session pooler cannot be told from a transaction pooler with certainty) and uses the lease; one run applies every migration once | nothing
#[test]
fn default_lock_uses_the_lease_behind_a_session_pooler() {
    default_lock_races_behind(("session", 60));
}

/// reliability: 20 racing `migrate` with default flags, each connected directly to PostgreSQL | the backend pid announced at startup is the session's, a second connection is refused the probe key and `pg_locks` shows it held: the advisory lock is proven and used; one run applies every migration once | nothing
#[test]
fn default_lock_uses_the_advisory_lock_on_a_direct_connection() {
    let db = PgDb::new("direct");
    let src = logged_source(10);
    let outs = race_through(&db.url, &src, &[]);
    assert_clean_race(&db, &outs);
    assert_lock_chosen(&outs, "advisory (a direct server session");
}

/// reliability: an engine whose `pg_try_advisory_lock` is a stub that always returns true (simulated: a `public` function shadowing it, `search_path = public, pg_catalog`, as CockroachDB behaves) | the probe's second connection is granted the key, so `--lock auto` uses the lease: 20 racers, each migration once; `--lock advisory` is refused with exit 2 saying the lock does not exclude (not "pooler") | nothing
#[test]
fn default_lock_races_where_advisory_locks_are_a_stub() {
    let db = PgDb::new("stub");
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    pg_exec(
        &db.url,
        &format!(
            "CREATE FUNCTION public.pg_try_advisory_lock(bigint) RETURNS boolean \
               LANGUAGE sql AS 'SELECT true'; \
             ALTER DATABASE {name} SET search_path = public, pg_catalog;"
        ),
    );
    let src = logged_source(2);
    let refused =
        run(schemagate(&db.url).args(["migrate", "--source", src.path(), "--lock", "advisory"]));
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("does not exclude") && !stderr(&refused).contains("pooler"),
        "{}",
        stderr(&refused)
    );
    let src = logged_source(10);
    let outs = race_through(&db.url, &src, &[]);
    assert_clean_race(&db, &outs);
    assert_lock_chosen(&outs, "lease");
}

/// reliability: an engine without LISTEN/NOTIFY (simulated: `version()` names CockroachDB and `pg_notify` raises, `search_path = public, pg_catalog`) | every marker is written without NOTIFY: the `succeeded` one, a `failed` one from the lock connection, and the `failed` one a SIGTERM has written from a side connection | nothing
#[test]
fn markers_are_written_without_notify_where_the_engine_has_none() {
    let db = PgDb::new("nonotify");
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    pg_exec(
        &db.url,
        &format!(
            "CREATE FUNCTION public.version() RETURNS text LANGUAGE sql \
               AS $$SELECT 'CockroachDB CCL v23.1.11 (x86_64-pc-linux-gnu)'$$; \
             CREATE FUNCTION public.pg_notify(text, text) RETURNS void LANGUAGE plpgsql \
               AS $$BEGIN RAISE EXCEPTION 'this engine has no NOTIFY'; END$$; \
             ALTER DATABASE {name} SET search_path = public, pg_catalog; \
             CREATE TABLE ctl (slow int); INSERT INTO ctl VALUES (1);"
        ),
    );
    let src = Migrations::new(&[("1_first.sql", "CREATE TABLE first (id int);")]);
    let migrate = || {
        let mut c = schemagate(&db.url);
        c.args(["migrate", "--source", src.path()]);
        c
    };
    let newest = || {
        pg_strings(
            &db.url,
            "SELECT version || ' ' || status FROM schemagate_marker ORDER BY id DESC LIMIT 1",
        )
    };
    let out = run(&mut migrate());
    assert_exit(&out, 0);
    assert_stderr_has(&out, "INFO lock: lease");
    assert_eq!(newest(), ["1 succeeded"]);
    // A failed migration: the `failed` marker, from the lock connection.
    src.write("2_bad.sql", "SELECT 1/0;");
    let out = run(&mut migrate());
    assert_exit(&out, 1);
    assert_eq!(newest(), ["2 failed"]);
    std::fs::remove_file(src.dir.join("2_bad.sql")).unwrap();
    // SIGTERM mid-migration: the `failed` marker, from a side connection.
    src.write(
        "2_slow.sql",
        "SELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) = 1 THEN 60 ELSE 0 END);",
    );
    let mut child = spawn(&mut migrate());
    wait_for_stderr_line(&mut child, "applying 2 (slow)", Duration::from_secs(30));
    wait_until_slow(&db.url);
    sigterm(child.id());
    let out = finish(child);
    assert_exit(&out, 143);
    assert_stderr_lacks(&out, "could not record the interruption");
    assert_eq!(newest(), ["2 failed"]);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker \
             WHERE detail LIKE 'interrupted by SIGTERM while applying 2 (slow)%'"
        ),
        1
    );
}

#[test]
fn status_shows_the_lock_auto_picks_and_why() {
    let server = start_cluster(&[]);
    let bouncer = PgBouncer::start_with(&server, "transaction", 1);
    let (db, url) = bounced_db(&server, &bouncer, "statuslock");
    let direct = run(schemagate(&db.url).args(["status", "--json"]));
    assert_exit(&direct, 0);
    let v: serde_json::Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(v["lock"]["kind"], "advisory", "{v}");
    assert!(
        v["lock"]["reason"]
            .as_str()
            .unwrap()
            .contains("a direct server session"),
        "{v}"
    );
    let pooled = run(schemagate(&url).args(["status", "--json"]));
    assert_exit(&pooled, 0);
    let v: serde_json::Value = serde_json::from_slice(&pooled.stdout).unwrap();
    assert_eq!(v["lock"]["kind"], "lease", "{v}");
    assert!(
        v["lock"]["reason"]
            .as_str()
            .unwrap()
            .contains("connection pooler or proxy"),
        "{v}"
    );
    let text = run(schemagate(&url).args(["status"]));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("kind      lease (a connection pooler"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

/// reliability: `wait --listen` through PgBouncer in transaction pooling mode, where a NOTIFY reaches a pooled server session and not the waiter | the waiter detects the pooler (the same probe as `--lock auto`), warns, and polls instead: it exits 0 once the marker lands | nothing
#[test]
fn wait_listen_behind_a_transaction_pooler_polls() {
    let server = start_cluster(&[]);
    let bouncer = PgBouncer::start_with(&server, "transaction", 2);
    let (db, url) = bounced_db(&server, &bouncer, "listen");
    let src = logged_source(2);
    let mut waiter = spawn(schemagate(&url).args([
        "wait",
        "--source",
        src.path(),
        "--listen",
        "--interval",
        "200ms",
        "--timeout",
        "60s",
    ]));
    let seen = wait_for_stderr_line(
        &mut waiter,
        "polling every --interval instead",
        Duration::from_secs(30),
    );
    assert!(seen.contains("connection pooler or proxy"), "{seen}");
    let out = run(schemagate(&url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 2);
}

/// reliability: `--lock lease --lease-ttl 3s`: the holder is paused with SIGSTOP (a frozen node, a long GC pause) past its TTL, another run takes the lease over and completes, then the first resumes (SIGCONT) | the resumed run's next migration starts with the lease's fence, which finds the lease no longer ours: it stops before running anything, writes no marker, exits 1; the newest marker is the new holder's `succeeded`, so `wait --expect` exits 0 | nothing: each migration applied once
#[test]
fn paused_lease_holder_is_fenced_after_a_takeover() {
    let db = PgDb::new("fence");
    let src = Migrations::new(&[
        ("1_log.sql", "CREATE TABLE apply_log (version int);"),
        ("2_a.sql", "INSERT INTO apply_log VALUES (1);"),
        (
            "3_slow.sql",
            "INSERT INTO apply_log VALUES (2); SELECT pg_sleep(0.5);",
        ),
        ("4_c.sql", "INSERT INTO apply_log VALUES (3);"),
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
    wait_for_stderr_line(&mut first, "applying 3 (slow)", Duration::from_secs(30));
    signal(first.id(), "STOP");
    let second = run(schemagate(&db.url).args(args));
    assert_exit(&second, 0);
    assert_stderr_has(&second, "took over an expired lease");
    signal(first.id(), "CONT");
    assert_eq!(first.wait().unwrap().code(), Some(1));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 3);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT version) FROM apply_log"),
        3
    );
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
        vec!["succeeded".to_owned()]
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "4", "--once"]));
    assert_exit(&out, 0);
}

/// `migrate --lock lease --lease-ttl 3s` on `src`.
fn lease_args(src: &Migrations) -> [&str; 7] {
    [
        "migrate",
        "--source",
        src.path(),
        "--lock",
        "lease",
        "--lease-ttl",
        "3s",
    ]
}

/// A lease holder stopped (SIGSTOP) while its `2_slow.sql` (a `pg_sleep(6)`) runs on the
/// server: its heartbeat stops, its transaction goes on.
fn lease_holder_paused_in_slow_migration(db: &PgDb, src: &Migrations) -> std::process::Child {
    let mut first = spawn(schemagate(&db.url).args(lease_args(src)));
    wait_for_stderr_line(&mut first, "applying 2 (slow)", Duration::from_secs(30));
    until("the slow migration to run", Duration::from_secs(30), || {
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(6)%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
        ) == 1
    });
    signal(first.id(), "STOP");
    first
}

/// reliability: `--lock lease --lease-ttl 3s`: the holder is paused with SIGSTOP while its migration transaction runs on the server, longer than the TTL; another run takes the lease over and runs the same migration | the new holder's migration waits on the paused run's uncommitted row; the paused run's transaction ends with the fence, which finds the lease taken and rolls it back; the new holder completes; the resumed run exits 1 without a marker | nothing: the migration's effects are the new holder's alone
#[test]
fn lease_taken_over_during_an_in_flight_migration_rolls_it_back() {
    let db = PgDb::new("fenceflight");
    let src = Migrations::new(&[
        (
            "1_log.sql",
            "CREATE TABLE apply_log (version int, pid int);",
        ),
        (
            "2_slow.sql",
            "INSERT INTO apply_log VALUES (1, pg_backend_pid()); SELECT pg_sleep(6);",
        ),
        (
            "3_c.sql",
            "INSERT INTO apply_log VALUES (2, pg_backend_pid());",
        ),
    ]);
    let mut first = lease_holder_paused_in_slow_migration(&db, &src);
    let second = run(schemagate(&db.url).args(lease_args(&src)));
    assert_exit(&second, 0);
    signal(first.id(), "CONT");
    assert_eq!(first.wait().unwrap().code(), Some(1));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 2);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(DISTINCT pid) FROM apply_log"),
        1,
        "both migrations must be the new holder's"
    );
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
        vec!["succeeded".to_owned()]
    );
}

/// The advisory lock the `-- no-transaction` fence tests hold while a migration waits on it.
const GATE: i64 = 730_421;

/// A `-- no-transaction` file: statement 1 counts in `counter.a`, statement 2 waits at the
/// test's gate (`GATE`), statement 3 counts in `counter.n`.
fn gated_no_transaction() -> String {
    format!(
        "-- no-transaction\nUPDATE counter SET a = a + 1;\n\
         SELECT pg_advisory_xact_lock_shared({GATE});\nUPDATE counter SET n = n + 1;\n"
    )
}

fn counter_table(db: &PgDb) {
    pg_exec(
        &db.url,
        "CREATE TABLE counter (a int8, n int8); INSERT INTO counter VALUES (0, 0);",
    );
}

/// Run `args` twice against `db` while `gate` is held: the first run is paused (SIGSTOP)
/// once `waiting()` shows it blocked at the gate; the second, once it took the expired
/// lease over, blocks there too; then the first resumes (SIGCONT) and the gate opens.
fn deposed_at_a_gate(
    db: &PgDb,
    args: &[&str],
    gate: std::sync::mpsc::Sender<()>,
    waiting: impl Fn() -> i64,
) -> (std::process::Output, std::process::Output) {
    let first = spawn(schemagate(&db.url).args(args));
    until(
        "the first run to wait at the gate",
        Duration::from_secs(60),
        || waiting() == 1,
    );
    signal(first.id(), "STOP");
    let second = spawn(schemagate(&db.url).args(args));
    until(
        "the second run to take the lease over and wait at the gate",
        Duration::from_secs(60),
        || waiting() == 2,
    );
    signal(first.id(), "CONT");
    drop(gate);
    (finish(first), finish(second))
}

/// reliability: `--lock lease --lease-ttl 3s`: the holder is paused (SIGSTOP) while statement 2 of a `-- no-transaction` migration waits on a lock; another run takes the lease over and runs the file; the first resumes (SIGCONT) | every statement runs fenced (check, statement and the lease's renewal in one implicit transaction): the resumed run's statement 2 rolls back and it stops there, records nothing and exits 1 saying statement 1 took effect; the new holder runs the file and records it once; one `succeeded` marker, `wait` exits 0 | statement 1, run by both (as the deposed run says); statement 3 once
#[test]
fn deposed_lease_holder_runs_no_further_statement_of_a_no_transaction_migration() {
    let db = PgDb::new("notxfence");
    counter_table(&db);
    let src = Migrations::new(&[("1_count.sql", &gated_no_transaction())]);
    let gate = hold_advisory_lock(&db.url, GATE);
    let (first, second) = deposed_at_a_gate(&db, &lease_args(&src), gate, || {
        waiting_on_advisory(&db.url, GATE)
    });
    assert_exit(&second, 0);
    assert_stderr_has(&second, "took over an expired lease");
    let err = stderr(&first);
    assert_eq!(code(&first), 1, "{err}");
    assert!(
        err.contains(
            "stopped at statement 2 of 3 (line 3), which did not take effect, after statement \
             1 took effect"
        ),
        "{err}"
    );
    assert!(!err.contains("nothing of it took effect"), "{err}");
    assert_eq!(
        pg_i64(&db.url, "SELECT n FROM counter"),
        1,
        "statement 3 ran after the lease was lost"
    );
    assert_eq!(pg_i64(&db.url, "SELECT a FROM counter"), 2);
    assert_eq!(
        pg_strings(&db.url, "SELECT success::text FROM _sqlx_migrations"),
        vec!["true".to_owned()]
    );
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
        vec!["succeeded".to_owned()]
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "1", "--once"]));
    assert_exit(&out, 0);
}

/// reliability: `--lock lease --lease-ttl 3s`: as above, for a `-- no-transaction` down migration under `rollback` | the resumed run stops at its next statement, does not delete the row and exits 1 saying what took effect; the new holder undoes the migration once; `wait --expect 0` exits 0 | statement 1, run by both (as the deposed run says); statement 3 once
#[test]
fn deposed_lease_holder_runs_no_further_statement_of_a_no_transaction_rollback() {
    let db = PgDb::new("notxdownfence");
    counter_table(&db);
    let src = Migrations::new(&[
        ("1_count.up.sql", "SELECT 1;"),
        ("1_count.down.sql", &gated_no_transaction()),
    ]);
    let out = run(schemagate(&db.url).args(lease_args(&src)));
    assert_exit(&out, 0);
    let args = [
        "rollback",
        "--source",
        src.path(),
        "--to",
        "0",
        "--lock",
        "lease",
        "--lease-ttl",
        "3s",
    ];
    let gate = hold_advisory_lock(&db.url, GATE);
    let (first, second) =
        deposed_at_a_gate(&db, &args, gate, || waiting_on_advisory(&db.url, GATE));
    assert_exit(&second, 0);
    let err = stderr(&first);
    assert_eq!(code(&first), 1, "{err}");
    assert!(
        err.contains("stopped at statement 2 of 3 (line 3), which did not take effect"),
        "{err}"
    );
    assert_eq!(
        pg_i64(&db.url, "SELECT n FROM counter"),
        1,
        "statement 3 ran after the lease was lost"
    );
    assert_eq!(pg_i64(&db.url, "SELECT a FROM counter"), 2);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 0);
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT action || ' ' || status FROM schemagate_marker ORDER BY id DESC LIMIT 1"
        ),
        vec!["rollback succeeded".to_owned()]
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "0", "--once"]));
    assert_exit(&out, 0);
}

/// reliability: `--lock lease --lease-ttl 3s`: the holder is paused (SIGSTOP) while the last statement of a `-- no-transaction` migration, a `VACUUM` (which cannot run in a transaction, so cannot be fenced), waits on a table lock; another run takes the lease over; the first resumes | the paused statement, already sent, completes (nothing can recall it); the bookkeeping row is fenced, so the deposed run does not record the migration and exits 1 saying its statement took effect unrecorded; the new holder records it once; one `succeeded` marker, `wait` exits 0 | nothing
#[test]
fn deposed_lease_holder_does_not_record_a_no_transaction_migration() {
    let db = PgDb::new("notxbook");
    pg_exec(&db.url, "CREATE TABLE t (x int)");
    let src = Migrations::new(&[("1_vacuum.sql", "-- no-transaction\nVACUUM t;")]);
    let gate = hold_session(&db.url, "BEGIN; LOCK TABLE t IN SHARE MODE;");
    let (first, second) = deposed_at_a_gate(&db, &lease_args(&src), gate, || {
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND NOT granted",
        )
    });
    assert_exit(&second, 0);
    let err = stderr(&first);
    assert_eq!(code(&first), 1, "{err}");
    assert!(
        err.contains(
            "its statement took effect, but the migration lease was taken over by another run \
             before it was recorded"
        ),
        "{err}"
    );
    assert!(!err.contains("nothing of it took effect"), "{err}");
    assert_eq!(
        pg_strings(&db.url, "SELECT success::text FROM _sqlx_migrations"),
        vec!["true".to_owned()]
    );
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
        vec!["succeeded".to_owned()]
    );
    let out = run(schemagate(&db.url).args(["wait", "--expect", "1", "--once"]));
    assert_exit(&out, 0);
}

/// reliability: connection exhaustion: `max_connections = 30`, 20 of its 27 non-superuser slots held by other clients, 100 `wait` processes, then one `migrate`, every connection over a slow link (so each, refused or not, holds a slot for the round trips of its authentication, as on a loaded machine) | "too many clients" is retried as transient everywhere, by the migrator every 50-250 ms, by waiters after 1 s doubling to 16 s, and waiters that find fewer than 3 slots free poll less often: the migrator gets a slot and completes; every waiter exits 0 | nothing
#[test]
fn connection_exhaustion() {
    let server = start_cluster(&["max_connections = 30"]);
    let admin = server.url("postgres");
    pg_exec(
        &admin,
        &format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"),
    );
    pg_exec(&admin, "CREATE DATABASE exhaust OWNER app");
    let direct = format!(
        "postgres://app:{PASSWORD}@127.0.0.1:{}/exhaust",
        server.port
    );
    let release = hold_connections(&direct, 20);
    // Every schemagate connection crosses a slow link: each holds a slot for the round
    // trips of its authentication, refused or not, as on a loaded machine.
    let link = SlowLink::start(server.port, Duration::from_millis(40));
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{}/exhaust", link.port);
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
    // 100 waiters compete with the migrator for 7 slots. The waiters yield (their
    // refusals back off exponentially, and they poll less often while few slots are
    // free), the migrator retries briskly; each refused attempt still holds a slot while
    // it authenticates, which on a loaded machine takes seconds, so the deadline is kept
    // generous (it was what ran out, at load 7, before the waiters yielded).
    let migrate = spawn(schemagate(&url).args([
        "migrate",
        "--source",
        src.path(),
        "--connect-timeout",
        "110s",
    ]));
    let out = finish(migrate);
    assert_exit(&out, 0);
    let mut saw_too_many = stderr(&out).contains("too many clients");
    for w in waiters {
        let out = finish(w);
        assert_exit(&out, 0);
        saw_too_many |= stderr(&out).contains("too many clients");
    }
    assert!(saw_too_many, "the test did not exhaust the connections");
    drop(release);
    drop(link);
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
        assert_exit(&out, 1);
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
    assert_exit(&out, 1);
    assert_stderr_has(&out, "statement timeout");
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
    assert_exit(&out, 1);
    assert_stderr_has(&out, "ran without a transaction");
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 4);
    assert_stderr_has(&out, "migration 2 is dirty");
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
    assert_exit(&out, 0);
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
    assert_exit(&out, 0);
    assert_stderr_lacks(&out, "took over");
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
    assert_exit(&out, 0);
    assert_stderr_has(&out, "took over an expired lease from");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: `--lock lease`: a waiting run tries the lease at the very moment its live holder finishes and releases it (the try held, by a trigger on the lease table, between its snapshot and its insert until the release commits) | the waiting run takes the free lease and says nothing of taking over an expired one (as it does, naming the owner, for a holder killed past its TTL) | nothing
#[test]
fn a_released_lease_is_not_reported_as_taken_over() {
    let db = PgDb::new("leasefree");
    let gate_key = GATE + 1;
    let src = Migrations::new(&[(
        "1_gate.sql",
        &format!("SELECT pg_advisory_xact_lock_shared({gate_key});"),
    )]);
    let args = ["migrate", "--source", src.path(), "--lock", "lease"];
    let gate = hold_advisory_lock(&db.url, gate_key);
    let first = spawn(schemagate(&db.url).args(args));
    until(
        "the holder to wait at the gate",
        Duration::from_secs(60),
        || waiting_on_advisory(&db.url, gate_key) == 1,
    );
    // The next try to insert into the lease table (the waiting run's) pauses, once, until
    // the holder's row is gone (or five seconds passed).
    pg_exec(
        &db.url,
        "CREATE SEQUENCE once;
         CREATE FUNCTION hold_try() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE started timestamptz := clock_timestamp();
         BEGIN
           IF nextval('once') = 1 THEN
             WHILE EXISTS (SELECT 1 FROM schemagate_marker_lease WHERE token <> NEW.token)
               AND clock_timestamp() < started + interval '5 seconds' LOOP
               PERFORM pg_sleep(0.02);
             END LOOP;
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER hold_try BEFORE INSERT ON schemagate_marker_lease
           FOR EACH ROW EXECUTE FUNCTION hold_try();",
    );
    let second = spawn(schemagate(&db.url).args(args));
    until(
        "the waiting run's try to pause in the trigger",
        Duration::from_secs(60),
        || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                 AND query LIKE '%INSERT INTO schemagate_marker_lease%'",
            ) == 1
        },
    );
    drop(gate);
    let first = finish(first);
    assert_exit(&first, 0);
    let second = finish(second);
    assert_exit(&second, 0);
    assert_stderr_lacks(&second, "took over");
}

/// reliability (SQLite): `--lock lease` on MySQL or SQLite | refused with exit 2: they have their own lock | nothing
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
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--lock lease is for PostgreSQL");
}

/// reliability: a `--lock lease` holder paused (SIGSTOP) in a long migration past its TTL while a run connected directly takes the advisory lock | the advisory run takes over the expired lease row (replacing its token) before migrating, so the paused holder's fence fails at its COMMIT and its migration rolls back | nothing: each migration once, one `succeeded` marker
#[test]
fn advisory_run_fences_an_expired_lease_holder() {
    let db = PgDb::new("mixedfence");
    let src = Migrations::new(&[
        (
            "1_log.sql",
            "CREATE TABLE apply_log (version int, pid int);",
        ),
        (
            "2_slow.sql",
            "INSERT INTO apply_log VALUES (2, pg_backend_pid()); SELECT pg_sleep(6);",
        ),
    ]);
    let first = lease_holder_paused_in_slow_migration(&db, &src);
    until("the lease to expire", Duration::from_secs(30), || {
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker_lease WHERE expires_at < clock_timestamp()",
        ) == 1
    });
    let second = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&second, 0);
    assert_stderr_has(&second, "lock: advisory");
    signal(first.id(), "CONT");
    let out = finish(first);
    assert_exit(&out, 1);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 1);
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker ORDER BY id"),
        vec!["succeeded".to_owned()]
    );
}

/// reliability: a `-- no-transaction` migration whose second statement hits a statement timeout set on the database, after its first took effect | recorded dirty and never retried (its first statement would run twice); exit 1 | nothing run twice
#[test]
fn no_transaction_migration_is_not_retried_after_part_of_it_ran() {
    let db = PgDb::new("notxretry");
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let src = Migrations::new(&[
        ("1_log.sql", "CREATE TABLE apply_log (n int);"),
        (
            "2_two.sql",
            "-- no-transaction\nINSERT INTO apply_log VALUES (1);\nSELECT pg_sleep(2);",
        ),
    ]);
    let out = run(schemagate(&db.url)
        .args(["migrate", "--source", src.path()])
        .args(["--ddl-retries", "3"]));
    assert_eq!(code(&out), 0, "the first migration alone: {}", stderr(&out));
    pg_exec(
        &db.url,
        "DELETE FROM _sqlx_migrations WHERE version = 2; DELETE FROM apply_log",
    );
    pg_exec(
        &db.url,
        &format!("ALTER DATABASE {name} SET statement_timeout = '300ms'"),
    );
    let out =
        run(schemagate(&db.url).args(["migrate", "--source", src.path(), "--ddl-retries", "3"]));
    assert_exit(&out, 1);
    assert_stderr_lacks(&out, "retry 1/3");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM apply_log"), 1);
}

/// reliability: `rollback` whose `-- no-transaction` down migration has two `DROP INDEX CONCURRENTLY` | run statement by statement, as the up migrations are, so it undoes | nothing
#[test]
fn no_transaction_down_migration_with_several_statements_undoes() {
    let db = PgDb::new("notxdown");
    let src = Migrations::new(&[
        ("1_t.up.sql", "CREATE TABLE t (x int, y int);"),
        ("1_t.down.sql", "DROP TABLE t;"),
        (
            "2_idx.up.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\nCREATE INDEX CONCURRENTLY t_y ON t (y);",
        ),
        (
            "2_idx.down.sql",
            "-- no-transaction\nDROP INDEX CONCURRENTLY t_x;\nDROP INDEX CONCURRENTLY t_y;",
        ),
    ]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    let out = run(schemagate(&db.url).args(["rollback", "--to", "1", "--source", src.path()]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 't'"
        ),
        0
    );
}
