//! `schemagate fleet`: many targets (schemas of one database, databases from a URL
//! template, URLs), each an ordinary `migrate` run with its own lock and marker, and the
//! summary that lists every target's state.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::harness::*;

/// A targets file in a directory of its own, removed afterwards.
struct Targets {
    dir: PathBuf,
}

impl Targets {
    fn new(lines: &[&str]) -> Targets {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "schemagate-targets-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("targets.txt"), lines.join("\n") + "\n").unwrap();
        Targets { dir }
    }

    fn path(&self) -> String {
        self.dir.join("targets.txt").display().to_string()
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `schemagate fleet --targets FILE --source DIR` with `url` as --database-url.
fn fleet(url: &str, targets: &Targets, src: &Migrations) -> Command {
    let mut c = schemagate(url);
    c.args([
        "fleet",
        "--targets",
        &targets.path(),
        "--source",
        src.path(),
    ]);
    c
}

/// The JSON summary on stdout.
fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the summary is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// Each target's state, in the order given.
fn states(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Two migrations; the second logs its application in a table of the target's own, so a
/// test counts how often it ran.
fn tenant_migrations() -> Migrations {
    Migrations::new(&[
        ("0001_users.sql", "CREATE TABLE users (id int PRIMARY KEY);"),
        (
            "0002_log.sql",
            "CREATE TABLE apply_log (version int);\nINSERT INTO apply_log VALUES (2);",
        ),
    ])
}

/// reliability: a fleet of 3 schemas in one database, run twice | each schema gets its own tables, marker and history (search_path set to it); the rerun finds every target up to date | nothing
#[test]
fn schema_per_target_applies_each_schema_once_and_a_rerun_finds_them_up_to_date() {
    let db = PgDb::new("fleet_schemas");
    let src = tenant_migrations();
    let targets = Targets::new(&["# tenants", "t_a", "", "t_b", "  t_c  "]);
    let out = run(fleet(&db.url, &targets, &src).arg("--json"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = summary(&out);
    assert_eq!(
        states(&v),
        pairs(&[("t_a", "applied"), ("t_b", "applied"), ("t_c", "applied")])
    );
    assert_eq!(v["applied"], 3);
    for s in ["t_a", "t_b", "t_c"] {
        // The migrations' unqualified names landed in the target's schema.
        assert_eq!(
            pg_i64(&db.url, &format!("SELECT count(*) FROM {s}.apply_log")),
            1
        );
        assert_eq!(
            pg_i64(
                &db.url,
                &format!("SELECT count(*) FROM {s}._sqlx_migrations")
            ),
            2
        );
        assert_eq!(
            pg_i64(
                &db.url,
                &format!("SELECT count(*) FROM {s}.schemagate_marker WHERE status = 'succeeded'")
            ),
            1
        );
    }
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0,
        "nothing may land in public"
    );

    let again = run(fleet(&db.url, &targets, &src).arg("--json"));
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    let v = summary(&again);
    assert_eq!(
        states(&v),
        pairs(&[
            ("t_a", "up-to-date"),
            ("t_b", "up-to-date"),
            ("t_c", "up-to-date")
        ])
    );
    for s in ["t_a", "t_b", "t_c"] {
        assert_eq!(
            pg_i64(&db.url, &format!("SELECT count(*) FROM {s}.apply_log")),
            1
        );
    }
}

/// reliability: a fleet whose second target's migration fails | the failed target is listed with its reason and exit code, the others are applied; fleet exits 1 | the failed target's migration (rolled back)
#[test]
fn a_failing_target_fails_alone_and_the_fleet_exits_1() {
    let db = PgDb::new("fleet_fail");
    // t_b already has an apply_log table: its second migration fails there.
    pg_exec(
        &db.url,
        "CREATE SCHEMA t_b; CREATE TABLE t_b.apply_log (version int)",
    );
    let src = tenant_migrations();
    let targets = Targets::new(&["t_a", "t_b", "t_c"]);
    let out = run(fleet(&db.url, &targets, &src).arg("--json"));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = summary(&out);
    assert_eq!(
        states(&v),
        pairs(&[("t_a", "applied"), ("t_b", "failed"), ("t_c", "applied")])
    );
    let failed = &v["results"][1];
    assert_eq!(failed["exit_code"], 1);
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("migration 2") && reason.contains("already exists"),
        "{reason}"
    );
    assert_eq!(v["failed"], 1);
    // Its failure is recorded as `migrate` records one.
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM t_b.schemagate_marker WHERE status = 'failed'"
        ),
        1
    );
    // The text summary names it too.
    let text = run(&mut fleet(&db.url, &targets, &src));
    assert_eq!(code(&text), 1);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("1 failed")
            && stdout
                .lines()
                .any(|l| l.contains("failed") && l.contains("t_b")),
        "{stdout}"
    );
}

/// A database per target on every backend: `{schema}` in --database-url, plus a line that
/// is a URL of its own.
#[test]
fn database_per_target_from_a_url_template_on_every_backend() {
    for kind in [Kind::Pg, Kind::My, Kind::Lite] {
        let dbs: Vec<TestDb> = (0..3).map(|_| TestDb::new(kind, "fleet_dbs")).collect();
        let name = |d: &TestDb| -> String {
            let url = d.url();
            let last = url.rsplit('/').next().unwrap();
            last.split('?')
                .next()
                .unwrap()
                .trim_end_matches(".db")
                .to_owned()
        };
        let template = match kind {
            Kind::Lite => dbs[0].url().replace("app.db", "{schema}.db"),
            _ => replace_db_name(dbs[0].url(), "{schema}"),
        };
        // SQLite: each test database is its own directory; the first two share one.
        let lines: Vec<String> = match kind {
            Kind::Lite => vec!["one".into(), "two".into(), dbs[2].url().to_owned()],
            _ => vec![name(&dbs[0]), name(&dbs[1]), dbs[2].url().to_owned()],
        };
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let targets = Targets::new(&lines);
        let src = Migrations::new(&[("0001_users.sql", "CREATE TABLE users (id int);")]);
        let out = run(fleet(&template, &targets, &src).arg("--json"));
        assert_eq!(code(&out), 0, "{kind:?}: {}", stderr(&out));
        let v = summary(&out);
        assert_eq!(v["applied"], 3, "{kind:?}: {v}");
        if kind != Kind::Lite {
            for d in &dbs {
                assert_eq!(d.i64("SELECT count(*) FROM users"), 0, "{kind:?}");
                assert_eq!(d.i64("SELECT count(*) FROM schemagate_marker"), 1);
            }
        } else {
            assert_eq!(dbs[2].i64("SELECT count(*) FROM schemagate_marker"), 1);
        }
        // The URL line is named without its password.
        assert!(
            !v.to_string().contains(PASSWORD),
            "{kind:?}: the password leaked into the summary"
        );
    }
}

fn replace_db_name(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (head, _) = base.rsplit_once('/').unwrap();
    format!("{head}/{db}{query}")
}

/// reliability: another session holds one schema's migration lock while a fleet runs | that target times out alone (exit 124 in its line); the other schemas, whose locks are their own, are applied | nothing
#[test]
fn schemas_in_one_database_never_share_a_lock() {
    let db = PgDb::new("fleet_locks");
    let src = tenant_migrations();
    let key = lock_key("schemagate:t_a.schemagate_marker");
    let _held = hold_advisory_lock(&db.url, key);
    let targets = Targets::new(&["t_a", "t_b"]);
    let out = run(fleet(&db.url, &targets, &src).args(["--json", "--lock-wait", "1s"]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = summary(&out);
    assert_eq!(states(&v), pairs(&[("t_a", "failed"), ("t_b", "applied")]));
    assert_eq!(v["results"][0]["exit_code"], 124);
}

/// The key schemagate derives from a lock name: the first 8 bytes of its SHA-256.
fn lock_key(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(hash[..8].try_into().unwrap())
}

#[test]
fn bad_target_lists_are_usage_errors_before_anything_runs() {
    let db = PgDb::new("fleet_usage");
    let src = tenant_migrations();
    let cases: &[(&[&str], &[&str], &str)] = &[
        (&["t_a", "t_a"], &[], "listed twice"),
        (&["t a"], &[], "neither a database URL nor a name"),
        (&["select"], &[], "not a schema name"),
        (&[], &[], "lists no target"),
        (&["t_a"], &["--table", "ops.marker"], "bare name"),
        (&["t_a"], &["--lock-name", "one"], "--lock-name"),
    ];
    for (lines, flags, expected) in cases {
        let targets = Targets::new(lines);
        let out = run(fleet(&db.url, &targets, &src).args(*flags));
        assert_eq!(code(&out), 2, "{lines:?} {flags:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{expected}: {}",
            stderr(&out)
        );
    }
    // A name needs a --database-url to live in.
    let targets = Targets::new(&["t_a"]);
    let mut c = fleet("", &targets, &src);
    c.env_remove("SCHEMAGATE_DATABASE_URL");
    let out = run(&mut c);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no --database-url"),
        "{}",
        stderr(&out)
    );
    // A schema per target is PostgreSQL's.
    let my = MyDb::new("fleet_usage");
    let out = run(&mut fleet(&my.url, &targets, &src));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs PostgreSQL"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'"
        ),
        0,
        "nothing may run after a usage error"
    );
}
