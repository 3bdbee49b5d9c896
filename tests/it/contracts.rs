//! Contracts no behaviour test pins: the `--help` text of every subcommand, compared with
//! `tests/it/snapshots/help.txt` (`SCHEMAGATE_BLESS=1 cargo test --test it contracts`
//! rewrites it), so a changed flag, default or exit-code line is a reviewed diff.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

fn help(args: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    // `[env: NAME=value]` shows the caller's values: none may leak into the snapshot.
    for (k, _) in std::env::vars() {
        if k.starts_with("SCHEMAGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("COLUMNS", "100")
        .output()
        .expect("run schemagate --help");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_text_is_the_documented_contract() {
    let mut text = String::new();
    for args in [
        &["--help"][..],
        &["migrate", "--help"],
        &["wait", "--help"],
        &["status", "--help"],
        &["rollback", "--help"],
        &["stamp", "--help"],
        &["smoke", "--help"],
        &["check", "--help"],
        &["digest", "--help"],
    ] {
        text.push_str(&format!("$ schemagate {}\n", args.join(" ")));
        text.push_str(&help(args));
        text.push('\n');
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots/help.txt");
    if std::env::var_os("SCHEMAGATE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "--help changed; review the diff and bless it with \
         `SCHEMAGATE_BLESS=1 cargo test --test it contracts`"
    );
}

/// `wait` takes no lock: it offers no `--lock-name` (issue 13), and refuses one with exit 2.
#[test]
fn wait_offers_no_lock_name() {
    assert!(!help(&["wait", "--help"]).contains("--lock-name"));
    assert!(help(&["migrate", "--help"]).contains("--lock-name"));
    let out = run(schemagate("postgres://u@127.0.0.1:1/db").args([
        "wait",
        "--expect",
        "1",
        "--lock-name",
        "x",
    ]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

/// The shape of `status --json` (keys and value types, not values) is a contract for the
/// machines that read it: compared with `tests/it/snapshots/status-json-shape.txt`.
#[test]
fn status_json_shape_is_the_documented_contract() {
    fn shape(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    shape(v, &format!("{path}.{k}"), out);
                }
            }
            serde_json::Value::Array(items) => match items.first() {
                Some(first) => shape(first, &format!("{path}[]"), out),
                None => out.push(format!("{path}: []")),
            },
            serde_json::Value::Null => out.push(format!("{path}: null")),
            serde_json::Value::Bool(_) => out.push(format!("{path}: bool")),
            serde_json::Value::Number(_) => out.push(format!("{path}: number")),
            serde_json::Value::String(_) => out.push(format!("{path}: string")),
        }
    }
    let db = PgDb::new("shape");
    let src = Migrations::new(&[
        ("1_a.sql", "CREATE TABLE a (id int);"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        ("2_b.down.sql", "DROP TABLE b;"),
    ]);
    let out = run(schemagate(&db.url).args(["migrate", "--source", src.path()]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(schemagate(&db.url).args(["status", "--json", "--source", src.path()]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut lines = Vec::new();
    shape(&v, "", &mut lines);
    let text = lines.join("\n") + "\n";
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots/status-json-shape.txt");
    if std::env::var_os("SCHEMAGATE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "the status --json shape changed:\n{text}\nreview it and bless it with \
         `SCHEMAGATE_BLESS=1 cargo test --test it contracts`"
    );
}
