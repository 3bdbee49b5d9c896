//! A directory of SQL migrations in sqlx's layout, read strictly: a `.sql` file whose name
//! does not parse is an error naming it, not a file silently skipped. Checksums are sqlx's
//! own (SHA-384 of the file), so a database that sqlx-cli managed keeps its history.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::migrate::{AppliedMigration, Migration, MigrationType};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::config::MigrationsTable;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Source {
    pub dir: PathBuf,
    /// Up (or simple) migrations, in version order.
    pub ups: Vec<Migration>,
    /// Down migrations by version.
    pub downs: BTreeMap<i64, Migration>,
    /// sqlx-cli's `--ignore-missing`: an applied migration this source does not have is not
    /// drift (two migration tracks sharing one history).
    pub ignore_missing: bool,
}

impl Source {
    pub fn load(dir: &Path) -> Result<Source> {
        // Names first (the directory listing says which entries are files: no stat each),
        // then the contents, one after the other: this is on the path every replica pays.
        let files = list(dir)?;
        let contents = read_all(files.iter().map(|f| f.path.as_path()).collect())?;
        let mut ups: BTreeMap<i64, Migration> = BTreeMap::new();
        let mut downs = BTreeMap::new();
        for (file, sql) in files.into_iter().zip(contents) {
            let (version, migration_type) = (file.version, file.migration_type);
            let file_name = file.file_name.clone();
            let migration = file.into_migration(dir, sql)?;
            let slot = if migration_type == MigrationType::ReversibleDown {
                &mut downs
            } else {
                &mut ups
            };
            if slot.insert(version, migration).is_some() {
                return Err(Error::Config(format!(
                    "duplicate migration version {version} in {} ({file_name})",
                    dir.display()
                )));
            }
        }
        if let Some((version, down)) = downs.iter().find(|(v, _)| !ups.contains_key(v)) {
            return Err(Error::Config(format!(
                "{version}_{}.down.sql in {} has no up migration: add \
                 {version}_{}.up.sql, or remove it",
                down.description.replace(' ', "_"),
                dir.display(),
                down.description.replace(' ', "_"),
            )));
        }
        if ups.is_empty() {
            return Err(Error::Config(format!(
                "no migrations found in {}: expected files named <VERSION>_<description>.sql",
                dir.display()
            )));
        }
        let mut source = Source {
            dir: dir.to_owned(),
            ups: ups.into_values().collect(),
            downs,
            ignore_missing: false,
        };
        source.apply_sqlx_toml()?;
        Ok(source)
    }

    /// The `ignored-chars` of the source's `sqlx.toml`, left out of every checksum as
    /// sqlx-cli does. (Its `table-name` is the config's: `MigrationsTable::resolve`.)
    fn apply_sqlx_toml(&mut self) -> Result<()> {
        let Some((_, settings)) = crate::sqlx_toml::load(&self.dir)? else {
            return Ok(());
        };
        if !settings.ignored_chars.is_empty() {
            let ignored = &settings.ignored_chars;
            for m in self.ups.iter_mut().chain(self.downs.values_mut()) {
                let kept: String = m
                    .sql
                    .as_str()
                    .chars()
                    .filter(|c| !ignored.contains(c))
                    .collect();
                m.checksum = Cow::Owned(sha2::Sha384::digest(kept.as_bytes()).to_vec());
            }
        }
        Ok(())
    }

    /// The newest version, as the marker records it.
    pub fn version(&self) -> String {
        self.ups
            .last()
            .expect("a source is never empty")
            .version
            .to_string()
    }

    /// Hex SHA-256 over the ordered `(version, checksum)` pairs of the up migrations with a
    /// version at most `upto` (all when `None`): one line `<version>:<hex sha384>\n` each.
    pub fn digest_upto(&self, upto: Option<i64>) -> String {
        let mut hasher = Sha256::new();
        for m in self
            .ups
            .iter()
            .filter(|m| upto.is_none_or(|v| m.version <= v))
        {
            hasher.update(format!("{}:{}\n", m.version, hex(&m.checksum)));
        }
        hex(&hasher.finalize())
    }

    /// Whether every up migration here is among `applied`, with the same checksum: the
    /// database is at (or ahead of) this source.
    pub fn applied_unchanged(&self, applied: &[AppliedMigration]) -> bool {
        let c = self.compare(applied);
        c.pending.is_empty() && c.modified.is_empty()
    }

    /// The one comparison of what is applied with this source, every difference listed
    /// (`plan` turns the first into drift; `status` shows them all; `stamp` and `smoke`
    /// read what is pending).
    pub fn compare(&self, applied: &[AppliedMigration]) -> Comparison<'_> {
        let newest = self.history().0;
        let by_version: HashMap<i64, &Migration> =
            self.ups.iter().map(|m| (m.version, m)).collect();
        let mut c = Comparison::default();
        for a in applied {
            match by_version.get(&a.version) {
                // Another track's migration (sqlx-cli's --ignore-missing), older or newer.
                None if self.ignore_missing => {}
                None if a.version > newest => c.ahead.push(a.version),
                None => c.missing.push(a.version),
                Some(m) if *m.checksum != *a.checksum => c.modified.push(a.version),
                Some(_) => {}
            }
        }
        let done: HashSet<i64> = applied.iter().map(|a| a.version).collect();
        c.pending = self
            .ups
            .iter()
            .filter(|m| !done.contains(&m.version))
            .collect();
        c
    }

    /// The newest version and the number of migrations, as the fast path cross-checks
    /// them against the migrations table.
    pub fn history(&self) -> (i64, usize) {
        (
            self.ups.last().expect("a source is never empty").version,
            self.ups.len(),
        )
    }

    /// Compare what is applied with this source: the pending migrations, in order, or
    /// drift (a dirty migration, a modified one, or an applied one this source does not
    /// have and that is not simply newer than its newest). Applied migrations newer than
    /// every one here are the database being **ahead** of this build: not drift. `table`
    /// is where they are recorded, named in the repair a dirty migration needs.
    pub fn plan(
        &self,
        applied: &[AppliedMigration],
        dirty: Option<i64>,
        table: &MigrationsTable,
    ) -> Result<Plan<'_>> {
        if let Some(v) = dirty {
            return Err(Error::Drift(format!(
                "migration {v} is dirty: it failed part-way on a previous run (it ran without a \
                 transaction, or its DDL committed implicitly) and some of its statements may \
                 have taken effect. Repair by hand: either undo what it did and `DELETE FROM \
                 {table} WHERE version = {v}` to run it again, or finish it and run \
                 `schemagate stamp {v} --source DIR` to mark it done"
            )));
        }
        let Comparison {
            pending,
            ahead,
            missing,
            modified,
        } = self.compare(applied);
        // The first difference in the order the migrations were applied.
        if let Some(a) = applied
            .iter()
            .find(|a| missing.contains(&a.version) || modified.contains(&a.version))
        {
            let Some(m) = self.ups.iter().find(|m| m.version == a.version) else {
                return Err(Error::Drift(format!(
                    "migration {} was applied to the database but is missing from {}",
                    a.version,
                    self.dir.display()
                )));
            };
            return Err(Error::Drift(format!(
                "migration {} ({}) was previously applied but has been modified: checksum {} in \
                 the database, {} on disk",
                a.version,
                m.description,
                short(&a.checksum),
                short(&m.checksum)
            )));
        }
        if !ahead.is_empty()
            && let Some(m) = pending.first()
        {
            return Err(Error::Drift(format!(
                "migration {} ({}) is not applied, but newer migrations this source does not \
                 have are ({}): the database has moved on without it",
                m.version,
                m.description,
                ahead
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Plan { pending, ahead })
    }

    pub fn digest(&self) -> String {
        self.digest_upto(None)
    }
}

/// Every difference between what is applied and a source (`Source::compare`).
#[derive(Debug, Default)]
pub struct Comparison<'s> {
    /// In the source, not applied: in order.
    pub pending: Vec<&'s Migration>,
    /// Applied, not in the source, newer than its newest: the database is ahead.
    pub ahead: Vec<i64>,
    /// Applied, not in the source, older than its newest: drift.
    pub missing: Vec<i64>,
    /// Applied with another checksum than the source's: drift.
    pub modified: Vec<i64>,
}

/// What applying a source to a database would do (`Source::plan`).
#[derive(Debug)]
pub struct Plan<'s> {
    pub pending: Vec<&'s Migration>,
    /// Applied versions newer than the source's newest (the database is ahead).
    pub ahead: Vec<i64>,
}

impl Plan<'_> {
    /// When the database is ahead of the source (and nothing is pending), the line that
    /// says so.
    pub fn ahead_message(&self, source: &Source) -> Option<String> {
        let newest = self.ahead.iter().max()?;
        Some(format!(
            "the database is ahead of this build: every migration in {} is applied, plus {} \
             newer one(s) up to {newest}; nothing to do",
            source.dir.display(),
            self.ahead.len()
        ))
    }
}

fn short(checksum: &[u8]) -> String {
    hex(&checksum[..checksum.len().min(6)])
}

/// A migration file found in the source directory, before it is read.
struct MigrationFile {
    path: std::path::PathBuf,
    file_name: String,
    version: i64,
    migration_type: MigrationType,
    description: String,
}

impl MigrationFile {
    fn into_migration(self, dir: &Path, sql: String) -> Result<Migration> {
        if sql.starts_with('\u{feff}') {
            // Invisible in an editor; PostgreSQL would report a syntax error at it.
            return Err(Error::Config(format!(
                "migration {} in {} starts with a UTF-8 byte order mark (BOM): save it \
                 without one",
                self.file_name,
                dir.display()
            )));
        }
        // sqlx's rule: the marker must be the file's very first bytes.
        let no_tx = sql.starts_with("-- no-transaction");
        Ok(Migration::new(
            self.version,
            Cow::Owned(self.description),
            self.migration_type,
            AssertSqlSafe(sql).into_sql_str(),
            no_tx,
        ))
    }
}

/// The migration files of `dir`, by sqlx-cli's rules: a regular file (or a symlink to one)
/// whose name has an `_` and ends in `.sql`; dot files and anything else are skipped.
fn list(dir: &Path) -> Result<Vec<MigrationFile>> {
    let unreadable = |e: std::io::Error| {
        Error::Config(format!(
            "cannot read migration source {}: {e}",
            dir.display()
        ))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') || !is_file(&entry).map_err(unreadable)? {
            continue;
        }
        let Some((version_text, rest)) = file_name.split_once('_') else {
            if file_name.ends_with(".sql") {
                tracing::warn!(
                    "skipping {} in {}: not named <VERSION>_<description>.sql",
                    file_name,
                    dir.display()
                );
            }
            continue;
        };
        if !rest.ends_with(".sql") {
            continue;
        }
        let (version, migration_type, description) = parse_file_name(version_text, rest)
            .ok_or_else(|| {
                Error::Config(format!(
                    "malformed migration file name {:?} in {}: expected \
                     <VERSION>_<description>.sql (or .up.sql / .down.sql), VERSION a positive \
                     integer",
                    file_name,
                    dir.display()
                ))
            })?;
        files.push(MigrationFile {
            path: entry.path(),
            file_name,
            version,
            migration_type,
            description,
        });
    }
    Ok(files)
}

/// Whether a directory entry is a file, from the listing alone unless it is a symlink. As
/// sqlx-cli does, a symlink whose target is missing is an error, not a migration silently
/// left out.
fn is_file(entry: &std::fs::DirEntry) -> std::io::Result<bool> {
    let file_type = entry.file_type()?;
    if !file_type.is_symlink() {
        return Ok(file_type.is_file());
    }
    std::fs::metadata(entry.path())
        .map(|m| m.is_file())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: {e} (a dangling symlink?)", entry.path().display()),
            )
        })
}

/// Read every file as UTF-8, in order. (Threads were measured: no faster here, the cost
/// is the kernel's open/read/close.)
fn read_all(paths: Vec<&Path>) -> Result<Vec<String>> {
    read_files(&paths)
}

/// An open, plain reads until EOF, a close per file, through one reused buffer:
/// fs::read_to_string also stats and seeks each file, and a fresh buffer per file costs
/// more in page faults than the reads.
fn read_files(paths: &[&Path]) -> Result<Vec<String>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    paths
        .iter()
        .map(|path| {
            let fail = |e: std::io::Error| {
                Error::Config(format!("cannot read migration {}: {e}", path.display()))
            };
            buf.clear();
            let mut file = std::fs::File::open(path).map_err(fail)?;
            loop {
                match file.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            std::str::from_utf8(&buf).map(str::to_owned).map_err(|_| {
                Error::Config(format!("migration {} is not valid UTF-8", path.display()))
            })
        })
        .collect()
}

/// `<VERSION>` and the rest of a file name (after the first `_`): the version (a positive
/// integer, as sqlx parses it: a leading `+` is allowed), the type and the description
/// (may be empty, as in sqlx).
fn parse_file_name(version: &str, rest: &str) -> Option<(i64, MigrationType, String)> {
    let version: i64 = version.parse().ok()?;
    if version <= 0 {
        return None;
    }
    let migration_type = MigrationType::from_filename(rest);
    let description = rest
        .strip_suffix(migration_type.suffix())?
        .replace('_', " ");
    Some((version, migration_type, description))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest is a marker contract: a source's digest must never change between
    /// releases, or every replica would take the slow path after an upgrade. The expected
    /// value is computed independently: `sha256("1:" + sha384(a) + "\n2:" + sha384(b) + "\n")`.
    #[test]
    fn digest_of_a_fixed_source_is_stable() {
        let dir = std::env::temp_dir().join(format!("schemagate-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1_a.sql"), "CREATE TABLE a (id int);\n").unwrap();
        std::fs::write(dir.join("2_b.sql"), "CREATE TABLE b (id int);\n").unwrap();
        let source = Source::load(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            source.digest(),
            "b28c984894f855b0749c13fd475de77fabeea9d03ac61f5e547c836e6ac779c5"
        );
        assert_eq!(source.version(), "2");
    }

    #[test]
    fn parses_sqlx_file_names() {
        let parse = |name: &str| {
            let (v, rest) = name.split_once('_')?;
            parse_file_name(v, rest)
        };
        let (v, t, d) = parse("20240115093000_create_users.sql").unwrap();
        assert_eq!(
            (v, t, d.as_str()),
            (20240115093000, MigrationType::Simple, "create users")
        );
        assert_eq!(parse("2_x.up.sql").unwrap().1, MigrationType::ReversibleUp);
        assert_eq!(
            parse("2_x.down.sql").unwrap().1,
            MigrationType::ReversibleDown
        );
        // What sqlx accepts: a leading +, an empty description.
        assert_eq!(parse("+1_init.sql").unwrap().0, 1);
        assert_eq!(parse("1_.sql").unwrap().2, "");
        for bad in [
            "v1_x.sql",
            "_x.sql",
            "0_x.sql",
            "-1_x.sql",
            "99999999999999999999_x.sql",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
