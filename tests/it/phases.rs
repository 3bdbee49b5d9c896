//! Expand and contract (`docs/src/phases.md`): the phase of each migration, `migrate
//! --phase`, the release registry (`heartbeat`, `wait --release`) and the contract gate, on
//! every backend, with real concurrent processes.

use std::process::{Child, Command, Output};
use std::time::Duration;

use crate::harness::*;

fn ok(out: &Output) {
    assert_eq!(code(out), 0, "{}", stderr(out));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sg(db: &TestDb, args: &[&str]) -> Command {
    let mut c = schemagate(db.url());
    c.args(args);
    c
}

/// Release N (1, 2), then release N+1: an expand (3), and a contract (4) in the
/// `contract/` folder.
fn two_releases() -> Migrations {
    let src = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_orders.sql", "CREATE TABLE orders (id int);"),
        ("3_email.sql", "ALTER TABLE users ADD COLUMN email text;"),
    ]);
    std::fs::create_dir_all(src.dir.join("contract")).unwrap();
    src.write(
        "contract/4_drop_legacy.sql",
        "ALTER TABLE users DROP COLUMN legacy;",
    );
    src
}

/// `status` names the phase of every pending migration: a `contract/` file, and a
/// `-- schemagate:phase contract` line after `-- no-transaction` (which must stay the
/// first bytes, as sqlx reads it).
fn status_shows_phases(kind: Kind) {
    let db = TestDb::new(kind, "phasestatus");
    let src = two_releases();
    src.write(
        "5_index.sql",
        "-- no-transaction\n-- schemagate:phase contract\nCREATE TABLE idx (id int);",
    );
    ok(&run(&mut sg(&db, &["stamp", "2", "--source", src.path()])));
    let out = run(&mut sg(&db, &["status", "--source", src.path()]));
    ok(&out);
    let text = stdout(&out);
    assert!(text.contains("3 email (expand)"), "{text}");
    assert!(text.contains("4 drop legacy (contract)"), "{text}");
    assert!(text.contains("5 index (contract)"), "{text}");
    let out = run(&mut sg(&db, &["status", "--source", src.path(), "--json"]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending = json["migrations"]["pending"].as_array().unwrap();
    let phases: Vec<(i64, &str, bool)> = pending
        .iter()
        .map(|p| {
            (
                p["version"].as_i64().unwrap(),
                p["phase"].as_str().unwrap(),
                p["no_transaction"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            (3, "expand", false),
            (4, "contract", false),
            (5, "contract", true)
        ]
    );
}

/// A misspelt phase is refused, naming the file: it must never make a contract an expand.
fn unknown_phase_is_a_usage_error(kind: Kind) {
    let db = TestDb::new(kind, "phasetypo");
    let src = Migrations::new(&[(
        "1_a.sql",
        "-- schemagate:phase contracts\nCREATE TABLE a (id int);",
    )]);
    let out = run(&mut sg(&db, &["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("1_a.sql"), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown phase"), "{}", stderr(&out));
}

/// A build-time digest file lists the source folder's own files: a `contract/` migration
/// added after it was written must still be read and applied, not hidden behind the claim.
fn digest_file_does_not_hide_a_contract_folder(kind: Kind) {
    let db = TestDb::new(kind, "phasedigest");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int, old text);")]);
    std::fs::create_dir_all(src.dir.join("contract")).unwrap();
    ok(&run(Command::new(bin()).args([
        "digest",
        "--source",
        src.path(),
    ])));
    ok(&run(&mut sg(&db, &["migrate", "--source", src.path()])));
    src.write("contract/2_drop_old.sql", "ALTER TABLE a DROP COLUMN old;");
    ok(&run(&mut sg(&db, &["migrate", "--source", src.path()])));
    assert_eq!(
        db.i64("SELECT count(*) FROM _sqlx_migrations WHERE version = 2"),
        1
    );
}

/// The live instances `status --json` shows: `(instance, release, expects)`.
fn live(db: &TestDb) -> Vec<(String, String, String)> {
    let out = run(&mut sg(db, &["status", "--json"]));
    ok(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (s("instance"), s("release"), s("expects"))
        })
        .collect()
}

/// A `heartbeat` sidecar for `instance` of `release`, returned once its row is written.
fn heartbeat(db: &TestDb, instance: &str, release: &str, expects: &str) -> Child {
    heartbeat_ttl(db, instance, release, expects, "3s")
}

fn heartbeat_ttl(db: &TestDb, instance: &str, release: &str, expects: &str, ttl: &str) -> Child {
    let mut child = spawn(&mut sg(
        db,
        &[
            "heartbeat",
            "--release",
            release,
            "--expect",
            expects,
            "--instance",
            instance,
            "--instance-ttl",
            ttl,
        ],
    ));
    wait_for_stderr_line(&mut child, "registered in", Duration::from_secs(30));
    child
}

fn migrate(db: &TestDb, src: &Migrations, extra: &[&str]) -> Output {
    let mut args = vec!["migrate", "--source", src.path()];
    args.extend_from_slice(extra);
    run(&mut sg(db, &args))
}

fn applied(db: &TestDb) -> Vec<String> {
    db.strings("SELECT CAST(version AS CHAR(20)) FROM _sqlx_migrations ORDER BY version")
        .into_iter()
        .map(|v| v.trim().to_owned())
        .collect()
}

/// Release N's database: migrations 1 and 2 applied.
fn at_release_n(db: &TestDb) {
    let n = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_orders.sql", "CREATE TABLE orders (id int);"),
    ]);
    ok(&migrate(db, &n, &[]));
}

/// reliability: `migrate --phase contract` while an instance of the older release is live | exits 75 naming the release and its instances, applies no contract, and lowers the barrier again; once the instance is gone (SIGTERM) the contract runs, and an instance of the older release can no longer start (exit 4) | nothing: the expand ran, the contract waited
fn contract_waits_for_the_older_release(kind: Kind) {
    let db = TestDb::new(kind, "gate");
    at_release_n(&db);
    let old = heartbeat(&db, "web-old-1", "v1", "2");
    let src = two_releases();
    // Expand: 3 only, safe beside the old release.
    let out = migrate(&db, &src, &["--phase", "expand"]);
    ok(&out);
    assert!(
        stderr(&out).contains("left for `migrate --phase contract`: 4 (contract)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(applied(&db), ["1", "2", "3"]);
    assert_eq!(
        db.strings(
            "SELECT version FROM schemagate_marker WHERE action = 'expand' AND status = 'succeeded'"
        ),
        ["3"]
    );
    // A new-release instance does not hold the contract back; the old one does.
    let new = heartbeat(&db, "web-new-1", "v2", "4");
    let out = migrate(&db, &src, &["--phase", "contract"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("contract migration 4 (drop legacy) cannot run yet")
            && err.contains("release v1 (built for 2) has 1 live instance(s): web-old-1")
            && !err.contains("web-new-1"),
        "{err}"
    );
    assert_eq!(applied(&db), ["1", "2", "3"]);
    assert_eq!(
        db.i64("SELECT count(*) FROM schemagate_marker_instances WHERE instance = '#contract'"),
        0,
        "a refused contract lowers the barrier again"
    );
    // Without --phase: the same gate.
    assert_eq!(code(&migrate(&db, &src, &[])), 75);

    sigterm(old.id());
    assert_eq!(code(&finish(old)), 143);
    ok(&migrate(&db, &src, &["--phase", "contract"]));
    assert_eq!(applied(&db), ["1", "2", "3", "4"]);
    // The older release can no longer start against the contracted schema.
    let out = run(&mut sg(
        &db,
        &[
            "heartbeat",
            "--release",
            "v1",
            "--expect",
            "2",
            "--instance",
            "web-old-2",
        ],
    ));
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("contract migration 4 has run or is running"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        live(&db),
        [("web-new-1".into(), "v2".into(), "4".into())],
        "the refused instance left no row"
    );
    sigterm(new.id());
    let _ = finish(new);
}

/// reliability: the only instance of the older release is killed with SIGKILL while `migrate --phase contract --wait-for-drain` waits | the contract runs once the instance's row expires (its TTL, on the server's clock), not before; with a deadline shorter than the TTL it exits 124 | nothing
fn contract_runs_once_a_killed_instance_expires(kind: Kind) {
    let db = TestDb::new(kind, "drain");
    at_release_n(&db);
    let mut old = heartbeat_ttl(&db, "web-old-1", "v1", "2", "8s");
    let src = two_releases();
    let out = migrate(
        &db,
        &src,
        &["--phase", "contract", "--wait-for-drain", "1s"],
    );
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--wait-for-drain"),
        "{}",
        stderr(&out)
    );
    assert_eq!(applied(&db), ["1", "2", "3"], "expands still ran");
    old.kill().unwrap();
    let _ = finish(old);
    let mut waiting = spawn(&mut sg(
        &db,
        &[
            "migrate",
            "--source",
            src.path(),
            "--phase",
            "contract",
            "--wait-for-drain",
            "2m",
        ],
    ));
    wait_for_stderr_line(
        &mut waiting,
        "waiting for the older release to drain",
        Duration::from_secs(30),
    );
    // While it waits, the dead instance's row is still live.
    assert_eq!(live(&db).len(), 1);
    let out = finish(waiting);
    ok(&out);
    assert!(live(&db).is_empty());
    assert_eq!(applied(&db), ["1", "2", "3", "4"]);
}

/// reliability: an app jumps from release N to N+2, whose source holds N+1's expand and contract before its own expand | `--phase expand` applies N+1's expand, then refuses (exit 75) naming the contract that blocks N+2's expand while N's instances live; once they are gone it applies the contract, then N+2's expand, and leaves N+2's contract | nothing: never a reorder, never a contract before the expand that needs it
fn skipping_a_release_never_reorders(kind: Kind) {
    let db = TestDb::new(kind, "skip");
    at_release_n(&db);
    let old = heartbeat(&db, "web-old-1", "v1", "2");
    let src = two_releases();
    src.write("5_phone.sql", "ALTER TABLE users ADD COLUMN legacy int;");
    src.write("contract/6_drop_orders.sql", "DROP TABLE orders;");
    let out = migrate(&db, &src, &["--phase", "expand"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("contract migration 4 (drop legacy) must run before expand migration 5"),
        "{}",
        stderr(&out)
    );
    assert_eq!(applied(&db), ["1", "2", "3"]);
    sigterm(old.id());
    let _ = finish(old);
    let out = migrate(&db, &src, &["--phase", "expand"]);
    ok(&out);
    assert_eq!(applied(&db), ["1", "2", "3", "4", "5"]);
    assert!(stderr(&out).contains("6 (contract)"), "{}", stderr(&out));
    ok(&migrate(&db, &src, &["--phase", "contract"]));
    assert_eq!(applied(&db), ["1", "2", "3", "4", "5", "6"]);
}

/// reliability: a `heartbeat` sidecar gets SIGTERM (its pod is stopping) | it removes its registry row before it exits | nothing: the contract gate stops counting it at once, not after the TTL
fn heartbeat_sigterm_removes_its_row(kind: Kind) {
    let db = TestDb::new(kind, "hbterm");
    let child = heartbeat(&db, "web-1", "v1", "2");
    assert_eq!(live(&db), [("web-1".into(), "v1".into(), "2".into())]);
    sigterm(child.id());
    let out = finish(child);
    assert_eq!(code(&out), 143, "{}", stderr(&out));
    assert!(live(&db).is_empty(), "the row is removed before exit");
    assert_eq!(
        db.i64("SELECT count(*) FROM schemagate_marker_instances"),
        0
    );
}

/// reliability: a `heartbeat` sidecar is killed with SIGKILL | its row stays until its TTL passes on the database server's clock, then no longer counts as live | nothing: a contract waits for the TTL, never less
fn heartbeat_sigkill_row_expires_after_the_ttl(kind: Kind) {
    let db = TestDb::new(kind, "hbkill");
    let mut child = heartbeat(&db, "web-1", "v1", "2");
    // Renewed: still live after more than a TTL.
    until("a renewal", Duration::from_secs(30), || {
        db.i64("SELECT count(*) FROM schemagate_marker_instances WHERE seen_ms > started_ms") == 1
    });
    child.kill().unwrap();
    let _ = finish(child);
    assert_eq!(live(&db).len(), 1, "live until its TTL passes");
    until("the row to expire", Duration::from_secs(30), || {
        live(&db).is_empty()
    });
    assert_eq!(
        db.i64("SELECT count(*) FROM schemagate_marker_instances"),
        1
    );
}

/// `wait --phase expand` lets the new release start once its expands are applied, while
/// its contract is still pending; a plain `wait` still waits for the contract.
fn wait_phase_expand_starts_the_new_release_before_its_contract(kind: Kind) {
    let db = TestDb::new(kind, "waitexpand");
    at_release_n(&db);
    let src = two_releases();
    let wait = |extra: &[&str]| {
        let mut args = vec!["wait", "--source", src.path(), "--once"];
        args.extend_from_slice(extra);
        run(&mut sg(&db, &args))
    };
    let out = wait(&["--phase", "expand"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expand migration 3 (email) is not applied yet"),
        "{}",
        stderr(&out)
    );
    ok(&migrate(&db, &src, &["--phase", "expand"]));
    ok(&wait(&["--phase", "expand"]));
    assert_eq!(code(&wait(&[])), 1, "the contract is still pending");
    ok(&migrate(&db, &src, &["--phase", "contract"]));
    ok(&wait(&[]));
    ok(&wait(&["--phase", "expand"]));
}

/// reliability: `wait --release v1 -- APP` runs the app as its child and keeps the instance registered; SIGTERM reaches the app, and the row is removed when it exits | the contract is refused (75) while the app runs and runs once it has stopped; an app that exits 7 makes wait exit 7; an older release's `wait --release` after the contract exits 4 and never starts its app | nothing
fn wait_release_keeps_the_app_registered(kind: Kind) {
    let db = TestDb::new(kind, "waitrelease");
    at_release_n(&db);
    let n = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_orders.sql", "CREATE TABLE orders (id int);"),
    ]);
    let release = |instance: &str, app: &[&str]| {
        let mut args = vec![
            "wait",
            "--source",
            n.path(),
            "--release",
            "v1",
            "--instance",
            instance,
            "--instance-ttl",
            "3s",
            "--",
        ];
        args.extend_from_slice(app);
        sg(&db, &args)
    };
    let mut app = spawn(&mut release("app-1", &["sleep", "300"]));
    wait_for_stderr_line(&mut app, "registered in", Duration::from_secs(30));
    assert_eq!(live(&db), [("app-1".into(), "v1".into(), "2".into())]);
    let src = two_releases();
    // Renewed past its TTL while the app runs: the contract still waits.
    until("a renewal", Duration::from_secs(30), || {
        db.i64("SELECT count(*) FROM schemagate_marker_instances WHERE seen_ms > started_ms") == 1
    });
    let out = migrate(&db, &src, &["--phase", "contract"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("app-1"), "{}", stderr(&out));
    sigterm(app.id());
    let out = finish(app);
    assert_eq!(code(&out), 143, "{}", stderr(&out));
    assert!(live(&db).is_empty(), "the row is removed when the app ends");

    let out = run(&mut release("app-2", &["sh", "-c", "exit 7"]));
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(live(&db).is_empty());

    ok(&migrate(&db, &src, &["--phase", "contract"]));
    let marker = n.dir.join("started");
    let out = run(&mut release("app-3", &["touch", marker.to_str().unwrap()]));
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(!marker.exists(), "an older release's app never starts");
}

/// `check`: a change that breaks the release still running is a finding in an expand
/// migration (naming where it belongs), and accepted in a contract migration, which the
/// gate runs only once that release is gone.
fn check_judges_breaking_changes_by_phase(kind: Kind) {
    let db = TestDb::new(kind, "checkphase");
    let src = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_drop.sql", "ALTER TABLE users DROP COLUMN legacy;"),
    ]);
    let check = || {
        run(&mut sg(
            &db,
            &["check", "--json", "--since", "1", "--source", src.path()],
        ))
    };
    let out = check();
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = &json["migrations"][0]["findings"][0];
    assert_eq!(finding["kind"], "drop-column", "{json}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("this is an expand migration"),
        "{json}"
    );
    src.write(
        "2_drop.sql",
        "-- schemagate:phase contract\nALTER TABLE users DROP COLUMN legacy;",
    );
    let out = check();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["migrations"][0]["findings"][0]["accepted"], true,
        "{json}"
    );
}

/// The registry's "now" on the server's clock, in milliseconds, as SQL.
fn server_now_ms(kind: Kind) -> &'static str {
    match kind {
        Kind::My => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        _ => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS bigint)",
    }
}

/// reliability (PostgreSQL, MariaDB): a network partition cuts an instance (`wait --release v1 -- APP`) off from the database, its link dropping every packet without closing | its supervisor stops the app before the instance's row expires; the contract is refused (75) while the row is live, even with the app already gone, and runs once the row expires | nothing: the gate never counts a live app as gone
fn a_partitioned_instance_stops_its_app_before_its_row_expires(kind: Kind) {
    let db = TestDb::new(kind, "partition");
    at_release_n(&db);
    let link = CutLink::start(url::Url::parse(db.url()).unwrap().port().unwrap());
    let n = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_orders.sql", "CREATE TABLE orders (id int);"),
    ]);
    let pid_file = n.dir.join("app.pid");
    let app_cmd = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let mut instance = spawn(schemagate(&link.url(db.url())).args([
        "wait",
        "--source",
        n.path(),
        "--release",
        "v1",
        "--instance",
        "app-1",
        "--instance-ttl",
        "12s",
        "--",
        "sh",
        "-c",
        &app_cmd,
    ]));
    wait_for_stderr_line(&mut instance, "registered in", Duration::from_secs(30));
    until("the app to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
    });
    let app: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Renewals pass through the link before it is cut.
    until("a renewal", Duration::from_secs(30), || {
        db.i64("SELECT count(*) FROM schemagate_marker_instances WHERE seen_ms > started_ms") == 1
    });
    link.cut();
    let src = two_releases();
    let out = migrate(&db, &src, &["--phase", "contract"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("app-1"), "{}", stderr(&out));
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let app_alive = || unsafe { libc::kill(app, 0) } == 0;
    until(
        "the supervisor to stop its app",
        Duration::from_secs(60),
        || !app_alive(),
    );
    // The app is gone: its row must still be live (the fence is 80% of the TTL).
    let live_rows = format!(
        "SELECT count(*) FROM schemagate_marker_instances WHERE instance = 'app-1' \
         AND expires_ms > {}",
        server_now_ms(kind)
    );
    assert_eq!(
        db.i64(&live_rows),
        1,
        "the row expired before the app stopped"
    );
    let out = migrate(&db, &src, &["--phase", "contract"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let out = finish(instance);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopping before the row expires"),
        "{}",
        stderr(&out)
    );
    ok(&migrate(
        &db,
        &src,
        &["--phase", "contract", "--wait-for-drain", "2m"],
    ));
    assert_eq!(db.i64(&live_rows), 0);
    assert_eq!(applied(&db), ["1", "2", "3", "4"]);
}

/// reliability (PostgreSQL, MariaDB): a network partition cuts a `heartbeat` sidecar off from the database, its link dropping every packet without closing | it exits 1 before its row expires, saying it stops so that no contract runs while it is alive | nothing
fn a_partitioned_heartbeat_exits_before_its_row_expires(kind: Kind) {
    let db = TestDb::new(kind, "partitionbeat");
    at_release_n(&db);
    let link = CutLink::start(url::Url::parse(db.url()).unwrap().port().unwrap());
    let mut beat = spawn(schemagate(&link.url(db.url())).args([
        "heartbeat",
        "--release",
        "v1",
        "--expect",
        "2",
        "--instance",
        "side-1",
        "--instance-ttl",
        "12s",
    ]));
    wait_for_stderr_line(&mut beat, "registered in", Duration::from_secs(30));
    until("a renewal", Duration::from_secs(30), || {
        db.i64("SELECT count(*) FROM schemagate_marker_instances WHERE seen_ms > started_ms") == 1
    });
    link.cut();
    let out = finish(beat);
    let live_rows = format!(
        "SELECT count(*) FROM schemagate_marker_instances WHERE instance = 'side-1' \
         AND expires_ms > {}",
        server_now_ms(kind)
    );
    assert_eq!(
        db.i64(&live_rows),
        1,
        "the row expired before the sidecar gave up"
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopping before the row expires"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_partitioned_heartbeat_exits_before_its_row_expires_postgres() {
    a_partitioned_heartbeat_exits_before_its_row_expires(Kind::Pg);
}

#[test]
fn a_partitioned_heartbeat_exits_before_its_row_expires_mariadb() {
    a_partitioned_heartbeat_exits_before_its_row_expires(Kind::My);
}

#[test]
fn a_partitioned_instance_stops_its_app_before_its_row_expires_postgres() {
    a_partitioned_instance_stops_its_app_before_its_row_expires(Kind::Pg);
}

#[test]
fn a_partitioned_instance_stops_its_app_before_its_row_expires_mariadb() {
    a_partitioned_instance_stops_its_app_before_its_row_expires(Kind::My);
}

on_every_backend!(
    status_shows_phases,
    unknown_phase_is_a_usage_error,
    digest_file_does_not_hide_a_contract_folder,
    heartbeat_sigterm_removes_its_row,
    heartbeat_sigkill_row_expires_after_the_ttl,
    contract_waits_for_the_older_release,
    contract_runs_once_a_killed_instance_expires,
    skipping_a_release_never_reorders,
    wait_phase_expand_starts_the_new_release_before_its_contract,
    wait_release_keeps_the_app_registered,
    check_judges_breaking_changes_by_phase,
);

/// reliability (PostgreSQL + PgBouncer): the release registry and the contract gate through PgBouncer in transaction pooling mode with one server connection, where every statement may land on another client's server session | the heartbeat registers and renews, the gate refuses the contract (75) while the old instance is live, SIGTERM removes its row, and the contract then runs | nothing: every registry write is one autocommit statement
#[test]
fn the_registry_and_the_gate_work_behind_a_transaction_pooler() {
    let server = start_cluster(&[]);
    let bouncer = PgBouncer::start_with(&server, "transaction", 1);
    let db = PgDb::on(&server.url("postgres"), "registrypool");
    let url = bouncer.url(db.url.rsplit('/').next().unwrap());
    let n = Migrations::new(&[
        ("1_users.sql", "CREATE TABLE users (id int, legacy text);"),
        ("2_orders.sql", "CREATE TABLE orders (id int);"),
    ]);
    let out = run(schemagate(&url).args(["migrate", "--source", n.path()]));
    ok(&out);
    let mut old = spawn(schemagate(&url).args([
        "heartbeat",
        "--release",
        "v1",
        "--source",
        n.path(),
        "--instance",
        "web-old-1",
        "--instance-ttl",
        "3s",
    ]));
    wait_for_stderr_line(&mut old, "registered in", Duration::from_secs(30));
    until("a renewal", Duration::from_secs(30), || {
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker_instances WHERE seen_ms > started_ms",
        ) == 1
    });
    let src = two_releases();
    let contract =
        || run(schemagate(&url).args(["migrate", "--source", src.path(), "--phase", "contract"]));
    let out = contract();
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("web-old-1"), "{}", stderr(&out));
    sigterm(old.id());
    assert_eq!(code(&finish(old)), 143);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM schemagate_marker_instances"),
        0
    );
    ok(&contract());
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM _sqlx_migrations"), 4);
}
