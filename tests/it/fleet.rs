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
    assert_exit(&out, 0);
    let v = summary(&out);
    assert_eq!(
        states(&v),
        pairs(&[("t_a", "applied"), ("t_b", "applied"), ("t_c", "applied")])
    );
    assert_eq!(v["applied"], 3);
    // Not a terminal: progress comes as JSON lines on stderr, the last one at the end.
    let last = stderr(&out)
        .lines()
        .rfind(|l| l.contains("\"fleet.progress\""))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .expect("a progress line");
    assert_eq!(
        (&last["done"], &last["pending"], &last["failed"]),
        (&Value::from(3), &Value::from(0), &Value::from(0))
    );
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
    assert_exit(&again, 0);
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
    assert_exit(&out, 1);
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
    assert_exit(&text, 1);
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
    assert_exit(&out, 1);
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
    assert_exit(&out, 2);
    assert_stderr_has(&out, "no --database-url");
    // A schema per target is PostgreSQL's.
    let my = MyDb::new("fleet_usage");
    let out = run(&mut fleet(&my.url, &targets, &src));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "needs PostgreSQL");
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'"
        ),
        0,
        "nothing may run after a usage error"
    );
}

/// Schemas whose second migration fails: an `apply_log` table is there already.
fn break_schemas(db: &PgDb, schemas: &[&str]) {
    for s in schemas {
        pg_exec(
            &db.url,
            &format!("CREATE SCHEMA {s}; CREATE TABLE {s}.apply_log (version int)"),
        );
    }
}

fn schema_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:02}")).collect()
}

/// reliability: `--max-failed 1` (and `10%` of 10) with targets failing one after another | no target is started once the second failure is in; the rest are listed `skipped`, and nothing of them is created | nothing
#[test]
fn max_failed_starts_no_new_target_once_crossed() {
    for limit in ["1", "10%"] {
        let db = PgDb::new("fleet_maxfailed");
        let names = schema_names(10);
        break_schemas(&db, &["t01", "t02", "t03"]);
        let lines: Vec<&str> = names.iter().map(String::as_str).collect();
        let targets = Targets::new(&lines);
        let out = run(fleet(&db.url, &targets, &tenant_migrations()).args([
            "--json",
            "--parallel",
            "1",
            "--max-failed",
            limit,
        ]));
        assert_exit(&out, 1);
        let v = summary(&out);
        let got: Vec<String> = states(&v).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            got,
            ["applied", "failed", "failed"]
                .into_iter()
                .chain(["skipped"; 7])
                .collect::<Vec<_>>(),
            "{limit}"
        );
        assert!(
            v["stopped"]
                .as_str()
                .unwrap()
                .contains("--max-failed 1 crossed"),
            "{v}"
        );
        // t03 (broken too) was never tried: no marker table in it.
        assert_eq!(
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_tables WHERE tablename = 'schemagate_marker'"
            ),
            3
        );
    }
}

/// reliability: `--canary 2` whose second canary fails | none of the other targets starts; they are listed `skipped` | nothing
#[test]
fn a_failed_canary_keeps_the_rest_from_starting() {
    let db = PgDb::new("fleet_canary");
    let names = schema_names(5);
    let lines: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = Targets::new(&lines);
    break_schemas(&db, &["t01"]);
    let out = run(fleet(&db.url, &targets, &tenant_migrations()).args([
        "--json",
        "--canary",
        "2",
        "--parallel",
        "4",
    ]));
    assert_exit(&out, 1);
    let v = summary(&out);
    let got: Vec<String> = states(&v).into_iter().map(|(_, s)| s).collect();
    assert_eq!(got, ["applied", "failed", "skipped", "skipped", "skipped"]);
    assert!(v["stopped"].as_str().unwrap().contains("canary"), "{v}");
    // Fixed, the rerun applies the rest and leaves the first alone.
    pg_exec(&db.url, "DROP TABLE t01.apply_log");
    let out = run(fleet(&db.url, &targets, &tenant_migrations()).args(["--json", "--canary", "2"]));
    assert_exit(&out, 0);
    let got: Vec<String> = states(&summary(&out)).into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        got,
        ["up-to-date", "applied", "applied", "applied", "applied"]
    );
}

/// reliability: one tenant's lock held by another session, another tenant's migration stuck for a minute, `--target-timeout 3s` | each fails alone with exit code 124 in its line (the stuck migration rolled back, a `failed` marker written); the others are applied | the stuck target's migration
#[test]
fn a_stuck_tenant_fails_alone_at_its_target_timeout() {
    let db = PgDb::new("fleet_timeout");
    let src = Migrations::new(&[
        ("0001_users.sql", "CREATE TABLE users (id int PRIMARY KEY);"),
        (
            "0002_slow.sql",
            "DO $$ BEGIN IF current_schema() = 't_slow' THEN PERFORM pg_sleep(60); END IF; END $$;\n\
             CREATE TABLE apply_log (version int);",
        ),
    ]);
    let _held = hold_advisory_lock(&db.url, lock_key("schemagate:t_locked.schemagate_marker"));
    let targets = Targets::new(&["t_locked", "t_slow", "t_ok"]);
    let t = std::time::Instant::now();
    let out = run(fleet(&db.url, &targets, &src).args(["--json", "--target-timeout", "3s"]));
    assert_exit(&out, 1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(40),
        "a stuck target held the fleet"
    );
    let v = summary(&out);
    assert_eq!(
        states(&v),
        pairs(&[
            ("t_locked", "failed"),
            ("t_slow", "failed"),
            ("t_ok", "applied")
        ])
    );
    for i in [0, 1] {
        assert_eq!(v["results"][i]["exit_code"], 124, "{v}");
    }
    assert!(
        v["results"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("--target-timeout 3s passed"),
        "{v}"
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM t_slow.schemagate_marker WHERE status = 'failed'"
        ),
        1
    );
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM t_slow._sqlx_migrations"),
        1,
        "the stuck migration must be rolled back"
    );
}

/// reliability: 12 schemas to migrate at `--parallel 3` as a role whose CONNECTION LIMIT is 4 | no connection is ever refused (the advisory lock is proven once per server, not once per target), and sampled pg_stat_activity never shows more than 4 | nothing
#[test]
fn parallel_n_holds_at_most_n_plus_1_connections() {
    let db = PgDb::new("fleet_conns");
    let role = format!("fleet_role_{}", std::process::id());
    pg_exec(
        &db.url,
        &format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}' CONNECTION LIMIT 4"
        ),
    );
    let dbname = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    pg_exec(&db.url, &format!("ALTER DATABASE {dbname} OWNER TO {role}"));
    let url = db
        .url
        .replacen("postgres://postgres:", &format!("postgres://{role}:"), 1);
    let src = Migrations::new(&[
        ("0001_users.sql", "CREATE TABLE users (id int PRIMARY KEY);"),
        ("0002_slow.sql", "SELECT pg_sleep(0.3);"),
    ]);
    let names = schema_names(12);
    let lines: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = Targets::new(&lines);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, admin, role) = (stop.clone(), db.url.clone(), role.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(pg_i64(
                    &admin,
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"),
                ));
            }
            peak
        })
    };
    let out = run(fleet(&url, &targets, &src).args(["--json", "--parallel", "3"]));
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    pg_exec(
        &db.url,
        &format!("ALTER DATABASE {dbname} OWNER TO postgres"),
    );
    pg_exec(&db.url, &format!("DROP OWNED BY {role} CASCADE"));
    assert_exit(&out, 0);
    assert_eq!(summary(&out)["applied"], 12);
    assert!(
        !stderr(&out).contains("cannot connect"),
        "a connection was refused:\n{}",
        stderr(&out)
    );
    assert!(peak <= 4, "peak {peak} connections");
    assert!(peak >= 2, "the sampler saw no overlap (peak {peak})");
}

#[test]
fn targets_from_a_command_and_from_a_catalog_query() {
    let db = PgDb::new("fleet_lists");
    let src = tenant_migrations();
    let mut c = schemagate(&db.url);
    c.args([
        "fleet",
        "--source",
        src.path(),
        "--json",
        "--targets-cmd",
        "printf 't_a\\nt_b\\n'",
    ]);
    let out = run(&mut c);
    assert_exit(&out, 0);
    assert_eq!(
        states(&summary(&out)),
        pairs(&[("t_a", "applied"), ("t_b", "applied")])
    );

    pg_exec(
        &db.url,
        "CREATE TABLE public.tenants (name text, active bool); \
         INSERT INTO public.tenants VALUES ('t_a', true), ('t_c', true), ('t_x', false)",
    );
    let mut c = schemagate(&db.url);
    c.args([
        "fleet",
        "--source",
        src.path(),
        "--json",
        "--targets-query",
        "SELECT name FROM public.tenants WHERE active ORDER BY name",
    ]);
    let out = run(&mut c);
    assert_exit(&out, 0);
    assert_eq!(
        states(&summary(&out)),
        pairs(&[("t_a", "up-to-date"), ("t_c", "applied")])
    );

    // A command that fails starts nothing.
    let mut c = schemagate(&db.url);
    c.args([
        "fleet",
        "--source",
        src.path(),
        "--targets-cmd",
        "echo t_z; exit 3",
    ]);
    let out = run(&mut c);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "exit");
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 't_z'"
        ),
        0
    );
}

/// Three migrations, each logging itself in `apply_log` of the target: a test counts how
/// often each ran.
fn logged_migrations() -> Migrations {
    Migrations::new(&[
        (
            "0001_log.sql",
            "CREATE TABLE apply_log (version int); INSERT INTO apply_log VALUES (1);",
        ),
        (
            "0002_users.sql",
            "CREATE TABLE users (id int); SELECT pg_sleep(0.02); INSERT INTO apply_log VALUES (2);",
        ),
        ("0003_more.sql", "INSERT INTO apply_log VALUES (3);"),
    ])
}

/// Every schema in `names` has each of the three migrations applied exactly once.
fn assert_each_applied_once(db: &PgDb, names: &[String]) {
    for s in names {
        assert_eq!(
            pg_strings(
                &db.url,
                &format!(
                    "SELECT string_agg(version::text, ',' ORDER BY version) FROM {s}.apply_log"
                )
            ),
            ["1,2,3"],
            "schema {s}"
        );
    }
}

/// Start a fleet, read its stderr until `n` targets have finished applying, and SIGKILL it.
fn kill_after(cmd: &mut Command, n: usize) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ready = 0;
    for line in stderr.lines() {
        let line = line.unwrap();
        assert!(!line.contains(PASSWORD), "{line}");
        if line.contains(" ready: ") {
            ready += 1;
            if ready == n {
                signal(child.id(), "KILL");
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(ready, n, "the fleet ended before {n} targets were applied");
}

/// reliability: `kill -9` of the fleet process twice, at different points of a 30-schema run, then a rerun | the reruns apply what is missing: every migration of every schema applied exactly once (counted in the rows each inserts); the last rerun exits 0 | the transactions in flight at each kill (rolled back; applied by the rerun)
#[test]
fn a_rerun_after_kill_9_applies_every_target_exactly_once() {
    let db = PgDb::new("fleet_resume");
    let src = logged_migrations();
    let names = schema_names(30);
    let lines: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = Targets::new(&lines);
    kill_after(fleet(&db.url, &targets, &src).args(["--parallel", "4"]), 3);
    kill_after(fleet(&db.url, &targets, &src).args(["--parallel", "6"]), 8);
    let out = run(fleet(&db.url, &targets, &src).args(["--json", "--parallel", "4"]));
    assert_exit(&out, 0);
    let v = summary(&out);
    let up_to_date = v["up_to_date"].as_u64().unwrap();
    assert!(up_to_date >= 11, "{v}");
    assert_eq!(v["applied"].as_u64().unwrap() + up_to_date, 30, "{v}");
    assert_each_applied_once(&db, &names);
}

/// reliability: three shards of 20 schemas (`--shard I/3`) run at once, plus a duplicate of shard 1 (an Indexed Job's retried index) | every schema lands in exactly one shard and is applied exactly once; the duplicate finds its targets applied | nothing
#[test]
fn shards_cover_every_target_once_and_a_duplicated_index_applies_nothing_twice() {
    let db = PgDb::new("fleet_shards");
    let src = logged_migrations();
    let names = schema_names(20);
    let lines: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = Targets::new(&lines);
    let mut children = Vec::new();
    for shard in ["0/3", "1/3", "2/3", "1/3"] {
        children.push(spawn(
            fleet(&db.url, &targets, &src).args(["--json", "--shard", shard]),
        ));
    }
    let mut listed: Vec<Vec<String>> = Vec::new();
    for child in children {
        let out = finish(child);
        assert_exit(&out, 0);
        listed.push(states(&summary(&out)).into_iter().map(|(t, _)| t).collect());
    }
    assert_eq!(listed[1], listed[3], "one index, one set of targets");
    let mut all: Vec<String> = listed[..3].concat();
    all.sort();
    assert_eq!(all, names, "the shards split the targets");
    assert_each_applied_once(&db, &names);

    // --shards N with JOB_COMPLETION_INDEX, as an Indexed Job's pod runs it.
    let out = run(fleet(&db.url, &targets, &src)
        .args(["--json", "--shards", "3"])
        .env("JOB_COMPLETION_INDEX", "1"));
    assert_exit(&out, 0);
    let v = summary(&out);
    assert_eq!(v["shard"], "1/3");
    let got: Vec<String> = states(&v).into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, listed[1]);
    let out = run(fleet(&db.url, &targets, &src)
        .args(["--shards", "3"])
        .env("JOB_COMPLETION_INDEX", "3"));
    assert_exit(&out, 2);
}

/// reliability: an external migrator over a fleet of schemas (`-- sh -c 'psql {url} …{schema}…'`), run twice | each target's command gets its own `{schema}`, `{url}`, DATABASE_URL and SCHEMAGATE_TARGET and runs once under that target's lock; the rerun runs nothing | nothing
#[test]
fn an_external_migrator_runs_once_per_target_with_its_url_and_schema() {
    let db = PgDb::new("fleet_external");
    let targets = Targets::new(&["t_a", "t_b"]);
    let script = "psql '{url}' -v ON_ERROR_STOP=1 -q -c \
                  \"CREATE TABLE {schema}.ext (who text, url text); \
                  INSERT INTO {schema}.ext VALUES ('$SCHEMAGATE_TARGET', '$DATABASE_URL')\"";
    let fleet_ext = || {
        let mut c = schemagate(&db.url);
        c.args([
            "fleet",
            "--targets",
            &targets.path(),
            "--json",
            "--version",
            "v1",
            "--",
            "sh",
            "-c",
            script,
        ]);
        c
    };
    let out = run(&mut fleet_ext());
    assert_exit(&out, 0);
    assert_eq!(
        states(&summary(&out)),
        pairs(&[("t_a", "applied"), ("t_b", "applied")])
    );
    for s in ["t_a", "t_b"] {
        assert_eq!(
            pg_strings(&db.url, &format!("SELECT who || ' ' || url FROM {s}.ext")),
            [format!("{s} {}", db.url)]
        );
        assert_eq!(
            pg_strings(
                &db.url,
                &format!("SELECT version || ' ' || status FROM {s}.schemagate_marker")
            ),
            ["v1 succeeded"]
        );
    }
    let again = run(&mut fleet_ext());
    assert_exit(&again, 0);
    assert_eq!(
        states(&summary(&again)),
        pairs(&[("t_a", "up-to-date"), ("t_b", "up-to-date")])
    );
}

/// `wait --target SCHEMA` gates one tenant's pods on its own schema's marker and history.
#[test]
fn wait_target_gates_on_one_tenants_schema() {
    let db = PgDb::new("fleet_wait");
    let src = tenant_migrations();
    let targets = Targets::new(&["t_a"]);
    let wait = |schema: &str| {
        run(schemagate(&db.url).args([
            "wait",
            "--target",
            schema,
            "--source",
            src.path(),
            "--once",
        ]))
    };
    assert_eq!(code(&wait("t_a")), 1, "nothing applied yet");
    let out = run(&mut fleet(&db.url, &targets, &src));
    assert_exit(&out, 0);
    let ready = wait("t_a");
    assert_exit(&ready, 0);
    // Another tenant, not migrated, is not ready; nor is the database's public schema.
    assert_exit(&wait("t_b"), 1);
    let plain = run(schemagate(&db.url).args(["wait", "--source", src.path(), "--once"]));
    assert_exit(&plain, 1);
    let bad = wait("t-a");
    assert_exit(&bad, 2);
}

/// reliability: SIGTERM to a fleet while 2 of 10 targets are mid-migration | those two are stopped as `migrate` stops (rolled back, `failed` markers), no other target starts, the summary lists them all; exit 143 | the two migrations in flight (rolled back)
#[test]
fn sigterm_stops_the_targets_in_flight_and_starts_no_other() {
    let db = PgDb::new("fleet_sigterm");
    let src = Migrations::new(&[
        ("0001_users.sql", "CREATE TABLE users (id int PRIMARY KEY);"),
        ("0002_slow.sql", "SELECT pg_sleep(60);"),
    ]);
    let names = schema_names(10);
    let lines: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = Targets::new(&lines);
    let mut child = spawn(fleet(&db.url, &targets, &src).args(["--json", "--parallel", "2"]));
    wait_for_stderr_line(
        &mut child,
        "applying 2 (slow)",
        std::time::Duration::from_secs(60),
    );
    until(
        "both targets in their slow migration",
        std::time::Duration::from_secs(30),
        || {
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            ) == 2
        },
    );
    sigterm(child.id());
    let out = finish(child);
    assert_exit(&out, 143);
    let v = summary(&out);
    let got: Vec<String> = states(&v).into_iter().map(|(_, s)| s).collect();
    assert_eq!(got[..2], ["failed", "failed"], "{v}");
    assert!(got[2..].iter().all(|s| s == "skipped"), "{v}");
    assert!(v["stopped"].as_str().unwrap().contains("SIGTERM"), "{v}");
    for s in &names[..2] {
        assert_eq!(
            pg_i64(
                &db.url,
                &format!("SELECT count(*) FROM {s}.schemagate_marker WHERE status = 'failed'")
            ),
            1
        );
        assert_eq!(
            pg_i64(
                &db.url,
                &format!("SELECT count(*) FROM {s}._sqlx_migrations")
            ),
            1
        );
    }
}

/// `fleet --dry-run` prints each target's plan and changes nothing.
#[test]
fn dry_run_changes_no_target() {
    let db = PgDb::new("fleet_dry");
    let targets = Targets::new(&["t_a", "t_b"]);
    let out = run(fleet(&db.url, &targets, &tenant_migrations()).args(["--json", "--dry-run"]));
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = &stdout[stdout.find("{\n").expect("the summary")..];
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(states(&v), pairs(&[("t_a", "dry-run"), ("t_b", "dry-run")]));
    assert_eq!(stdout.matches("would apply 2 migration(s)").count(), 2);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('t_a', 't_b')"
        ),
        0
    );
}

/// `status --targets` (issue 24): one line per target, read-only: applied targets are up to
/// date, one the fleet never reached is never-migrated, one behind the source is pending,
/// a hand-edited one is drift, and an unreachable one is named and makes the exit 1.
#[test]
fn status_targets_summarises_every_target_without_changing_any() {
    let db = PgDb::new("fleet_status");
    let src = tenant_migrations();
    let applied = Targets::new(&["t_a", "t_b", "t_c"]);
    let out = run(&mut fleet(&db.url, &applied, &src));
    assert_exit(&out, 0);
    // t_c drifts: its applied migration 1 no longer matches the file.
    pg_exec(
        &db.url,
        "UPDATE t_c._sqlx_migrations SET checksum = '\\x00' WHERE version = 1",
    );
    // A third migration the targets have not had yet, and a target never migrated.
    src.write("0003_more.sql", "CREATE TABLE more (id int);");
    let all = Targets::new(&["t_a", "t_b", "t_c", "t_new"]);
    let status = |targets: &Targets| {
        run(schemagate(&db.url).args([
            "status",
            "--targets",
            &targets.path(),
            "--source",
            src.path(),
            "--json",
        ]))
    };
    let out = status(&all);
    assert_exit(&out, 0);
    let v = summary(&out);
    assert_eq!(
        states(&v),
        pairs(&[
            ("t_a", "pending"),
            ("t_b", "pending"),
            ("t_c", "drift"),
            ("t_new", "never-migrated"),
        ])
    );
    assert_eq!(v["results"][0]["pending"], 1);
    assert_eq!(v["states"]["pending"], 2);
    // Nothing was changed: t_new has no schema, t_a still two migrations.
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 't_new'"
        ),
        0
    );
    let out = run(&mut fleet(&db.url, &Targets::new(&["t_a", "t_b"]), &src));
    assert_exit(&out, 0);
    let out = status(&all);
    assert_eq!(
        states(&summary(&out))[..2],
        pairs(&[("t_a", "up-to-date"), ("t_b", "up-to-date")])[..]
    );
    // A target given as a URL nobody answers at: listed as unreadable, exit 1, the rest read.
    let dead = TestDb::unreachable_url(Kind::Pg);
    let mixed = Targets::new(&["t_a", &dead]);
    let out = run(schemagate(&db.url).args([
        "status",
        "--targets",
        &mixed.path(),
        "--source",
        src.path(),
        "--connect-timeout",
        "1s",
    ]));
    assert_exit(&out, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("2 target(s): 1 unreadable, 1 up-to-date"),
        "{text}"
    );
    assert!(text.contains("up-to-date      t_a"), "{text}");
}
