//! Connecting, waiting and redaction, probed from outside (issue 20): IPv6 literals on a
//! TLS server, servers that speak another protocol, least-privilege roles, hot standbys,
//! what a waiter says while it waits, which limit ran out, and tokens in HTTP URLs.

use std::path::PathBuf;
use std::process::Command;

use crate::edges::{make_certs, make_owned_by_postgres};
use crate::harness::*;

/// A throwaway cluster with `ssl = on` (Debian's default), listening on 127.0.0.1 and ::1,
/// with a certificate for both addresses; and the directory holding its CA (`ca.crt`).
fn tls_cluster() -> (PgServer, Migrations, PathBuf) {
    let v6 = Command::new("ip")
        .args(["-6", "addr", "show", "lo"])
        .output()
        .expect("run ip");
    assert!(
        String::from_utf8_lossy(&v6.stdout).contains("::1/128"),
        "the loopback interface has no ::1: this test needs IPv6 on lo"
    );
    let certs = Migrations::new(&[]);
    make_certs(&certs.dir);
    let ssl_dir = certs.dir.join("server");
    std::fs::create_dir_all(&ssl_dir).unwrap();
    for f in ["server.key", "server.crt"] {
        std::fs::copy(certs.dir.join(f), ssl_dir.join(f)).unwrap();
    }
    make_owned_by_postgres(&ssl_dir);
    let server = start_cluster(&[
        "listen_addresses = '127.0.0.1,::1'",
        "ssl = on",
        &format!("ssl_cert_file = '{}'", ssl_dir.join("server.crt").display()),
        &format!("ssl_key_file = '{}'", ssl_dir.join("server.key").display()),
    ]);
    (server, certs, ssl_dir)
}

/// reliability: a URL with an IPv6 literal host (`postgres://app@[::1]:5432/app`) on a server with TLS on, with `sslmode` prefer (the default), require and verify-full | connects over TLS as psql does (the brackets reached rustls, which refused `[::1]` as an "invalid dns name": exit 2); verify-full checks the certificate's IP address | nothing
#[test]
fn ipv6_literal_url_connects_to_a_tls_server() {
    let (server, certs, _) = tls_cluster();
    let ca = certs.dir.join("ca.crt");
    let base = format!(
        "postgres://postgres:{PASSWORD}@[::1]:{}/postgres",
        server.port
    );
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE v6tls (id int);")]);
    let out = run(schemagate(&base).args([
        "migrate",
        "--source",
        src.path(),
        "--connect-timeout",
        "20s",
    ]));
    assert_eq!(code(&out), 0, "prefer: {}", stderr(&out));
    for query in [
        "?sslmode=prefer".to_owned(),
        "?sslmode=require".to_owned(),
        format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    ] {
        let url = format!("{base}{query}");
        let out = run(schemagate(&url).args(["wait", "--expect", "1", "--once"]));
        assert_eq!(code(&out), 0, "{query}: {}", stderr(&out));
        let out = run(schemagate(&url).args(["status", "--json"]));
        assert_eq!(code(&out), 0, "{query}: {}", stderr(&out));
    }
    drop(server);
}

/// `url` with its query replaced by `query` (which starts with `?`).
fn with_query(url: &str, query: &str) -> String {
    format!("{}{query}", url.split('?').next().unwrap())
}

/// reliability (PostgreSQL, MariaDB): a URL that names the user or the password twice (`?user=root&USER=x`, `?user=` and a different user before the host, `?password=` twice or beside a different one) | exit 2 before connecting, naming the keys (and the users, never a password); before, MySQL silently used the first `?user=` and PostgreSQL the user in the query | nothing
#[test]
fn duplicate_or_conflicting_users_in_the_url_are_refused() {
    let pg = PgDb::new("dupuser");
    let my = TestDb::new(Kind::My, "dupuser");
    let pw = "Dup-Pw-8841";
    let other_pw = "Other-Pw-2290";
    let pg_bare = pg.url.replacen(&format!("postgres:{PASSWORD}@"), "", 1);
    let my_bare = my.url().replacen("root@", "", 1);
    let cases = [
        (
            with_query(&my_bare, "?user=root&USER=sg_nobody"),
            "USER=\"sg_nobody\"",
        ),
        (
            with_query(&my_bare, "?user=root&user=root"),
            "user=\"root\"",
        ),
        (with_query(my.url(), "?User=sg_nobody"), "two users"),
        (
            with_query(
                &my_bare,
                &format!("?user=root&password={pw}&Password={other_pw}"),
            ),
            "Password=",
        ),
        (
            with_query(
                &my.url().replacen("root@", &format!("root:{pw}@"), 1),
                &format!("?password={other_pw}"),
            ),
            "two different passwords",
        ),
        (with_query(&pg.url, "?user=sg_nobody"), "two users"),
        (
            with_query(&pg_bare, "?user=postgres&USER=sg_nobody"),
            "USER=\"sg_nobody\"",
        ),
        (
            with_query(&pg.url, &format!("?password={other_pw}")),
            "two different passwords",
        ),
        (
            with_query(
                &pg_bare,
                &format!("?user=postgres&password={pw}&password={other_pw}"),
            ),
            "password=, password=",
        ),
    ];
    for (url, named) in &cases {
        let out = run(schemagate(url).args(["status", "--connect-timeout", "60s"]));
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{url}: {err}");
        assert!(err.contains(named), "{url}: expected {named:?} in: {err}");
        for secret in [pw, other_pw] {
            assert_no_form_of(secret, &err, "stderr");
        }
    }
    // One user, given once in the query in any case: honoured, as before the host.
    for url in [
        with_query(&pg_bare, &format!("?USER=postgres&Password={PASSWORD}")),
        with_query(&my_bare, "?USER=root"),
    ] {
        let out = run(schemagate(&url).args(["status"]));
        assert_eq!(code(&out), 0, "{url}: {}", stderr(&out));
    }
}

/// Run `schemagate <args>` on `url` (with `SCHEMAGATE_LOG=debug`) and a termination log;
/// the output and the log, checked for every form of each of `secrets` (and of the
/// harness's password).
fn run_with_log(url: &str, args: &[&str], secrets: &[&str]) -> (std::process::Output, String) {
    let dir = Migrations::new(&[]);
    let tlog = dir.dir.join("termination-log");
    std::fs::write(&tlog, "").unwrap();
    let out = run(schemagate(url)
        .env("SCHEMAGATE_LOG", "debug")
        .arg(args[0])
        .arg("--termination-log")
        .arg(&tlog)
        .args(&args[1..]));
    let log = std::fs::read_to_string(&tlog).unwrap();
    let text = format!(
        "{}{}{log}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    for secret in secrets {
        assert_no_form_of(secret, &text, "the output or the termination log");
    }
    (out, log)
}

const TOKEN: &str = "tok-Secret/55+q";
const HOOK_PW: &str = "hook-Pw-3107";

/// `url` with credentials in its user-info and a token in its query (percent-encoded).
fn with_token(url: &str) -> String {
    let url = url.replacen("http://", &format!("http://hookuser:{HOOK_PW}@"), 1);
    format!("{url}?token=tok-Secret%2F55%2Bq&v=2")
}

/// reliability: `--notify-url` and `wait --http` URLs with a token in the query (`?token=…`) or credentials in the user-info, on success, a 500, a refused connection and a usage error | every query value, the user-info and the fragment are masked wherever the URL shows up (logs, the HTTP client's error text, the termination log), and registered as secrets in every form | nothing
#[test]
fn http_url_tokens_are_never_printed() {
    let db = PgDb::new("httptok");
    let ok = HttpServer::start(|_, _| Some(200));
    let broken = HttpServer::start(|_, _| Some(500));
    let refused = format!("http://127.0.0.1:{}/hook", free_port());
    let secrets = [TOKEN, HOOK_PW];
    let (out, _) = run_with_log(
        &db.url,
        &[
            "migrate",
            "--version",
            "v1",
            "--notify-url",
            &with_token(&ok.url("/hook")),
            "--notify-url",
            &with_token(&broken.url("/hook")),
            "--notify-url",
            &with_token(&refused),
            "--",
            "true",
        ],
        &secrets,
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    // The endpoints are named, their tokens not; each failure says why.
    assert!(err.contains("/hook?token=***&v=***"), "{err}");
    assert!(err.contains("HTTP 500"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(ok.requests().len(), 1, "{err}");
    assert!(ok.requests()[0].path.contains("token=tok-Secret%2F55%2Bq"));

    // wait --http: answered, failing until the timeout, refused with --once.
    let ready = with_token(&ok.url("/ready"));
    let (out, _) = run_with_log(
        &db.url,
        &["wait", "--expect", "v1", "--http", &ready],
        &secrets,
    );
    assert_exit(&out, 0);
    assert_stderr_has(&out, "/ready?token=***");
    for (url, once, exit) in [
        (with_token(&broken.url("/ready")), false, 124),
        (with_token(&refused), false, 124),
        (with_token(&refused), true, 1),
    ] {
        let mut args = vec![
            "wait",
            "--expect",
            "v1",
            "--timeout",
            "1s",
            "--interval",
            "100ms",
            "--http",
            &url,
        ];
        if once {
            args.push("--once");
        }
        let (out, log) = run_with_log(&db.url, &args, &secrets);
        assert_eq!(code(&out), exit, "{url}: {}", stderr(&out));
        assert!(log.contains("token=***"), "{log}");
    }
    // A URL refused as a usage error is not echoed with its token either.
    let bad = format!("ftp://hookuser:{HOOK_PW}@h/x?token=tok-Secret%2F55%2Bq");
    let (out, _) = run_with_log(
        &db.url,
        &["wait", "--expect", "v1", "--http", &bad],
        &secrets,
    );
    assert_exit(&out, 2);
}

/// A TCP server on loopback that accepts connections and, per connection, either hangs up
/// at once (`close`: a container port whose process is not up yet) or says nothing.
fn tcp_server(close: bool) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            if !close {
                held.push(stream);
            }
        }
    });
    port
}

/// reliability (PostgreSQL, MariaDB): a URL of the wrong protocol: `postgres://` at a MySQL, Redis, RabbitMQ, NATS or HTTP port, `mysql://` at a PostgreSQL, Redis, RabbitMQ, NATS or HTTP port | exit 2 within seconds, naming the server's host:port, the protocol expected and what answered (it was retried to `--connect-timeout`, and for a server that waits for its client to speak the message said nothing); a port that accepts and hangs up, or says nothing, is still retried (a server starting up) and the timeout says so | nothing
#[test]
fn a_server_of_another_protocol_is_a_configuration_error_at_once() {
    let pg = PgDb::new("wrongproto");
    let pg_port = url::Url::parse(&pg.url).unwrap().port().unwrap();
    let http = HttpServer::start(|_, _| Some(404));
    let others = [
        (3306, "a MySQL or MariaDB server"),
        (6379, "a Redis server"),
        (5672, "an AMQP server"),
        (4222, "a NATS server"),
        (http.port, "an HTTP server"),
    ];
    let mut cases: Vec<(String, u16, &str, &str)> = others
        .iter()
        .map(|&(port, what)| {
            let url = format!("postgres://postgres@127.0.0.1:{port}/app");
            (url, port, "PostgreSQL", what)
        })
        .collect();
    for &(port, what) in others.iter().skip(1) {
        let url = format!("mysql://root@127.0.0.1:{port}/app");
        cases.push((url, port, "MySQL", what));
    }
    cases.push((
        format!("mysql://root@127.0.0.1:{pg_port}/app"),
        pg_port,
        "MySQL",
        "a PostgreSQL server",
    ));
    cases.push((
        "postgres://postgres@[::1]:6379/app?sslmode=disable".to_owned(),
        6379,
        "PostgreSQL",
        "a Redis server",
    ));
    // All at once: each ends on its own (exit 2 with a --connect-timeout of 60 s: never
    // retried to the deadline, which would be 124).
    let mut running = Vec::new();
    for (url, port, expected, what) in &cases {
        for args in [
            &[
                "wait",
                "--connect-timeout",
                "60s",
                "--expect",
                "1",
                "--timeout",
                "60s",
            ][..],
            &[
                "migrate",
                "--connect-timeout",
                "60s",
                "--version",
                "1",
                "--",
                "true",
            ][..],
        ] {
            let child = spawn(schemagate(url).args(args));
            running.push((child, url, *port, *expected, *what));
        }
    }
    for (child, url, port, expected, what) in running {
        let out = finish(child);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{url}: {err}");
        let host = if url.contains("[::1]") {
            "[::1]"
        } else {
            "127.0.0.1"
        };
        let says = format!("the server at {host}:{port} does not speak {expected}");
        assert!(err.contains(&says), "{url}: expected {says:?} in {err}");
        assert!(err.contains(what), "{url}: expected {what:?} in {err}");
    }
    // Not a foreign server, maybe one starting up: retried, and the timeout says why.
    for (close, why) in [(true, "retrying in"), (false, "no answer from the server")] {
        let url = format!("postgres://postgres@127.0.0.1:{}/app", tcp_server(close));
        let out = run(schemagate(&url).args(["status", "--connect-timeout", "5s"]));
        let err = stderr(&out);
        assert_eq!(code(&out), 124, "{url}: {err}");
        assert!(err.contains(why), "{url}: expected {why:?} in {err}");
        assert!(err.contains("within 5s (--connect-timeout)"), "{err}");
    }
}

/// reliability: `wait --once` (or any `wait`) whose `--timeout` is shorter than `--connect-timeout`, against an unreachable server | the timeout names `--timeout`, the limit that ran out (it blamed `--connect-timeout`) | nothing
#[test]
fn a_timeout_names_the_limit_that_ran_out() {
    let down = format!("postgres://postgres@127.0.0.1:{}/app", free_port());
    for once in [true, false] {
        let mut cmd = schemagate(&down);
        cmd.args([
            "wait",
            "--expect",
            "1",
            "--timeout",
            "2s",
            "--connect-timeout",
            "60s",
        ]);
        if once {
            cmd.arg("--once");
        }
        let out = run(&mut cmd);
        let err = stderr(&out);
        assert_eq!(code(&out), 124, "{err}");
        assert!(!err.contains("--connect-timeout"), "once {once}: {err}");
        assert!(err.contains("within 2s (--timeout)"), "once {once}: {err}");
    }
    // The other way round, --connect-timeout is named.
    let out = run(schemagate(&down).args([
        "wait",
        "--expect",
        "1",
        "--once",
        "--timeout",
        "60s",
        "--connect-timeout",
        "2s",
    ]));
    assert_exit(&out, 124);
    assert_stderr_has(&out, "within 2s (--connect-timeout)");
}

/// A login role with no privilege beyond what PostgreSQL 15 gives every role (CONNECT;
/// no CREATE on the database nor on `public`), after `setup` (SQL run as the superuser,
/// `{role}` replaced by its name); and its URL.
fn least_privilege_role(db: &PgDb, password: &str, setup: &str) -> (String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let role = format!(
        "sg_lp_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    pg_exec(
        &db.url,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; {}",
            setup.replace("{role}", &role)
        ),
    );
    let url = url::Url::parse(&db.url).unwrap();
    let role_url = format!(
        "postgres://{role}:{password}@{}:{}{}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        url.path()
    );
    (role, role_url)
}

/// reliability: `--table app.marker` for a least-privilege role (PostgreSQL 15: no CREATE on the database; the schema `app` created for it, owned by it or granted to it; or the marker table created by an administrator, with only DML granted) | `migrate` (SQL source or external migrator, advisory lock or lease), `wait` and `status` work: what exists is not created again (PostgreSQL checks CREATE on the database before it looks whether the schema exists, so `CREATE SCHEMA IF NOT EXISTS` failed with "permission denied for database") | nothing
#[test]
fn a_role_without_create_on_the_database_migrates_into_an_existing_schema() {
    let db = PgDb::new("leastpriv");
    let pw = "Lp-Pw-6610";
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ]);
    // The schema is the role's own; its _sqlx_migrations goes there too.
    let (_, owner) = least_privilege_role(
        &db,
        pw,
        "CREATE SCHEMA app AUTHORIZATION {role}; ALTER ROLE {role} SET search_path = app;",
    );
    for _ in 0..2 {
        let out = run(schemagate(&owner).args([
            "migrate",
            "--source",
            src.path(),
            "--table",
            "app.marker",
        ]));
        assert_exit(&out, 0);
    }
    let out = run(schemagate(&owner).args([
        "migrate",
        "--lock",
        "lease",
        "--table",
        "app.marker2",
        "--version",
        "v1",
        "--",
        "true",
    ]));
    assert_eq!(code(&out), 0, "lease: {}", stderr(&out));
    let out = run(schemagate(&owner).args([
        "wait",
        "--source",
        src.path(),
        "--table",
        "app.marker",
        "--once",
    ]));
    assert_exit(&out, 0);
    let out = run(schemagate(&owner).args(["status", "--table", "app.marker"]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM app.marker WHERE status = 'succeeded'"
        ),
        1
    );

    // The schema is granted, not owned.
    let (_, granted) = least_privilege_role(
        &db,
        pw,
        "CREATE SCHEMA ops; GRANT USAGE, CREATE ON SCHEMA ops TO {role};",
    );
    let out = run(schemagate(&granted).args([
        "migrate",
        "--table",
        "ops.marker",
        "--version",
        "v1",
        "--",
        "true",
    ]));
    assert_exit(&out, 0);

    // Everything created by an administrator; the role may only read and write the marker.
    let out = run(schemagate(&db.url).args([
        "migrate",
        "--table",
        "dba.marker",
        "--version",
        "v0",
        "--",
        "true",
    ]));
    assert_exit(&out, 0);
    let (_, dml) = least_privilege_role(
        &db,
        pw,
        "GRANT USAGE ON SCHEMA dba TO {role}; GRANT SELECT, INSERT ON dba.marker TO {role}; \
         GRANT USAGE ON SEQUENCE dba.marker_id_seq TO {role};",
    );
    let out = run(schemagate(&dml).args([
        "migrate",
        "--table",
        "dba.marker",
        "--version",
        "v1",
        "--",
        "true",
    ]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT version FROM dba.marker ORDER BY id"),
        vec!["v0".to_owned(), "v1".to_owned()]
    );

    // A schema that is not there, and may not be created: the privilege is named.
    let (_, none) = least_privilege_role(&db, pw, "");
    let out = run(schemagate(&none).args([
        "migrate",
        "--table",
        "nowhere.marker",
        "--version",
        "v1",
        "--",
        "true",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "permission denied for database");
}

/// reliability: `wait --listen` against a hot standby (a read replica), where LISTEN cannot run ("cannot execute LISTEN during recovery") and a NOTIFY on the primary never arrives | it polls instead, saying once why, and passes when the marker written on the primary has replicated; `wait --source`, `--once` and `status` read the standby too (it exited 1) | nothing
#[test]
fn wait_listen_on_a_hot_standby_polls_instead() {
    let primary = start_cluster(&[]);
    let standby = start_standby(&primary);
    let db = PgDb::on(&primary.url("postgres"), "standby");
    let on_standby = db.url.replacen(
        &format!(":{}/", primary.port),
        &format!(":{}/", standby.port),
        1,
    );
    until(
        "the database to replicate",
        std::time::Duration::from_secs(60),
        || {
            block_on(async {
                use sqlx::Connection;
                sqlx::PgConnection::connect(&on_standby).await.is_ok()
            })
        },
    );
    let src = Migrations::new(&[("1_a.sql", "CREATE TABLE a (id int);")]);
    let mut waiter = spawn(schemagate(&on_standby).args([
        "wait",
        "--listen",
        "--source",
        src.path(),
        "--timeout",
        "120s",
        "--interval",
        "200ms",
    ]));
    // The waiter has given up on LISTEN before anything is migrated.
    let seen = wait_for_stderr_line(&mut waiter, "polling", std::time::Duration::from_secs(60));
    assert!(seen.contains("standby"), "{seen}");
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_exit(&out, 0);
    let out = finish(waiter);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert_eq!(err.matches("polling").count(), 1, "said once: {err}");
    for args in [
        &["wait", "--source", src.path(), "--once"][..],
        &["wait", "--expect", "1", "--once"][..],
        &["status", "--source", src.path()][..],
    ] {
        let out = run(schemagate(&on_standby).args(args));
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
}

/// reliability (PostgreSQL, MariaDB, SQLite): `wait --expect V` for a V that no run ever recorded (a typo, an image built for a release never migrated) | every "not yet" line and the timeout name the newest marker recorded (version, action, status), or say that none is (it said only "no marker for version V yet" for as long as `--timeout`) | nothing
#[test]
fn waiting_for_an_unrecorded_version_names_the_newest_recorded() {
    for kind in [Kind::Pg, Kind::My, Kind::Lite] {
        let db = TestDb::new(kind, "newestnamed");
        let wait_for = |version: &str, extra: &[&str]| {
            let mut cmd = schemagate(db.url());
            cmd.args([
                "wait",
                "--expect",
                version,
                "--timeout",
                "1s",
                "--interval",
                "100ms",
            ])
            .args(extra);
            let out = run(&mut cmd);
            assert_eq!(code(&out), 124, "{kind:?}: {}", stderr(&out));
            stderr(&out)
        };
        let migrate = |version: &str, command: &str| {
            let out = run(schemagate(db.url()).args([
                "migrate",
                "--version",
                version,
                "--",
                "sh",
                "-c",
                command,
            ]));
            code(&out)
        };
        if kind != Kind::Lite {
            // A server database with no marker table at all yet.
            let err = wait_for("v9", &[]);
            assert!(
                err.contains("no marker has been recorded yet"),
                "{kind:?}: {err}"
            );
        }
        assert_eq!(migrate("v1", "true"), 0);
        let err = wait_for("v9", &[]);
        let waiting = err
            .lines()
            .find(|l| l.contains("waiting for schema version v9"));
        for line in [
            waiting.unwrap_or_else(|| panic!("{kind:?}: no waiting line: {err}")),
            &err,
        ] {
            assert!(
                line.contains(
                    "no marker for version v9 yet; the newest marker is for version v1 (succeeded)"
                ),
                "{kind:?}: {line}"
            );
        }
        assert_eq!(migrate("v2", "exit 1"), 1);
        let err = wait_for("v2", &["--ignore-failed"]);
        assert!(
            err.contains("waiting for a retry; the newest marker is for version v2 (failed)"),
            "{kind:?}: {err}"
        );
    }
}

/// reliability: `wait --source` with `--table app.x`, where `migrate` ran with another search_path, so `_sqlx_migrations` is not on the waiter's (`--listen` or polling) | exit 2 at once naming the search_path, the schema where the table is and `--migrations-table` (it waited to `--timeout` saying "no marker for version 2 yet" although the marker says succeeded) | nothing
#[test]
fn history_off_the_search_path_is_named_not_called_missing() {
    let db = PgDb::new("offpath");
    pg_exec(&db.url, "CREATE SCHEMA s1; CREATE SCHEMA app;");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.sql", "CREATE TABLE b (id int);"),
    ]);
    let migrator = format!("{}?options=-csearch_path%3Ds1", db.url);
    let out =
        run(schemagate(&migrator).args(["migrate", "--source", src.path(), "--table", "app.x"]));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM s1._sqlx_migrations"),
        2
    );
    for listen in [false, true] {
        let mut cmd = schemagate(&db.url);
        cmd.args([
            "wait",
            "--source",
            src.path(),
            "--table",
            "app.x",
            "--timeout",
            "60s",
        ]);
        if listen {
            cmd.arg("--listen");
        }
        let out = run(&mut cmd);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "listen {listen}: {err}");
        for named in [
            "the marker for version 2 says succeeded, but _sqlx_migrations",
            "search_path \"$user\", public",
            "it exists in schema s1",
            "--migrations-table s1._sqlx_migrations",
        ] {
            assert!(
                err.contains(named),
                "listen {listen}: expected {named:?} in {err}"
            );
        }
        assert!(!err.contains("no marker for version 2 yet"), "{err}");
    }
    // What the message says to do works.
    let out = run(schemagate(&db.url).args([
        "wait",
        "--source",
        src.path(),
        "--table",
        "app.x",
        "--migrations-table",
        "s1._sqlx_migrations",
        "--once",
    ]));
    assert_exit(&out, 0);
}
