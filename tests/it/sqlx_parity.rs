//! sqlx-cli parity for SQL sources: a `sqlx.toml` beside the source (`[migrate] table-name`
//! and `ignored-chars`), `--migrations-table` (and its env var) for apps sharing one
//! database, and `--ignore-missing` for two migration tracks in one history.

use sha2::{Digest, Sha384};

use crate::harness::*;

fn migrate(db: &PgDb, dir: &str) -> std::process::Output {
    run(schemagate(&db.url).args(["migrate", "--source", dir]))
}

/// reliability: a source whose sqlx.toml sets `table-name = "__durable_sqlx_migrations"` | history read and written there, never in `_sqlx_migrations`; re-runs skip | nothing (before: every migration re-applied and failing)
#[test]
fn sqlx_toml_table_name_is_the_history() {
    let db = PgDb::new("sqlxtable");
    let root = Migrations::new(&[(
        "sqlx.toml",
        "[migrate]\ntable-name = \"__durable_sqlx_migrations\"\n",
    )]);
    let dir = root.dir.join("migrations");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("1_users.sql"), "CREATE TABLE users (id int);").unwrap();
    std::fs::write(dir.join("2_orders.sql"), "CREATE TABLE orders (id int);").unwrap();
    let dir = dir.to_str().unwrap();
    let out = migrate(&db, dir);
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT version::text FROM __durable_sqlx_migrations ORDER BY 1"
        ),
        vec!["1", "2"]
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations'"
        ),
        0
    );
    // Forget the marker: the history alone must say that nothing is pending.
    pg_exec(&db.url, "DROP TABLE schemagate_marker");
    let out = migrate(&db, dir);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "ready: 0 applied");
    let out = run(schemagate(&db.url).args(["wait", "--once", "--source", dir]));
    assert_exit(&out, 0);
}

/// reliability: a migration checked out with CRLF, applied, then checked out with LF, with `ignored-chars = ["\r"]` | same checksum as sqlx-cli computes; no drift | nothing
#[test]
fn sqlx_toml_ignored_chars_leave_line_endings_out_of_the_checksum() {
    let db = PgDb::new("sqlxchars");
    let lf = "CREATE TABLE users (id int);\nINSERT INTO users VALUES (1);\n";
    let src = Migrations::new(&[
        ("sqlx.toml", "[migrate]\nignored-chars = [\"\\r\"]\n"),
        ("1_users.sql", &lf.replace('\n', "\r\n")),
    ]);
    let out = migrate(&db, src.path());
    assert_exit(&out, 0);
    let expected: String = Sha384::digest(lf.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT encode(checksum, 'hex') FROM _sqlx_migrations"
        ),
        vec![expected]
    );
    src.write("1_users.sql", lf);
    src.write("2_more.sql", "INSERT INTO users VALUES (2);\n");
    let out = migrate(&db, src.path());
    assert_exit(&out, 0);
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM users"), 2);
    // Without the setting, the same files are drift.
    src.write("sqlx.toml", "[migrate]\n");
    src.write("1_users.sql", &lf.replace('\n', "\r\n"));
    let out = migrate(&db, src.path());
    assert_exit(&out, 4);
}

/// reliability: two apps sharing one database, each with its own marker and migrations table (`--migrations-table`, and `SCHEMAGATE_MIGRATIONS_TABLE`) | both apply their own migrations | nothing (before: the second exited 4 on the first's versions)
#[test]
fn two_apps_in_one_database_with_their_own_migrations_tables() {
    let db = PgDb::new("twoapps");
    pg_exec(&db.url, "CREATE SCHEMA appa; CREATE SCHEMA appb");
    let a = Migrations::new(&[("1_a.sql", "CREATE TABLE appa.t (id int);")]);
    let b = Migrations::new(&[("7_b.sql", "CREATE TABLE appb.t (id int);")]);
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--table",
        "appa.marker",
        "--migrations-table",
        "appa._sqlx_migrations",
        "--source",
        a.path(),
    ]));
    assert_exit(&out, 0);
    let out = run(schemagate(&db.url)
        .env("SCHEMAGATE_MIGRATIONS_TABLE", "appb._sqlx_migrations")
        .args(["migrate", "--table", "appb.marker", "--source", b.path()]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT version::text FROM appb._sqlx_migrations"),
        vec!["7"]
    );
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--migrations-table",
        "appb.bad-name",
        "--source",
        b.path(),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "\"appb.bad-name\"");
}

/// reliability: two migration tracks applied to one `_sqlx_migrations` (quickwit's `postgresql/` and `postgresql_deferred/`) with `--ignore-missing` | each applies its own, the other's versions are not drift | nothing (without it: exit 4)
#[test]
fn ignore_missing_lets_two_tracks_share_one_history() {
    let db = PgDb::new("tracks");
    let main = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("3_c.sql", "CREATE TABLE c (id int);"),
    ]);
    let deferred = Migrations::new(&[("2_b.sql", "CREATE TABLE b (id int);")]);
    let go = |dir: &str, ignore: bool| {
        let mut c = schemagate(&db.url);
        c.args(["migrate", "--source", dir]);
        if ignore {
            c.arg("--ignore-missing");
        }
        run(&mut c)
    };
    assert_exit(&go(main.path(), true), 0);
    let out = go(deferred.path(), false);
    assert_exit(&out, 4);
    let out = go(deferred.path(), true);
    assert_exit(&out, 0);
    main.write("4_d.sql", "CREATE TABLE d (id int);");
    let out = go(main.path(), true);
    assert_exit(&out, 0);
    deferred.write("5_e.sql", "CREATE TABLE e (id int);");
    let out = go(deferred.path(), true);
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT version::text FROM _sqlx_migrations ORDER BY version"
        ),
        vec!["1", "2", "3", "4", "5"]
    );
    // Again: nothing to do for either.
    assert_exit(&go(main.path(), true), 0);
    assert_exit(&go(deferred.path(), true), 0);
}
