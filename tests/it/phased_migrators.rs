//! Expand and contract with other migrators (`migrate --phase … --format F -- CMD`), each
//! with the real tool against real PostgreSQL: the phase of every pending migration comes
//! from the migrator's convention (Rails' `db/post_migrate`, an Alembic branch labelled
//! `contract`, a Django migration's `schemagate_phase = "contract"`), the expand run leaves
//! the contract pending while the older release keeps working, and the contract run waits
//! for the older release's instances (exit 75) before it runs the command.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use crate::harness::*;
use crate::migrators::{Project, root};

/// Release N of an example project, then release N+1: an expand migration that adds
/// `nickname`, and a contract migration that drops `display_name`, which release N reads.
struct Case {
    format: &'static str,
    project: Project,
    /// The table release N reads `display_name` from.
    table: &'static str,
    /// PATH for the tool.
    path: String,
    expand: Vec<String>,
    contract: Vec<String>,
    /// What release N's and N+1's instances register (the version schemagate derives).
    old_expects: &'static str,
    new_expects: &'static str,
    expand_id: &'static str,
    contract_id: &'static str,
    history_sql: &'static str,
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

impl Case {
    fn rails() -> Case {
        let project = Project::copy(&root().join("examples/rails"));
        Case {
            format: "rails",
            project,
            table: "users",
            path: String::new(),
            expand: vec!["ruby".into(), "migrate.rb".into()],
            contract: vec!["ruby".into(), "migrate.rb".into()],
            old_expects: "20240103000000",
            new_expects: "20240105000000",
            expand_id: "20240104000000",
            contract_id: "20240105000000",
            history_sql: "SELECT version FROM schema_migrations ORDER BY 1",
        }
    }

    fn rails_release(&self) {
        write(
            &self.project.dir,
            "db/migrate/20240104000000_add_nickname.rb",
            "class AddNickname < ActiveRecord::Migration[6.1]\n  def change\n    \
             add_column :users, :nickname, :text\n  end\nend\n",
        );
        write(
            &self.project.dir,
            "db/post_migrate/20240105000000_drop_display_name.rb",
            "class DropDisplayName < ActiveRecord::Migration[6.1]\n  def change\n    \
             remove_column :users, :display_name, :text\n  end\nend\n",
        );
    }

    fn alembic() -> Case {
        let venv = alembic_venv();
        Case {
            format: "alembic",
            project: Project::copy(&root().join("examples/alembic")),
            table: "users",
            path: venv.join("bin").display().to_string(),
            // Every expand head schemagate names (here one): the contract branch is left.
            expand: sh("for r in $SCHEMAGATE_TARGETS; do alembic upgrade \"$r\" || exit 1; done"),
            contract: vec!["alembic".into(), "upgrade".into(), "heads".into()],
            old_expects: "0003_backfill_display_name",
            new_expects: "0004_add_nickname+0005_drop_display_name",
            expand_id: "0004_add_nickname",
            contract_id: "0005_drop_display_name",
            history_sql: "SELECT version_num FROM alembic_version ORDER BY 1",
        }
    }

    fn alembic_release(&self) {
        let versions = "migrations/versions";
        for (rev, labels, body) in [
            (
                "0004_add_nickname",
                "None",
                "op.add_column(\"users\", sa.Column(\"nickname\", sa.Text))",
            ),
            // The contract branch starts here: its label covers every revision above it.
            (
                "0005_drop_display_name",
                "(\"contract\",)",
                "op.drop_column(\"users\", \"display_name\")",
            ),
        ] {
            write(
                &self.project.dir,
                &format!("{versions}/{rev}.py"),
                &format!(
                    "from alembic import op\nimport sqlalchemy as sa\n\nrevision = \"{rev}\"\n\
                     down_revision = \"0003_backfill_display_name\"\nbranch_labels = {labels}\n\
                     depends_on = None\n\n\ndef upgrade() -> None:\n    {body}\n\n\n\
                     def downgrade() -> None:\n    pass\n"
                ),
            );
        }
    }

    fn django() -> Case {
        let venv = venv(
            "django-venv",
            "examples/django/requirements.txt",
            "django-admin",
        );
        let python = venv.join("bin/python").display().to_string();
        Case {
            format: "django",
            project: Project::copy(&root().join("examples/django")),
            table: "shop_customer",
            path: venv.join("bin").display().to_string(),
            expand: sh(&format!(
                "for t in $SCHEMAGATE_TARGETS; do {python} manage.py migrate --no-input \
                 \"${{t%%:*}}\" \"${{t#*:}}\" || exit 1; done"
            )),
            contract: vec![
                python,
                "manage.py".into(),
                "migrate".into(),
                "--no-input".into(),
            ],
            old_expects: "shop:0003_backfill_display_name",
            new_expects: "shop:0005_remove_display_name",
            expand_id: "shop.0004_customer_nickname",
            contract_id: "shop.0005_remove_display_name",
            history_sql: "SELECT app || '.' || name FROM django_migrations WHERE app = 'shop' \
                          ORDER BY 1",
        }
    }

    fn django_release(&self) {
        write(
            &self.project.dir,
            "shop/migrations/0004_customer_nickname.py",
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    \
             dependencies = [(\"shop\", \"0003_backfill_display_name\")]\n\n    operations = [\n        \
             migrations.AddField(\"customer\", \"nickname\", models.TextField(null=True)),\n    ]\n",
        );
        write(
            &self.project.dir,
            "shop/migrations/0005_remove_display_name.py",
            "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    \
             schemagate_phase = \"contract\"\n    \
             dependencies = [(\"shop\", \"0004_customer_nickname\")]\n\n    operations = [\n        \
             migrations.RemoveField(\"customer\", \"display_name\"),\n    ]\n",
        );
    }

    fn release(&self) {
        match self.format {
            "rails" => self.rails_release(),
            "alembic" => self.alembic_release(),
            _ => self.django_release(),
        }
    }

    fn sg(&self, db: &PgDb, args: &[&str]) -> Command {
        let mut c = schemagate(&db.url);
        c.args(args)
            .current_dir(&self.project.dir)
            .env("DATABASE_URL", &db.url)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path,
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        c
    }

    fn migrate(&self, db: &PgDb, phase: &[&str], command: &[String]) -> Output {
        let mut args = vec![
            "migrate",
            "--source",
            self.project.path(),
            "--format",
            self.format,
        ];
        args.extend_from_slice(phase);
        args.push("--");
        args.extend(command.iter().map(String::as_str));
        run(&mut self.sg(db, &args))
    }

    fn history(&self, db: &PgDb) -> Vec<String> {
        pg_strings(&db.url, self.history_sql)
    }

    /// What release N's code does: read `display_name`.
    fn old_release_reads(&self, db: &PgDb) -> bool {
        let sql = format!("SELECT count(display_name) FROM {}", self.table);
        block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut c)
                .await
                .is_ok()
        })
    }

    fn heartbeat(&self, db: &PgDb, instance: &str, release: &str, expects: &str) -> Child {
        let mut child = spawn(&mut self.sg(
            db,
            &[
                "heartbeat",
                "--release",
                release,
                "--expect",
                expects,
                "--instance",
                instance,
                "--instance-ttl",
                "3s",
            ],
        ));
        wait_for_stderr_line(&mut child, "registered in", Duration::from_secs(30));
        child
    }
}

fn ok(out: &Output) {
    assert_eq!(code(out), 0, "{}", stderr(out));
}

/// The scenario every migrator goes through.
fn expand_then_gated_contract(case: Case) {
    let db = PgDb::new(&format!("phased_{}", case.format));
    // Release N, applied by the tool under schemagate.
    ok(&case.migrate(&db, &[], &case.contract));
    assert!(case.old_release_reads(&db));
    let old = case.heartbeat(&db, "web-old-1", "v1", case.old_expects);
    case.release();

    let out = case.migrate(&db, &["--phase", "expand"], &case.expand);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "left for `migrate --phase contract`: {}",
            case.contract_id
        )),
        "{err}"
    );
    let history = case.history(&db);
    let applied = |id: &str| {
        history.iter().any(|h| h == id)
            || (case.format == "alembic" && history.iter().any(|h| h.starts_with(id)))
    };
    assert!(applied(case.expand_id), "{history:?}");
    assert!(!applied(case.contract_id), "{history:?}");
    assert!(
        case.old_release_reads(&db),
        "release N still reads display_name after the expand"
    );
    // `status` names the phase of each migration.
    let out = run(&mut case.sg(
        &db,
        &[
            "status",
            "--source",
            case.project.path(),
            "--format",
            case.format,
            "--json",
        ],
    ));
    ok(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = json["history"]["files"].as_array().unwrap();
    let of = |id: &str| {
        files
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| (f["state"].as_str().unwrap(), f["phase"].as_str().unwrap()))
    };
    assert_eq!(
        of(case.contract_id),
        Some(("pending", "contract")),
        "{json}"
    );
    assert_eq!(of(case.expand_id), Some(("applied", "expand")), "{json}");
    // The new release's pods may start: every expand is applied.
    let out = run(&mut case.sg(
        &db,
        &[
            "wait",
            "--source",
            case.project.path(),
            "--format",
            case.format,
            "--phase",
            "expand",
            "--timeout",
            "5s",
        ],
    ));
    ok(&out);
    // Again: nothing for the expand phase to do; the command is not run.
    let out = case.migrate(&db, &["--phase", "expand"], &["false".to_owned()]);
    ok(&out);
    assert_stderr_has(&out, "no expand migration pending");

    // The contract waits for release N's instance; release N+1's does not hold it back.
    let new = case.heartbeat(&db, "web-new-1", "v2", case.new_expects);
    let out = case.migrate(&db, &["--phase", "contract"], &case.contract);
    assert_exit(&out, 75);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} contract migration {} cannot run yet",
            case.format, case.contract_id
        )) && err.contains(&format!(
            "release v1 (built for {}) has 1 live instance(s): web-old-1",
            case.old_expects
        )) && !err.contains("web-new-1"),
        "{err}"
    );
    assert!(
        case.old_release_reads(&db),
        "the refused contract ran nothing"
    );
    // Without --phase: the same gate.
    assert_exit(&case.migrate(&db, &[], &case.contract), 75);

    sigterm(old.id());
    assert_exit(&finish(old), 143);
    let out = case.migrate(
        &db,
        &["--phase", "contract", "--wait-for-drain", "30s"],
        &case.contract,
    );
    ok(&out);
    assert!(
        !case.old_release_reads(&db),
        "the contract dropped display_name"
    );
    let history = case.history(&db);
    assert!(
        history.iter().any(|h| h.starts_with(case.contract_id)),
        "{history:?}"
    );
    // Every migration now applied: the plain wait is ready too.
    ok(&run(&mut case.sg(
        &db,
        &[
            "wait",
            "--source",
            case.project.path(),
            "--format",
            case.format,
            "--timeout",
            "5s",
        ],
    )));
    sigterm(new.id());
    let _ = finish(new);
}

/// reliability: Rails app with a `db/post_migrate` migration (GitLab's convention) while release N's instance is live | `migrate --phase expand` runs ActiveRecord with SKIP_POST_DEPLOYMENT_MIGRATIONS=true, leaves the post_migrate migration pending and release N keeps reading its column; `--phase contract` exits 75 naming release N's instance, and runs once it is gone | nothing
#[test]
fn rails_post_migrate_is_the_contract_phase() {
    expand_then_gated_contract(Case::rails());
}

/// reliability: Alembic project with a branch labelled `contract` while release N's instance is live | `migrate --phase expand -- alembic upgrade $SCHEMAGATE_TARGETS` applies the expand head only; `--phase contract -- alembic upgrade heads` exits 75 naming release N's instance, and runs once it is gone | nothing
#[test]
fn alembic_contract_branch_is_the_contract_phase() {
    expand_then_gated_contract(Case::alembic());
}

/// reliability: Django migration with `schemagate_phase = "contract"` while release N's instance is live | `migrate --phase expand` migrates to the expand targets only; `--phase contract` exits 75 naming release N's instance, and runs once it is gone | nothing
#[test]
fn django_schemagate_phase_is_the_contract_phase() {
    expand_then_gated_contract(Case::django());
}

/// reliability: a Rails app whose migrator adds db/post_migrate whatever SKIP_POST_DEPLOYMENT_MIGRATIONS says | `migrate --phase expand` exits 1 naming the contract migration it applied during the expand phase, and records a `failed` marker saying so | the contract ran early (the command ignored the phase): reported, never hidden
#[test]
fn rails_expand_that_applies_post_migrate_is_reported() {
    let case = Case::rails();
    let db = PgDb::new("phased_rails_ignores");
    ok(&case.migrate(&db, &[], &case.contract));
    case.release();
    // The runner without the initializer's condition: post_migrate always on the paths.
    let runner = std::fs::read_to_string(case.project.dir.join("migrate.rb")).unwrap();
    std::fs::write(
        case.project.dir.join("migrate.rb"),
        runner.replace("unless ENV[\"SKIP_POST_DEPLOYMENT_MIGRATIONS\"]", "if true"),
    )
    .unwrap();
    let out = case.migrate(&db, &["--phase", "expand"], &case.expand);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("applied contract migration(s) 20240105000000 during the expand phase")
            && err.contains("SKIP_POST_DEPLOYMENT_MIGRATIONS"),
        "{err}"
    );
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT status FROM schemagate_marker ORDER BY id DESC LIMIT 1"
        ),
        ["failed"]
    );
}

/// Reshape built under target/ (`.ci/run` installs it).
fn reshape_bin() -> std::path::PathBuf {
    let bin = root().join("target/reshape/bin/reshape");
    assert!(
        bin.exists(),
        "reshape is missing: cargo install reshape --version 0.11.2 --locked --root \
         target/reshape (it needs libclang-dev)"
    );
    bin
}

/// reliability: Reshape migrations (`reshape migration start`, then `complete`) while release N's instance is live | `migrate --phase expand --format reshape -- reshape migration start` starts the migration and release N still reads its column; `--phase contract -- reshape migration complete` exits 75 naming release N's instance, and completes once it is gone | nothing
#[test]
fn reshape_complete_waits_for_the_older_release() {
    let bin = reshape_bin().display().to_string();
    let project = Project::copy(&root().join("examples/rails"));
    let dir = project.dir.join("reshape");
    write(
        &dir,
        "migrations/1_create_users.toml",
        "[[actions]]\ntype = \"create_table\"\nname = \"users\"\nprimary_key = [\"id\"]\n\n\
         [[actions.columns]]\nname = \"id\"\ntype = \"INTEGER\"\n\n\
         [[actions.columns]]\nname = \"display_name\"\ntype = \"TEXT\"\n",
    );
    let db = PgDb::new("phased_reshape");
    let sg = |args: &[&str]| {
        let mut c = schemagate(&db.url);
        c.args(args).current_dir(&dir).env("DB_URL", &db.url);
        c
    };
    let migrate = |phase: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "migrate",
            "--source",
            dir.to_str().unwrap(),
            "--format",
            "reshape",
        ];
        args.extend_from_slice(phase);
        args.push("--");
        args.push(&bin);
        args.extend_from_slice(cmd);
        run(&mut sg(&args))
    };
    // Release N: started and completed in one go.
    ok(&migrate(&[], &["migration", "start", "--complete"]));
    let reads = || {
        block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(display_name) FROM public.users")
                .fetch_one(&mut c)
                .await
                .is_ok()
        })
    };
    assert!(reads());
    let mut old = spawn(&mut sg(&[
        "heartbeat",
        "--release",
        "v1",
        "--expect",
        "1_create_users",
        "--instance",
        "web-old-1",
        "--instance-ttl",
        "3s",
    ]));
    wait_for_stderr_line(&mut old, "registered in", Duration::from_secs(30));
    write(
        &dir,
        "migrations/2_drop_display_name.toml",
        "[[actions]]\ntype = \"remove_column\"\ntable = \"users\"\ncolumn = \"display_name\"\n",
    );
    let out = migrate(&["--phase", "expand"], &["migration", "start"]);
    ok(&out);
    assert_stderr_has(
        &out,
        "left for `migrate --phase contract`: 2_drop_display_name",
    );
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT name FROM reshape.migrations ORDER BY index"
        ),
        ["1_create_users"]
    );
    assert!(reads(), "release N still reads display_name after start");
    ok(&run(&mut sg(&[
        "wait",
        "--source",
        dir.to_str().unwrap(),
        "--format",
        "reshape",
        "--phase",
        "expand",
        "--timeout",
        "5s",
    ])));
    let out = migrate(&["--phase", "contract"], &["migration", "complete"]);
    assert_exit(&out, 75);
    assert!(
        stderr(&out).contains("reshape contract migration 2_drop_display_name cannot run yet")
            && stderr(&out).contains(
                "release v1 (built for 1_create_users) has 1 live instance(s): web-old-1"
            ),
        "{}",
        stderr(&out)
    );
    assert!(reads());
    sigterm(old.id());
    assert_exit(&finish(old), 143);
    ok(&migrate(
        &["--phase", "contract"],
        &["migration", "complete"],
    ));
    assert!(!reads(), "complete dropped display_name");
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT name FROM reshape.migrations ORDER BY index"
        ),
        ["1_create_users", "2_drop_display_name"]
    );
}
