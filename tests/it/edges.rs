//! The edges, tried as a hostile operator would (issue 12): URLs that do not parse,
//! passwords in every form, input that must be refused before anything runs (exit 2,
//! naming the value), errors sorted by what retrying can do, readers that never write,
//! and a rehearsal that never touches data. Every test checks that no form of the password
//! reaches stdout, stderr, the termination log, the marker or `status --json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A scratch directory (removed on drop) for termination logs, sources and files.
fn scratch() -> Migrations {
    Migrations::new(&[])
}

/// Run with `--termination-log` in `dir`; returns the output and the log's text, both
/// checked for every form of `secret` (and of the harness's password).
fn run_logged(cmd: &mut Command, dir: &Path, secret: &str) -> (Output, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let tlog = dir.join(format!("tlog-{}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&tlog, "").unwrap();
    let out = run(cmd.arg("--termination-log").arg(&tlog));
    let log = std::fs::read_to_string(&tlog).unwrap();
    assert_clean(secret, &out, &log);
    (out, log)
}

fn assert_clean(secret: &str, out: &Output, tlog: &str) {
    assert_no_form_of(secret, &String::from_utf8_lossy(&out.stdout), "stdout");
    assert_no_form_of(secret, &stderr(out), "stderr");
    assert_no_form_of(secret, tlog, "the termination log");
    assert_no_form_of(PASSWORD, tlog, "the termination log");
}

/// `status --json` (markers with their detail included): no form of `secret` in it.
fn assert_status_clean(url: &str, secret: &str) -> serde_json::Value {
    let out = run(schemagate(url).args(["status", "--json"]));
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_no_form_of(secret, &text, "status --json");
    serde_json::from_str(&text).unwrap()
}

fn termination_code(log: &str) -> i64 {
    let v: serde_json::Value =
        serde_json::from_str(log.trim()).unwrap_or_else(|e| panic!("termination log {log:?}: {e}"));
    v["exit_code"].as_i64().unwrap()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A login role with `password` that owns `db`, and its URL.
fn pg_role(db: &PgDb, password: &str) -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let role = format!(
        "sg_role_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let url = url::Url::parse(&db.url).unwrap();
    let name = url.path().trim_start_matches('/').to_owned();
    pg_exec(
        &db.url,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}'; ALTER DATABASE {name} OWNER TO {role};",
            password.replace('\'', "''")
        ),
    );
    let role_url = format!(
        "postgres://{role}:{}@{}:{}/{name}",
        percent(password),
        url.host_str().unwrap(),
        url.port().unwrap()
    );
    (role, role_url)
}

// ----- secrets and credentials -----

/// reliability: a database URL whose password holds an unencoded `/ ? # @`, a URL with one slash, a libpq key=value or ADO.NET string | exit 2 before connecting; the URL is never echoed, only its scheme and host, and the message says to percent-encode | nothing | any (refused before connecting)
#[test]
fn unparseable_url_is_never_echoed() {
    let dir = scratch();
    let pw = "Pa/ss?w#rd@91";
    for (url, shown) in [
        (format!("postgres://app:{pw}@db/app"), "postgres://…@db"),
        (
            "postgres://app:pa/ss1Q@db/app".to_owned(),
            "postgres://…@db",
        ),
        (
            "postgres://app:12?ss1Q@db/app".to_owned(),
            "postgres://…@db",
        ),
        (
            "postgres://app:12#ss1Q@db/app".to_owned(),
            "postgres://…@db",
        ),
        ("mysql://app:pa/ss1Q@db/app".to_owned(), "mysql://…@db"),
        ("postgres:/app:ss1Q@db/app".to_owned(), "postgres:…"),
        (
            "host=db user=app password=ss1Q dbname=app".to_owned(),
            "<unparseable URL>",
        ),
        (
            "Server=db;User Id=app;Pwd=ss1Q;Database=app".to_owned(),
            "<unparseable URL>",
        ),
    ] {
        for mode in [&["status"][..], &["wait", "--expect", "1"][..]] {
            let (out, log) = run_logged(schemagate(&url).args(mode), dir.dir.as_path(), pw);
            assert_eq!(code(&out), 2, "{url}: {}", stderr(&out));
            assert_eq!(termination_code(&log), 2);
            for text in [stderr(&out), log] {
                assert!(text.contains(shown), "{url}: {text}");
                assert!(!text.contains("ss1Q"), "{url} leaked: {text}");
                assert!(!text.contains("pa/ss") && !text.contains("12?"), "{text}");
            }
            assert!(
                stderr(&out).contains("percent-encoded") || !shown.contains("//"),
                "{}",
                stderr(&out)
            );
        }
    }
}

/// An external migrator that prints the URL, the password and a JSON document holding it,
/// then fails: the failed marker keeps its stderr.
fn echoing_migrator(print: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("{print}; exit 3")]
}

#[test]
fn short_password_in_url_is_masked_in_log_marker_and_status() {
    let db = PgDb::new("shortpw");
    let pw = "Zq";
    let (_, url) = pg_role(&db, pw);
    let dir = scratch();
    let mut cmd = schemagate(&url);
    cmd.args(["migrate", "--version", "v1", "--"]).args(echoing_migrator(
        "echo \"url $SCHEMAGATE_DATABASE_URL\" >&2; echo \"PGPASSWORD=Zq mysql --password=Zq\" >&2; \
         echo \"{\\\"password\\\": \\\"Zq\\\"}\" >&2",
    ));
    let (out, _) = run_logged(&mut cmd, dir.dir.as_path(), pw);
    assert_exit(&out, 1);
    assert_stderr_has(&out, ":***@127.0.0.1");
    let status = assert_status_clean(&url, pw);
    let detail = status["markers"][0]["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains(":***@"), "{detail}");
}

#[test]
fn every_form_of_the_password_is_masked() {
    let db = PgDb::new("pwforms");
    let pw = "p@ss/w\"rd 9%x";
    let (role, url) = pg_role(&db, pw);
    // The driver takes the password from PGPASSWORD: the URL has none.
    let bare = url.replacen(&format!(":{}@", percent(pw)), "@", 1);
    assert!(bare.contains(&format!("{role}@")));
    let dir = scratch();
    let json = serde_json::to_string(pw).unwrap();
    let lower = percent(pw).to_ascii_lowercase();
    let mut cmd = schemagate(&bare);
    cmd.env("PGPASSWORD", pw)
        .args(["migrate", "--version", "v1", "--"])
        .args(echoing_migrator(&format!(
            "printf '%s\\n' \"$PGPASSWORD\" >&2; printf '%s\\n' '{{\"pw\": {json}}}' >&2; \
             printf '%s\\n' 'encoded {lower}' >&2"
        )));
    let (out, _) = run_logged(&mut cmd, dir.dir.as_path(), pw);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "encoded ***");
    let mut status = schemagate(&bare);
    status.env("PGPASSWORD", pw);
    let out = run(status.args(["status", "--json"]));
    assert_exit(&out, 0);
    assert_no_form_of(pw, &String::from_utf8_lossy(&out.stdout), "status --json");

    // MYSQL_PWD is registered too, whatever the backend.
    let lite = TestDb::new(Kind::Lite, "mysqlpwd");
    let mut cmd = schemagate(lite.url());
    cmd.env("MYSQL_PWD", "My-Pwd-4412")
        .args(["migrate", "--version", "v1", "--"])
        .args(echoing_migrator("echo \"$MYSQL_PWD\" >&2"));
    let (out, _) = run_logged(&mut cmd, dir.dir.as_path(), "My-Pwd-4412");
    assert_exit(&out, 1);
    assert_status_clean(lite.url(), "My-Pwd-4412");
}

#[test]
fn pgpass_password_is_masked() {
    let db = PgDb::new("pgpass");
    let pw = "Pass:File\\Pw-81";
    let (role, url) = pg_role(&db, pw);
    let bare = url.replacen(&format!(":{}@", percent(pw)), "@", 1);
    let dir = scratch();
    let pgpass = dir.dir.join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "*:*:*:{role}:{}\n",
            pw.replace('\\', "\\\\").replace(':', "\\:")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = schemagate(&bare);
    cmd.env("PGPASSFILE", &pgpass)
        .args(["migrate", "--version", "v1", "--"])
        .args(echoing_migrator(
            "cut -d: -f5- \"$PGPASSFILE\" >&2; echo 'Pass:File\\Pw-81' >&2",
        ));
    let (out, _) = run_logged(&mut cmd, dir.dir.as_path(), pw);
    assert_exit(&out, 1);
    let mut status = schemagate(&bare);
    status.env("PGPASSFILE", &pgpass);
    let out = run(status.args(["status", "--json"]));
    assert_exit(&out, 0);
    assert_no_form_of(pw, &String::from_utf8_lossy(&out.stdout), "status --json");
}

/// reliability: a MySQL URL with `?user=…&password=…` (documented MySQL URL parameters) | they are honoured; a wrong password is refused for that user (exit 2) and the run never connects as the server's default user; two different users is a usage error | nothing | MariaDB
#[test]
fn mysql_user_and_password_parameters_are_honoured() {
    let db = TestDb::new(Kind::My, "myuser");
    let name = url::Url::parse(db.url()).unwrap().path()[1..].to_owned();
    let user = format!("sg_u_{}", std::process::id());
    let pw = "My&Pw=9?x";
    db.exec(&format!(
        "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'; \
         GRANT ALL ON {name}.* TO '{user}'@'%';"
    ));
    let base = db.url().replacen("root@", "", 1);
    let src = Migrations::new(&[(
        "1_who.sql",
        "CREATE TABLE who (u varchar(200)); INSERT INTO who VALUES (CURRENT_USER());",
    )]);
    let dir = scratch();
    let good = format!("{base}?user={user}&password={}", percent(pw));
    let (out, _) = run_logged(
        schemagate(&good).args(["migrate", "--source", src.path()]),
        dir.dir.as_path(),
        pw,
    );
    assert_exit(&out, 0);
    assert_eq!(
        db.strings("SELECT u FROM who"),
        vec![format!("{user}@%")],
        "the migration must run as the user the URL names"
    );
    assert_status_clean(&good, pw);

    let wrong = format!("{base}?user={user}&password=wrong-Pw-55");
    let (out, _) = run_logged(
        schemagate(&wrong).args(["status"]),
        dir.dir.as_path(),
        "wrong-Pw-55",
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, &user);

    let two = format!("{}?user={user}", db.url());
    let (out, _) = run_logged(schemagate(&two).args(["status"]), dir.dir.as_path(), pw);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "two users");
}

#[test]
fn stray_url_argument_is_redacted_and_logged() {
    let dir = scratch();
    let url = format!("postgres://app:{PASSWORD}@db/app");
    let mut cmd = schemagate("");
    cmd.env_remove("SCHEMAGATE_DATABASE_URL")
        .args(["wait", "--expect", "1", &url]);
    let (out, log) = run_logged(&mut cmd, dir.dir.as_path(), PASSWORD);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "app:***@db");
    assert_eq!(termination_code(&log), 2);
    assert!(log.contains("unexpected argument"), "{log}");
}

#[test]
fn empty_schemagate_database_url_does_not_shadow_database_url() {
    let db = TestDb::new(Kind::Lite, "emptyenv");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let mut cmd = schemagate("");
    cmd.env("DATABASE_URL", db.url())
        .args(["migrate", "--source", src.path()]);
    let out = run(&mut cmd);
    assert_exit(&out, 0);
    assert!(db.table_exists("a"));

    // Nor does it conflict with --database-url-file.
    let dir = scratch();
    let file = dir.dir.join("url");
    std::fs::write(&file, db.url()).unwrap();
    let mut cmd = schemagate("");
    cmd.args(["status", "--database-url-file"]).arg(&file);
    let out = run(&mut cmd);
    assert_exit(&out, 0);
    // Both set is refused, naming the file.
    let out = run(schemagate(db.url())
        .args(["status", "--database-url-file"])
        .arg(&file));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--database-url-file");
}

// ----- input validated before anything runs -----

/// reliability: a duration out of range (`--interval 18446744073709551615s`, `--interval 0`, a lock or statement timeout beyond PostgreSQL's limit, `--lease-ttl 1s`) | exit 2 naming the value before connecting (the huge interval used to panic with no termination log) | nothing | any (refused before connecting)
#[test]
fn durations_out_of_range_are_usage_errors() {
    let dir = scratch();
    let src = Migrations::new(&[("1_a.sql", "SELECT 1;")]);
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/db");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "wait",
                "--expect",
                "1",
                "--interval",
                "18446744073709551615s",
            ],
            "18446744073709551615s",
        ),
        (vec!["wait", "--expect", "1", "--interval", "0"], "\"0\""),
        (vec!["wait", "--expect", "1", "--timeout", "400d"], "400d"),
        (
            vec![
                "migrate",
                "--source",
                src.path(),
                "--ddl-lock-timeout",
                "25d",
            ],
            "25d",
        ),
        (
            vec![
                "migrate",
                "--source",
                src.path(),
                "--statement-timeout",
                "30d",
            ],
            "30d",
        ),
        (
            vec!["migrate", "--source", src.path(), "--lease-ttl", "1s"],
            "1s",
        ),
        (vec!["status", "--connect-timeout", "0s"], "0s"),
    ];
    for (args, named) in cases {
        let (out, log) = run_logged(schemagate(&url).args(&args), dir.dir.as_path(), PASSWORD);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
        assert_stderr_lacks(&out, "panicked");
        assert_eq!(termination_code(&log), 2, "{args:?}");
    }
}

#[test]
fn statement_timeout_zero_means_no_limit() {
    let db = PgDb::new("stmt0");
    let src = Migrations::new(&[(
        "1_slow.sql",
        "SELECT pg_sleep(0.3); CREATE TABLE st AS SELECT current_setting('statement_timeout') AS v;",
    )]);
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--statement-timeout",
        "0",
        "--ddl-lock-timeout",
        "0",
        "--ddl-retries",
        "0",
    ]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT v FROM st"),
        vec!["0".to_owned()]
    );
}

#[test]
fn wait_timeout_zero_still_checks_once() {
    let db = TestDb::new(Kind::Lite, "timeout0");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let out = run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    let out = run(schemagate(db.url()).args(["wait", "--expect", "1", "--timeout", "0"]));
    assert_exit(&out, 0);
}

/// reliability: `wait --once` (a Compose healthcheck) against an unreachable database | gives up within `--timeout` instead of retrying for `--connect-timeout` | nothing
#[test]
fn wait_once_is_bounded_by_timeout() {
    let dir = scratch();
    let url = TestDb::unreachable_url(Kind::Pg);
    let started = Instant::now();
    let (out, _) = run_logged(
        schemagate(&url).args([
            "wait",
            "--expect",
            "1",
            "--once",
            "--timeout",
            "2s",
            "--connect-timeout",
            "60s",
        ]),
        dir.dir.as_path(),
        PASSWORD,
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert_stderr_has(&out, "127.0.0.1:1");
}

#[test]
fn reserved_or_too_long_table_names_are_usage_errors() {
    let dir = scratch();
    let src = Migrations::new(&[("1_a.sql", "SELECT 1;")]);
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/db");
    let long = "t".repeat(52);
    for table in ["order", "user", "ops.select", "Group", long.as_str()] {
        for args in [
            vec!["migrate", "--source", src.path(), "--table", table],
            vec!["wait", "--expect", "1", "--table", table],
        ] {
            let (out, _) = run_logged(schemagate(&url).args(&args), dir.dir.as_path(), PASSWORD);
            assert_eq!(code(&out), 2, "{table}: {}", stderr(&out));
            assert_stderr_has(&out, &format!("--table {table:?}"));
        }
    }
    // The longest allowed name works, lease table and index included.
    let db = PgDb::new("longtable");
    let table = "t".repeat(51);
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--source",
        src.path(),
        "--table",
        &table,
        "--lock",
        "lease",
    ]));
    assert_exit(&out, 0);
    let out = run(schemagate(&db.url).args(["wait", "--expect", "1", "--table", &table]));
    assert_exit(&out, 0);
}

#[test]
fn source_is_read_as_sqlx_cli_reads_it() {
    let db = TestDb::new(Kind::Lite, "sqlxsrc");
    let src = Migrations::new(&[
        ("+1_init.sql", "CREATE TABLE a (id int);"),
        ("2_.sql", "CREATE TABLE b (id int);"),
        ("schema.sql", "this is not SQL"),
        ("README.md", "notes"),
    ]);
    let out = run(schemagate(db.url()).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "skipping schema.sql");
    assert!(db.table_exists("a") && db.table_exists("b"));
    assert_eq!(db.i64("SELECT count(*) FROM _sqlx_migrations"), 2);
}

/// reliability: a source with a dangling symlink, version 0, a `.down.sql` without its up migration, or a file starting with a UTF-8 BOM | exit 2 naming the file (and the BOM) before connecting | nothing | any (refused before connecting)
#[test]
fn bad_sources_are_refused_naming_the_file() {
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/db");
    // (file, its content or None for a dangling symlink, what the message names)
    let cases = [
        ("2_b.sql", None, "2_b.sql"),
        ("0_zero.sql", Some("SELECT 1;"), "0_zero.sql"),
        ("5_gone.down.sql", Some("SELECT 1;"), "5_gone.down.sql"),
        (
            "2_bom.sql",
            Some("\u{feff}CREATE TABLE b (id int);"),
            "byte order mark",
        ),
    ];
    let dir = scratch();
    for (file, content, named) in cases {
        let src = Migrations::new(&[("1_a.sql", "SELECT 1;")]);
        match content {
            Some(sql) => src.write(file, sql),
            None => std::os::unix::fs::symlink("/no/such/file.sql", src.dir.join(file)).unwrap(),
        }
        let (out, _) = run_logged(
            schemagate(&url).args(["migrate", "--source", src.path()]),
            dir.dir.as_path(),
            PASSWORD,
        );
        assert_eq!(code(&out), 2, "{named}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{named}: {}", stderr(&out));
    }
}

/// reliability: a migration holding a NUL byte (up or down, transactional or `-- no-transaction`, before or after the first 64 KiB) | exit 2 naming the file and the byte offset of the first NUL, before connecting (an unreachable URL gives the same answer), in every command that reads the source; nothing run, nothing recorded dirty | nothing | any (refused before connecting)
#[test]
fn nul_byte_in_a_migration_is_refused_before_connecting() {
    let unreachable = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/db");
    // Past the first read of 64 KiB, with a character cut by the read's end before it.
    let long = format!("SELECT '{}€{}\0';", "x".repeat(65_527), "y".repeat(100));
    let cases = [
        ("2_b.sql", "CREATE TABLE b (id int);\0".to_owned()),
        (
            "2_b.sql",
            "-- no-transaction\nCREATE TABLE b (id int);\nSELECT 'a\0b';".to_owned(),
        ),
        ("2_b.down.sql", "DROP TABLE\0 b;".to_owned()),
        ("2_b.sql", long),
    ];
    let db = PgDb::new("nulbyte");
    for (file, sql) in &cases {
        let at = sql.find('\0').unwrap();
        let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        if file.ends_with(".down.sql") {
            src.write("2_b.up.sql", "CREATE TABLE b (id int);");
        }
        src.write(file, sql);
        let named = format!("{file} has a NUL byte at byte offset {at}");
        for (url, args) in [
            (&unreachable, vec!["migrate"]),
            (&db.url, vec!["migrate"]),
            (&unreachable, vec!["wait", "--once"]),
            (&unreachable, vec!["status"]),
            (&unreachable, vec!["rollback", "--to", "0"]),
            (&unreachable, vec!["digest"]),
        ] {
            let out = run(schemagate(url).args(&args).args(["--source", src.path()]));
            assert_eq!(code(&out), 2, "{file} {args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(&named),
                "{file} {args:?}: {}",
                stderr(&out)
            );
        }
        // Refused before connecting: nothing ran, nothing is recorded (dirty or not).
        assert_eq!(
            pg_i64(
                &db.url,
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ),
            0,
            "{file}: something ran"
        );
    }
}

/// Spawn `cmd` and collect its output once it exits, within `limit`: a process blocked (in
/// `open()` on a FIFO, or reading a device without end) fails the test and is killed.
fn finish_unblocked(cmd: &mut Command, limit: Duration) -> Output {
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut child = KillOnDrop(Some(spawn(cmd)));
    until("schemagate to exit on its own", limit, || {
        child.0.as_mut().unwrap().try_wait().unwrap().is_some()
    });
    finish(child.0.take().unwrap())
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// reliability: a FIFO, or a symlink to `/dev/zero`, where schemagate reads a file: the digest file, a migration, `sqlx.toml`, `--database-url-file`; a `--termination-log` that is a FIFO nothing reads | exit 2 at once naming the file and what it is, in `migrate`, `wait` and `digest`: never held in `open()` (where SIGTERM would wait too) nor reading without end; the termination log's write fails with a warning instead of waiting | nothing
#[test]
fn special_files_are_refused_without_blocking() {
    let db = PgDb::new("specialfiles");
    let limit = Duration::from_secs(60);
    let fifo = "a FIFO (named pipe), not a regular file";
    let device = "a character device, not a regular file";
    let source = || {
        let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        // A valid digest file first: the fast path reads it before any migration.
        let out = run(schemagate(&db.url).args(["digest", "--source", src.path()]));
        assert_exit(&out, 0);
        src
    };
    let refused = |src: &Migrations, args: &[&str], file: &str, what: &str| {
        let mut cmd = schemagate(&db.url);
        cmd.args(args).args(["--source", src.path()]);
        let out = finish_unblocked(&mut cmd, limit);
        assert_eq!(code(&out), 2, "{file} ({what}), {args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(file) && stderr(&out).contains(what),
            "{file} ({what}), {args:?}: {}",
            stderr(&out)
        );
    };
    let commands: [&[&str]; 3] = [&["migrate"], &["wait", "--timeout", "5s"], &["digest"]];
    for (name, what) in [(".schemagate-digest", fifo), (".schemagate-digest", device)] {
        let src = source();
        std::fs::remove_file(src.dir.join(name)).unwrap();
        if what == fifo {
            mkfifo(&src.dir.join(name));
        } else {
            std::os::unix::fs::symlink("/dev/zero", src.dir.join(name)).unwrap();
        }
        // `digest` writes the file anew: only the readers are asked.
        for args in &commands[..2] {
            refused(&src, args, name, what);
        }
    }
    for (name, what) in [("2_b.sql", fifo), ("2_b.sql", device), ("sqlx.toml", fifo)] {
        let src = source();
        if what == fifo {
            mkfifo(&src.dir.join(name));
        } else {
            std::os::unix::fs::symlink("/dev/zero", src.dir.join(name)).unwrap();
        }
        for args in commands {
            refused(&src, args, name, what);
        }
    }
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0,
        "something ran"
    );
    // A termination log that is a FIFO nothing reads: written without waiting for a reader.
    let dir = scratch();
    mkfifo(&dir.dir.join("tlog"));
    let mut cmd = schemagate(&db.url);
    cmd.args(["wait", "--expect", "1", "--once", "--termination-log"])
        .arg(dir.dir.join("tlog"));
    let out = finish_unblocked(&mut cmd, limit);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "cannot write the termination log");
    // The database URL from a mounted secret that is a FIFO, or a device.
    mkfifo(&dir.dir.join("url"));
    std::os::unix::fs::symlink("/dev/zero", dir.dir.join("zero")).unwrap();
    for (file, what) in [("url", fifo), ("zero", device)] {
        let path = dir.dir.join(file);
        let mut cmd = schemagate("");
        cmd.env_remove("SCHEMAGATE_DATABASE_URL")
            .args(["wait", "--expect", "1", "--once", "--database-url-file"])
            .arg(&path);
        let out = finish_unblocked(&mut cmd, limit);
        assert_eq!(code(&out), 2, "{file}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(path.to_str().unwrap()) && stderr(&out).contains(what),
            "{file}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn ipv6_literal_url_connects() {
    let server = start_cluster(&["listen_addresses = '127.0.0.1,::1'"]);
    let url = format!(
        "postgres://postgres:{PASSWORD}@[::1]:{}/postgres",
        server.port
    );
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE v6 (id int);")]);
    let started = Instant::now();
    let out = run(schemagate(&url).args([
        "migrate",
        "--source",
        src.path(),
        "--connect-timeout",
        "20s",
    ]));
    assert_exit(&out, 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    let out = run(schemagate(&url).args(["wait", "--expect", "1", "--once"]));
    assert_exit(&out, 0);
}

// ----- error classes and messages -----

#[test]
fn unknown_database_is_a_configuration_error_on_every_server() {
    let dir = scratch();
    let pg = PgDb::new("nodb");
    let my = TestDb::new(Kind::My, "nodb");
    for url in [
        pg.url.replacen("/sg_nodb", "/sg_no_such_db", 1),
        my.url().replacen("/sg_nodb", "/sg_no_such_db", 1),
    ] {
        let started = Instant::now();
        let (out, _) = run_logged(
            schemagate(&url).args(["wait", "--expect", "1", "--timeout", "60s"]),
            dir.dir.as_path(),
            PASSWORD,
        );
        assert_eq!(code(&out), 2, "{url}: {}", stderr(&out));
        assert_stderr_has(&out, "sg_no_such_db");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

/// reliability: MySQL refuses a connection because the user is at `MAX_USER_CONNECTIONS` | retried with backoff until a slot frees (it was classified by comparing the SQLSTATE with MySQL's error numbers, so it failed at once with exit 1) | nothing | MariaDB
#[test]
fn mysql_connection_limits_are_retried() {
    let db = TestDb::new(Kind::My, "userlimit");
    let name = url::Url::parse(db.url()).unwrap().path()[1..].to_owned();
    let user = format!("sg_lim_{}", std::process::id());
    let pw = "Lim-Pw-5521";
    db.exec(&format!(
        "DROP USER IF EXISTS '{user}'@'%'; \
         CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}' WITH MAX_USER_CONNECTIONS 1; \
         GRANT ALL ON {name}.* TO '{user}'@'%';"
    ));
    let url = db.url().replacen("root@", &format!("{user}:{pw}@"), 1);
    // Hold the user's one connection until the test lets go.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held_tx, held) = std::sync::mpsc::channel();
    let holder_url = url.clone();
    let holder = std::thread::spawn(move || {
        block_on(async {
            use sqlx::Connection;
            let c = sqlx::MySqlConnection::connect(&holder_url).await.unwrap();
            held_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || released.recv()).await;
            let _ = c.close().await;
        })
    });
    held.recv_timeout(Duration::from_secs(30)).unwrap();
    let mut child = spawn(schemagate(&url).args(["status", "--connect-timeout", "60s"]));
    wait_for_stderr_line(&mut child, "retrying in", Duration::from_secs(30));
    release.send(()).unwrap();
    holder.join().unwrap();
    let out = finish(child);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "max_user_connections");
    assert_no_form_of(pw, &stderr(&out), "stderr");
}

/// reliability: the database user lacks a privilege (cannot create the marker table, cannot read it, a migration needs one) | exit 2 at once naming the privilege or object, for `migrate` and `wait` alike; a migration that fails so is recorded `failed` (wait used to retry as "not reachable" until its timeout) | nothing | PostgreSQL, MariaDB
#[test]
fn missing_privilege_is_a_configuration_error() {
    let dir = scratch();
    let db = PgDb::new("noprivs");
    let pw = "Priv-Pw-3318";
    // A role that may connect but not create anything in public (PostgreSQL 15's default).
    let role = format!("sg_np_{}", std::process::id());
    let url = url::Url::parse(&db.url).unwrap();
    pg_exec(
        &db.url,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{pw}';"),
    );
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    let role_url = format!(
        "postgres://{role}:{pw}@{}:{}{}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        url.path()
    );
    let (out, _) = run_logged(
        schemagate(&role_url).args(["migrate", "--source", src.path(), "--table", "ops_marker"]),
        dir.dir.as_path(),
        pw,
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, "permission denied for schema public");
    let started = Instant::now();
    let (out, _) = run_logged(
        schemagate(&role_url).args(["wait", "--expect", "1", "--timeout", "60s"]),
        dir.dir.as_path(),
        pw,
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, "permission denied for table schemagate_marker");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A migration that needs a privilege the user lacks: exit 2, recorded as failed.
    let db2 = PgDb::new("noprivs2");
    let (owner, owner_url) = pg_role(&db2, pw);
    pg_exec(&db2.url, "CREATE SCHEMA locked_away;");
    let needs = Migrations::new(&[("1_t.sql", "CREATE TABLE locked_away.t (id int);")]);
    let (out, _) = run_logged(
        schemagate(&owner_url).args(["migrate", "--source", needs.path(), "--table", "m2"]),
        dir.dir.as_path(),
        pw,
    );
    assert_eq!(code(&out), 2, "{owner}: {}", stderr(&out));
    assert_stderr_has(&out, "permission denied for schema locked_away");
    assert_eq!(
        pg_strings(&db2.url, "SELECT status FROM m2"),
        vec!["failed".to_owned()]
    );

    // MySQL: a user with SELECT only.
    let my = TestDb::new(Kind::My, "noprivs");
    let name = url::Url::parse(my.url()).unwrap().path()[1..].to_owned();
    let user = format!("sg_ro_{}", std::process::id());
    my.exec(&format!(
        "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'; \
         GRANT SELECT ON {name}.* TO '{user}'@'%';"
    ));
    let my_url = my.url().replacen("root@", &format!("{user}:{pw}@"), 1);
    let (out, _) = run_logged(
        schemagate(&my_url).args(["migrate", "--source", src.path()]),
        dir.dir.as_path(),
        pw,
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, "CREATE command denied");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signed for 127.0.0.1 and ::1, in `dir`.
pub(crate) fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=schemagate test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if is_root_user() {
        let ok = Command::new("chown")
            .args(["postgres:postgres", "server.key", "server.crt"])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

fn is_root_user() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// reliability: `sslmode=verify-full` against a server whose certificate a CA unknown to the compiled-in roots signed | exit 2 at once (it was retried as transient until `--connect-timeout`, then 124), naming the unknown CA and `sslrootcert=`; with `sslrootcert=` the CA's file, it connects | nothing
#[test]
fn tls_with_an_unknown_ca_is_a_configuration_error() {
    let certs = scratch();
    make_certs(&certs.dir);
    let ssl_dir = std::env::temp_dir().join(format!("schemagate-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ssl_dir);
    std::fs::create_dir_all(&ssl_dir).unwrap();
    for f in ["server.key", "server.crt"] {
        std::fs::copy(certs.dir.join(f), ssl_dir.join(f)).unwrap();
    }
    make_owned_by_postgres(&ssl_dir);
    let server = start_cluster(&[
        "ssl = on",
        &format!("ssl_cert_file = '{}'", ssl_dir.join("server.crt").display()),
        &format!("ssl_key_file = '{}'", ssl_dir.join("server.key").display()),
    ]);
    let base = format!("{}?sslmode=verify-full", server.url("postgres"));
    let started = Instant::now();
    let (out, log) = run_logged(
        schemagate(&base).args(["status", "--connect-timeout", "60s"]),
        certs.dir.as_path(),
        PASSWORD,
    );
    assert_exit(&out, 2);
    assert!(started.elapsed() < Duration::from_secs(20));
    for text in [stderr(&out), log] {
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(text.contains("sslrootcert="), "{text}");
    }
    let with_ca = format!("{base}&sslrootcert={}", certs.dir.join("ca.crt").display());
    let (out, _) = run_logged(
        schemagate(&with_ca).args(["status"]),
        certs.dir.as_path(),
        PASSWORD,
    );
    assert_exit(&out, 0);
    // A CA file that is not there is named at once, not retried.
    let missing = format!("{base}&sslrootcert=/no/such/ca.pem");
    let (out, _) = run_logged(
        schemagate(&missing).args(["status"]),
        certs.dir.as_path(),
        PASSWORD,
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, "/no/such/ca.pem");
    drop(server);
    let _ = std::fs::remove_dir_all(&ssl_dir);
}

pub(crate) fn make_owned_by_postgres(dir: &Path) {
    if is_root_user() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

#[test]
fn postgres_errors_name_no_server_source_line_and_log_once() {
    let db = PgDb::new("atline");
    let src = Migrations::new(&[("1_bad.sql", "SELECT * FROM no_such_table;")]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("no_such_table"), "{err}");
    assert!(
        !err.contains(" at line "),
        "a line of PostgreSQL's C source: {err}"
    );
    assert!(!err.contains("no transaction in progress"), "{err}");
    let logged = err
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("no_such_table"))
        .count();
    assert_eq!(logged, 1, "the failure must be logged once: {err}");
    let detail = assert_status_clean(&db.url, PASSWORD)["markers"][0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!detail.contains(" at line "), "{detail}");
}

#[test]
fn status_json_lock_key_is_a_string() {
    let db = TestDb::new(Kind::Lite, "keystr");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    assert_exit(
        &run(schemagate(db.url()).args(["migrate", "--source", src.path()])),
        0,
    );
    let v = assert_status_clean(db.url(), PASSWORD);
    let key = v["lock"]["key"].as_str().expect("the key is a string");
    key.parse::<i64>().expect("a decimal 64-bit integer");
}

#[test]
fn status_into_a_closed_pipe_does_not_panic() {
    let db = TestDb::new(Kind::Lite, "pipe");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    assert_exit(
        &run(schemagate(db.url()).args(["migrate", "--source", src.path()])),
        0,
    );
    let mut child = schemagate(db.url())
        .args(["status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before schemagate writes a byte: every write is EPIPE.
    drop(child.stdout.take());
    let out = finish(child);
    assert_exit(&out, 0);
    assert_stderr_lacks(&out, "panicked");
}

#[test]
fn wait_http_timeout_says_the_schema_is_ready() {
    let db = TestDb::new(Kind::Lite, "httpmsg");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    assert_exit(
        &run(schemagate(db.url()).args(["migrate", "--source", src.path()])),
        0,
    );
    let url = format!("http://127.0.0.1:{}/healthz", free_port());
    let out = run(schemagate(db.url()).args([
        "wait",
        "--expect",
        "1",
        "--http",
        &url,
        "--timeout",
        "2s",
        "--interval",
        "100ms",
    ]));
    assert_exit(&out, 124);
    assert_stderr_has(&out, "the schema is ready");
    assert_stderr_has(&out, &url);
    assert_stderr_lacks(&out, "not checked yet");
}

/// reliability: an external migrator writes bytes that are not UTF-8, or a 200 KB line without a newline | its output keeps streaming (decoded lossily; lines cut at 64 KiB, marked), so it is never killed by SIGPIPE mid-migration; exit 0 and a `succeeded` marker | nothing
#[test]
fn migrator_output_that_is_not_utf8_keeps_streaming() {
    let db = PgDb::new("bytes");
    let script = "printf 'bad \\377\\376 bytes\\n'; head -c 200000 /dev/zero | tr '\\0' a; echo; \
                  for i in 1 2 3; do echo \"line $i\"; done; \
                  printf 'err \\377\\n' >&2; echo finished >&2";
    let out =
        run(schemagate(&db.url).args(["migrate", "--version", "v1", "--", "sh", "-c", script]));
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{}", &err[..err.len().min(4000)]);
    assert!(
        err.contains("line 3") && err.contains("finished"),
        "{}",
        &err[..err.len().min(4000)]
    );
    assert!(err.contains("[line cut at 64 KiB]"));
    assert_eq!(
        pg_strings(&db.url, "SELECT status FROM schemagate_marker"),
        vec!["succeeded".to_owned()]
    );
}

// ----- SQLite: readers never write -----

#[test]
fn sqlite_readers_never_create_or_convert_the_file() {
    let dir = scratch();
    let file: PathBuf = dir.dir.join("typo.db");
    let url = format!("sqlite://{}", file.display());
    let (out, _) = run_logged(
        schemagate(&url).args(["wait", "--expect", "1", "--timeout", "1s"]),
        dir.dir.as_path(),
        PASSWORD,
    );
    assert_exit(&out, 124);
    assert_stderr_has(&out, "does not exist");
    assert_stderr_has(&out, "typo.db");
    let (out, _) = run_logged(
        schemagate(&url).args(["status"]),
        dir.dir.as_path(),
        PASSWORD,
    );
    assert_exit(&out, 2);
    assert_stderr_has(&out, "typo.db");
    assert!(!file.exists(), "a reader created the database file");

    // A rollback-journal database stays one.
    let db = TestDb::new(Kind::Lite, "journal");
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    assert_exit(
        &run(schemagate(db.url()).args(["migrate", "--source", src.path()])),
        0,
    );
    db.exec("PRAGMA journal_mode = DELETE;");
    let out = run(schemagate(db.url()).args(["wait", "--expect", "1"]));
    assert_exit(&out, 0);
    let out = run(schemagate(db.url()).args(["status", "--json"]));
    assert_exit(&out, 0);
    assert_eq!(db.strings("PRAGMA journal_mode"), vec!["delete".to_owned()]);
}

#[test]
fn sqlite_in_memory_is_refused_outside_smoke() {
    let dir = scratch();
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://x.db?mode=memory",
    ] {
        let (out, _) = run_logged(
            schemagate(url).args(["migrate", "--source", src.path()]),
            dir.dir.as_path(),
            PASSWORD,
        );
        assert_eq!(code(&out), 2, "{url}: {}", stderr(&out));
        assert_stderr_has(&out, "in-memory");
    }
}

// ----- smoke: a rehearsal, never a rollout -----

fn smoke_source() -> Migrations {
    Migrations::new(&[
        ("1_keep.up.sql", "CREATE TABLE IF NOT EXISTS keep (id int);"),
        ("1_keep.down.sql", "DROP TABLE keep;"),
        ("2_more.up.sql", "CREATE TABLE more (id int);"),
        (
            "2_more.down.sql",
            "DROP TABLE more; DROP TABLE IF EXISTS keep;",
        ),
    ])
}

/// reliability: `smoke --database-url` pointed at a database that holds data | the rehearsal (rollback included) runs in a scratch database smoke creates and drops; the given database is not touched; a SQLite file with tables is refused (exit 2) | nothing (it used to drop a 100-row table and report "passed") | PostgreSQL, SQLite
#[test]
fn smoke_never_touches_existing_data() {
    let db = PgDb::new("smokedata");
    pg_exec(
        &db.url,
        "CREATE TABLE keep (id int); INSERT INTO keep SELECT generate_series(1, 100);",
    );
    let src = smoke_source();
    let mut cmd = schemagate("");
    cmd.env_remove("SCHEMAGATE_DATABASE_URL").args([
        "smoke",
        "--source",
        src.path(),
        "--replicas",
        "3",
        "--database-url",
        &db.url,
    ]);
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "{stdout}\n{}", stderr(&out));
    assert_no_form_of(PASSWORD, &stdout, "smoke's table");
    assert_eq!(pg_i64(&db.url, "SELECT count(*) FROM keep"), 100);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('more', '_sqlx_migrations', 'schemagate_marker')"
        ),
        0
    );
    let scratch_db = stdout
        .split_whitespace()
        .find(|w| w.starts_with("schemagate_smoke_"))
        .expect("smoke names its scratch database")
        .to_owned();
    assert_eq!(
        pg_i64(
            &db.url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch_db}'")
        ),
        0,
        "the scratch database was left behind"
    );

    let lite = TestDb::new(Kind::Lite, "smokedata");
    lite.exec("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1);");
    let mut cmd = schemagate("");
    cmd.env_remove("SCHEMAGATE_DATABASE_URL").args([
        "smoke",
        "--source",
        src.path(),
        "--database-url",
        lite.url(),
    ]);
    let out = run(&mut cmd);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "app.db holds tables");
    assert_eq!(lite.i64("SELECT count(*) FROM keep"), 1);
}
