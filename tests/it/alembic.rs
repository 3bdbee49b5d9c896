//! The Alembic example (examples/alembic), wrapped: 20 concurrent
//! `schemagate migrate --version <head> -- alembic upgrade head` on one empty database.
//! Alembic itself takes no lock; under schemagate every run exits 0 and each revision runs
//! once. Installs alembic and psycopg from PyPI into a venv under target/ on first use.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// reliability: 20 racing `alembic upgrade head` wrapped by `migrate --version head --` | all exit 0, alembic runs in one of them, each revision runs once, `alembic_version` holds head | nothing
#[test]
fn twenty_racing_alembic_upgrades_under_schemagate_all_succeed_and_run_each_revision_once() {
    let venv = alembic_venv();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alembic");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let heads = Command::new(venv.join("bin/alembic"))
        .arg("heads")
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        heads.status.success(),
        "{}",
        String::from_utf8_lossy(&heads.stderr)
    );
    let head = String::from_utf8_lossy(&heads.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(head, "0003_backfill_display_name");

    let db = PgDb::new("alembic");
    let children: Vec<_> = (0..20)
        .map(|_| {
            let mut c = schemagate(&db.url);
            c.env("DATABASE_URL", &db.url)
                .env("PATH", &path)
                .current_dir(&project)
                .args([
                    "migrate",
                    "--version",
                    &head,
                    "--",
                    "alembic",
                    "upgrade",
                    "head",
                ]);
            spawn(&mut c)
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(finish).collect();
    for out in &outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
    }
    let ran_alembic = outs
        .iter()
        .filter(|o| stderr(o).contains("running alembic upgrade head"))
        .count();
    assert_eq!(ran_alembic, 1, "alembic ran in more than one process");
    assert_eq!(
        pg_strings(&db.url, "SELECT version_num FROM alembic_version"),
        vec![head.clone()]
    );
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT revision || '=' || count(*) FROM revision_audit GROUP BY revision ORDER BY revision"
        ),
        vec![
            "0001_create_tables=1",
            "0002_add_display_name=1",
            "0003_backfill_display_name=1"
        ]
    );
    // The data migration ran: every user has a display name.
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM users WHERE display_name IS NULL"
        ),
        0
    );
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schemagate_marker WHERE status = 'succeeded'"
        ),
        1
    );

    let out = run(schemagate(&db.url).args(["wait", "--expect", &head, "--timeout", "10s"]));
    assert_exit(&out, 0);
}
