//! Where the migrations table comes from and how it reaches the SQL, on every backend:
//! `--migrations-table`, else `[migrate] table-name` in the source's `sqlx.toml`, resolved
//! once before anything runs. Another app's history in `_sqlx_migrations` stays untouched.

use std::time::{Duration, SystemTime};

use crate::harness::*;

fn ok(out: &std::process::Output) {
    assert_eq!(code(out), 0, "{}", stderr(out));
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
    assert!(stderr(&out).contains("already applied"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ignoring"), "{}", stderr(&out));
    ok(&wait());
    // Correct as well as fast: the history it cross-checks is the named table's.
    std::fs::write(&path, &bytes).unwrap();
    set_modified(&path, time);
    db.exec("DELETE FROM other_history WHERE version = 2");
    db.exec("DROP TABLE b");
    let out = wait();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("other_history records 1 of this build's 2 migrations"),
        "{}",
        stderr(&out)
    );
    let out = migrate();
    ok(&out);
    assert!(stderr(&out).contains("applying 2 (b)"), "{}", stderr(&out));
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
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sqlx.toml was modified after it was written"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("has been modified"),
        "{}",
        stderr(&out)
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
    digest_fast_path_reads_the_table_a_sqlx_toml_names,
    digest_file_is_stale_once_the_sqlx_toml_changes,
);
