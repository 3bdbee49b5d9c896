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
