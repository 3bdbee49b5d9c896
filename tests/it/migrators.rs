//! Other migrators' directories as a source (`--format`), each with the real tool against
//! real PostgreSQL: Alembic and Django (PyPI, in venvs under target/), Rails
//! (ActiveRecord's own migrator from Debian's ruby-activerecord and ruby-pg, run as
//! `ActiveRecord::MigrationContext#migrate`), dbmate (npm, under target/) and Diesel
//! (diesel_cli built under target/). Every example under `examples/<tool>/` has three
//! migrations or more, one of them a data migration, and each migration inserts a row into
//! a table of its own, so a migration that ran twice shows.
//!
//! Per migrator: 20 racing `migrate --source … --format … -- <the tool's migrate command>`;
//! the tool run alone, then `wait`; `wait` blocking on a pending migration until the tool
//! applies it; an image with one migration fewer than the database; a migration file
//! modified after it was applied.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// dbmate from npm under target/ (once).
pub(crate) fn dbmate_bin() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let prefix = root().join("target/dbmate");
        let bin = prefix.join("node_modules/.bin/dbmate");
        if !bin.exists() {
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg("dbmate@2.36.0")
                .output()
                .expect("run npm (install npm)");
            assert!(
                out.status.success(),
                "npm install dbmate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bin
    })
    .clone()
}

/// diesel_cli (postgres only) built under target/ once and kept there.
pub(crate) fn diesel_bin() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let prefix = root().join("target/diesel");
        let bin = prefix.join("bin/diesel");
        if !bin.exists() {
            let out = Command::new("cargo")
                .args([
                    "install",
                    "diesel_cli",
                    "--version",
                    "2.3.14",
                    "--no-default-features",
                    "--features",
                    "postgres",
                    "--locked",
                    // Unoptimised: it only runs three migrations, and builds much faster.
                    "--debug",
                    "--root",
                ])
                .arg(&prefix)
                .output()
                .expect("run cargo install");
            assert!(
                out.status.success(),
                "cargo install diesel_cli failed (it needs libpq-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bin
    })
    .clone()
}

/// A copy of a directory tree (without Python caches).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let target = to.join(&name);
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary copy of a project, removed afterwards.
pub(crate) struct Project {
    pub(crate) dir: PathBuf,
}

impl Project {
    pub(crate) fn copy(from: &Path) -> Project {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "schemagate-project-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(from, &dir);
        Project { dir }
    }

    pub(crate) fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One migrator, as the scenarios drive it.
struct Tool {
    format: &'static str,
    /// The project (a copy of examples/<tool>, perhaps extended).
    project: Project,
    /// The newest migration (file, or directory for Diesel), relative to the project: the
    /// older image is the project without it.
    newest: &'static str,
    /// A migration file changed in the drift scenario, relative to the project.
    modify: &'static str,
    /// The tool's migrate command; run in the project's directory.
    command: Vec<String>,
    /// Extra environment for the tool (PATH).
    path: String,
    /// The version schemagate derives from the files.
    version: &'static str,
    /// What the tool's own table holds once every migration ran, sorted.
    history_sql: &'static str,
    history: Vec<&'static str>,
    /// `<migration>=<times it ran>`, sorted, from the side-effect table.
    runs_sql: &'static str,
}

const RUNS_SQL: &str =
    "SELECT migration || '=' || count(*) FROM migration_runs GROUP BY migration ORDER BY 1";

impl Tool {
    fn alembic(merge: bool) -> Tool {
        let venv = venv(
            "alembic-venv",
            "examples/alembic/requirements.txt",
            "alembic",
        );
        let project = Project::copy(&root().join("examples/alembic"));
        let mut history = vec![
            "0001_create_tables",
            "0002_add_display_name",
            "0003_backfill_display_name",
        ];
        let (newest, version) = if merge {
            // Two branches from 0003, merged: two heads become one.
            let versions = project.dir.join("migrations/versions");
            for (rev, down, body) in [
                (
                    "0004_orders_note",
                    "\"0003_backfill_display_name\"",
                    "op.add_column(\"orders\", sa.Column(\"note\", sa.Text))",
                ),
                (
                    "0004_users_locale",
                    "\"0003_backfill_display_name\"",
                    "op.add_column(\"users\", sa.Column(\"locale\", sa.Text))",
                ),
                (
                    "0005_merge",
                    "(\"0004_orders_note\", \"0004_users_locale\")",
                    "pass",
                ),
            ] {
                std::fs::write(
                    versions.join(format!("{rev}.py")),
                    format!(
                        "from alembic import op\nimport sqlalchemy as sa\n\nrevision = \"{rev}\"\n\
                         down_revision = {down}\nbranch_labels = None\ndepends_on = None\n\n\n\
                         def upgrade() -> None:\n    {body}\n    op.execute(\"INSERT INTO revision_audit \
                         (revision, backend_pid) VALUES ('{rev}', pg_backend_pid())\")\n\n\n\
                         def downgrade() -> None:\n    pass\n"
                    ),
                )
                .unwrap();
            }
            history = vec!["0005_merge"];
            ("migrations/versions/0005_merge.py", "0005_merge")
        } else {
            history = vec![history[2]];
            (
                "migrations/versions/0003_backfill_display_name.py",
                "0003_backfill_display_name",
            )
        };
        // The version schemagate derives is what `alembic heads` prints.
        let heads = Command::new(venv.join("bin/alembic"))
            .arg("heads")
            .current_dir(&project.dir)
            .output()
            .unwrap();
        assert!(
            heads.status.success(),
            "{}",
            String::from_utf8_lossy(&heads.stderr)
        );
        let heads: Vec<String> = String::from_utf8_lossy(&heads.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        assert_eq!(heads, vec![version.to_owned()]);
        Tool {
            format: "alembic",
            project,
            newest,
            modify: "migrations/versions/0002_add_display_name.py",
            command: vec!["alembic".into(), "upgrade".into(), "heads".into()],
            path: venv.join("bin").display().to_string(),
            version,
            history_sql: "SELECT version_num FROM alembic_version ORDER BY 1",
            history,
            runs_sql: "SELECT revision || '=' || count(*) FROM revision_audit GROUP BY revision ORDER BY 1",
        }
    }

    fn django() -> Tool {
        let venv = venv(
            "django-venv",
            "examples/django/requirements.txt",
            "django-admin",
        );
        Tool {
            format: "django",
            project: Project::copy(&root().join("examples/django")),
            newest: "shop/migrations/0003_backfill_display_name.py",
            modify: "shop/migrations/0002_customer_display_name.py",
            command: vec![
                venv.join("bin/python").display().to_string(),
                "manage.py".into(),
                "migrate".into(),
                "--no-input".into(),
            ],
            path: venv.join("bin").display().to_string(),
            version: "shop:0003_backfill_display_name",
            history_sql: "SELECT app || '.' || name FROM django_migrations ORDER BY 1",
            history: vec![
                "shop.0001_initial",
                "shop.0002_customer_display_name",
                "shop.0003_backfill_display_name",
            ],
            runs_sql: RUNS_SQL,
        }
    }

    fn rails() -> Tool {
        let ok = Command::new("ruby")
            .args(["-e", "require 'active_record'; require 'pg'"])
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "ActiveRecord is missing: apt-get install ruby-activerecord ruby-pg"
        );
        Tool {
            format: "rails",
            project: Project::copy(&root().join("examples/rails")),
            newest: "db/migrate/20240103000000_backfill_display_name.rb",
            modify: "db/migrate/20240102000000_add_display_name.rb",
            command: vec!["ruby".into(), "migrate.rb".into()],
            path: String::new(),
            version: "20240103000000",
            history_sql: "SELECT version FROM schema_migrations ORDER BY 1",
            history: vec!["20240101000000", "20240102000000", "20240103000000"],
            runs_sql: RUNS_SQL,
        }
    }

    fn dbmate() -> Tool {
        let bin = dbmate_bin();
        Tool {
            format: "dbmate",
            project: Project::copy(&root().join("examples/dbmate")),
            newest: "db/migrations/20240103000000_backfill_display_name.sql",
            modify: "db/migrations/20240102000000_add_display_name.sql",
            command: vec![
                bin.display().to_string(),
                "--no-dump-schema".into(),
                "up".into(),
            ],
            path: String::new(),
            version: "20240103000000",
            history_sql: "SELECT version FROM schema_migrations ORDER BY 1",
            history: vec!["20240101000000", "20240102000000", "20240103000000"],
            runs_sql: RUNS_SQL,
        }
    }

    fn diesel() -> Tool {
        let bin = diesel_bin();
        Tool {
            format: "diesel",
            project: Project::copy(&root().join("examples/diesel")),
            newest: "migrations/2024-01-03-000000_backfill_display_name",
            modify: "migrations/2024-01-02-000000_add_display_name/up.sql",
            command: vec![bin.display().to_string(), "migration".into(), "run".into()],
            path: String::new(),
            version: "20240103000000",
            history_sql: "SELECT version FROM __diesel_schema_migrations ORDER BY 1",
            history: vec!["20240101000000", "20240102000000", "20240103000000"],
            runs_sql: RUNS_SQL,
        }
    }

    /// PATH for the tool and for schemagate's child.
    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.path,
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The URL the tool itself is given (dbmate's driver asks for TLS unless told).
    fn tool_url(&self, url: &str) -> String {
        if self.format == "dbmate" {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}sslmode=disable")
        } else {
            url.to_owned()
        }
    }

    /// The tool alone, without schemagate, on `project`.
    fn run_alone(&self, project: &Path, url: &str) {
        let out = Command::new(&self.command[0])
            .args(&self.command[1..])
            .current_dir(project)
            .env("DATABASE_URL", self.tool_url(url))
            .env("PATH", self.path_env())
            .output()
            .expect("run the migrator");
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            self.command.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `schemagate migrate --source <project> --format F -- <command>`.
    fn migrate(&self, project: &Path, url: &str) -> Command {
        let mut c = schemagate(url);
        c.env("DATABASE_URL", self.tool_url(url))
            .env("PATH", self.path_env())
            .current_dir(project)
            .args(["migrate", "--source"])
            .arg(project)
            .args(["--format", self.format, "--"])
            .args(&self.command);
        c
    }

    fn wait(&self, project: &Path, url: &str) -> Command {
        let mut c = schemagate(url);
        c.args(["wait", "--source"])
            .arg(project)
            .args(["--format", self.format]);
        c
    }

    /// The project without its newest migration: an image one release older.
    fn older(&self) -> Project {
        let older = Project::copy(&self.project.dir);
        let newest = older.dir.join(self.newest);
        if newest.is_dir() {
            std::fs::remove_dir_all(newest).unwrap();
        } else {
            std::fs::remove_file(newest).unwrap();
        }
        older
    }
}

/// 20 racing `migrate --format -- CMD`: all exit 0, the tool runs in one of them, each
/// migration ran once; then a file modified after it was applied is drift: the digest
/// differs, the fast path does not skip it, and `status` names the file.
fn races_then_drift(tool: Tool) {
    let db = PgDb::new(tool.format);
    let project = tool.project.dir.clone();
    let children: Vec<_> = (0..20)
        .map(|_| spawn(&mut tool.migrate(&project, &db.url)))
        .collect();
    let outs: Vec<_> = children.into_iter().map(finish).collect();
    for out in &outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
    }
    let ran = outs
        .iter()
        .filter(|o| stderr(o).contains("under the lock"))
        .count();
    assert_eq!(ran, 1, "the migrator ran in more than one process");
    assert_eq!(pg_strings(&db.url, tool.history_sql), tool.history);
    let runs = pg_strings(&db.url, tool.runs_sql);
    assert!(runs.len() >= 3, "{runs:?}");
    assert!(runs.iter().all(|r| r.ends_with("=1")), "{runs:?}");
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT version FROM schemagate_marker WHERE status = 'succeeded'"
        ),
        vec![tool.version]
    );

    // The version and digest come from the files.
    let status = |p: &Path| {
        let out = run(schemagate(&db.url)
            .args(["status", "--json", "--source"])
            .arg(p)
            .args(["--format", tool.format]));
        assert_exit(&out, 0);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let before = status(&project);
    assert_eq!(before["history"]["version"], tool.version);
    assert_eq!(before["history"]["ready"], true);

    // The fast path: the next replica runs nothing.
    let out = run(&mut tool.migrate(&project, &db.url));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "already applied");

    // A file changed after it was applied.
    let changed = Project::copy(&project);
    let file = changed.dir.join(tool.modify);
    let comment = if tool.modify.ends_with(".sql") {
        "\n-- changed after it was applied\n"
    } else {
        "\n# changed after it was applied\n"
    };
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(comment);
    std::fs::write(&file, text).unwrap();
    let after = status(&changed.dir);
    assert_ne!(after["history"]["digest"], before["history"]["digest"]);
    // Diesel's migration is its directory (up.sql and down.sql).
    let named = tool.modify.trim_end_matches("/up.sql");
    let out = run(&mut tool.migrate(&changed.dir, &db.url));
    assert_exit(&out, 4);
    assert_stderr_has(&out, named);
    let text = run(schemagate(&db.url).args([
        "status",
        "--source",
        changed.path(),
        "--format",
        tool.format,
    ]));
    let stdout = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        stdout.contains(&format!("modified: {named} changed")),
        "{stdout}"
    );
    let runs_after = pg_strings(&db.url, tool.runs_sql);
    assert_eq!(runs_after, runs, "a migration ran again");
}

/// The tool run alone (no schemagate, no marker): `wait` blocks while one migration is
/// pending and passes once the tool applies it; an image one migration older than the
/// database passes too.
fn wait_on_the_tools_history(tool: Tool) {
    let db = PgDb::new(tool.format);
    let older = tool.older();
    tool.run_alone(&older.dir, &db.url);

    let mut waiter = tool.wait(&tool.project.dir, &db.url);
    waiter.args(["--timeout", "2m", "--interval", "200ms"]);
    let mut waiter = spawn(&mut waiter);
    let seen = wait_for_stderr_line(
        &mut waiter,
        "waiting for schema version",
        Duration::from_secs(60),
    );
    assert!(
        seen.contains("does not show 1 of this build's migrations"),
        "{seen}"
    );
    assert!(waiter.try_wait().unwrap().is_none(), "wait did not block");

    tool.run_alone(&tool.project.dir, &db.url);
    let out = finish(waiter);
    assert_exit(&out, 0);

    let out = run(tool.wait(&tool.project.dir, &db.url).arg("--once"));
    assert_exit(&out, 0);
    // An image one migration older than the database (a rolled-back release) starts.
    let out = run(tool.wait(&older.dir, &db.url).arg("--once"));
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'schemagate_marker'"
        ),
        0,
        "wait wrote a marker"
    );
    // The format is detected when left out.
    let out = run(schemagate(&db.url).args(["wait", "--once", "--source", tool.project.path()]));
    assert_exit(&out, 0);
    assert_stderr_has(&out, &format!("schema version {} is ready", tool.version));

    // The migrations ran without schemagate: `migrate --format -- CMD` records the marker
    // without running CMD, and the next run takes the fast path.
    let runs = pg_strings(&db.url, tool.runs_sql);
    let out = run(&mut tool.migrate(&tool.project.dir, &db.url));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "recorded without running");
    assert_stderr_lacks(&out, "under the lock");
    assert_eq!(pg_strings(&db.url, tool.runs_sql), runs);
    let out = run(&mut tool.migrate(&tool.project.dir, &db.url));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "already applied");
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT status || ' ' || version FROM schemagate_marker"
        ),
        vec![format!("succeeded {}", tool.version)]
    );
}

/// reliability: 20 racing `alembic upgrade heads` under `migrate --source --format alembic --` | all exit 0, alembic runs once, each revision once; a revision file changed after it ran is refused (exit 4) naming it | nothing
#[test]
fn alembic_races_and_drift() {
    races_then_drift(Tool::alembic(false));
}

/// reliability: 20 racing `alembic upgrade heads` on two branches merged by a merge revision | all exit 0, each revision once, `alembic_version` holds the merge | nothing
#[test]
fn alembic_merge_races_and_drift() {
    races_then_drift(Tool::alembic(true));
}

/// reliability: `alembic upgrade` run without schemagate, one revision pending | `wait --format alembic` blocks until alembic applies it; an older image passes; `migrate --format -- CMD` then records the marker without running the migrator | nothing
#[test]
fn alembic_wait_on_alembic_version() {
    wait_on_the_tools_history(Tool::alembic(false));
}

/// reliability: only the two merged branches applied, the merge revision pending | `wait` blocks until it is applied; an image without the merge passes (the rule for an unknown revision) | nothing
#[test]
fn alembic_merge_wait_on_alembic_version() {
    wait_on_the_tools_history(Tool::alembic(true));
}

/// reliability: 20 racing `manage.py migrate` under `migrate --source --format django --` | all exit 0, each migration once; a changed file is refused (exit 4) naming it | nothing
#[test]
fn django_races_and_drift() {
    races_then_drift(Tool::django());
}

/// reliability: `manage.py migrate` run without schemagate, one migration pending | `wait --format django` blocks until it is applied; an older image passes; `migrate --format -- CMD` then records the marker without running the migrator | nothing
#[test]
fn django_wait_on_django_migrations() {
    wait_on_the_tools_history(Tool::django());
}

/// reliability: 20 racing ActiveRecord migrators under `migrate --source --format rails --` | all exit 0, each migration once; a changed file is refused (exit 4) naming it | nothing
#[test]
fn rails_races_and_drift() {
    races_then_drift(Tool::rails());
}

/// reliability: ActiveRecord's migrator run without schemagate, one migration pending | `wait --format rails` blocks until it is applied; an older image passes; `migrate --format -- CMD` then records the marker without running the migrator | nothing
#[test]
fn rails_wait_on_schema_migrations() {
    wait_on_the_tools_history(Tool::rails());
}

/// reliability: 20 racing `dbmate up` under `migrate --source --format dbmate --` | all exit 0, each migration once; a changed file is refused (exit 4) naming it | nothing
#[test]
fn dbmate_races_and_drift() {
    races_then_drift(Tool::dbmate());
}

/// reliability: `dbmate up` run without schemagate, one migration pending | `wait --format dbmate` blocks until it is applied; an older image passes; `migrate --format -- CMD` then records the marker without running the migrator | nothing
#[test]
fn dbmate_wait_on_schema_migrations() {
    wait_on_the_tools_history(Tool::dbmate());
}

/// reliability: 20 racing `diesel migration run` under `migrate --source --format diesel --` | all exit 0, each migration once; a changed file is refused (exit 4) naming it | nothing
#[test]
fn diesel_races_and_drift() {
    races_then_drift(Tool::diesel());
}

/// reliability: `diesel migration run` without schemagate, one migration pending | `wait --format diesel` blocks until it is applied; an older image passes; `migrate --format -- CMD` then records the marker without running the migrator | nothing
#[test]
fn diesel_wait_on_diesel_schema_migrations() {
    wait_on_the_tools_history(Tool::diesel());
}

/// reliability: the migrator failed under `migrate --format` (a `failed` marker), then nothing changed in its history | `wait --format` exits 3 at once; once the migrator has run again since (its history changed after the marker), `wait` waits again and passes when the last migration lands | nothing
#[test]
fn a_failed_marker_ends_the_wait_until_the_history_moves_on() {
    let tool = Tool::dbmate();
    let db = PgDb::new("failed");
    let older = tool.older();
    let oldest = Project::copy(&older.dir);
    std::fs::remove_file(
        oldest
            .dir
            .join("db/migrations/20240102000000_add_display_name.sql"),
    )
    .unwrap();
    tool.run_alone(&oldest.dir, &db.url);

    let out = run(schemagate(&db.url)
        .args([
            "migrate",
            "--source",
            tool.project.path(),
            "--format",
            "dbmate",
        ])
        .args(["--", "false"]));
    assert_exit(&out, 1);
    let out = run(tool
        .wait(&tool.project.dir, &db.url)
        .args(["--timeout", "30s"]));
    assert_exit(&out, 3);
    assert_stderr_has(&out, "recorded as failed");

    // Someone runs the migrator again (a retry, by hand): the failure is old news.
    tool.run_alone(&older.dir, &db.url);
    let mut waiter = tool.wait(&tool.project.dir, &db.url);
    waiter.args(["--timeout", "2m", "--interval", "200ms"]);
    let mut waiter = spawn(&mut waiter);
    wait_for_stderr_line(
        &mut waiter,
        "waiting for schema version",
        Duration::from_secs(60),
    );
    assert!(waiter.try_wait().unwrap().is_none(), "wait did not block");
    tool.run_alone(&tool.project.dir, &db.url);
    assert_exit(&finish(waiter), 0);
}

/// A directory that looks like two migrators is refused (exit 2) naming both (an
/// `alembic.ini` settles it for Alembic); a migrator's directory without its command is
/// refused naming the command to give.
#[test]
fn an_ambiguous_or_incomplete_source_is_a_usage_error() {
    let url = "postgres://nobody@127.0.0.1:1/none";
    let project = Project::copy(&root().join("examples/alembic"));
    // A script directory (env.py, versions/) beside a manage.py, without alembic.ini.
    let both = project.dir.join("migrations");
    std::fs::write(both.join("manage.py"), "").unwrap();
    let out = run(schemagate(url).args(["wait", "--once", "--source", both.to_str().unwrap()]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "looks like alembic and django; pass --format");
    let out = run(schemagate(url).args([
        "migrate",
        "--source",
        root().join("examples/rails").to_str().unwrap(),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(
        &out,
        "is a rails directory: give the migrator's command after --",
    );
    let out = run(schemagate(url).args([
        "migrate",
        "--source",
        root().join("examples/dbmate").to_str().unwrap(),
        "--version",
        "7",
        "--",
        "true",
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--version comes from the files");
}

/// reliability: after a `succeeded` marker, the last migration is rolled back with the migrator itself (`dbmate rollback`) | `wait --format` is not ready; `migrate --format -- CMD` does not take the fast path, runs the migrator again and records the marker | nothing
#[test]
fn a_downgrade_made_with_the_migrator_is_not_hidden_by_the_marker() {
    let tool = Tool::dbmate();
    let db = PgDb::new("downgrade");
    let out = run(&mut tool.migrate(&tool.project.dir, &db.url));
    assert_exit(&out, 0);
    let out = Command::new(&tool.command[0])
        .args(["--no-dump-schema", "rollback"])
        .current_dir(&tool.project.dir)
        .env("DATABASE_URL", tool.tool_url(&db.url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(tool.wait(&tool.project.dir, &db.url).arg("--once"));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "20240103000000");
    let out = run(&mut tool.migrate(&tool.project.dir, &db.url));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "under the lock");
    let out = run(tool.wait(&tool.project.dir, &db.url).arg("--once"));
    assert_exit(&out, 0);
}
