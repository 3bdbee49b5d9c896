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
            "3s",
        ],
    ));
    wait_for_stderr_line(&mut child, "registered in", Duration::from_secs(30));
    child
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

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $( #[test] fn $case() { super::$case(super::Kind::Pg) } )*
        }
        mod mysql {
            $( #[test] fn $case() { super::$case(super::Kind::My) } )*
        }
        mod sqlite {
            $( #[test] fn $case() { super::$case(super::Kind::Lite) } )*
        }
    };
}

on_every_backend!(
    status_shows_phases,
    unknown_phase_is_a_usage_error,
    digest_file_does_not_hide_a_contract_folder,
    heartbeat_sigterm_removes_its_row,
    heartbeat_sigkill_row_expires_after_the_ttl,
);
