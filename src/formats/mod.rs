//! Other migrators' directories read as a source (`--format alembic|django|rails|dbmate|
//! diesel`): the image's migration identifiers, its heads and a digest over identifiers and
//! file contents, all from the files, without running the tool; and the rule that says
//! whether the migrator's own history table shows every migration of the image applied.
//! The history itself is read in `history.rs`. `sqlx` stays `source.rs`'s.

mod alembic;
mod django;
pub mod history;
mod simple;

use std::collections::BTreeSet;
use std::path::Path;

use clap::ValueEnum;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::source::hex;

/// Which migrator a source directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// sqlx's layout, applied by schemagate itself.
    Sqlx,
    Alembic,
    Django,
    Rails,
    Dbmate,
    Diesel,
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
            Format::Sqlx => "sqlx migrate run",
        }
    }

    pub fn history_table(self) -> &'static str {
        match self {
            Format::Sqlx => crate::db::MIGRATIONS_TABLE.name(),
            Format::Alembic => "alembic_version",
            Format::Django => "django_migrations",
            Format::Rails | Format::Dbmate => "schema_migrations",
            Format::Diesel => "__diesel_schema_migrations",
        }
    }
}

/// One migration of the image.
#[derive(Debug, Clone)]
pub struct Item {
    /// What the migrator records: an Alembic revision, `app.name` (Django), a version.
    pub id: String,
    /// The file (or directory, for Diesel), relative to the source directory.
    pub file: String,
    /// Hex SHA-256 of the file's contents (Diesel: `up.sql`, then `down.sql`).
    pub checksum: String,
}

/// A directory of another migrator's migrations, as read from the files.
#[derive(Debug)]
pub struct Foreign {
    pub format: Format,
    /// Sorted by id (versions as numbers).
    pub items: Vec<Item>,
    /// Alembic: each revision's parents (`down_revision` and `depends_on`).
    parents: std::collections::HashMap<String, Vec<String>>,
    pub heads: Vec<String>,
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
                f.format.history_table()
            );
            if !self.unknown.is_empty() {
                s += &format!(
                    " (the database is ahead: it also has {})",
                    self.unknown.join(", ")
                );
            }
            s
        } else {
            format!(
                "{} does not show {} of this build's migrations applied: {}",
                f.format.history_table(),
                self.pending.len(),
                abbreviate(&self.pending)
            )
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
    pub fn load(dir: &Path, format: Format) -> Result<Foreign> {
        let (items, parents, heads) = match format {
            Format::Alembic => alembic::read(dir)?,
            Format::Django => django::read(dir)?,
            Format::Rails | Format::Dbmate | Format::Diesel => simple::read(dir, format)?,
            Format::Sqlx => unreachable!("sqlx sources are source::Source"),
        };
        if items.is_empty() {
            return Err(Error::Config(format!(
                "no {} migrations found in {}",
                format.name(),
                dir.display()
            )));
        }
        Ok(Foreign {
            format,
            items,
            parents,
            heads,
        })
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
        let recorded: std::collections::HashMap<&str, &str> = lines
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

    /// Compare the history (`rows`, as `history::read` returns them) with the image.
    ///
    /// Alembic's table holds only the current heads; what is applied is each of them and
    /// its ancestors. A revision there that this image does not have was written by a newer
    /// release (Alembic reaches a revision only through its ancestors, and an image carries
    /// every ancestor of its heads), so the database is ahead and the image is ready.
    pub fn standing(&self, rows: &[String]) -> Standing {
        let known: BTreeSet<&str> = self.items.iter().map(|i| i.id.as_str()).collect();
        let unknown: Vec<String> = rows
            .iter()
            .filter(|r| !known.contains(r.as_str()))
            .cloned()
            .collect();
        let applied: BTreeSet<String> = match self.format {
            Format::Alembic => {
                let mut seen = BTreeSet::new();
                let mut stack: Vec<String> = rows.to_vec();
                while let Some(r) = stack.pop() {
                    if seen.insert(r.clone())
                        && let Some(ps) = self.parents.get(&r)
                    {
                        stack.extend(ps.iter().cloned());
                    }
                }
                seen
            }
            _ => rows.iter().cloned().collect(),
        };
        let pending = if self.format == Format::Alembic && !unknown.is_empty() {
            Vec::new()
        } else {
            self.items
                .iter()
                .filter(|i| !applied.contains(&i.id))
                .map(|i| i.id.clone())
                .collect()
        };
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
    if has("alembic.ini") || (has("env.py") && has("versions")) || alembic::looks_like(dir, &top) {
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

pub(crate) fn unreadable(dir: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| {
        Error::Config(format!(
            "cannot read migration source {}: {e}",
            dir.display()
        ))
    }
}

type Read = (
    Vec<Item>,
    std::collections::HashMap<String, Vec<String>>,
    Vec<String>,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
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
        let v = |name, f| Foreign::load(&example(name), f).unwrap().version();
        assert_eq!(v("alembic", Format::Alembic), "0003_backfill_display_name");
        assert_eq!(
            v("django", Format::Django),
            "shop:0003_backfill_display_name"
        );
        assert_eq!(v("rails", Format::Rails), "20240103000000");
        assert_eq!(v("dbmate", Format::Dbmate), "20240103000000");
        assert_eq!(v("diesel", Format::Diesel), "20240103000000");
        let f = Foreign::load(&example("dbmate"), Format::Dbmate).unwrap();
        // SHA-256 over `<id>:<sha256 of the file>\n`, in version order.
        assert_eq!(
            f.digest(),
            "e20333ce083ae95a51130ffab26cf3b9f33f682cb0433ee191de71c8dd2ae94f"
        );
        assert_eq!(
            f.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["20240101000000", "20240102000000", "20240103000000"]
        );
    }

    #[test]
    fn alembic_heads_cover_their_ancestors_and_an_unknown_head_is_ahead() {
        let f = Foreign::load(&example("alembic"), Format::Alembic).unwrap();
        let rows = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(f.standing(&rows(&["0003_backfill_display_name"])).ready());
        let behind = f.standing(&rows(&["0002_add_display_name"]));
        assert_eq!(behind.pending, ["0003_backfill_display_name"]);
        assert!(f.standing(&rows(&[])).pending.len() == 3);
        let ahead = f.standing(&rows(&["9999_newer_release"]));
        assert!(ahead.ready());
        assert_eq!(ahead.unknown, ["9999_newer_release"]);
    }

    #[test]
    fn a_modified_file_is_named_from_the_manifest() {
        let f = Foreign::load(&example("rails"), Format::Rails).unwrap();
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
