//! Where the migrations table comes from and how it reaches the SQL, on every backend:
//! `--migrations-table`, else `[migrate] table-name` in the source's `sqlx.toml`, resolved
//! once before anything runs. Another app's history in `_sqlx_migrations` stays untouched.

use std::time::{Duration, SystemTime};

use crate::harness::*;

fn ok(out: &std::process::Output) {
    assert_exit(out, 0);
}

/// Every row of `table` as `version:checksum:success`, in version order.
fn history(db: &TestDb, table: &str) -> Vec<String> {
    db.strings(&match db.kind() {
        Kind::Pg => format!(
            "SELECT version::text || ':' || encode(checksum, 'hex') || ':' || success::text \
             FROM {table} ORDER BY version"
        ),
        Kind::My => format!(
            "SELECT CONCAT(CAST(version AS CHAR), ':', LOWER(HEX(checksum)), ':', \
             CAST(success AS CHAR)) FROM {table} ORDER BY version"
        ),
        Kind::Lite => format!(
            "SELECT version || ':' || lower(hex(checksum)) || ':' || success \
             FROM {table} ORDER BY version"
        ),
    })
}

/// Another app's migrations, applied by schemagate to the default `_sqlx_migrations` (with
/// its own marker table), with versions that collide with ours: what a run told to use
/// another table must leave exactly as it was. Returns its rows.
fn other_app(db: &TestDb) -> Vec<String> {
    let other = Migrations::new(&[
        ("1_other.sql", "CREATE TABLE other_one (id int);"),
        ("2_other.sql", "CREATE TABLE other_two (id int);"),
        ("3_other.sql", "CREATE TABLE other_three (id int);"),
    ]);
    ok(&run(schemagate(db.url()).args([
        "migrate",
        "--table",
        "other_marker",
        "--source",
        other.path(),
    ])));
    let rows = history(db, "_sqlx_migrations");
    assert_eq!(rows.len(), 3, "{rows:?}");
    rows
}

fn digest(src: &Migrations) {
    let out = run(std::process::Command::new(bin()).args(["digest", "--source", src.path()]));
    ok(&out);
}

fn modified(path: &std::path::Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap()
}

fn set_modified(path: &std::path::Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time))
        .unwrap();
}

// ----- --migrations-table on every command (issue 20) -----

/// reliability (PostgreSQL, MariaDB, SQLite): `--migrations-table other_history` on every command (`migrate`, `wait --source`, `status --source`, `rollback`, `stamp` with and without a source, a dirty `-- no-transaction` migration and its repair, `check`) while another app's history, with the same versions, lives in `_sqlx_migrations` | every command reads and writes `other_history` only; the dirty migration's repair names it | nothing: the other app's rows and checksums are unchanged (before: `stamp` and a dirty migration on MySQL and SQLite wrote into `_sqlx_migrations`)
fn migrations_table_flag_is_used_by_every_command(kind: Kind) {
    let db = TestDb::new(kind, "mtable_flag");
    let others = other_app(&db);
    let src = Migrations::new(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("1_a.down.sql", "DROP TABLE a;"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ("2_b.down.sql", "DROP TABLE b;"),
    ]);
    let sg = |args: &[&str]| {
        let mut c = schemagate(db.url());
        c.args(args).args(["--migrations-table", "other_history"]);
        run(&mut c)
    };
    let dir = src.path();
    ok(&sg(&["migrate", "--source", dir]));
    let ours = history(&db, "other_history");
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(ours.iter().all(|r| !others.contains(r)), "{ours:?}");
    ok(&sg(&["wait", "--once", "--source", dir]));

    let out = sg(&["status", "--json", "--source", dir]);
    ok(&out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let applied: Vec<(i64, &str)> = status["migrations"]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["version"].as_i64().unwrap(),
                a["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(applied, [(1, "ok"), (2, "ok")], "{status}");
    assert_eq!(status["migrations"]["pending"], serde_json::json!([]));

    ok(&sg(&["rollback", "--to", "1", "--source", dir]));
    assert_eq!(history(&db, "other_history"), ours[..1]);
    assert!(!db.table_exists("b"));
    // Recorded as applied without running it: the same row `migrate` wrote.
    ok(&sg(&["stamp", "2", "--source", dir]));
    assert_eq!(history(&db, "other_history"), ours);
    assert!(!db.table_exists("b"), "stamp ran a migration");
    ok(&sg(&["stamp", "2"]));
    db.exec("CREATE TABLE b (id int)");
    let out = sg(&["check", "--since", "1", "--source", dir]);
    ok(&out);

    // A `-- no-transaction` migration that fails part-way is recorded dirty in the table,
    // and the repair names it.
    src.write(
        "3_half.up.sql",
        "-- no-transaction\nCREATE TABLE half (id int);\nINSERT INTO no_such_table VALUES (1);",
    );
    assert_exit(&sg(&["migrate", "--source", dir]), 1);
    let out = sg(&["migrate", "--source", dir]);
    assert_exit(&out, 4);
    assert!(
        stderr(&out).contains("migration 3 is dirty")
            && stderr(&out).contains("DELETE FROM other_history WHERE version = 3"),
        "{}",
        stderr(&out)
    );
    if !db.table_exists("half") {
        db.exec("CREATE TABLE half (id int)");
    }
    ok(&sg(&["stamp", "3", "--source", dir]));
    let out = sg(&["migrate", "--source", dir]);
    ok(&out);
    assert_stderr_has(&out, "already applied");
    ok(&sg(&["wait", "--once", "--source", dir]));
    assert_eq!(history(&db, "other_history").len(), 3);

    assert_eq!(history(&db, "_sqlx_migrations"), others);
    assert_eq!(db.i64("SELECT count(*) FROM other_marker"), 1);
}

// ----- the digest file's fast path with a sqlx.toml (issue 22) -----

/// reliability (PostgreSQL, MariaDB, SQLite): a source whose sqlx.toml names another migrations table, with a digest file, beside another app's history in `_sqlx_migrations` | the no-op `migrate` and `wait --source` take the digest file's fast path (no migration is read), and their cross-check reads the named table: after an out-of-band revert there, `wait` is not ready and `migrate` applies the migration again | nothing: the other app's rows are untouched
fn digest_fast_path_reads_the_table_a_sqlx_toml_names(kind: Kind) {
    let db = TestDb::new(kind, "digest_toml");
    let others = other_app(&db);
    let src = Migrations::new(&[
        ("sqlx.toml", "[migrate]\ntable-name = \"other_history\"\n"),
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ]);
    let migrate = || run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    let wait = || run(schemagate(db.url()).args(["wait", "--once", "--source", src.path()]));
    ok(&migrate());
    assert_eq!(history(&db, "other_history").len(), 2);
    digest(&src);
    // An edit the digest file's check cannot see (same size, the old time), which makes the
    // file unreadable as a migration: only a run that reads no migration still succeeds.
    let path = src.dir.join("2_b.sql");
    let (bytes, time) = (std::fs::read(&path).unwrap(), modified(&path));
    std::fs::write(&path, vec![0xff; bytes.len()]).unwrap();
    set_modified(&path, time);
    let out = migrate();
    ok(&out);
    assert_stderr_has(&out, "already applied");
    assert_stderr_lacks(&out, "ignoring");
    ok(&wait());
    // Correct as well as fast: the history it cross-checks is the named table's.
    std::fs::write(&path, &bytes).unwrap();
    set_modified(&path, time);
    db.exec("DELETE FROM other_history WHERE version = 2");
    db.exec("DROP TABLE b");
    let out = wait();
    assert_exit(&out, 1);
    assert_stderr_has(&out, "other_history records 1 of this build's 2 migrations");
    let out = migrate();
    ok(&out);
    assert_stderr_has(&out, "applying 2 (b)");
    assert!(db.table_exists("b"));
    assert_eq!(history(&db, "other_history").len(), 2);
    assert_eq!(history(&db, "_sqlx_migrations"), others);
}

/// reliability (PostgreSQL, MariaDB, SQLite): the sqlx.toml's `ignored-chars` change after `schemagate digest` wrote the digest file (so every checksum, and the digest, changes) | the digest file is ignored with a warning naming the sqlx.toml, every migration is read, and the changed checksum is drift: exit 4 | nothing
fn digest_file_is_stale_once_the_sqlx_toml_changes(kind: Kind) {
    let db = TestDb::new(kind, "digest_toml_changed");
    let src = Migrations::new(&[
        ("sqlx.toml", "[migrate]\nignored-chars = [\"\\r\"]\n"),
        ("1_a.sql", "CREATE TABLE a (id int);\r\n"),
    ]);
    let migrate = || run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    ok(&migrate());
    digest(&src);
    let written = modified(&src.dir.join(".schemagate-digest"));
    src.write("sqlx.toml", "[migrate]\n");
    set_modified(&src.dir.join("sqlx.toml"), written + Duration::from_secs(1));
    let out = migrate();
    assert_exit(&out, 4);
    assert_stderr_has(&out, "sqlx.toml was modified after it was written");
    assert_stderr_has(&out, "has been modified");
}

// ----- the sqlx.toml at the crate root (issue 21) -----

/// reliability (PostgreSQL, MariaDB, SQLite): a crate keeps its sqlx.toml at the crate root, beside Cargo.toml and three levels above the migrations (durable's layout), with another sqlx.toml above the crate | `migrate`, `wait --source` and `status --source` use the table the crate's sqlx.toml names and log the file they used; the one above the crate root is never read, even when the crate has none | nothing: another app's history in `_sqlx_migrations` is untouched (before: the file was not found, and the runs read `_sqlx_migrations`)
fn sqlx_toml_at_the_crate_root_names_the_table(kind: Kind) {
    let db = TestDb::new(kind, "crate_root");
    let others = other_app(&db);
    let ws = Migrations::new(&[(
        "sqlx.toml",
        "[migrate]\ntable-name = \"workspace_history\"\n",
    )]);
    let root = ws.dir.join("crate");
    let dir = root.join("a/b/migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    let toml = root.join("sqlx.toml");
    std::fs::write(&toml, "[migrate]\ntable-name = \"crate_history\"\n").unwrap();
    std::fs::write(dir.join("1_a.sql"), "CREATE TABLE a (id int);").unwrap();
    std::fs::write(dir.join("2_b.sql"), "CREATE TABLE b (id int);").unwrap();
    let dir = dir.to_str().unwrap();
    let sg = |args: &[&str]| run(schemagate(db.url()).args(args));
    let used = format!(
        "INFO using {}: migrations table crate_history",
        toml.display()
    );
    let applied = |out: &std::process::Output| -> Vec<i64> {
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["migrations"]["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["version"].as_i64().unwrap())
            .collect()
    };
    for args in [
        &["migrate", "--source", dir][..],
        &["wait", "--once", "--source", dir],
        &["status", "--json", "--source", dir],
    ] {
        let out = sg(args);
        ok(&out);
        assert!(stderr(&out).contains(&used), "{args:?}: {}", stderr(&out));
        if args[0] == "status" {
            assert_eq!(applied(&out), [1, 2]);
        }
    }
    assert_eq!(history(&db, "crate_history").len(), 2);
    assert!(!db.table_exists("workspace_history"));
    // Without the crate's own, the search stops at the crate root all the same: sqlx's
    // default table, whose rows are the other app's.
    std::fs::remove_file(&toml).unwrap();
    let out = sg(&["status", "--json", "--source", dir]);
    ok(&out);
    assert_stderr_lacks(&out, "sqlx.toml");
    assert_eq!(applied(&out), [1, 2, 3]);
    assert!(!db.table_exists("workspace_history"));
    assert_eq!(history(&db, "_sqlx_migrations"), others);
}

/// `--migrations-table` wins over the sqlx.toml's `table-name`, and says so; a bad
/// `table-name` is a usage error naming the value and the file, before anything connects.
#[test]
fn the_flag_overrides_the_sqlx_toml_and_a_bad_name_is_refused() {
    let db = PgDb::new("toml_flag");
    let src = Migrations::new(&[
        ("sqlx.toml", "[migrate]\ntable-name = \"toml_history\"\n"),
        ("1_a.sql", "CREATE TABLE a (id int);"),
    ]);
    let toml = src.dir.join("sqlx.toml");
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--migrations-table",
        "flag_history",
    ]));
    ok(&out);
    assert_stderr_has(
        &out,
        &format!(
            "using {}: migrations table flag_history (--migrations-table, which overrides its \
             table-name \"toml_history\")",
            toml.display()
        ),
    );
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM flag_history"), 1);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'toml_history'"
        ),
        0
    );
    src.write("sqlx.toml", "[migrate]\ntable-name = \"bad-name\"\n");
    let out = run(schemagate(&TestDb::unreachable_url(Kind::Pg)).args([
        "wait",
        "--once",
        "--source",
        src.path(),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(
        &out,
        &format!(
            "invalid migrations table \"bad-name\" ([migrate] table-name in {})",
            toml.display()
        ),
    );
    assert_no_secret(&out);
}

on_every_backend!(
    sqlx_toml_at_the_crate_root_names_the_table,
    migrations_table_flag_is_used_by_every_command,
    digest_fast_path_reads_the_table_a_sqlx_toml_names,
    digest_file_is_stale_once_the_sqlx_toml_changes,
);

/// `migrate --table app.marker --migrations-table app._sqlx_migrations` on a new database:
/// the migrations table was created before the schema the marker's DDL creates.
#[test]
fn migrations_table_in_a_schema_not_created_yet() {
    let db = PgDb::new("schema_first");
    let src = Migrations::new(&[
        ("0001_users.sql", "CREATE TABLE users (id int PRIMARY KEY);"),
        (
            "0002_orders.sql",
            "CREATE TABLE orders (id int PRIMARY KEY);",
        ),
    ]);
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--table",
        "app.marker",
        "--migrations-table",
        "app._sqlx_migrations",
    ]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM app._sqlx_migrations"),
        2
    );
}
