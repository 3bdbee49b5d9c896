//! Contracts no behaviour test pins: the `--help` text of every subcommand and the shape of
//! `status --json`, as insta snapshots in `tests/it/snapshots/`, so a changed flag, default,
//! exit-code line or key is a reviewed diff. A failure prints the diff; after reviewing it,
//! `INSTA_UPDATE=always cargo test --test it contracts` rewrites the `.snap` files (or
//! `cargo insta review`, if installed).

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
    assert_exit(&out, 0);
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
        &["fleet", "--help"],
    ] {
        text.push_str(&format!("$ schemagate {}\n", args.join(" ")));
        text.push_str(&help(args));
        text.push('\n');
    }
    snapshot("help", &text);
}

/// Compare `text` with `tests/it/snapshots/{name}.snap`, printing the diff when it differs.
#[track_caller]
fn snapshot(name: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, text));
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
    assert_exit(&out, 2);
}

/// The shape of `status --json` (keys and value types, not values) is a contract for the
/// machines that read it: compared with `tests/it/snapshots/status-json-shape.snap`.
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
    assert_exit(&out, 0);
    src.write("3_c.sql", "CREATE TABLE c (id int);");
    let out = run(schemagate(&db.url).args(["status", "--json", "--source", src.path()]));
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut lines = Vec::new();
    shape(&v, "", &mut lines);
    let text = lines.join("\n") + "\n";
    snapshot("status-json-shape", &text);
}

/// The headings of a `--help` text, in order ("Migrate:", "Connection:", ...).
fn headings(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.ends_with(':') && l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .filter(|l| !l.contains(' '))
        .collect()
}

/// Each command's own flags come first (issue 25): `migrate --help` used to open with the
/// connection flags every command shares.
#[test]
fn help_lists_the_commands_own_group_first() {
    for (command, own) in [
        ("migrate", "Migrate:"),
        ("wait", "Wait:"),
        ("status", "Status:"),
        ("rollback", "Rollback:"),
        ("stamp", "Stamp:"),
        ("check", "Check:"),
    ] {
        let text = help(&[command, "--help"]);
        let groups: Vec<_> = headings(&text)
            .into_iter()
            .filter(|h| !["Examples:", "Options:"].contains(h))
            .collect();
        assert_eq!(groups.first(), Some(&own), "{command} --help: {groups:?}");
    }
}

/// Every `--format` value says what it is, in every command that takes one.
#[test]
fn every_format_value_is_described() {
    for command in ["migrate", "wait", "status"] {
        let text = help(&[command, "--help"]);
        let at = text
            .find("      --format <FORMAT>\n")
            .expect("a --format flag");
        let values = &text[at..text[at..].find("[env:").map_or(text.len(), |e| at + e)];
        for name in ["sqlx", "alembic", "django", "rails", "dbmate", "diesel"] {
            let line = values
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("- {name}:")))
                .unwrap_or_else(|| panic!("{command} --help: {name} is not described:\n{values}"));
            assert!(line.len() > name.len() + 12, "{command}: {line}");
        }
    }
}

/// `--help` teaches the flags; where the code checks them is not the reader's business.
#[test]
fn help_has_no_implementation_notes() {
    for command in [
        "migrate", "wait", "status", "rollback", "stamp", "check", "smoke",
    ] {
        let text = help(&[command, "--help"]);
        for note in [".rs ", ".rs,", ".rs)", "conflicts_with", "clap"] {
            assert!(!text.contains(note), "{command} --help mentions {note:?}");
        }
    }
}

/// clap's tip for a mistyped flag said "use '-- --sorce'"; after `--` comes the migrator
/// (or the app), so the tip now says that.
#[test]
fn mistyped_flag_tip_says_what_follows_the_double_dash() {
    for (args, similar, after) in [
        (&["migrate", "--sorce", "x"][..], "--source", "migrator"),
        (&["check", "--sinse", "1"], "--since", "migrator"),
        (&["wait", "--expct", "1"], "--expect", "exec once ready"),
    ] {
        let out = run(Command::new(bin()).args(args));
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{err}");
        assert!(
            err.contains(&format!("a similar argument exists: '{similar}'")),
            "{err}"
        );
        assert!(!err.contains("use '-- "), "{args:?}: {err}");
        assert!(err.contains(after), "{args:?}: {err}");
    }
}

/// `schemagate completions bash`, loaded into a real bash, completes the flags of the
/// command being typed.
#[test]
fn bash_completion_completes_a_commands_flags() {
    let script = run(Command::new(bin()).args(["completions", "bash"]));
    assert_exit(&script, 0);
    let dir = tempfile_dir("completions");
    let path = dir.join("schemagate.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(schemagate migrate --lock-w); COMP_CWORD=2; \
         _schemagate schemagate --lock-w migrate; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = run(Command::new("bash").args(["-c", &probe]));
    assert_exit(&out, 0);
    let words = String::from_utf8_lossy(&out.stdout);
    assert_eq!(words.trim(), "--lock-wait", "{words}");
}

/// Every shell's script is generated from the same definition: each names every
/// command and a command's own flag.
#[test]
fn completions_cover_every_shell_and_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(Command::new(bin()).args(["completions", shell]));
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for word in [
            "migrate",
            "wait",
            "status",
            "check",
            "lock-wait",
            "ignore-failed",
        ] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = run(Command::new(bin()).args(["completions", "tcsh"]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "possible values");
}

/// `schemagate man` renders with the system's man, with the exit codes as their own
/// section; `--dir` writes one page per command.
#[test]
fn man_pages_render_with_man() {
    let dir = tempfile_dir("man");
    let out = run(Command::new(bin()).args(["man", "--dir"]).arg(&dir));
    assert_exit(&out, 0);
    for page in [
        "schemagate",
        "schemagate-migrate",
        "schemagate-wait",
        "schemagate-check",
    ] {
        let path = dir.join(format!("{page}.1"));
        let out = run(Command::new("man")
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "")
            .arg("-l")
            .arg(&path));
        assert_eq!(code(&out), 0, "{page}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SYNOPSIS"), "{page}:\n{text}");
        if page == "schemagate" {
            assert!(text.contains("EXIT STATUS"), "{text}");
            assert!(text.contains("124      timed out"), "{text}");
            assert!(!text.contains("schemagate-help"), "{text}");
        } else {
            assert!(text.contains("--database-url"), "{page}:\n{text}");
        }
    }
    assert!(!dir.join("schemagate-help.1").exists());
    let stdout_page = run(Command::new(bin()).arg("man"));
    assert_exit(&stdout_page, 0);
    assert_eq!(
        stdout_page.stdout,
        std::fs::read(dir.join("schemagate.1")).unwrap()
    );
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("schemagate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
