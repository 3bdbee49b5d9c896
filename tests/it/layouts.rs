//! Other migrators' directories laid out as real projects lay them out (issue 21): an
//! Alembic merge with a revision only a newer release knows (Superset), zero-padded Rails
//! versions (redmine), Rails' `db/post_migrate` (Mastodon, Discourse, GitLab), dbmate's own
//! `--migrations-table`, Django squashes recorded and not (healthchecks), Alembic's
//! `script_location` as mlflow and Superset write it, and Diesel's version order. Each runs
//! the real migrator against real PostgreSQL, then checks schemagate's verdict against it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::*;
use crate::migrators::{Project, dbmate_bin, diesel_bin, root};

/// Write `text` to `dir/rel`, creating the directories on the way.
fn put(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Run a migrator (`program args…` in `cwd`, `DATABASE_URL` set) and require success.
fn tool(program: &Path, args: &[&str], cwd: &Path, url: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(program);
    c.args(args).current_dir(cwd).env("DATABASE_URL", url);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run the migrator");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn with_path(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `status --json …` (exit 0 required).
fn status(url: &str, args: &[&str]) -> serde_json::Value {
    let out = run(schemagate(url).args(["status", "--json"]).args(args));
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The ids `status --json` reports in `state`.
fn in_state(report: &serde_json::Value, state: &str) -> BTreeSet<String> {
    report["history"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == state)
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

fn markers(url: &str) -> Vec<String> {
    pg_strings(
        url,
        "SELECT status || ' ' || version FROM schemagate_marker ORDER BY id",
    )
}

// ----- Alembic -----

/// The Alembic example with two branches from 0003 merged by 0005_merge.
fn alembic_merge_project() -> Project {
    let project = Project::copy(&root().join("examples/alembic"));
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
        put(
            &project.dir,
            &format!("migrations/versions/{rev}.py"),
            &format!(
                "from alembic import op\nimport sqlalchemy as sa\n\nrevision = \"{rev}\"\n\
                 down_revision = {down}\nbranch_labels = None\ndepends_on = None\n\n\n\
                 def upgrade() -> None:\n    {body}\n\n\ndef downgrade() -> None:\n    pass\n"
            ),
        );
    }
    project
}

/// reliability: `alembic_version` holds a revision of the image below its head (one or both branches of a merge) beside a revision only a newer release knows (Superset's merge states) | `wait --format alembic` is not ready and names the missing merge; `migrate -- alembic upgrade heads` runs alembic under the lock (which refuses the unknown revision) and records `failed`, never `succeeded`; at the merge, the same unknown row is a database ahead: ready | nothing
#[test]
fn alembic_unknown_row_beside_an_ancestor_of_the_head_is_not_ready() {
    let venv = alembic_venv();
    let alembic = venv.join("bin/alembic");
    let project = alembic_merge_project();
    let db = PgDb::new("alembic_behind");
    let wait = || {
        run(schemagate(&db.url).args([
            "wait",
            "--once",
            "--source",
            project.path(),
            "--format",
            "alembic",
        ]))
    };
    let not_ready = |why: &str| {
        let out = wait();
        assert_eq!(code(&out), 1, "{why}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("does not show 1 of this build's migrations applied: 0005_merge"),
            "{why}: {}",
            stderr(&out)
        );
    };

    // One branch applied, then a row only a newer release has.
    tool(
        &alembic,
        &["upgrade", "0004_orders_note"],
        &project.dir,
        &db.url,
        &[],
    );
    pg_exec(&db.url, "INSERT INTO alembic_version VALUES ('ffff_newer')");
    not_ready("one branch");

    // Both branches applied, the merge not.
    pg_exec(
        &db.url,
        "DELETE FROM alembic_version WHERE version_num = 'ffff_newer'",
    );
    tool(
        &alembic,
        &["upgrade", "0004_users_locale"],
        &project.dir,
        &db.url,
        &[],
    );
    assert_eq!(
        pg_strings(
            &db.url,
            "SELECT version_num FROM alembic_version ORDER BY 1"
        ),
        ["0004_orders_note", "0004_users_locale"]
    );
    pg_exec(&db.url, "INSERT INTO alembic_version VALUES ('ffff_newer')");
    not_ready("both branches");
    let report = status(
        &db.url,
        &["--source", project.path(), "--format", "alembic"],
    );
    assert_eq!(report["history"]["ready"], false);
    assert_eq!(
        in_state(&report, "pending"),
        BTreeSet::from(["0005_merge".into()])
    );
    assert_eq!(
        report["history"]["unknown"],
        serde_json::json!(["ffff_newer"])
    );

    // `migrate` runs alembic, as it must: alembic itself cannot place the unknown
    // revision, so the run fails and says so.
    let out = run(schemagate(&db.url)
        .env("DATABASE_URL", &db.url)
        .env("PATH", with_path(&venv.join("bin")))
        .current_dir(&project.dir)
        .args(["migrate", "--source", project.path(), "--format", "alembic"])
        .args(["--", "alembic", "upgrade", "heads"]));
    assert_stderr_has(&out, "under the lock");
    assert_exit(&out, 1);
    assert_stderr_has(&out, "Can't locate revision");
    assert_eq!(markers(&db.url), ["failed 0005_merge"]);

    // At the merge, the unknown revision is a newer release's: the database is ahead.
    pg_exec(
        &db.url,
        "DELETE FROM alembic_version WHERE version_num = 'ffff_newer'",
    );
    tool(&alembic, &["upgrade", "heads"], &project.dir, &db.url, &[]);
    pg_exec(&db.url, "INSERT INTO alembic_version VALUES ('ffff_newer')");
    let out = wait();
    assert_exit(&out, 0);
    assert_stderr_has(&out, "the database is ahead");
}

/// An Alembic environment that needs nothing of the project's code.
const ENV_PY: &str = "import os\nfrom alembic import context\nfrom sqlalchemy import create_engine, pool\n\n\
    url = os.environ['DATABASE_URL'].replace('postgres://', 'postgresql+psycopg://', 1)\n\
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:\n    \
    context.configure(connection=connection)\n    with context.begin_transaction():\n        \
    context.run_migrations()\n";

/// A script directory at `dir/script` (env.py, versions/ with the example's revisions) and
/// an `alembic.ini` at `dir/ini` saying `ini_text`.
fn alembic_layout(base: &Path, script: &str, ini: &str, ini_text: &str) {
    put(base, &format!("{script}/env.py"), ENV_PY);
    let versions = root().join("examples/alembic/migrations/versions");
    for entry in std::fs::read_dir(versions).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".py") {
            put(
                base,
                &format!("{script}/versions/{name}"),
                &std::fs::read_to_string(entry.path()).unwrap(),
            );
        }
    }
    put(base, ini, ini_text);
}

/// reliability: `script_location` written as real projects write it: `%(here)s/…` with a relative `--source` (the example), relative to the directory alembic runs in (mlflow), absent from a Flask-Migrate `migrations/` package that also looks like Django's (Superset), naming a missing directory beside `versions/` | the revisions are found (from schemagate's working directory, then the ini's directory and its parents, then `versions/` beside the ini) and `wait` agrees with the alembic run; nowhere to be found is exit 2 naming the paths tried | nothing
#[test]
fn alembic_script_location_is_found_where_alembic_finds_it() {
    let venv = alembic_venv();
    let db = PgDb::new("alembic_paths");
    let wait = |cwd: &Path, source: &str, format: Option<&str>| {
        let mut c = schemagate(&db.url);
        c.current_dir(cwd)
            .args(["wait", "--once", "--source", source]);
        if let Some(f) = format {
            c.args(["--format", f]);
        }
        run(&mut c)
    };

    // mlflow: `script_location = mlflow/store/db_migrations`, relative to the repository
    // root that alembic runs from.
    let mlflow = Migrations::new(&[]);
    alembic_layout(
        &mlflow.dir,
        "pkg/db_migrations",
        "pkg/db_migrations/alembic.ini",
        "[alembic]\n# path to migration scripts\nscript_location = pkg/db_migrations\n",
    );
    tool(
        &venv.join("bin/alembic"),
        &["-c", "pkg/db_migrations/alembic.ini", "upgrade", "heads"],
        &mlflow.dir,
        &db.url,
        &[],
    );
    let source = mlflow.dir.join("pkg/db_migrations");
    for cwd in [mlflow.dir.as_path(), Path::new("/")] {
        let out = wait(cwd, source.to_str().unwrap(), Some("alembic"));
        assert_eq!(code(&out), 0, "from {}: {}", cwd.display(), stderr(&out));
    }
    // Relative, from the repository root, detected by its alembic.ini.
    let out = wait(&mlflow.dir, "pkg/db_migrations", None);
    assert_exit(&out, 0);

    // The example: `%(here)s/migrations`, with `--source examples/alembic` from the
    // repository root (the same revisions, so the same database is at its head).
    let out = wait(root(), "examples/alembic", Some("alembic"));
    assert_exit(&out, 0);

    // Superset: `superset/migrations/` is a package (`__init__.py`, Django's shape too)
    // whose alembic.ini names no script_location (Flask-Migrate sets it).
    let superset = Migrations::new(&[]);
    alembic_layout(
        &superset.dir,
        "superset/migrations",
        "superset/migrations/alembic.ini",
        "[alembic]\n# file_template = %%(rev)s_%%(slug)s\n\n[loggers]\nkeys = root\n",
    );
    put(&superset.dir, "superset/__init__.py", "");
    put(&superset.dir, "superset/migrations/__init__.py", "");
    let source = superset.dir.join("superset/migrations");
    let out = wait(Path::new("/"), source.to_str().unwrap(), None);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "schema version 0003_backfill_display_name is ready");

    // A script_location that is nowhere: `versions/` beside the ini.
    put(
        &superset.dir,
        "superset/migrations/alembic.ini",
        "[alembic]\nscript_location = gone/elsewhere\n",
    );
    let out = wait(Path::new("/"), source.to_str().unwrap(), None);
    assert_exit(&out, 0);
    // Nowhere at all: a usage error naming where it looked.
    std::fs::rename(source.join("versions"), source.join("old_versions")).unwrap();
    let out = wait(Path::new("/"), source.to_str().unwrap(), None);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("cannot find the alembic revisions")
            && stderr(&out).contains("gone/elsewhere"),
        "{}",
        stderr(&out)
    );
}

// ----- Rails -----

fn require_activerecord() {
    let ok = Command::new("ruby")
        .args(["-e", "require 'active_record'; require 'pg'"])
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "ActiveRecord is missing: apt-get install ruby-activerecord ruby-pg"
    );
}

/// `migrate --source P --format rails -- ruby migrate.rb`, from P.
fn rails_migrate(project: &Path, url: &str) -> Output {
    run(schemagate(url)
        .env("DATABASE_URL", url)
        .current_dir(project)
        .args(["migrate", "--source"])
        .arg(project)
        .args(["--format", "rails", "--", "ruby", "migrate.rb"]))
}

fn rails_migration(class: &str, version: &str, body: &str) -> String {
    format!(
        "class {class} < ActiveRecord::Migration[6.1]\n  def change\n    {body}\n    \
         execute \"INSERT INTO migration_runs (migration) VALUES ('{version}')\"\n  end\nend\n"
    )
}

/// reliability: Rails migrations with zero-padded versions (redmine's `001_setup.rb`), which Rails records as `1` | `migrate -- ruby migrate.rb` records `succeeded` after Rails succeeded; `wait` is ready; a new `003_…` is pending until Rails runs it | nothing
#[test]
fn rails_zero_padded_versions_compare_as_integers() {
    require_activerecord();
    let project = Project::copy(&root().join("examples/rails"));
    let migrate = project.dir.join("db/migrate");
    for (from, to) in [
        ("20240101000000_create_users.rb", "001_create_users.rb"),
        (
            "20240102000000_add_display_name.rb",
            "002_add_display_name.rb",
        ),
    ] {
        std::fs::rename(migrate.join(from), migrate.join(to)).unwrap();
    }
    let db = PgDb::new("rails_padded");
    let out = rails_migrate(&project.dir, &db.url);
    assert_exit(&out, 0);
    assert_eq!(
        pg_strings(&db.url, "SELECT version FROM schema_migrations ORDER BY 1"),
        ["1", "2", "20240103000000"]
    );
    assert_eq!(markers(&db.url), ["succeeded 20240103000000"]);
    let wait = || run(schemagate(&db.url).args(["wait", "--once", "--source", project.path()]));
    let out = wait();
    assert_exit(&out, 0);
    let report = status(&db.url, &["--source", project.path()]);
    assert_eq!(report["history"]["ready"], true);
    assert_eq!(
        in_state(&report, "applied"),
        BTreeSet::from(["1".into(), "2".into(), "20240103000000".into()])
    );

    // A new zero-padded migration: pending until Rails runs it.
    put(
        &project.dir,
        "db/migrate/003_add_locale.rb",
        &rails_migration("AddLocale", "3", "add_column :users, :locale, :text"),
    );
    let out = wait();
    assert_exit(&out, 1);
    assert_stderr_has(&out, "applied: 3");
    let out = rails_migrate(&project.dir, &db.url);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "under the lock");
    assert_exit(&wait(), 0);
}

/// reliability: a release that adds only a post-deployment migration (`db/post_migrate`, which Mastodon, Discourse and GitLab add to Rails' migration paths) after a pre-deployment run that skipped it | `wait` is not ready, naming the migration; `status` says it comes from `db/post_migrate`; `migrate -- CMD` runs the migrator instead of "nothing to do"; `--source` given for each path reads the same | nothing
#[test]
fn rails_post_migrate_migrations_are_read() {
    require_activerecord();
    let project = Project::copy(&root().join("examples/rails"));
    // Mastodon's way: db/post_migrate too, unless SKIP_POST_DEPLOYMENT_MIGRATIONS is set.
    put(
        &project.dir,
        "migrate.rb",
        "require \"active_record\"\n\
         ActiveRecord::Base.establish_connection(ENV.fetch(\"DATABASE_URL\"))\n\
         paths = [\"db/migrate\"]\n\
         paths << \"db/post_migrate\" unless ENV[\"SKIP_POST_DEPLOYMENT_MIGRATIONS\"]\n\
         ActiveRecord::MigrationContext.new(paths.map { |p| File.expand_path(p, __dir__) }, \
         ActiveRecord::SchemaMigration).migrate\n",
    );
    let db = PgDb::new("rails_post");
    // The version and digest of an app without db/post_migrate are what they were.
    let plain = status(
        &db.url,
        &["--source", root().join("examples/rails").to_str().unwrap()],
    );
    put(
        &project.dir,
        "db/post_migrate/20240104000000_index_display_name.rb",
        &rails_migration(
            "IndexDisplayName",
            "20240104000000",
            "add_index :users, :display_name",
        ),
    );
    tool(
        Path::new("ruby"),
        &["migrate.rb"],
        &project.dir,
        &db.url,
        &[("SKIP_POST_DEPLOYMENT_MIGRATIONS", "1")],
    );

    let post = project.dir.join("db/post_migrate");
    let pre = project.dir.join("db/migrate");
    let report = status(&db.url, &["--source", project.path()]);
    assert_eq!(report["history"]["version"], "20240104000000");
    assert_ne!(report["history"]["digest"], plain["history"]["digest"]);
    assert_eq!(plain["history"]["version"], "20240103000000");
    assert_eq!(report["history"]["ready"], false);
    let files = report["history"]["files"].as_array().unwrap();
    for f in files {
        let from = if f["id"] == "20240104000000" {
            &post
        } else {
            &pre
        };
        assert_eq!(f["path"], from.to_str().unwrap(), "{f}");
    }
    assert_eq!(
        in_state(&report, "pending"),
        BTreeSet::from(["20240104000000".into()])
    );
    let text = run(schemagate(&db.url).args(["status", "--source", project.path()]));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&format!("from {}", post.display())), "{text}");

    // The project, db/migrate alone (db/post_migrate beside it is read), or both given.
    let forms: [&[&Path]; 3] = [&[&project.dir], &[&pre], &[&pre, &post]];
    let wait = |sources: &[&Path]| {
        let mut c = schemagate(&db.url);
        c.args(["wait", "--once", "--format", "rails"]);
        for s in sources {
            c.arg("--source").arg(s);
        }
        run(&mut c)
    };
    for sources in forms {
        let out = wait(sources);
        assert_eq!(code(&out), 1, "{sources:?}: {}", stderr(&out));
        assert_stderr_has(&out, "applied: 20240104000000");
    }

    let out = rails_migrate(&project.dir, &db.url);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "under the lock");
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM schema_migrations WHERE version = '20240104000000'"
        ),
        1
    );
    for sources in forms {
        let out = wait(sources);
        assert_eq!(code(&out), 0, "{sources:?}: {}", stderr(&out));
    }

    // A migrator that reads one directory refuses a second --source.
    let out = run(schemagate(&db.url).args([
        "wait",
        "--once",
        "--format",
        "diesel",
        "--source",
        pre.to_str().unwrap(),
        "--source",
        post.to_str().unwrap(),
    ]));
    assert_exit(&out, 2);
    assert_stderr_has(&out, "diesel reads one directory");
}

// ----- dbmate -----

/// reliability: dbmate run with its own `--migrations-table` (schema-qualified, mixed case) | `wait`, `status` and `migrate --format dbmate --migrations-table` read that table as dbmate names it; a flag a format does not read (`--migrations-table` with alembic, django, rails or diesel, also from SCHEMAGATE_MIGRATIONS_TABLE; `--ignore-missing`, `--single-transaction` with a migrator) is refused, exit 2, naming the flag and the format | nothing
#[test]
fn dbmate_migrations_table_is_honoured_and_unread_flags_are_refused() {
    let dbmate = dbmate_bin();
    let project = Project::copy(&root().join("examples/dbmate"));
    let db = PgDb::new("dbmate_table");
    let table = "ops.DeployHistory";
    let dbmate_url = format!("{}?sslmode=disable", db.url);
    let dbmate_up = [
        dbmate.to_str().unwrap(),
        "--migrations-table",
        table,
        "--no-dump-schema",
        "up",
    ];
    tool(&dbmate, &dbmate_up[1..], &project.dir, &dbmate_url, &[]);
    assert_eq!(
        pg_i64(&db.url, "SELECT count(*) FROM ops.\"DeployHistory\""),
        3
    );
    let wait = |extra: &[&str]| {
        run(schemagate(&db.url)
            .args([
                "wait",
                "--once",
                "--format",
                "dbmate",
                "--source",
                project.path(),
            ])
            .args(extra))
    };
    let out = wait(&["--migrations-table", table]);
    assert_exit(&out, 0);
    let out = run(schemagate(&db.url)
        .env("SCHEMAGATE_MIGRATIONS_TABLE", table)
        .args(["wait", "--once", "--source", project.path()]));
    assert_exit(&out, 0);
    // schema_migrations is not dbmate's table here.
    let out = wait(&[]);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "schema_migrations does not show 3");
    let report = status(
        &db.url,
        &["--source", project.path(), "--migrations-table", table],
    );
    assert_eq!(report["history"]["table"], table);
    assert_eq!(report["history"]["ready"], true);
    // Applied by dbmate alone: recorded without running it again.
    let out = run(schemagate(&db.url)
        .env("DATABASE_URL", &dbmate_url)
        .current_dir(&project.dir)
        .args([
            "migrate",
            "--source",
            project.path(),
            "--migrations-table",
            table,
        ])
        .arg("--")
        .args(dbmate_up));
    assert_exit(&out, 0);
    assert_stderr_has(&out, "recorded without running");

    // Flags a format does not read.
    let url = "postgres://nobody@127.0.0.1:1/none";
    for format in ["alembic", "django", "rails", "diesel"] {
        let example = root().join("examples").join(format);
        let out = run(schemagate(url).args([
            "wait",
            "--once",
            "--source",
            example.to_str().unwrap(),
            "--format",
            format,
            "--migrations-table",
            "history",
        ]));
        assert_exit(&out, 2);
        assert_stderr_has(
            &out,
            &format!("--migrations-table is not read with --format {format}"),
        );
        let out = run(schemagate(url)
            .env("SCHEMAGATE_MIGRATIONS_TABLE", "history")
            .args(["status", "--source", example.to_str().unwrap()]));
        assert_exit(&out, 2);
        assert_stderr_has(&out, "--migrations-table is not read");
    }
    for flag in ["--ignore-missing", "--single-transaction"] {
        let out = run(schemagate(url).args([
            "migrate",
            "--source",
            project.path(),
            "--format",
            "dbmate",
            flag,
            "--",
            "true",
        ]));
        assert_exit(&out, 2);
        assert_stderr_has(&out, &format!("{flag} is not read with --format dbmate"));
    }
}

/// reliability (SQLite): dbmate run on two `--migrations-dir`s (migrations and seeds) with `--migrations-table ops.History`, which dbmate quotes as one name on SQLite | `wait --source A --source B --format dbmate --migrations-table ops.History` reads that table; a seed dbmate has not run is pending until it runs | nothing
#[test]
fn dbmate_several_directories_and_its_table_on_sqlite() {
    let dbmate = dbmate_bin();
    let project = Migrations::new(&[]);
    let sql = |table: &str| {
        format!(
            "-- migrate:up\nCREATE TABLE {table} (id integer);\n-- migrate:down\nDROP TABLE {table};\n"
        )
    };
    put(
        &project.dir,
        "db/migrations/20240101000000_a.sql",
        &sql("a"),
    );
    put(
        &project.dir,
        "db/migrations/20240103000000_c.sql",
        &sql("c"),
    );
    put(&project.dir, "db/seeds/20240102000000_b.sql", &sql("b"));
    let file = project.dir.join("app.db");
    let dbmate_url = format!("sqlite:{}", file.display());
    let url = format!("sqlite://{}", file.display());
    let up = |dirs: &[&str]| {
        let mut args = vec!["--migrations-table", "ops.History", "--no-dump-schema"];
        for d in dirs {
            args.extend(["-d", d]);
        }
        args.push("up");
        tool(&dbmate, &args, &project.dir, &dbmate_url, &[]);
    };
    let wait = || {
        run(schemagate(&url)
            .current_dir(&project.dir)
            .args(["wait", "--once", "--format", "dbmate"])
            .args(["--source", "db/migrations", "--source", "db/seeds"])
            .args(["--migrations-table", "ops.History"]))
    };
    up(&["db/migrations"]);
    let out = wait();
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "ops.History does not show 1 of this build's migrations applied: 20240102000000",
    );
    up(&["db/migrations", "db/seeds"]);
    let out = wait();
    assert_exit(&out, 0);
    let report = status(
        &url,
        &[
            "--source",
            project.dir.join("db/migrations").to_str().unwrap(),
            "--source",
            project.dir.join("db/seeds").to_str().unwrap(),
            "--migrations-table",
            "ops.History",
        ],
    );
    assert_eq!(report["history"]["version"], "20240103000000");
    assert_eq!(report["history"]["paths"].as_array().unwrap().len(), 2);
}

// ----- Django -----

fn django_venv() -> PathBuf {
    venv(
        "django-venv",
        "examples/django/requirements.txt",
        "django-admin",
    )
}

/// The squash `squashmigrations shop 0002` writes, with its template comment.
const SQUASH: &str = "# Generated by Django 5.2.8\n\n\
# Functions from the following migrations need manual copying.\n\
# Move them and any dependencies into this file, then update the\n\
# RunPython operations to refer to the local versions:\n\
# shop.migrations.0002_customer_display_name\n\n\
from django.db import migrations, models\n\n\n\
class Migration(migrations.Migration):\n\n    \
replaces = [('shop', '0001_initial'), ('shop', '0002_customer_display_name')]\n\n    \
initial = True\n\n    \
dependencies = [\n    ]\n\n    \
operations = [\n        \
migrations.RunSQL(\n            \
\"CREATE TABLE migration_runs (migration text NOT NULL);\"\n            \
\"INSERT INTO migration_runs VALUES ('shop.0001_squashed_0002_customer_display_name')\",\n            \
\"DROP TABLE migration_runs\",\n        ),\n        \
migrations.CreateModel(\n            name='Customer',\n            fields=[\n                \
('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),\n                \
('email', models.TextField(unique=True)),\n                \
('display_name', models.TextField(null=True)),\n            ],\n        ),\n        \
migrations.RunSQL(\n            \
\"INSERT INTO shop_customer (email) VALUES ('ada@example.com'), ('grace@example.com')\",\n            \
migrations.RunSQL.noop,\n        ),\n    ]\n";

/// What Django itself says: the migrations of `shop` that `showmigrations` marks `[ ]`, and
/// the leaves of its graph built from the files.
fn django_says(python: &Path, project: &Path, url: &str) -> (BTreeSet<String>, String) {
    let out = tool(
        python,
        &["manage.py", "showmigrations", "shop"],
        project,
        url,
        &[],
    );
    let pending = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("[ ] "))
        .map(|l| format!("shop.{}", l.split_whitespace().next().unwrap()))
        .collect();
    let out = tool(
        python,
        &[
            "manage.py",
            "shell",
            "-c",
            "from django.db.migrations.loader import MigrationLoader\n\
             print('+'.join(sorted(a + ':' + n for a, n in MigrationLoader(None).graph.leaf_nodes('shop'))))",
        ],
        project,
        url,
        &[],
    );
    // The last line: Django 5.2's shell first says what it imported.
    let leaves = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    (pending, leaves)
}

/// reliability: a Django squash (`replaces`, written with the template comment that names "dependencies") on a database migrated before the squash existed (not recorded), one migrated with it (recorded), and one where only part of what it replaces is applied; contrib apps' rows beside them | schemagate's pending set and version agree with Django's `showmigrations` and its loader's leaves in each; ready when Django is satisfied, without calling contrib rows "ahead" | nothing
#[test]
fn django_squash_recorded_or_not_agrees_with_django() {
    let venv = django_venv();
    let python = venv.join("bin/python");
    let before = Project::copy(&root().join("examples/django"));
    let settings = std::fs::read_to_string(before.dir.join("site_settings.py")).unwrap();
    put(
        &before.dir,
        "site_settings.py",
        &settings.replace(
            "INSTALLED_APPS = [\"shop\"]",
            "INSTALLED_APPS = [\"django.contrib.contenttypes\", \"django.contrib.auth\", \"shop\"]",
        ),
    );
    let image = Project::copy(&before.dir);
    put(
        &image.dir,
        "shop/migrations/0001_squashed_0002_customer_display_name.py",
        SQUASH,
    );
    let check = |db: &PgDb, ready: bool| {
        let (django_pending, leaves) = django_says(&python, &image.dir, &db.url);
        let report = status(&db.url, &["--source", image.path(), "--format", "django"]);
        assert_eq!(in_state(&report, "pending"), django_pending);
        assert_eq!(report["history"]["version"], leaves.as_str());
        assert_eq!(leaves, "shop:0003_backfill_display_name");
        assert_eq!(report["history"]["unknown"], serde_json::json!([]));
        let out = run(schemagate(&db.url).args(["wait", "--once", "--source", image.path()]));
        assert_exit(&out, if ready { 0 } else { 1 });
        assert_stderr_lacks(&out, "ahead");
        django_pending
    };
    let migrate = |db: &PgDb| {
        run(schemagate(&db.url)
            .env("DATABASE_URL", &db.url)
            .current_dir(&image.dir)
            .args([
                "migrate",
                "--source",
                image.path(),
                "--format",
                "django",
                "--",
            ])
            .arg(&python)
            .args(["manage.py", "migrate", "--no-input"]))
    };

    // Migrated before the squash existed: Django is satisfied, the squash not recorded.
    let db = PgDb::new("django_unrecorded");
    tool(
        &python,
        &["manage.py", "migrate", "--no-input"],
        &before.dir,
        &db.url,
        &[],
    );
    assert!(check(&db, true).is_empty());
    let out = migrate(&db);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "recorded without running");

    // Migrated with the squash: Django records it beside what it replaces.
    let db = PgDb::new("django_recorded");
    let out = migrate(&db);
    assert_exit(&out, 0);
    assert_eq!(
        pg_i64(
            &db.url,
            "SELECT count(*) FROM django_migrations WHERE app = 'shop' \
             AND name = '0001_squashed_0002_customer_display_name'"
        ),
        1
    );
    assert!(check(&db, true).is_empty());

    // Only the first of the replaced applied: Django leaves the squash out.
    let db = PgDb::new("django_partial");
    tool(
        &python,
        &["manage.py", "migrate", "--no-input", "shop", "0001_initial"],
        &before.dir,
        &db.url,
        &[],
    );
    assert_eq!(
        check(&db, false),
        BTreeSet::from([
            "shop.0002_customer_display_name".into(),
            "shop.0003_backfill_display_name".into()
        ])
    );
    let out = migrate(&db);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "under the lock");
    assert!(check(&db, true).is_empty());
}

// ----- Diesel -----

/// reliability: a Diesel migration whose version is shorter than the others (`20240104_…` after `2024-01-03-000000_…`: first in number, last in Diesel's string order) | the version schemagate records is Diesel's newest, as `diesel migration list` orders them | nothing
#[test]
fn diesel_head_follows_diesel_s_version_order() {
    let diesel = diesel_bin();
    let project = Project::copy(&root().join("examples/diesel"));
    put(
        &project.dir,
        "migrations/20240104_add_locale/up.sql",
        "ALTER TABLE users ADD COLUMN locale text;\n\
         INSERT INTO migration_runs (migration) VALUES ('20240104');\n",
    );
    put(
        &project.dir,
        "migrations/20240104_add_locale/down.sql",
        "ALTER TABLE users DROP COLUMN locale;\n",
    );
    let db = PgDb::new("diesel_order");
    let out = run(schemagate(&db.url)
        .env("DATABASE_URL", &db.url)
        .current_dir(&project.dir)
        .args([
            "migrate",
            "--source",
            project.path(),
            "--format",
            "diesel",
            "--",
        ])
        .arg(&diesel)
        .args(["migration", "run"]));
    assert_exit(&out, 0);
    let list = tool(&diesel, &["migration", "list"], &project.dir, &db.url, &[]);
    let newest = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("[X] "))
        .next_back()
        .map(|name| name.split('_').next().unwrap().replace('-', ""))
        .expect("diesel lists its migrations");
    assert_eq!(newest, "20240104");
    assert_eq!(markers(&db.url), [format!("succeeded {newest}")]);
    let report = status(&db.url, &["--source", project.path()]);
    assert_eq!(report["history"]["version"], newest.as_str());
    let out = run(schemagate(&db.url).args(["wait", "--once", "--source", project.path()]));
    assert_exit(&out, 0);
}
