//! Other migrators' directories read as a source (`--format alembic|django|rails|dbmate|
//! diesel`): the image's migration identifiers, its heads and a digest over identifiers and
//! file contents, all from the files, without running the tool; and the rule that says
//! whether the migrator's own history table shows every migration of the image applied,
//! each as that migrator decides it. The history itself is read in `history.rs`. `sqlx`
//! stays `source.rs`'s.

mod alembic;
mod django;
pub mod history;
mod python;
mod reshape;
mod simple;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::phase::Phase;
use crate::source::hex;

/// Which migrator a source directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// sqlx's layout (`<VERSION>_<description>.sql`), applied by schemagate itself.
    Sqlx,
    /// An Alembic project (alembic.ini or env.py + versions/); history in `alembic_version`.
    Alembic,
    /// A Django app's `migrations/` packages; history in `django_migrations`.
    Django,
    /// A Rails app's `db/migrate` (and `db/post_migrate`); history in `schema_migrations`.
    Rails,
    /// dbmate's `db/migrations` (`-- migrate:up` files); history in `schema_migrations`.
    Dbmate,
    /// Diesel's `migrations/<version>_<name>/up.sql`; history in `__diesel_schema_migrations`.
    Diesel,
    /// Reshape's `migrations/*.toml`; completed ones in `reshape.migrations`, started ones
    /// in `reshape.data` (PostgreSQL only). Never detected: pass `--format reshape`.
    Reshape,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Sqlx => "sqlx",
            Format::Alembic => "alembic",
            Format::Django => "django",
            Format::Rails => "rails",
            Format::Dbmate => "dbmate",
            Format::Diesel => "diesel",
            Format::Reshape => "reshape",
        }
    }

    /// The migrator's own history table.
    /// The migrator's usual migrate command, for error messages.
    pub fn example_command(self) -> &'static str {
        match self {
            Format::Alembic => "alembic upgrade head",
            Format::Django => "python manage.py migrate",
            Format::Rails => "bin/rails db:migrate",
            Format::Dbmate => "dbmate --no-dump-schema up",
            Format::Diesel => "diesel migration run",
            Format::Reshape => "reshape migration start --complete",
            Format::Sqlx => "sqlx migrate run",
        }
    }

    pub fn history_table(self) -> &'static str {
        match self {
            // sqlx's default: a sqlx source is `source::Source`, whose table is the
            // config's `migrations_table`; this name is never read from.
            Format::Sqlx => crate::settings::MigrationsTable::DEFAULT,
            Format::Alembic => "alembic_version",
            Format::Django => "django_migrations",
            Format::Rails | Format::Dbmate => "schema_migrations",
            Format::Diesel => "__diesel_schema_migrations",
            Format::Reshape => "reshape.migrations",
        }
    }
}

impl Format {
    /// Whether `--source` may be given more than once: the migrator itself reads several
    /// directories (Rails' `migrations_paths`, dbmate's repeated `--migrations-dir`, Django's
    /// apps wherever they live). sqlx, Alembic (whose `version_locations` come from
    /// `alembic.ini`) and Diesel read one.
    pub fn reads_several_sources(self) -> bool {
        matches!(self, Format::Rails | Format::Dbmate | Format::Django)
    }

    /// Whether the migrator's history table can be renamed with `--migrations-table` (its
    /// own flag, for dbmate; sqlx's `table-name`).
    pub fn reads_migrations_table(self) -> bool {
        matches!(self, Format::Sqlx | Format::Dbmate)
    }
}

/// Another migrator's source as the command line gives it: what `Foreign::load` reads.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Each `--source`, in order.
    pub dirs: Vec<PathBuf>,
    pub format: Format,
    /// dbmate's `--migrations-table`: its history table when not `schema_migrations`;
    /// `schema.table` allowed, quoted as dbmate quotes it (`history.rs`).
    pub table: Option<String>,
}

impl Spec {
    pub fn new(dirs: Vec<PathBuf>, format: Format, table: Option<&str>) -> Result<Spec> {
        let table = match table.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => {
                let parts: Vec<&str> = t.split('.').collect();
                if parts.len() > 2
                    || parts
                        .iter()
                        .any(|p| p.is_empty() || p.contains(['"', '`', '\0']))
                {
                    return Err(Error::Config(format!(
                        "invalid --migrations-table {t:?}: expected `name` or `schema.name`"
                    )));
                }
                Some(t.to_owned())
            }
            None => None,
        };
        Ok(Spec {
            dirs,
            format,
            table,
        })
    }
}

/// One migration of the image.
#[derive(Debug, Clone)]
pub struct Item {
    /// What the migrator records: an Alembic revision, `app.name` (Django), a version
    /// (Rails: as an integer, `001_x.rb` is `1`).
    pub id: String,
    /// The file (or directory, for Diesel), relative to its `--source` (with several, that
    /// source joined with it).
    pub file: String,
    /// Hex SHA-256 of the file's contents (Diesel: `up.sql`, then `down.sql`).
    pub checksum: String,
    /// The migrations directory it was read from (Rails' `db/migrate` or `db/post_migrate`,
    /// Alembic's `versions/`, a Django app's `migrations/`), as reached from `--source`.
    pub origin: PathBuf,
    /// Expand or contract, as the migrator's convention says (`docs/src/phases.md`):
    /// Rails' `db/post_migrate`, an Alembic branch labelled `contract`, a Django
    /// migration's `schemagate_phase = "contract"`.
    pub phase: Phase,
}

/// A directory of another migrator's migrations, as read from the files.
#[derive(Debug)]
pub struct Foreign {
    pub format: Format,
    /// Sorted by id (versions as numbers).
    pub items: Vec<Item>,
    /// The migrations directories read, in order (each `Item::origin` is one of them).
    pub paths: Vec<PathBuf>,
    /// Alembic: each revision's parents (`down_revision` and `depends_on`); Django: each
    /// migration's `dependencies` (read by the phase gate only).
    parents: HashMap<String, Vec<String>>,
    /// Django: each squashed migration's `replaces`, as `app.name`.
    replaces: BTreeMap<String, Vec<String>>,
    /// Django: the app labels of the source; another app's rows are not ours to judge.
    apps: BTreeSet<String>,
    pub heads: Vec<String>,
    /// dbmate's `--migrations-table`.
    table: Option<String>,
}

/// What the history shows against the image.
#[derive(Debug, Default)]
pub struct Standing {
    /// Migrations of the image the history does not show applied.
    pub pending: Vec<String>,
    /// Entries of the history this image does not know (a newer release's).
    pub unknown: Vec<String>,
}

impl Standing {
    pub fn ready(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn describe(&self, f: &Foreign) -> String {
        if self.ready() {
            let mut s = format!(
                "{} shows every migration of this build applied",
                f.history_table()
            );
            if !self.unknown.is_empty() {
                s += &format!(
                    " (the database is ahead: it also has {})",
                    self.unknown.join(", ")
                );
            }
            s
        } else {
            let mut s = format!(
                "{} does not show {} of this build's migrations applied: {}",
                f.history_table(),
                self.pending.len(),
                abbreviate(&self.pending)
            );
            if !self.unknown.is_empty() {
                s += &format!(" (it also has {}, unknown here)", self.unknown.join(", "));
            }
            s
        }
    }
}

fn abbreviate(ids: &[String]) -> String {
    if ids.len() <= 5 {
        ids.join(", ")
    } else {
        format!("{}, … ({} more)", ids[..5].join(", "), ids.len() - 5)
    }
}

/// The first line of a marker `detail` that holds the files a `succeeded` run applied.
const MANIFEST_HEADER: &str = "schemagate files";

impl Foreign {
    pub fn load(spec: &Spec) -> Result<Foreign> {
        let format = spec.format;
        let read = match format {
            Format::Alembic => alembic::read(&spec.dirs[0])?,
            Format::Django => django::read(&spec.dirs)?,
            Format::Rails | Format::Dbmate | Format::Diesel => simple::read(&spec.dirs, format)?,
            Format::Reshape => reshape::read(&spec.dirs[0])?,
            Format::Sqlx => unreachable!("sqlx sources are source::Source"),
        };
        if read.items.is_empty() {
            return Err(Error::Config(format!(
                "no {} migrations found in {}",
                format.name(),
                read.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Foreign {
            format,
            items: read.items,
            paths: read.paths,
            parents: read.parents,
            replaces: read.replaces,
            apps: read.apps,
            heads: read.heads,
            table: spec.table.clone(),
        })
    }

    /// The history table's name, as messages show it.
    pub fn history_table(&self) -> &str {
        self.table
            .as_deref()
            .unwrap_or_else(|| self.format.history_table())
    }

    /// dbmate's `--migrations-table`, when given: read instead of `schema_migrations`.
    pub(crate) fn custom_table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// The version the marker records: the heads joined by `+` (Alembic's heads, Django's
    /// `app:leaf` per app), or the newest version; `<format>:<digest prefix>` when that
    /// would not fit the marker's column.
    pub fn version(&self) -> String {
        let v = self.heads.join("+");
        if v.chars().count() <= crate::db::MAX_VERSION {
            v
        } else {
            format!("{}:{}", self.format.name(), &self.digest()[..16])
        }
    }

    /// Hex SHA-256 over `<id>:<sha256 of the file>\n` for every migration, sorted by id.
    /// Which directory a migration came from is not part of it: a Rails app without
    /// `db/post_migrate` keeps the digest it always had.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for i in &self.items {
            h.update(format!("{}:{}\n", i.id, i.checksum));
        }
        hex(&h.finalize())
    }

    /// What a `succeeded` marker keeps in `detail`: which file had which checksum, so a
    /// later run (and `status`) can name a file modified since it was applied.
    pub fn manifest(&self) -> String {
        let mut s = format!("{MANIFEST_HEADER} ({})\n", self.format.name());
        for i in &self.items {
            s += &format!("{} {} {}\n", i.checksum, i.id, i.file);
        }
        s
    }

    /// The migrations whose file differs from the one a `succeeded` marker recorded.
    pub fn modified_since(&self, manifest: &str) -> Vec<&Item> {
        let mut lines = manifest.lines();
        let header = format!("{MANIFEST_HEADER} ({})", self.format.name());
        if lines.next() != Some(header.as_str()) {
            return Vec::new();
        }
        let recorded: HashMap<&str, &str> = lines
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let checksum = parts.next()?;
                let id = parts.next()?;
                Some((id, checksum))
            })
            .collect();
        self.items
            .iter()
            .filter(|i| {
                recorded
                    .get(i.id.as_str())
                    .is_some_and(|c| *c != i.checksum)
            })
            .collect()
    }

    /// Compare the history (`rows`, as `history::read` returns them) with the image, as the
    /// migrator itself would.
    pub fn standing(&self, rows: &[String]) -> Standing {
        match self.format {
            Format::Alembic => self.alembic_standing(rows),
            Format::Django => self.django_standing(rows),
            Format::Rails => {
                // Rails reads `schema_migrations` with `to_i`, as it reads file names.
                let rows: Vec<String> = rows.iter().map(|r| simple::rails_version(r)).collect();
                self.listed_standing(&rows)
            }
            _ => self.listed_standing(rows),
        }
    }

    /// The image's migrations that `standing` shows pending, in the image's order.
    pub fn pending_items(&self, standing: &Standing) -> Vec<&Item> {
        let pending: HashSet<&str> = standing.pending.iter().map(String::as_str).collect();
        self.items
            .iter()
            .filter(|i| pending.contains(i.id.as_str()))
            .collect()
    }

    /// Whether the format orders its migrations by a graph (Alembic's revisions, Django's
    /// dependencies) rather than by version numbers.
    fn graph(&self) -> bool {
        matches!(self.format, Format::Alembic | Format::Django)
    }

    /// `id` and every migration it descends from (`parents`).
    fn ancestors<'a>(&'a self, id: &'a str) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        let mut stack = vec![id];
        while let Some(r) = stack.pop() {
            if seen.insert(r) {
                stack.extend(
                    self.parents
                        .get(r)
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                );
            }
        }
        seen
    }

    /// Whether an instance that registered `expects` (the version schemagate derives for its
    /// build: a number, or heads joined by `+`, Django's as `app:name`, Reshape's newest
    /// name) was built with `contract` in its source. Numbered formats compare as numbers;
    /// Alembic and Django look for the contract below one of the heads; Reshape compares
    /// places in its order. A head this source does not know
    /// cannot be placed: it does not count as knowing.
    pub fn knows(&self, expects: &str, contract: &Item) -> bool {
        if self.format == Format::Reshape {
            // Reshape's names, in its order: the newest migration the build has.
            let at = |id: &str| self.items.iter().position(|i| i.id == id);
            return at(expects.trim())
                .zip(at(&contract.id))
                .is_some_and(|(e, c)| e >= c);
        }
        if !self.graph() {
            return match (expects.trim().parse::<i64>(), contract.id.parse::<i64>()) {
                (Ok(e), Ok(c)) => e >= c,
                _ => false,
            };
        }
        expects.split('+').any(|head| {
            let head = match self.format {
                Format::Django => head.trim().replacen(':', ".", 1),
                _ => head.trim().to_owned(),
            };
            self.parents.contains_key(&head) && self.ancestors(&head).contains(contract.id.as_str())
        })
    }

    /// The number the registry's barrier is raised to before `contracts` run: the newest of
    /// them, for formats whose versions are numbers (`None` for Alembic and Django, whose
    /// instances register revision names the barrier cannot compare).
    pub fn barrier(&self, contracts: &[&Item]) -> Option<i64> {
        if self.graph() || self.format == Format::Reshape {
            return None;
        }
        contracts.iter().filter_map(|c| c.id.parse().ok()).max()
    }

    /// The pending contracts that a pending expand descends from (Alembic, Django): the
    /// expand phase cannot apply that expand without them. Rails runs `db/migrate` without
    /// `db/post_migrate` whatever their versions: none.
    pub fn contracts_below_expands<'a>(&'a self, pending: &[&'a Item]) -> Vec<&'a Item> {
        if !self.graph() {
            return Vec::new();
        }
        let mut below: HashSet<&str> = HashSet::new();
        for e in pending.iter().filter(|i| i.phase == Phase::Expand) {
            below.extend(self.ancestors(&e.id));
        }
        pending
            .iter()
            .filter(|i| i.phase == Phase::Contract && below.contains(i.id.as_str()))
            .copied()
            .collect()
    }

    /// What the expand phase upgrades to (Alembic, Django), for the command after `--`
    /// (`SCHEMAGATE_TARGETS`): the expand migrations no other expand migration descends
    /// from, Django's as `app:name`. Empty for the numbered formats.
    pub fn expand_targets(&self) -> Vec<String> {
        if !self.graph() {
            return Vec::new();
        }
        let expands: Vec<&Item> = self
            .items
            .iter()
            .filter(|i| i.phase == Phase::Expand)
            .collect();
        let mut below: HashSet<&str> = HashSet::new();
        for e in &expands {
            for p in self.parents.get(&e.id).into_iter().flatten() {
                below.insert(p.as_str());
            }
        }
        let squashed: HashSet<&str> = self
            .replaces
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        expands
            .iter()
            .filter(|e| !below.contains(e.id.as_str()) && !squashed.contains(e.id.as_str()))
            .map(|e| match self.format {
                Format::Django => e.id.replacen('.', ":", 1),
                _ => e.id.clone(),
            })
            .collect()
    }

    /// A history that lists every applied version.
    fn listed_standing(&self, rows: &[String]) -> Standing {
        let rows: HashSet<&str> = rows.iter().map(String::as_str).collect();
        let known: HashSet<&str> = self.items.iter().map(|i| i.id.as_str()).collect();
        let mut unknown: Vec<String> = rows
            .iter()
            .filter(|r| !known.contains(**r))
            .map(|r| r.to_string())
            .collect();
        unknown.sort();
        let pending = self
            .items
            .iter()
            .filter(|i| !rows.contains(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        Standing { pending, unknown }
    }

    /// Alembic's table holds only the current heads; what is applied is each of them and
    /// its ancestors (`down_revision` and `depends_on`). A revision there that this image
    /// does not have was written by a newer release, which may have applied any head of
    /// this image. But Alembic never keeps an ancestor of another row in that table: a row
    /// this image knows has nothing applied above it, so every revision descending from it
    /// is missing, whatever else the table holds.
    fn alembic_standing(&self, rows: &[String]) -> Standing {
        let (known, unknown): (Vec<&String>, Vec<&String>) = rows
            .iter()
            .partition(|r| self.parents.contains_key(r.as_str()));
        let mut applied: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = known.iter().map(|r| r.as_str()).collect();
        while let Some(r) = stack.pop() {
            if applied.insert(r)
                && let Some(ps) = self.parents.get(r)
            {
                stack.extend(ps.iter().map(String::as_str));
            }
        }
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (rev, ps) in &self.parents {
            for p in ps {
                children.entry(p.as_str()).or_default().push(rev.as_str());
            }
        }
        let mut above_a_row: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = known
            .iter()
            .flat_map(|r| children.get(r.as_str()).into_iter().flatten().copied())
            .collect();
        while let Some(r) = stack.pop() {
            if above_a_row.insert(r) {
                stack.extend(children.get(r).into_iter().flatten().copied());
            }
        }
        let pending = self
            .items
            .iter()
            .map(|i| i.id.as_str())
            .filter(|id| !applied.contains(id) && (unknown.is_empty() || above_a_row.contains(id)))
            .map(str::to_owned)
            .collect();
        Standing {
            pending,
            unknown: unknown.into_iter().cloned().collect(),
        }
    }

    /// Django's loader: a squashed migration counts as applied exactly when every migration
    /// it `replaces` is recorded (its own row is not consulted), and stands in for them when
    /// all or none are; when only some are, the squash is left out and the replaced ones
    /// count one by one. Rows of apps this source does not have (`auth`, `contenttypes`, a
    /// library's) are not ours to judge.
    fn django_standing(&self, rows: &[String]) -> Standing {
        let mut applied: HashSet<&str> = rows.iter().map(String::as_str).collect();
        let mut left_out: HashSet<&str> = HashSet::new();
        for (squash, replaced) in &self.replaces {
            let recorded = replaced
                .iter()
                .filter(|r| applied.contains(r.as_str()))
                .count();
            if recorded == replaced.len() {
                applied.insert(squash);
            } else {
                applied.remove(squash.as_str());
            }
            if recorded == replaced.len() || recorded == 0 {
                left_out.extend(replaced.iter().map(String::as_str));
            } else {
                left_out.insert(squash);
            }
        }
        let pending = self
            .items
            .iter()
            .filter(|i| !left_out.contains(i.id.as_str()) && !applied.contains(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        let known: HashSet<&str> = self
            .items
            .iter()
            .map(|i| i.id.as_str())
            .chain(self.replaces.values().flatten().map(String::as_str))
            .collect();
        let mut unknown: Vec<String> = rows
            .iter()
            .filter(|r| {
                !known.contains(r.as_str())
                    && r.split_once('.')
                        .is_some_and(|(app, _)| self.apps.contains(app))
            })
            .cloned()
            .collect();
        unknown.sort();
        Standing { pending, unknown }
    }
}

/// `migrate --source DIR` without `-- CMD`, where DIR is another migrator's.
pub fn needs_command(dir: &Path, format: Format) -> Error {
    Error::Config(format!(
        "{} is a {} directory: give the migrator's command after --, for example `migrate \
         --source {} --format {} -- {}`",
        dir.display(),
        format.name(),
        dir.display(),
        format.name(),
        format.example_command()
    ))
}

/// The format given, or the one the directory's contents show. Several plausible formats
/// is a usage error naming them.
pub fn resolve(dir: &Path, given: Option<Format>) -> Result<Format> {
    if let Some(f) = given {
        return Ok(f);
    }
    let found = detect(dir)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Ok(Format::Sqlx),
        many => Err(Error::Config(format!(
            "cannot tell which migrator {} belongs to: it looks like {}; pass --format",
            dir.display(),
            many.iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// `resolve` for every `--source`: detected, they must all look like one migrator.
pub fn resolve_all(dirs: &[PathBuf], given: Option<Format>) -> Result<Format> {
    let first = resolve(&dirs[0], given)?;
    if given.is_none() {
        for dir in &dirs[1..] {
            let other = resolve(dir, None)?;
            if other != first {
                return Err(Error::Config(format!(
                    "--source {} looks like {} and --source {} like {}: pass --format",
                    dirs[0].display(),
                    first.name(),
                    dir.display(),
                    other.name()
                )));
            }
        }
    }
    Ok(first)
}

/// A directory's entries and whether each is a directory, from the listing alone (no stat
/// per entry: a sqlx source of hundreds of files pays this on every start).
fn names(dir: &Path) -> Vec<(String, bool)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let is_dir = e
                        .file_type()
                        .is_ok_and(|t| t.is_dir() || (t.is_symlink() && e.path().is_dir()));
                    (e.file_name().to_string_lossy().into_owned(), is_dir)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn versioned(name: &str, ext: &str) -> bool {
    name.split_once('_').is_some_and(|(v, rest)| {
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && rest.ends_with(ext)
    })
}

/// Every format the directory looks like (cheap: names, and one `.sql` file's first bytes).
/// Long on purpose: one recognisable sign per migrator, side by side.
fn detect(dir: &Path) -> Result<Vec<Format>> {
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "cannot read migration source {}: not a directory",
            dir.display()
        )));
    }
    let mut found = Vec::new();
    let top = names(dir);
    let has = |n: &str| top.iter().any(|(name, _)| name == n);
    // `alembic.ini` settles it: a Flask-Migrate `migrations/` package (Superset's) also
    // has Django's shape (`migrations/__init__.py`).
    if has("alembic.ini") {
        return Ok(vec![Format::Alembic]);
    }
    if (has("env.py") && has("versions")) || alembic::looks_like(dir, &top) {
        found.push(Format::Alembic);
    }
    if has("manage.py") || django::looks_like(dir, &top) {
        found.push(Format::Django);
    }
    if (has("db") && dir.join("db/migrate").is_dir())
        || top.iter().any(|(n, d)| !d && versioned(n, ".rb"))
    {
        found.push(Format::Rails);
    }
    let diesel_dirs = |d: &Path, entries: &[(String, bool)]| {
        entries
            .iter()
            .any(|(n, is_dir)| *is_dir && d.join(n).join("up.sql").is_file())
    };
    if has("diesel.toml")
        || diesel_dirs(dir, &top)
        || (has("migrations")
            && diesel_dirs(&dir.join("migrations"), &names(&dir.join("migrations"))))
    {
        found.push(Format::Diesel);
    }
    for (d, entries) in [
        (dir.to_owned(), top.clone()),
        (
            dir.join("db/migrations"),
            if has("db") {
                names(&dir.join("db/migrations"))
            } else {
                Vec::new()
            },
        ),
    ] {
        let first = entries
            .iter()
            .find(|(n, is_dir)| !is_dir && versioned(n, ".sql"))
            .map(|(n, _)| n);
        if let Some(first) = first {
            let text = crate::files::read_text(&d.join(first)).unwrap_or_default();
            let f = if text.contains("-- migrate:up") {
                Format::Dbmate
            } else {
                Format::Sqlx
            };
            if !found.contains(&f) && (f == Format::Dbmate || d == dir) {
                found.push(f);
            }
        }
    }
    // A plain sqlx directory is the default: only name it when it competes.
    if found.len() == 1 && found[0] == Format::Sqlx {
        found.clear();
    }
    Ok(found)
}

/// Hex SHA-256 of bytes.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Read a file for a reader, as a usage error naming it when unreadable.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_all(path)
        .map_err(|e| Error::Config(format!("cannot read migration {}: {e}", path.display())))
}

pub(crate) fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// How a migration's file is named (`Item::file`): relative to its `--source`, or, when
/// there are several, that source joined with it.
pub(crate) fn file_name(root: &Path, path: &Path, several: bool) -> String {
    if several {
        path.display().to_string()
    } else {
        relative(root, path)
    }
}

/// Whether `dir` is read for the first time: a directory two `--source`s reach (`app` brings
/// `app/db/post_migrate`, given again) is read once.
pub(crate) fn first_visit(seen: &mut HashSet<PathBuf>, dir: &Path) -> bool {
    seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_owned()))
}

pub(crate) fn unreadable(dir: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| {
        Error::Config(format!(
            "cannot read migration source {}: {e}",
            dir.display()
        ))
    }
}

/// What a reader finds in the files.
#[derive(Debug, Default)]
struct Read {
    items: Vec<Item>,
    /// The migrations directories read.
    paths: Vec<PathBuf>,
    /// Alembic: each revision's parents (`down_revision` and `depends_on`).
    parents: HashMap<String, Vec<String>>,
    /// Django: each squashed migration's `replaces`, as `app.name`.
    replaces: BTreeMap<String, Vec<String>>,
    /// Django: the app labels read.
    apps: BTreeSet<String>,
    heads: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    fn load(name: &str, format: Format) -> Foreign {
        Foreign::load(&Spec::new(vec![example(name)], format, None).unwrap()).unwrap()
    }

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    /// A graph built by hand: `(id, parents)`.
    fn alembic(graph: &[(&str, &[&str])]) -> Foreign {
        let items = graph
            .iter()
            .map(|(id, _)| Item {
                id: id.to_string(),
                file: format!("{id}.py"),
                checksum: String::new(),
                origin: PathBuf::new(),
                phase: Phase::Expand,
            })
            .collect();
        let parents: HashMap<String, Vec<String>> = graph
            .iter()
            .map(|(id, ps)| (id.to_string(), rows(ps)))
            .collect();
        let heads = graph
            .iter()
            .filter(|(id, _)| !graph.iter().any(|(_, ps)| ps.contains(id)))
            .map(|(id, _)| id.to_string())
            .collect();
        Foreign {
            format: Format::Alembic,
            items,
            paths: Vec::new(),
            parents,
            replaces: BTreeMap::new(),
            apps: BTreeSet::new(),
            heads,
            table: None,
        }
    }

    #[test]
    fn detects_each_example_and_a_sqlx_source() {
        for (dir, format) in [
            ("alembic", Format::Alembic),
            ("django", Format::Django),
            ("rails", Format::Rails),
            ("dbmate", Format::Dbmate),
            ("diesel", Format::Diesel),
            ("migrations/postgres", Format::Sqlx),
        ] {
            assert_eq!(resolve(&example(dir), None).unwrap(), format, "{dir}");
        }
    }

    /// The version and digest of a fixed source are a contract: the marker keeps them.
    #[test]
    fn version_and_digest_of_the_examples() {
        let v = |name, f| load(name, f).version();
        assert_eq!(v("alembic", Format::Alembic), "0003_backfill_display_name");
        assert_eq!(
            v("django", Format::Django),
            "shop:0003_backfill_display_name"
        );
        assert_eq!(v("rails", Format::Rails), "20240103000000");
        assert_eq!(v("dbmate", Format::Dbmate), "20240103000000");
        assert_eq!(v("diesel", Format::Diesel), "20240103000000");
        let f = load("dbmate", Format::Dbmate);
        // SHA-256 over `<id>:<sha256 of the file>\n`, in version order.
        assert_eq!(
            f.digest(),
            "e20333ce083ae95a51130ffab26cf3b9f33f682cb0433ee191de71c8dd2ae94f"
        );
        assert_eq!(
            f.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["20240101000000", "20240102000000", "20240103000000"]
        );
        // Unchanged by reading `db/post_migrate` (absent here) and by Alembic's and Django's
        // new readers: markers written before stay valid.
        for (name, format, digest) in [
            (
                "rails",
                Format::Rails,
                "004741659ee0b131add1282d76a727b4304d240ced919045ab25dbba246310c4",
            ),
            (
                "diesel",
                Format::Diesel,
                "957e5187ed9598acdeb6a37e25b4c8a68e5974c479d88e151e86faf42ec6ac11",
            ),
            (
                "django",
                Format::Django,
                "5d103812468af393cc08de2477609b2906454a5f7bdfb4a6fb6658c3bc4d390f",
            ),
            (
                "alembic",
                Format::Alembic,
                "3a4b4e2eef5cacaec07b0260aeace6897d1d724827807c268f28d84f4178844a",
            ),
        ] {
            assert_eq!(load(name, format).digest(), digest, "{name}");
        }
    }

    #[test]
    fn alembic_heads_cover_their_ancestors_and_an_unknown_head_is_ahead() {
        let f = load("alembic", Format::Alembic);
        assert!(f.standing(&rows(&["0003_backfill_display_name"])).ready());
        let behind = f.standing(&rows(&["0002_add_display_name"]));
        assert_eq!(behind.pending, ["0003_backfill_display_name"]);
        assert!(f.standing(&rows(&[])).pending.len() == 3);
        let ahead = f.standing(&rows(&["9999_newer_release"]));
        assert!(ahead.ready());
        assert_eq!(ahead.unknown, ["9999_newer_release"]);
    }

    /// Superset's merge states: a known row that is not a head of the image proves that
    /// head missing, whatever unknown row sits beside it.
    #[test]
    fn alembic_unknown_row_beside_an_ancestor_of_a_head_is_not_ready() {
        let f = alembic(&[
            ("base", &[]),
            ("left", &["base"]),
            ("right", &["base"]),
            ("merge", &["left", "right"]),
            ("side", &["base"]),
            ("dep", &["side"]),
            ("uses_dep", &["merge", "dep"]),
        ]);
        assert_eq!(f.heads, ["uses_dep"]);
        let s = f.standing(&rows(&["left", "newer"]));
        assert!(!s.ready());
        assert_eq!(s.pending, ["merge", "uses_dep"]);
        assert_eq!(s.unknown, ["newer"]);
        let s = f.standing(&rows(&["left", "right", "newer"]));
        assert_eq!(s.pending, ["merge", "uses_dep"]);
        // A known row of another branch: what descends from it is missing; the rest may be
        // the newer release's.
        let s = f.standing(&rows(&["side", "newer"]));
        assert_eq!(s.pending, ["dep", "uses_dep"]);
        // At the head, or only unknown rows: ahead.
        assert!(f.standing(&rows(&["uses_dep", "newer"])).ready());
        assert!(f.standing(&rows(&["newer"])).ready());
        // `depends_on` counts as an ancestor: `dep` is applied under `uses_dep`.
        assert!(f.standing(&rows(&["uses_dep"])).ready());
    }

    /// Django's loader on a squash of 0001 and 0002: recorded or not, partly applied, and
    /// other apps' rows.
    #[test]
    fn django_squash_and_other_apps_as_the_loader_sees_them() {
        let ids = [
            "shop.0001_initial",
            "shop.0001_squashed_0002_b",
            "shop.0002_b",
            "shop.0003_c",
        ];
        let f = Foreign {
            format: Format::Django,
            items: ids
                .iter()
                .map(|id| Item {
                    id: id.to_string(),
                    file: String::new(),
                    checksum: String::new(),
                    origin: PathBuf::new(),
                    phase: Phase::Expand,
                })
                .collect(),
            paths: Vec::new(),
            parents: HashMap::new(),
            replaces: BTreeMap::from([(
                "shop.0001_squashed_0002_b".to_owned(),
                rows(&["shop.0001_initial", "shop.0002_b"]),
            )]),
            apps: BTreeSet::from(["shop".to_owned()]),
            heads: vec!["shop:0003_c".into()],
            table: None,
        };
        // Applied before the squash existed: the squash is not recorded, Django is satisfied.
        let s = f.standing(&rows(&[
            "shop.0001_initial",
            "shop.0002_b",
            "shop.0003_c",
            "auth.0001_initial",
            "contenttypes.0001_initial",
        ]));
        assert!(s.ready(), "{s:?}");
        assert!(s.unknown.is_empty(), "{s:?}");
        // Applied with the squash: recorded too.
        let all = [
            "shop.0001_initial",
            "shop.0001_squashed_0002_b",
            "shop.0002_b",
            "shop.0003_c",
        ];
        assert!(f.standing(&rows(&all)).ready());
        // Nothing applied: the squash stands in for what it replaces.
        assert_eq!(
            f.standing(&rows(&[])).pending,
            ["shop.0001_squashed_0002_b", "shop.0003_c"]
        );
        // Partly applied: the squash is left out, the replaced ones count.
        assert_eq!(
            f.standing(&rows(&["shop.0001_initial"])).pending,
            ["shop.0002_b", "shop.0003_c"]
        );
        // The squash's own row without the ones it replaces is not enough for Django.
        assert_eq!(
            f.standing(&rows(&["shop.0001_squashed_0002_b"])).pending,
            ["shop.0001_squashed_0002_b", "shop.0003_c"]
        );
        // A row of this app the files do not have: ahead.
        let s = f.standing(&rows(&[&all[..], &["shop.0004_newer"]].concat()));
        assert!(s.ready());
        assert_eq!(s.unknown, ["shop.0004_newer"]);
    }

    #[test]
    fn a_modified_file_is_named_from_the_manifest() {
        let f = load("rails", Format::Rails);
        let manifest = f.manifest().replacen(&f.items[1].checksum, "0000", 1);
        let modified = f.modified_since(&manifest);
        assert_eq!(modified.len(), 1);
        assert_eq!(
            modified[0].file,
            "db/migrate/20240102000000_add_display_name.rb"
        );
        assert!(f.modified_since(&f.manifest()).is_empty());
        // Another format's list is not compared.
        assert!(
            f.modified_since("schemagate files (dbmate)\n0000 20240102000000 x\n")
                .is_empty()
        );
    }
}
