//! `schemagate check` against real PostgreSQL: the corpus under tests/check_corpus gets the
//! verdicts listed in expected.txt, as SQL files and wrapped as Alembic revisions; the
//! gate's exit codes; the scratch database's lifecycle (created and dropped, also on
//! SIGTERM; a given one refused unless empty; the app's database never touched).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_corpus")
}

/// expected.txt: version -> the verdict line.
fn expected() -> BTreeMap<String, String> {
    std::fs::read_to_string(corpus().join("expected.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (v, verdict) = l.split_once(' ').unwrap();
            (v.to_owned(), verdict.trim().to_owned())
        })
        .collect()
}

/// A migration's findings from `check --json`, as expected.txt writes them.
fn verdict(migration: &serde_json::Value) -> String {
    let mut findings: Vec<String> = migration["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}{}",
                f["kind"].as_str().unwrap(),
                f["object"].as_str().unwrap(),
                if f["accepted"].as_bool().unwrap() {
                    " (allowed)"
                } else {
                    ""
                }
            )
        })
        .collect();
    findings.sort();
    if findings.is_empty() {
        "ok".into()
    } else {
        findings.join("; ")
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn database_exists(url: &str, name: &str) -> bool {
    pg_i64(
        url,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) > 0
}

fn user_relations(url: &str) -> i64 {
    pg_i64(
        url,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'",
    )
}

fn print_table(rows: &[(String, String, String)]) {
    eprintln!("{:<16} {:<62} got", "migration", "expected");
    for (v, e, g) in rows {
        eprintln!("{v:<16} {e:<62} {g}");
    }
}

/// issue 15: the SQL corpus gets its verdicts; unaccepted findings exit 5; the scratch
/// database is gone afterwards and the database the URL names is left untouched.
#[test]
fn sql_corpus_gets_the_expected_verdicts_and_the_gate_exits_5() {
    let db = PgDb::new("check_corpus");
    let out = run(schemagate(&db.url)
        .args(["check", "--json", "--since", "20240101000000", "--source"])
        .arg(corpus().join("sql")));
    assert_exit(&out, 5);
    let report = json(&out);
    let got: BTreeMap<String, String> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["version"].as_i64().unwrap().to_string(), verdict(m)))
        .collect();
    let expected = expected();
    let rows: Vec<_> = expected
        .iter()
        .map(|(v, e)| {
            (
                v.clone(),
                e.clone(),
                got.get(v).cloned().unwrap_or("(not run)".into()),
            )
        })
        .collect();
    print_table(&rows);
    assert_eq!(got, expected, "verdicts differ (table above)");

    // Transactional migrations are observed in their own transaction; the -- no-transaction
    // one by sampling, and the output says at what resolution.
    let cic = &report["migrations"].as_array().unwrap()[5];
    assert!(
        cic["observed"]
            .as_str()
            .unwrap()
            .contains("samples, one every"),
        "{cic}"
    );
    let fk = &report["migrations"].as_array().unwrap()[6];
    assert!(
        fk["locks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["table"] == "orders" && l["mode"] == "SHARE ROW EXCLUSIVE"),
        "{fk}"
    );
    // The --json contract: these keys, at these levels.
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&report),
        [
            "baseline",
            "duration_ms",
            "findings",
            "migrations",
            "scratch_database",
            "unaccepted"
        ]
    );
    assert_eq!(
        keys(fk),
        [
            "duration_ms",
            "findings",
            "lock_timeout",
            "locks",
            "locks_observed",
            "migration",
            "observed",
            "version"
        ]
    );
    assert_eq!(
        keys(&fk["locks"][0]),
        ["effect", "mode", "rewritten", "scanned", "table"]
    );
    assert_eq!(
        keys(&fk["findings"][0]),
        ["accepted", "detail", "kind", "migration", "object"]
    );
    let scratch = report["scratch_database"].as_str().unwrap();
    assert!(scratch.starts_with("schemagate_check_"), "{scratch}");
    assert!(
        !database_exists(&db.url, scratch),
        "scratch database {scratch} was left behind"
    );
    assert_eq!(
        user_relations(&db.url),
        0,
        "check touched the URL's database"
    );

    // The readable table names each unaccepted finding and its migration.
    let out = run(schemagate(&db.url)
        .args(["check", "--since", "20240201000008", "--source"])
        .arg(corpus().join("sql")));
    assert_exit(&out, 5);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("drop-column") && table.contains("users.legacy_email"),
        "{table}"
    );
    assert!(table.contains("20240201000009 drop column"), "{table}");
    assert!(
        table.contains("blocks every read and write until commit"),
        "{table}"
    );
}

/// A finding is accepted by a `schemagate:allow` comment in its migration or by --allow;
/// with every finding accepted the gate passes (exit 0).
#[test]
fn accepted_findings_pass_the_gate() {
    let db = PgDb::new("check_allow");
    let src = Migrations::new(&[
        (
            "1_base.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, legacy TEXT, nick TEXT);",
        ),
        (
            "2_contract.sql",
            "-- schemagate:allow drop-column users.legacy\n\
             SET LOCAL lock_timeout = '2s';\n\
             ALTER TABLE users DROP COLUMN legacy;\nALTER TABLE users DROP COLUMN nick;",
        ),
    ]);
    let check = |extra: &[&str]| {
        run(schemagate(&db.url)
            .args(["check", "--json", "--since", "1", "--source", src.path()])
            .args(extra))
    };
    let out = check(&[]);
    assert_exit(&out, 5);
    assert_eq!(
        verdict(&json(&out)["migrations"][0]),
        "drop-column users.legacy (allowed); drop-column users.nick"
    );
    assert_stderr_has(&out, "drop-column users.nick");
    let out = check(&["--allow", "drop-column users.nick"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["unaccepted"], 0);

    let out = check(&["--allow", "drop-column"]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "invalid --allow \"drop-column\"");
}

/// A given scratch database is refused when it holds tables check did not create; an
/// empty one is used and left empty, and is accepted again next time.
/// reliability: `check --scratch-database` given the application's database | exit 2 naming it; nothing in it is read or changed (a regression: it was once reset on the way out) | nothing
#[test]
fn a_given_scratch_database_must_be_empty_and_is_left_empty() {
    let app = PgDb::new("check_app");
    let scratch = PgDb::new("check_given");
    let name = scratch.url.rsplit('/').next().unwrap().to_owned();
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        ("2_add.sql", "ALTER TABLE t ADD COLUMN note TEXT;"),
    ]);
    pg_exec(&app.url, "CREATE TABLE precious (id INT)");
    let check = |db: &str| {
        run(schemagate(&app.url).args([
            "check",
            "--scratch-database",
            db,
            "--since",
            "1",
            "--source",
            src.path(),
        ]))
    };
    // The app's own database, given by mistake, is refused and left as it was.
    let app_name = app.url.rsplit('/').next().unwrap().to_owned();
    let out = check(&app_name);
    assert_exit(&out, 2);
    assert_stderr_has(&out, &format!("refusing --scratch-database {app_name}"));
    assert_eq!(
        pg_i64(
            &app.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'"
        ),
        1
    );
    for _ in 0..2 {
        let out = check(&name);
        assert_exit(&out, 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("no findings"));
        assert_eq!(
            user_relations(&scratch.url),
            0,
            "the scratch database was not emptied"
        );
    }
}

/// SIGTERM while the migrator runs: exit 143, and the scratch database is dropped.
/// reliability: SIGTERM while `check` rehearses (its external migrator running) | the migrator is killed, the scratch database dropped with its sessions, exit 143 | nothing: the scratch database was check's own
#[test]
fn sigterm_drops_the_scratch_database() {
    let db = PgDb::new("check_sigterm");
    let mut child = spawn(schemagate(&db.url).args([
        "check",
        "--",
        "sh",
        "-c",
        "echo migrating >&2; exec sleep 60",
    ]));
    let seen = wait_for_stderr_line(&mut child, "[sh] migrating", Duration::from_secs(30));
    let name = seen
        .split("created scratch database ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no scratch database named in:\n{seen}"))
        .to_owned();
    assert!(database_exists(&db.url, &name));
    sigterm(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(!database_exists(&db.url, &name), "{name} survived SIGTERM");
}

/// On MySQL and SQLite an external migrator cannot be observed (no pg_locks): refused.
#[test]
fn external_migrators_on_other_backends_are_refused_with_exit_2() {
    for url in ["mysql://root@127.0.0.1:3306/x", "sqlite:///tmp/none.db"] {
        let out = run(schemagate(url).args(["check", "--", "true"]));
        assert_exit(&out, 2);
        assert_stderr_has(&out, "check -- CMD needs PostgreSQL");
    }
}

/// issue 15: the same corpus wrapped as Alembic revisions, each checked through
/// `--baseline 'alembic upgrade PREV' -- alembic upgrade REV`, gets the same verdicts.
#[test]
fn alembic_corpus_gets_the_same_verdicts_through_baseline() {
    let venv = alembic_venv();
    let project = corpus().join("alembic");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let db = PgDb::new("check_alembic");
    let expected = expected();
    let mut previous = "20240101000000".to_owned();
    let mut rows = Vec::new();
    let mut got = BTreeMap::new();
    for version in expected.keys() {
        let sql = std::fs::read_dir(corpus().join("sql"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{version}_"))
            })
            .unwrap();
        let out = run(schemagate(&db.url)
            .env("PATH", &path)
            // No __pycache__ left in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&project)
            .args(["check", "--json", "--allow-file"])
            .arg(&sql)
            .args([
                "--baseline",
                &format!("alembic upgrade {previous}"),
                "--",
                "alembic",
                "upgrade",
                version,
            ]));
        assert!(
            code(&out) == 0 || code(&out) == 5,
            "{version}: {}",
            stderr(&out)
        );
        let report = json(&out);
        let v = verdict(&report["migrations"][0]);
        assert_eq!(code(&out) == 5, report["unaccepted"].as_u64().unwrap() > 0);
        rows.push((version.clone(), expected[version].clone(), v.clone()));
        got.insert(version.clone(), v);
        previous = version.clone();
    }
    print_table(&rows);
    assert_eq!(got, expected, "verdicts differ (table above)");
    assert_eq!(
        user_relations(&db.url),
        0,
        "check touched the URL's database"
    );
}

/// squawk under target/ (npm squawk-cli, the version .ci/run installs), on first use.
fn squawk() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = root.join("target/squawk");
    let bin = prefix.join("node_modules/.bin/squawk");
    if !bin.exists() {
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(SQUAWK)
            .output();
        assert!(
            out.as_ref().is_ok_and(|o| o.status.success()),
            "npm install {SQUAWK} failed (install npm: apt-get install npm): {:?}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        );
    }
    bin
}

const SQUAWK: &str = "squawk-cli@2.66.0";

/// The squawk cross-check docs/src/check.md documents: squawk's verdict on each corpus file
/// is the one in squawk.txt (so the docs' comparison with check's stays true).
#[test]
fn squawk_cross_check_matches_the_documented_comparison() {
    let squawk = squawk();
    let documented: BTreeMap<String, String> = std::fs::read_to_string(corpus().join("squawk.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (v, verdict) = l.split_once(' ').unwrap();
            (v.to_owned(), verdict.trim().to_owned())
        })
        .collect();
    let out = Command::new(&squawk)
        .args([
            "--reporter",
            "gcc",
            "--pg-version=15",
            "--exclude=require-lock-timeout,require-statement-timeout,prefer-robust-stmts",
        ])
        .args(documented.keys().map(|v| {
            std::fs::read_dir(corpus().join("sql"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{v}_"))
                })
                .unwrap()
        }))
        .output()
        .expect("run squawk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut said: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        // <path>:<line>:<col>: warning: <rule> <message>
        let Some((path, rest)) = line
            .split_once(": warning: ")
            .or(line.split_once(": error: "))
        else {
            continue;
        };
        let version = Path::new(path.split(':').next().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split('_')
            .next()
            .unwrap()
            .to_owned();
        let rule = rest.split_whitespace().next().unwrap().to_owned();
        said.entry(version).or_default().push(rule);
    }
    let got: BTreeMap<String, String> = documented
        .keys()
        .map(|v| {
            let mut rules = said.remove(v).unwrap_or_default();
            rules.sort();
            rules.dedup();
            let verdict = if rules.is_empty() {
                "ok".to_owned()
            } else {
                rules.join("; ")
            };
            (v.clone(), verdict)
        })
        .collect();
    assert!(
        said.is_empty(),
        "squawk spoke of unknown files: {said:?}\n{text}"
    );
    assert_eq!(got, documented, "squawk's verdicts changed:\n{text}");
}

/// issue 15: `smoke` on PostgreSQL prints check's summary for the migrations it is about
/// to apply, rehearsed on a scratch database it drops.
#[test]
fn smoke_on_postgres_prints_the_check_summary() {
    let db = PgDb::new("check_smoke");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/migrations/postgres");
    let out = run(Command::new(bin())
        .env_remove("DATABASE_URL")
        .env_remove("SCHEMAGATE_DATABASE_URL")
        .args([
            "smoke",
            "--replicas",
            "2",
            "--database-url",
            &db.url,
            "--source",
        ])
        .arg(&examples));
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("schemagate check: 5 migration run(s) against an empty database"),
        "{text}"
    );
    // The example's "add users name" adds a NOT NULL column without a default.
    let line = text
        .lines()
        .find(|l| l.starts_with("add-not-null-column"))
        .unwrap_or_else(|| panic!("no add-not-null-column finding:\n{text}"));
    assert!(
        line.contains("users.display_name") && line.contains("20240103000000"),
        "{line}"
    );
    let scratch = text
        .split("rehearsed on scratch database ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    assert!(
        !database_exists(&db.url, scratch),
        "{scratch} was left behind"
    );
    assert!(text.contains("smoke passed"), "{text}");
}

/// A migration that fails on the scratch database fails the check (exit 1, naming it), and
/// the scratch database is still dropped.
/// reliability: a migration fails while `check` rehearses it | exit 1 naming the migration and the error; the scratch database is dropped | nothing: it never ran anywhere else
#[test]
fn a_failing_migration_fails_the_check_and_the_scratch_database_goes() {
    let db = PgDb::new("check_fail");
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);"),
        (
            "2_bad.sql",
            "ALTER TABLE t ADD COLUMN w TEXT;\nALTER TABLE nope ADD COLUMN x INT;",
        ),
    ]);
    let out = run(schemagate(&db.url).args(["check", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("migration 2 bad failed on the scratch database") && err.contains("nope"),
        "{err}"
    );
    let name = err
        .split("created scratch database ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    assert!(!database_exists(&db.url, name), "{name} was left behind");
}

/// An external migrator (here psql) is observed from outside: the event trigger sees its
/// ACCESS EXCLUSIVE lock and the lock_timeout it set, the before/after comparison its
/// rewrite, and the output states the sampling resolution.
#[test]
fn an_external_migrator_is_observed_from_a_side_connection() {
    let db = PgDb::new("check_external");
    let out = run(schemagate(&db.url).args([
        "check",
        "--json",
        "--baseline",
        "psql \"$DATABASE_URL\" -qc 'CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 100)'",
        "--",
        "sh",
        "-c",
        "psql \"$DATABASE_URL\" -qc \"SET lock_timeout = '3s'; ALTER TABLE a ALTER COLUMN id TYPE bigint\"; \
         echo \"migrated $DATABASE_URL\"",
    ]));
    // The migrator printed the scratch URL, password included: masked in our log (run()
    // fails the test if the password shows anywhere).
    assert_stderr_has(&out, "[sh] migrated postgres://postgres:***@");
    assert_exit(&out, 5);
    let report = json(&out);
    let m = &report["migrations"][0];
    assert_eq!(verdict(m), "rewrite a", "{m}");
    assert_eq!(m["lock_timeout"], "3s", "{m}");
    assert!(
        m["locks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["table"] == "a" && l["mode"] == "ACCESS EXCLUSIVE"),
        "{m}"
    );
    let observed = m["observed"].as_str().unwrap();
    assert!(
        observed.contains("samples, one every") && observed.contains("ms on average"),
        "{observed}"
    );
    assert!(
        report["baseline"]
            .as_str()
            .unwrap()
            .contains("CREATE TABLE a")
    );
}

/// MySQL/MariaDB and SQLite: what their catalogs allow. A dropped column, a dropped enum
/// label, a new NOT NULL column without default and a rebuilt table are found; a widened
/// varchar is not a finding; locks are not claimed.
#[test]
fn mysql_and_sqlite_get_the_catalog_diff() {
    let my = MyDb::new("check_catalog");
    let mysql = Migrations::new(&[
        (
            "1_base.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, legacy TEXT, nick VARCHAR(20), \
             mood ENUM('happy', 'meh', 'sad') NOT NULL DEFAULT 'happy');",
        ),
        ("2_drop.sql", "ALTER TABLE users DROP COLUMN legacy;"),
        (
            "3_enum.sql",
            "ALTER TABLE users MODIFY mood ENUM('happy', 'sad') NOT NULL DEFAULT 'happy';",
        ),
        ("4_widen.sql", "ALTER TABLE users MODIFY nick VARCHAR(40);"),
        (
            "5_required.sql",
            "ALTER TABLE users ADD COLUMN tier VARCHAR(10) NOT NULL;",
        ),
    ]);
    let out = run(schemagate(&my.url).args([
        "check",
        "--json",
        "--since",
        "1",
        "--source",
        mysql.path(),
    ]));
    assert_exit(&out, 5);
    let report = json(&out);
    let verdicts: Vec<String> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(verdict)
        .collect();
    assert_eq!(verdicts[0], "drop-column users.legacy", "{report}");
    // Removing a label other than the last rebuilds the table.
    assert_eq!(
        verdicts[1], "drop-enum-value users.mood.meh; rewrite users",
        "{report}"
    );
    assert_eq!(verdicts[2], "ok", "{report}");
    assert!(
        verdicts[3].contains("add-not-null-column users.tier"),
        "{report}"
    );
    assert_eq!(report["migrations"][0]["locks_observed"], false);
    let scratch = report["scratch_database"].as_str().unwrap().to_owned();
    assert!(
        !block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::MySqlConnection::connect(&my.url).await.unwrap();
            sqlx::query_scalar::<_, String>("SHOW DATABASES")
                .fetch_all(&mut c)
                .await
                .unwrap()
        })
        .contains(&scratch),
        "{scratch} was left behind"
    );

    let sqlite = Migrations::new(&[
        (
            "1_base.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, legacy TEXT, nick TEXT);",
        ),
        ("2_drop.sql", "ALTER TABLE users DROP COLUMN legacy;"),
        (
            "3_rebuild.sql",
            "CREATE TABLE users_new (id INTEGER PRIMARY KEY, nick TEXT NOT NULL DEFAULT '');\n\
             INSERT INTO users_new SELECT id, coalesce(nick, '') FROM users;\n\
             DROP TABLE users;\nALTER TABLE users_new RENAME TO users;",
        ),
    ]);
    let app = std::env::temp_dir().join(format!("schemagate-check-app-{}.db", std::process::id()));
    let out = run(schemagate(&format!("sqlite://{}", app.display())).args([
        "check",
        "--json",
        "--since",
        "1",
        "--source",
        sqlite.path(),
    ]));
    assert_exit(&out, 5);
    let report = json(&out);
    let verdicts: Vec<String> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(verdict)
        .collect();
    assert_eq!(
        verdicts,
        vec![
            "drop-column users.legacy",
            "rewrite users; set-not-null users.nick"
        ],
        "{report}"
    );
    assert!(!app.exists(), "check created the app's SQLite file");
    let scratch = report["scratch_database"].as_str().unwrap();
    assert!(!Path::new(scratch).exists(), "{scratch} was left behind");
}

/// The compatibility findings the corpus does not cover: a renamed and a dropped table, a
/// dropped default, a narrowed numeric, a unique index built concurrently (no blocking
/// scan, but new writes must pass it) and a dropped function outside `public`.
#[test]
fn the_other_compatibility_findings() {
    let db = PgDb::new("check_kinds");
    let src = Migrations::new(&[
        (
            "1_base.sql",
            "CREATE TABLE a (id INT PRIMARY KEY, created TIMESTAMPTZ NOT NULL DEFAULT now(), \
               code VARCHAR(20), price NUMERIC(10,2));\n\
             CREATE TABLE b (id INT);\nCREATE TABLE c (id INT);\nCREATE SCHEMA billing;\n\
             CREATE FUNCTION billing.f(x INTEGER, y TEXT) RETURNS INT LANGUAGE sql AS $$ SELECT x $$;\n\
             INSERT INTO a (id, code, price) SELECT g, 'c' || g, g FROM generate_series(1, 50) g;",
        ),
        ("2_rename_table.sql", "ALTER TABLE b RENAME TO b2;"),
        ("3_drop_table.sql", "DROP TABLE c;"),
        (
            "4_drop_default.sql",
            "ALTER TABLE a ALTER COLUMN created DROP DEFAULT;",
        ),
        (
            "5_narrow.sql",
            "ALTER TABLE a ALTER COLUMN price TYPE NUMERIC(8,2);",
        ),
        (
            "6_unique_concurrently.sql",
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY a_code_key ON a (code);",
        ),
        (
            "7_drop_function.sql",
            "-- schemagate:allow drop-function billing.f(integer,text)\n\
             DROP FUNCTION billing.f(integer, text);",
        ),
    ]);
    let out =
        run(schemagate(&db.url).args(["check", "--json", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 5);
    let report = json(&out);
    let verdicts: Vec<String> = report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(verdict)
        .collect();
    assert_eq!(
        verdicts,
        vec![
            "rename-table b",
            "drop-table c",
            "drop-default a.created",
            "change-type a.price; rewrite a",
            "add-unique a.a_code_key",
            "drop-function billing.f(integer,text) (allowed)",
        ],
        "{report}"
    );
}

/// A role with CREATEDB but no superuser (a typical CI role) cannot create the event
/// trigger: transactional migrations are still read from pg_locks before commit, and a
/// `-- no-transaction` one is sampled, and the output says the trigger is missing.
#[test]
fn a_role_without_superuser_still_gets_a_check() {
    let db = PgDb::new("check_role");
    let role = format!("sg_ci_{}", std::process::id());
    pg_exec(
        &db.url,
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
    );
    let url = db.url.replacen("://postgres:", &format!("://{role}:"), 1);
    let src = Migrations::new(&[
        (
            "1_base.sql",
            "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\nINSERT INTO t VALUES (1, 'a');",
        ),
        (
            "2_index.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_v_idx ON t (v);",
        ),
        (
            "3_not_null.sql",
            "ALTER TABLE t ALTER COLUMN v SET NOT NULL;",
        ),
    ]);
    let out =
        run(schemagate(&url).args(["check", "--json", "--since", "1", "--source", src.path()]));
    pg_exec(&db.url, &format!("DROP ROLE {role}"));
    assert_exit(&out, 5);
    let report = json(&out);
    let observed = report["migrations"][0]["observed"].as_str().unwrap();
    assert!(observed.contains("no event trigger"), "{observed}");
    assert_eq!(verdict(&report["migrations"][0]), "ok");
    assert_eq!(
        verdict(&report["migrations"][1]),
        "blocking-scan t; set-not-null t.v"
    );
}

/// The database name at the end of a URL.
fn db_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

fn role_exists(url: &str, role: &str) -> bool {
    pg_i64(
        url,
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"),
    ) > 0
}

/// What `ALTER DATABASE … SET` and `COMMENT ON DATABASE` left on a database.
fn database_settings_and_comment(url: &str) -> (i64, String) {
    let name = db_name(url);
    (
        pg_i64(
            url,
            &format!(
                "SELECT count(*) FROM pg_db_role_setting \
                 WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = '{name}')"
            ),
        ),
        pg_strings(
            url,
            &format!(
                "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database \
                 WHERE datname = '{name}'"
            ),
        )
        .concat(),
    )
}

/// issue 20.3a: statements that act on the real database or the whole server (ALTER
/// DATABASE <real> SET, COMMENT ON DATABASE, CREATE ROLE, GRANT role TO, dblink_exec, also
/// inside a DO block) are findings naming the statement and its migration, and are never
/// run by the rehearsal: the URL's database and the server's roles stay as they were.
/// reliability: a migration under `check` names the real database (`ALTER DATABASE app SET`), creates a role or calls dblink_exec | an `outside-database` finding per statement (exit 5); the statement is not run on the scratch database or anywhere else | nothing: the real database and the server's roles are untouched
#[test]
fn statements_outside_the_scratch_database_are_findings_and_never_run() {
    let app = PgDb::new("check_outside");
    let real = db_name(&app.url);
    let role = format!("sg_outside_{}", std::process::id());
    let member = format!("sg_outside_member_{}", std::process::id());
    // dblink ships with the server (contrib); a test that cannot use it fails loudly.
    let available = pg_i64(
        &app.url,
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'",
    );
    assert_eq!(available, 1, "the dblink extension is not installed");
    let parsed = url::Url::parse(&app.url).unwrap();
    let conninfo = format!(
        "host={} port={} dbname={real} user=postgres password={PASSWORD}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap()
    );
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        (
            "2_outside.sql",
            &format!(
                "ALTER TABLE t ADD COLUMN note TEXT;\n\
                 ALTER DATABASE {real} SET lock_timeout = '7s';\n\
                 COMMENT ON DATABASE {real} IS 'touched by a rehearsal';\n\
                 CREATE ROLE {role};\n\
                 DO $$ BEGIN CREATE ROLE {member}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n\
                 GRANT {role} TO {member};\n\
                 CREATE EXTENSION IF NOT EXISTS dblink;\n\
                 SELECT dblink_exec('{conninfo}', 'CREATE TABLE hijacked (id int)');\n\
                 CREATE TABLE after_them (id INT);"
            ),
        ),
    ]);
    let out =
        run(schemagate(&app.url).args(["check", "--json", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 5);
    let report = json(&out);
    let m = &report["migrations"][0];
    assert_eq!(
        verdict(m),
        format!(
            "outside-database database {real}; outside-database database {real}; \
             outside-database dblink_exec; outside-database role {role}; \
             outside-database role {role}; outside-database role {member}"
        ),
        "{m}"
    );
    let findings = m["findings"].as_array().unwrap();
    let alter = findings
        .iter()
        .find(|f| f["detail"].as_str().unwrap().contains("ALTER DATABASE"))
        .unwrap();
    assert_eq!(alter["migration"], "2 outside", "{alter}");
    assert!(
        alter["detail"]
            .as_str()
            .unwrap()
            .contains("statement 2 (line 2)"),
        "{alter}"
    );
    // Nothing of it ran anywhere: not on the real database, not on the server.
    assert_eq!(database_settings_and_comment(&app.url), (0, String::new()));
    assert!(
        !role_exists(&app.url, &role),
        "the rehearsal created {role}"
    );
    assert!(
        !role_exists(&app.url, &member),
        "the rehearsal created {member}"
    );
    assert_eq!(user_relations(&app.url), 0, "dblink_exec reached {real}");

    // Accepted by allow comments, the gate passes; still nothing runs.
    src.write(
        "2_outside.sql",
        &format!(
            "-- schemagate:allow outside-database database {real}\n\
             -- schemagate:allow outside-database role {role}\n\
             ALTER DATABASE {real} SET lock_timeout = '7s';\nCREATE ROLE {role};"
        ),
    );
    let out = run(schemagate(&app.url).args(["check", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 0);
    assert_eq!(database_settings_and_comment(&app.url), (0, String::new()));
    assert!(!role_exists(&app.url, &role));
}

/// A statement the rehearsal leaves out that a later one needs: the failure says so.
#[test]
fn a_failure_after_a_statement_left_out_names_it() {
    let app = PgDb::new("check_outside_dep");
    let role = format!("sg_needed_{}", std::process::id());
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        (
            "2_role.sql",
            &format!("CREATE ROLE {role};\nGRANT SELECT ON t TO {role};"),
        ),
    ]);
    let out = run(schemagate(&app.url).args(["check", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("migration 2 role failed on the scratch database")
            && err.contains(&format!("`CREATE ROLE {role}` in 2")),
        "{err}"
    );
    assert!(!role_exists(&app.url, &role));
}

/// A throwaway Alembic project whose `sqlalchemy.url` is hard-coded to `url`: it ignores
/// DATABASE_URL, as projects configured that way (or Django settings) do.
fn hard_coded_alembic_project(url: &str) -> Migrations {
    let sqlalchemy = url.replacen("postgres://", "postgresql+psycopg://", 1);
    let project = Migrations::new(&[(
        "alembic.ini",
        &format!(
            "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = {sqlalchemy}\n"
        ),
    )]);
    std::fs::create_dir_all(project.dir.join("migrations/versions")).unwrap();
    project.write(
        "migrations/env.py",
        "from alembic import context\n\
         from sqlalchemy import engine_from_config, pool\n\
         engine = engine_from_config(context.config.get_section(context.config.config_ini_section), \
           prefix='sqlalchemy.', poolclass=pool.NullPool)\n\
         with engine.connect() as connection:\n\
         \x20   context.configure(connection=connection, target_metadata=None)\n\
         \x20   with context.begin_transaction():\n\
         \x20       context.run_migrations()\n",
    );
    project.write(
        "migrations/versions/0001_hijacked.py",
        "from alembic import op\n\
         revision = '0001'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\
         def upgrade():\n\
         \x20   op.execute('CREATE TABLE hijacked (id int)')\n",
    );
    project
}

/// issue 20.3b: an external migrator that ignores DATABASE_URL (an Alembic project with a
/// hard-coded sqlalchemy.url) migrates the real database: check compares the URL's
/// database before and after, and fails (exit 1) naming what changed, instead of passing
/// with 0 findings.
/// reliability: `check -- CMD` whose migrator ignores DATABASE_URL (hard-coded URL) and migrates the real database | exit 1, a `changed-real-database` finding naming what changed (the new table, the history table's rows); never accepted | the migrator's own changes to the real database (check cannot undo them; it says which)
#[test]
fn an_external_migrator_that_migrates_the_real_database_fails_the_check() {
    let venv = alembic_venv();
    let app = PgDb::new("check_hardcoded");
    let project = hard_coded_alembic_project(&app.url);
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(schemagate(&app.url)
        .env("PATH", &path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&project.dir)
        .args([
            "check",
            "--json",
            "--allow",
            &format!("changed-real-database database {}", db_name(&app.url)),
            "--",
            "alembic",
            "upgrade",
            "head",
        ]));
    assert_exit(&out, 1);
    let report = json(&out);
    let m = &report["migrations"][0];
    assert_eq!(
        verdict(m),
        format!("changed-real-database database {}", db_name(&app.url)),
        "{m}"
    );
    let detail = m["findings"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("new relation public.hijacked")
            && detail.contains("new rows of public.alembic_version"),
        "{detail}"
    );
    assert_stderr_has(&out, "did not stay on its scratch database");
}

/// issue 20.3b, the other shapes: a migrator that changes database-level settings of the
/// real database through its own URL; one that migrates a third database (the scratch
/// database left unchanged while it claims success). And a migrator with nothing to do,
/// which did connect to the scratch database, passes.
#[test]
fn an_external_migrator_that_ignores_database_url_fails_the_check() {
    let app = PgDb::new("check_ignores_url");
    let other = PgDb::new("check_ignores_url_other");
    let real = db_name(&app.url);
    let check = |script: &str| {
        run(schemagate(&app.url)
            .env("REAL_URL", &app.url)
            .env("OTHER_URL", &other.url)
            .args(["check", "--json", "--", "sh", "-c", script]))
    };
    let out = check(&format!(
        "psql \"$REAL_URL\" -qc \"ALTER DATABASE {real} SET work_mem = '8MB'; \
         COMMENT ON DATABASE {real} IS 'x'\""
    ));
    assert_exit(&out, 1);
    let detail = json(&out)["migrations"][0]["findings"][0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("new database setting") && detail.contains("work_mem=8MB"),
        "{detail}"
    );
    assert!(detail.contains("changed database comment"), "{detail}");

    let out = check("psql \"$OTHER_URL\" -qc 'CREATE TABLE elsewhere (id int)'");
    assert_exit(&out, 1);
    let report = json(&out);
    let m = &report["migrations"][0];
    assert!(
        verdict(m).starts_with("scratch-untouched schemagate_check_"),
        "{m}"
    );

    // Nothing to do, but it looked at the scratch database: a clean pass.
    let out = check("psql \"$DATABASE_URL\" -qc 'SELECT pg_sleep(0.3)'");
    assert_exit(&out, 0);
    assert_eq!(json(&out)["findings"], 0);
}

/// issue 20.4: a migration that edits its own history (matrix-authentication-service
/// deletes the rows of squashed migrations from public._sqlx_migrations) is rehearsed:
/// the scratch database has the history table where and as `migrate` has it, rows
/// included. Database-level settings of the URL's database (lock_timeout here) apply to the
/// rehearsal as they do to `migrate`.
/// reliability: `check` rehearses a migration that deletes rows from `public._sqlx_migrations` | the rehearsal runs as `migrate` does, history table and rows included: no "relation does not exist" | nothing
#[test]
fn a_migration_that_edits_its_own_history_is_rehearsed() {
    let app = PgDb::new("check_history");
    pg_exec(
        &app.url,
        &format!(
            "ALTER DATABASE {} SET lock_timeout = '4s'",
            db_name(&app.url)
        ),
    );
    let out = run(schemagate(&app.url)
        .args(["check", "--json", "--since", "20230103000000", "--source"])
        .arg(corpus().join("history")));
    assert_exit(&out, 0);
    let report = json(&out);
    let m = &report["migrations"][0];
    assert_eq!(m["version"], 20250101000000_i64, "{m}");
    assert_eq!(verdict(m), "ok", "{m}");
    assert_eq!(m["lock_timeout"], "4s", "{m}");

    // The history table's name as sqlx.toml or --migrations-table set it.
    let src = Migrations::new(&[
        ("sqlx.toml", "[migrate]\ntable-name = \"mas_history\"\n"),
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        (
            "2_forget.sql",
            "DELETE FROM public.mas_history WHERE version = 1;",
        ),
    ]);
    let out = run(schemagate(&app.url).args(["check", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 0);
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        (
            "2_forget.sql",
            "DELETE FROM flag_history WHERE version = 1;",
        ),
    ]);
    let out = run(schemagate(&app.url).args([
        "check",
        "--migrations-table",
        "flag_history",
        "--since",
        "1",
        "--source",
        src.path(),
    ]));
    assert_exit(&out, 0);
    assert_eq!(
        user_relations(&app.url),
        0,
        "check touched the URL's database"
    );
}

fn sessions_on(url: &str, name: &str) -> i64 {
    pg_i64(
        url,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"),
    )
}

/// issue 20.17: after SIGKILL of `check`, its scratch database outlives it; the next
/// run drops it (its run is gone: nobody holds its lock, no session uses it), while the
/// scratch database of a check still running is left alone. One not marked by its owner
/// is named in a warning instead.
/// reliability: `check` killed with SIGKILL mid-rehearsal | the next `check` or `smoke` on the server drops the scratch database (marked as check's, no session, its run's lock gone); one still in use is never touched | nothing once a later run has swept
#[test]
fn a_scratch_database_left_by_a_killed_check_is_dropped_by_the_next() {
    let db = PgDb::new("check_stale");
    let start = |what: &str| {
        let mut child = spawn(schemagate(&db.url).args([
            "check",
            "--",
            "sh",
            "-c",
            &format!("echo {what} >&2; exec sleep 60"),
        ]));
        let seen =
            wait_for_stderr_line(&mut child, &format!("[sh] {what}"), Duration::from_secs(30));
        let name = seen
            .split("created scratch database ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no scratch database named in:\n{seen}"))
            .to_owned();
        (child, name)
    };
    let (mut killed, stale) = start("doomed");
    let (live, running) = start("running");
    assert!(database_exists(&db.url, &stale));
    signal(killed.id(), "KILL");
    killed.wait().unwrap();
    // The server ends the killed run's sessions when it sees their sockets close.
    until(
        "the killed check's sessions to end",
        Duration::from_secs(30),
        || sessions_on(&db.url, &stale) == 0,
    );
    // An older version's leftover carries no owner mark: named, not dropped.
    let unmarked = format!("schemagate_check_{}_999999", std::process::id());
    pg_exec(&db.url, &format!("CREATE DATABASE {unmarked}"));

    let src = Migrations::new(&[("1_base.sql", "CREATE TABLE t (id INT);")]);
    let out = run(schemagate(&db.url).args(["check", "--since", "0", "--source", src.path()]));
    assert_exit(&out, 0);
    assert!(
        !database_exists(&db.url, &stale),
        "{stale} survived the next check:\n{}",
        stderr(&out)
    );
    assert!(
        database_exists(&db.url, &running),
        "the scratch database of a running check was dropped"
    );
    assert!(database_exists(&db.url, &unmarked));
    assert_stderr_has(
        &out,
        &format!("the scratch database {unmarked} looks left behind"),
    );
    pg_exec(&db.url, &format!("DROP DATABASE {unmarked}"));
    sigterm(live.id());
    let out = finish(live);
    assert_exit(&out, 143);
    assert!(!database_exists(&db.url, &running));
}

/// issue 20.17 on MySQL: the same for a check killed while it rehearses there.
/// reliability (MariaDB): `check` killed with SIGKILL while it rehearses on MySQL | the next `check` drops the scratch database (marked by its one-row table, no session, its run's GET_LOCK gone) | nothing once a later run has swept
#[test]
fn a_scratch_database_left_by_a_killed_check_on_mysql_is_dropped_by_the_next() {
    let my = MyDb::new("check_stale_my");
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        ("2_slow.sql", "SELECT SLEEP(60);"),
    ]);
    let mut child =
        spawn(schemagate(&my.url).args(["check", "--since", "1", "--source", src.path()]));
    let seen = wait_for_stderr_line(
        &mut child,
        "created scratch database ",
        Duration::from_secs(30),
    );
    let stale = seen
        .split("created scratch database ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let databases = || {
        block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::MySqlConnection::connect(&my.url).await.unwrap();
            sqlx::query_scalar::<_, String>("SHOW DATABASES")
                .fetch_all(&mut c)
                .await
                .unwrap()
        })
    };
    assert!(databases().contains(&stale));
    signal(child.id(), "KILL");
    child.wait().unwrap();
    // MySQL notices a vanished client only when its statement ends: end the orphaned
    // SLEEP as a DBA would (the killed run's lock went with its idle connection).
    until(
        "the killed check's sessions to end",
        Duration::from_secs(30),
        || {
            block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::MySqlConnection::connect(&my.url).await.unwrap();
                let ids = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                     WHERE DB = '{stale}'"
                )))
                .fetch_all(&mut c)
                .await
                .unwrap();
                for id in &ids {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                        .execute(&mut c)
                        .await;
                }
                ids.is_empty()
            })
        },
    );
    let quick = Migrations::new(&[("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);")]);
    let out = run(schemagate(&my.url).args(["check", "--since", "0", "--source", quick.path()]));
    assert_exit(&out, 0);
    assert!(
        !databases().contains(&stale),
        "{stale} survived the next check:\n{}",
        stderr(&out)
    );
}

/// issue 20.17, the same leak in smoke: killed while its check summary rehearses, smoke
/// leaves its own scratch database and the summary's; the next check drops both.
/// reliability: `smoke` killed with SIGKILL during its check summary | the next `check` drops both scratch databases it left (smoke's own and the summary's) | nothing once a later run has swept
#[test]
fn scratch_databases_left_by_a_killed_smoke_are_dropped_by_the_next_check() {
    let db = PgDb::new("check_stale_smoke");
    let src = Migrations::new(&[("1_slow.sql", "SELECT pg_sleep(60);")]);
    let mut child = spawn(
        Command::new(bin())
            .env_remove("DATABASE_URL")
            .env_remove("SCHEMAGATE_DATABASE_URL")
            .args([
                "smoke",
                "--replicas",
                "1",
                "--database-url",
                &db.url,
                "--source",
            ])
            .arg(src.path()),
    );
    let seen = wait_for_stderr_line(
        &mut child,
        "created scratch database ",
        Duration::from_secs(30),
    );
    let summary = seen
        .split("created scratch database ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let own = pg_strings(
        &db.url,
        &format!(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'schemagate\\_smoke\\_{}\\_%'",
            child.id()
        ),
    );
    assert_eq!(own.len(), 1, "{own:?}");
    signal(child.id(), "KILL");
    child.wait().unwrap();
    // The summary's pg_sleep runs on without its client: end it, as a DBA would.
    let stale = [own[0].clone(), summary];
    until(
        "the killed smoke's sessions to end",
        Duration::from_secs(30),
        || {
            stale.iter().all(|name| {
                pg_exec(
                    &db.url,
                    &format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}'"
                    ),
                );
                sessions_on(&db.url, name) == 0
            })
        },
    );
    let quick = Migrations::new(&[("1_base.sql", "CREATE TABLE t (id INT);")]);
    let out = run(schemagate(&db.url).args(["check", "--since", "0", "--source", quick.path()]));
    assert_exit(&out, 0);
    for name in &stale {
        assert!(
            !database_exists(&db.url, name),
            "{name} survived the next check:\n{}",
            stderr(&out)
        );
    }
}

/// issue 20.3a on MySQL and SQLite: a user created (MySQL) or another database file
/// attached (SQLite) by a migration is a finding, and is not run.
#[test]
fn statements_outside_the_scratch_database_on_mysql_and_sqlite_are_findings() {
    let my = MyDb::new("check_outside_my");
    let user = format!("sg_outside_{}", std::process::id());
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INT PRIMARY KEY);"),
        (
            "2_user.sql",
            &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';\nCREATE TABLE u (id INT);"),
        ),
    ]);
    let out =
        run(schemagate(&my.url).args(["check", "--json", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 5);
    assert_eq!(
        verdict(&json(&out)["migrations"][0]),
        format!("outside-database role {user}")
    );
    let users: i64 = block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::MySqlConnection::connect(&my.url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM mysql.user WHERE User = '{user}'"
        )))
        .fetch_one(&mut c)
        .await
        .unwrap()
    });
    assert_eq!(users, 0, "the rehearsal created the user {user}");

    let other = std::env::temp_dir().join(format!("schemagate-attached-{}.db", std::process::id()));
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY);"),
        (
            "2_attach.sql",
            &format!(
                "ATTACH DATABASE '{}' AS other;\nCREATE TABLE other.hijacked (id INTEGER);",
                other.display()
            ),
        ),
    ]);
    let app = std::env::temp_dir().join(format!("schemagate-check-att-{}.db", std::process::id()));
    let out = run(schemagate(&format!("sqlite://{}", app.display())).args([
        "check",
        "--since",
        "1",
        "--source",
        src.path(),
    ]));
    // The attach is left out, so the statement that needs it fails, saying why.
    assert_exit(&out, 1);
    assert_stderr_has(&out, "`ATTACH DATABASE");
    assert!(!other.exists(), "the rehearsal wrote {}", other.display());
}

/// issue 20.3a, what words cannot show: a function that calls dblink_exec, run by the
/// migration, reaches the real database. The before/after comparison catches it: exit 1,
/// a `changed-real-database` finding naming the migration and the new table, and the
/// rehearsal stops there.
/// reliability: a migration under `check` reaches the real database through a function (dblink_exec inside a function body) | exit 1, a `changed-real-database` finding naming the migration and what changed; the rehearsal stops at that migration | what that statement did to the real database (check cannot undo it; it says what)
#[test]
fn a_migration_that_reaches_the_real_database_through_a_function_fails_the_check() {
    let app = PgDb::new("check_reach");
    let real = db_name(&app.url);
    let parsed = url::Url::parse(&app.url).unwrap();
    let conninfo = format!(
        "host={} port={} dbname={real} user=postgres password={PASSWORD}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap()
    );
    let src = Migrations::new(&[
        ("1_base.sql", "CREATE EXTENSION IF NOT EXISTS dblink;"),
        (
            "2_reach.sql",
            &format!(
                "CREATE FUNCTION reach() RETURNS text LANGUAGE sql AS \
                 $$ SELECT dblink_exec('{conninfo}', 'CREATE TABLE reached (id int)') $$;\n\
                 SELECT reach();"
            ),
        ),
        ("3_later.sql", "CREATE TABLE later (id INT);"),
    ]);
    let out =
        run(schemagate(&app.url).args(["check", "--json", "--since", "1", "--source", src.path()]));
    assert_exit(&out, 1);
    let report = json(&out);
    let migrations = report["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 1, "the rehearsal went on: {report}");
    assert_eq!(
        verdict(&migrations[0]),
        format!("changed-real-database database {real}")
    );
    let detail = migrations[0]["findings"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("new relation public.reached"), "{detail}");
    assert_stderr_has(
        &out,
        &format!("changed-real-database database {real} (2 reach)"),
    );
}
