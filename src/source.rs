//! A directory of SQL migrations in sqlx's layout, read strictly: a `.sql` file whose name
//! does not parse is an error naming it, not a file silently skipped. Checksums are sqlx's
//! own (SHA-384 of the file), so a database that sqlx-cli managed keeps its history.
//!
//! A source holds what a plan needs of each migration (its version, description, checksum
//! and file), never its SQL: loading hashes each file as it streams through one small
//! buffer, and a migration's SQL is read again when it is applied (`Source::migration`), one
//! at a time, and checked against the checksum the plan was made with. A 200 MB migration
//! costs its size in memory while it is applied, not the whole source's, and never before.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha384};
use sqlx::migrate::{AppliedMigration, Migration, MigrationType};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::error::{Drift, Error, Result};
use crate::files::{self, Refused};
use crate::phase::{self, Phase};
use crate::settings::MigrationsTable;

#[derive(Debug)]
pub struct Source {
    pub dir: PathBuf,
    /// Up (or simple) migrations, in version order.
    pub ups: Vec<Entry>,
    /// Down migrations by version.
    pub downs: BTreeMap<i64, Entry>,
    /// sqlx-cli's `--ignore-missing`: an applied migration this source does not have is not
    /// drift (two migration tracks sharing one history).
    pub ignore_missing: bool,
    /// `sqlx.toml`'s `ignored-chars`, left out of every checksum.
    ignored_chars: Vec<char>,
}

/// One migration file of a source: everything but its SQL (`Source::sql`,
/// `Source::migration` read that when it is needed).
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: i64,
    pub description: String,
    pub migration_type: MigrationType,
    /// sqlx's checksum: SHA-384 of the file (less `sqlx.toml`'s ignored characters).
    pub checksum: Vec<u8>,
    /// The file starts with `-- no-transaction` (sqlx's rule: its very first bytes).
    pub no_tx: bool,
    /// Expand unless its opening comments or its folder (`contract/`) say contract.
    pub phase: Phase,
    pub path: PathBuf,
}

impl Source {
    pub fn load(dir: &Path) -> Result<Source> {
        // Names first (the directory listing says which entries are files: no stat each),
        // then each file hashed as it streams by, one after the other through one buffer:
        // this is on the path every replica pays, and no file is held whatever its size.
        let files = list(dir)?;
        let mut scanner = Scanner::new();
        let mut ups: BTreeMap<i64, Entry> = BTreeMap::new();
        let mut downs = BTreeMap::new();
        for file in files {
            let (version, migration_type) = (file.version, file.migration_type);
            let file_name = file.file_name.clone();
            let (checksum, no_tx) = scanner.scan(&file.path, &[])?;
            let phase = crate::phase::of_file(&file.path, &scanner.head, file.contract)?;
            let migration = file.into_entry(checksum, no_tx, phase);
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
            ignored_chars: Vec::new(),
        };
        source.apply_sqlx_toml(&mut scanner)?;
        Ok(source)
    }

    /// The `ignored-chars` of the source's `sqlx.toml`, left out of every checksum as
    /// sqlx-cli does (each file hashed again without them: a source with such settings is
    /// the rare one). (Its `table-name` is the config's: `MigrationsTable::resolve`.)
    fn apply_sqlx_toml(&mut self, scanner: &mut Scanner) -> Result<()> {
        let Some((_, settings)) = crate::sqlx_toml::load(&self.dir)? else {
            return Ok(());
        };
        if !settings.ignored_chars.is_empty() {
            let ignored = &settings.ignored_chars;
            for m in self.ups.iter_mut().chain(self.downs.values_mut()) {
                m.checksum = scanner.scan(&m.path, ignored)?.0;
            }
            self.ignored_chars = settings.ignored_chars;
        }
        Ok(())
    }

    /// A migration's SQL, read whole from its file (refused as `load` refuses a file).
    /// Not checked against the checksum: for reading it (`check`, the transaction-control
    /// check), not for applying it.
    pub fn sql(&self, m: &Entry) -> Result<String> {
        let bytes = files::read_all(&m.path).map_err(|e| unreadable(&m.path, &e))?;
        if bytes.contains(&0) {
            let at = bytes.iter().position(|&b| b == 0).unwrap_or_default();
            return Err(nul_byte(&m.path, at as u64));
        }
        if bytes.starts_with(BOM) {
            return Err(bom(&m.path));
        }
        String::from_utf8(bytes).map_err(|e| not_utf8(&m.path, e.utf8_error().valid_up_to() as u64))
    }

    /// A migration as sqlx applies it, its SQL read now and checked against the checksum
    /// the plan was made with: a file changed since is refused, never applied under the
    /// old file's checksum.
    pub fn migration(&self, m: &Entry) -> Result<Migration> {
        let sql = self.sql(m)?;
        let mut hasher = Sha384::new();
        hash_text(&mut hasher, &sql, &self.ignored_chars);
        let checksum = hasher.finalize();
        if checksum[..] != m.checksum[..] {
            return Err(Error::Config(format!(
                "migration {} changed while schemagate was running: checksum {} when the \
                 source was read, {} now. Run again with the files left alone",
                m.path.display(),
                short(&m.checksum),
                short(&checksum)
            )));
        }
        Ok(Migration {
            version: m.version,
            description: Cow::Owned(m.description.clone()),
            migration_type: m.migration_type,
            sql: AssertSqlSafe(sql).into_sql_str(),
            checksum: Cow::Owned(m.checksum.clone()),
            no_tx: m.no_tx,
        })
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
        let by_version: HashMap<i64, &Entry> = self.ups.iter().map(|m| (m.version, m)).collect();
        let mut c = Comparison::default();
        for a in applied {
            match by_version.get(&a.version) {
                // Another track's migration (sqlx-cli's --ignore-missing), older or newer.
                None if self.ignore_missing => {}
                None if a.version > newest => c.ahead.push(a.version),
                None => c.missing.push(a.version),
                Some(m) if m.checksum[..] != a.checksum[..] => c.modified.push(a.version),
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
            return Err(Error::Drift(Drift::Dirty {
                version: v,
                table: table.to_string(),
            }));
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
                return Err(Error::Drift(Drift::Missing {
                    version: a.version,
                    dir: self.dir.clone(),
                }));
            };
            return Err(Error::Drift(Drift::Modified {
                version: a.version,
                description: m.description.clone(),
                applied: short(&a.checksum),
                on_disk: short(&m.checksum),
            }));
        }
        if !ahead.is_empty()
            && let Some(m) = pending.first()
        {
            return Err(Error::Drift(Drift::Skipped {
                version: m.version,
                description: m.description.clone(),
                ahead: ahead.clone(),
            }));
        }
        Ok(Plan { pending, ahead })
    }

    /// Whether every expand migration here is among `applied` with the same checksum
    /// (`wait --phase expand`): `Err` names the first one that is not.
    pub fn expand_applied(
        &self,
        applied: &[AppliedMigration],
    ) -> std::result::Result<(), ExpandPending> {
        for m in self.ups.iter().filter(|m| m.phase == Phase::Expand) {
            let (version, description) = (m.version, m.description.clone());
            match applied.iter().find(|a| a.version == m.version) {
                None => {
                    return Err(ExpandPending::NotApplied {
                        version,
                        description,
                    });
                }
                Some(a) if a.checksum[..] != m.checksum[..] => {
                    return Err(ExpandPending::OtherChecksum {
                        version,
                        description,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub fn digest(&self) -> String {
        self.digest_upto(None)
    }
}

/// The first expand migration of a source not applied as this build has it
/// (`Source::expand_applied`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandPending {
    NotApplied {
        version: i64,
        description: String,
    },
    /// Applied, with another checksum than this build's.
    OtherChecksum {
        version: i64,
        description: String,
    },
}

impl std::fmt::Display for ExpandPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpandPending::NotApplied {
                version,
                description,
            } => write!(
                f,
                "expand migration {version} ({description}) is not applied yet"
            ),
            ExpandPending::OtherChecksum {
                version,
                description,
            } => write!(
                f,
                "expand migration {version} ({description}) is applied with another checksum \
                 than this build's"
            ),
        }
    }
}

impl std::error::Error for ExpandPending {}

/// Every difference between what is applied and a source (`Source::compare`).
#[derive(Debug, Default)]
pub struct Comparison<'s> {
    /// In the source, not applied: in order.
    pub pending: Vec<&'s Entry>,
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
    pub pending: Vec<&'s Entry>,
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
    /// In the source's `contract/` folder.
    contract: bool,
}

impl MigrationFile {
    fn into_entry(self, checksum: Vec<u8>, no_tx: bool, phase: Phase) -> Entry {
        Entry {
            version: self.version,
            description: self.description,
            migration_type: self.migration_type,
            checksum,
            no_tx,
            phase,
            path: self.path,
        }
    }
}

/// The migration files of `dir`, by sqlx-cli's rules: a regular file (or a symlink to one)
/// whose name has an `_` and ends in `.sql`; dot files and anything else are skipped. A
/// `.sql` entry that is neither a file nor a directory (a FIFO, a device, a socket, or a
/// symlink to one) is refused: it can only be a mistake, and reading it would block or
/// never end. The files of a `contract/` folder are migrations too, in the same order of
/// versions: contract ones (`phase.rs`).
fn list(dir: &Path) -> Result<Vec<MigrationFile>> {
    let mut files = list_in(dir, false)?;
    let contract = dir.join(phase::CONTRACT_DIR);
    if contract.is_dir() {
        files.extend(list_in(&contract, true)?);
    }
    Ok(files)
}

fn list_in(dir: &Path, contract: bool) -> Result<Vec<MigrationFile>> {
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
        if file_name.starts_with('.') || !file_name.ends_with(".sql") {
            continue;
        }
        let kind = file_type(&entry).map_err(unreadable)?;
        if let Some(what) = files::special(kind) {
            return Err(self::unreadable(&entry.path(), &Refused::NotRegular(what)));
        }
        if !kind.is_file() {
            continue;
        }
        let Some((version_text, rest)) = file_name.split_once('_') else {
            tracing::warn!(
                "skipping {} in {}: not named <VERSION>_<description>.sql",
                file_name,
                dir.display()
            );
            continue;
        };
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
            contract,
        });
    }
    Ok(files)
}

/// What a directory entry is, from the listing alone unless it is a symlink (then what it
/// points to). As sqlx-cli does, a symlink whose target is missing is an error, not a
/// migration silently left out.
fn file_type(entry: &std::fs::DirEntry) -> std::io::Result<std::fs::FileType> {
    let file_type = entry.file_type()?;
    if !file_type.is_symlink() {
        return Ok(file_type);
    }
    std::fs::metadata(entry.path())
        .map(|m| m.file_type())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: {e} (a dangling symlink?)", entry.path().display()),
            )
        })
}

const BOM: &[u8] = b"\xef\xbb\xbf";
const NO_TRANSACTION: &[u8] = b"-- no-transaction";

/// Reads migration files one after another through one reused buffer, hashing each as it
/// streams by: memory stays at the buffer's size, whatever the files' sizes. (Threads were
/// measured: no faster here, the cost is the kernel's open/read/close.)
struct Scanner {
    buf: Vec<u8>,
    /// The first bytes of the file last scanned (up to `phase::HEAD`): its phase line.
    head: Vec<u8>,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            buf: vec![0; 64 * 1024],
            head: Vec::with_capacity(phase::HEAD),
        }
    }

    /// sqlx's checksum of the file at `path` (`ignored` characters left out), and whether
    /// it starts with `-- no-transaction`. Refused when it is not UTF-8, holds a NUL byte
    /// or starts with a byte order mark: what a database would choke on part-way.
    fn scan(&mut self, path: &Path, ignored: &[char]) -> Result<(Vec<u8>, bool)> {
        let (mut file, _) = files::open(path).map_err(|e| unreadable(path, &e))?;
        let mut hasher = Sha384::new();
        self.head.clear();
        // The bytes of a character cut by the last read, kept at the buffer's start; and
        // the file offset of the buffer's first byte.
        let mut carried = 0;
        let mut offset = 0u64;
        loop {
            let n = match file.read(&mut self.buf[carried..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unreadable(path, &Refused::Io(e))),
            };
            if n == 0 {
                if carried > 0 {
                    return Err(not_utf8(path, offset));
                }
                break;
            }
            let end = carried + n;
            let read = &self.buf[carried..end];
            let take = read.len().min(phase::HEAD - self.head.len());
            self.head.extend_from_slice(&read[..take]);
            // `contains` is memchr: the byte-by-byte search runs only when there is one.
            if read.contains(&0) {
                let at = read.iter().position(|&b| b == 0).unwrap_or_default();
                return Err(nul_byte(path, offset + (carried + at) as u64));
            }
            let valid = match std::str::from_utf8(&self.buf[..end]) {
                Ok(_) => end,
                // A character cut at the end of the read: the next read completes it.
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(e) => return Err(not_utf8(path, offset + e.valid_up_to() as u64)),
            };
            if ignored.is_empty() {
                hasher.update(&self.buf[..valid]);
            } else {
                let text = std::str::from_utf8(&self.buf[..valid]).expect("validated above");
                hash_text(&mut hasher, text, ignored);
            }
            self.buf.copy_within(valid..end, 0);
            carried = end - valid;
            offset += valid as u64;
        }
        if self.head.starts_with(BOM) {
            return Err(bom(path));
        }
        // sqlx's rule: the file's very first bytes.
        let no_tx = self.head.starts_with(NO_TRANSACTION);
        Ok((hasher.finalize().to_vec(), no_tx))
    }
}

/// Feed `text` to `hasher`, less the `ignored` characters (sqlx.toml's `ignored-chars`),
/// without copying it.
fn hash_text(hasher: &mut Sha384, text: &str, ignored: &[char]) {
    if ignored.is_empty() {
        hasher.update(text.as_bytes());
        return;
    }
    let mut kept_from = 0;
    for (i, c) in text.char_indices() {
        if ignored.contains(&c) {
            hasher.update(&text.as_bytes()[kept_from..i]);
            kept_from = i + c.len_utf8();
        }
    }
    hasher.update(&text.as_bytes()[kept_from..]);
}

fn unreadable(path: &Path, e: &Refused) -> Error {
    Error::Config(format!("cannot read migration {}: {e}", path.display()))
}

fn nul_byte(path: &Path, at: u64) -> Error {
    Error::Config(format!(
        "migration {} has a NUL byte at byte offset {at}: SQL text cannot carry one (the \
         database would refuse the statement, or cut it there, after the statements before \
         it ran). Remove it",
        path.display()
    ))
}

fn not_utf8(path: &Path, at: u64) -> Error {
    Error::Config(format!(
        "migration {} is not valid UTF-8 (at byte offset {at})",
        path.display()
    ))
}

fn bom(path: &Path) -> Error {
    // Invisible in an editor; PostgreSQL would report a syntax error at it.
    Error::Config(format!(
        "migration {} starts with a UTF-8 byte order mark (BOM): save it without one",
        path.display()
    ))
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

    /// The checksum of a file hashed as it streams (its characters cut by the reads'
    /// ends, sqlx.toml's ignored characters left out) is sqlx's checksum of its text, and
    /// the same when the SQL is read whole to be applied.
    #[test]
    fn a_streamed_checksum_is_sqlxs_whatever_the_reads_cut() {
        let dir = std::env::temp_dir().join(format!("schemagate-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Multi-byte characters across every 64 KiB boundary, CRLF line ends.
        let line = "INSERT INTO t VALUES ('é€😀 x');\r\n";
        let sql: String = std::iter::repeat_n(line, 9_000).collect();
        std::fs::write(dir.join("1_a.sql"), &sql).unwrap();
        std::fs::write(dir.join("2_b.sql"), "-- no-transaction\nSELECT 1;").unwrap();
        let source = Source::load(&dir).unwrap();
        let m = &source.ups[0];
        assert_eq!(m.checksum[..], sha2::Sha384::digest(sql.as_bytes())[..]);
        assert!(!m.no_tx && source.ups[1].no_tx);
        assert_eq!(source.migration(m).unwrap().sql.as_str(), sql);
        std::fs::write(
            dir.join("sqlx.toml"),
            "[migrate]\nignored-chars = [\"\\r\", \"€\"]\n",
        )
        .unwrap();
        let source = Source::load(&dir).unwrap();
        let kept: String = sql.chars().filter(|c| !matches!(c, '\r' | '€')).collect();
        let m = &source.ups[0];
        assert_eq!(m.checksum[..], sha2::Sha384::digest(kept.as_bytes())[..]);
        assert_eq!(source.migration(m).unwrap().checksum[..], m.checksum[..]);
        // Changed after it was read: refused, not applied under the old checksum.
        std::fs::write(dir.join("1_a.sql"), "SELECT 2;").unwrap();
        let e = source.migration(m).unwrap_err().to_string();
        assert!(e.contains("changed while schemagate was running"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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

    /// A source of three migrations in a directory of its own (`tag` names it).
    fn three(tag: &str) -> (Source, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("schemagate-plan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (v, name) in [(1, "a"), (2, "b"), (3, "c")] {
            std::fs::write(
                dir.join(format!("{v}_{name}.sql")),
                format!("SELECT {v};\n"),
            )
            .unwrap();
        }
        let source = Source::load(&dir).unwrap();
        (source, dir)
    }

    fn applied(source: &Source, versions: &[i64]) -> Vec<AppliedMigration> {
        versions
            .iter()
            .map(|v| AppliedMigration {
                version: *v,
                checksum: match source.ups.iter().find(|m| m.version == *v) {
                    Some(m) => m.checksum.clone().into(),
                    None => vec![0xab; 48].into(),
                },
            })
            .collect()
    }

    fn drift(r: Result<Plan<'_>>) -> Drift {
        match r {
            Err(Error::Drift(d)) => d,
            Err(e) => panic!("expected drift, got {e:#}"),
            Ok(_) => panic!("expected drift, got a plan"),
        }
    }

    #[test]
    fn plan_lists_pending_migrations_and_a_database_ahead() {
        let (source, dir) = three("pending");
        let table = MigrationsTable::resolve(None, None).unwrap();
        let plan = source.plan(&applied(&source, &[1]), None, &table).unwrap();
        assert_eq!(
            plan.pending.iter().map(|m| m.version).collect::<Vec<_>>(),
            [2, 3]
        );
        // Applied migrations newer than the source's newest: ahead, not drift.
        let plan = source
            .plan(&applied(&source, &[1, 2, 3, 4]), None, &table)
            .unwrap();
        assert!(plan.pending.is_empty());
        assert_eq!(plan.ahead, [4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plan_reports_each_kind_of_drift() {
        let (source, dir) = three("drift");
        let table = MigrationsTable::resolve(None, None).unwrap();
        let d = drift(source.plan(&applied(&source, &[1]), Some(2), &table));
        assert_eq!(
            d,
            Drift::Dirty {
                version: 2,
                table: "_sqlx_migrations".into()
            }
        );
        let mut changed = applied(&source, &[1, 2]);
        changed[1].checksum = vec![0xcd; 48].into();
        match drift(source.plan(&changed, None, &table)) {
            Drift::Modified {
                version,
                applied,
                on_disk,
                ..
            } => {
                assert_eq!((version, applied.as_str()), (2, "cdcdcdcdcdcd"));
                assert_eq!(on_disk, short(&source.ups[1].checksum));
            }
            d => panic!("expected a modified migration, got {d:?}"),
        }
        // Version 0 is not in the source and older than its newest: missing, not ahead.
        let d = drift(source.plan(&applied(&source, &[0, 1]), None, &table));
        assert_eq!(
            d.to_string(),
            format!(
                "migration 0 was applied to the database but is missing from {}",
                dir.display()
            )
        );
        // 2 pending while 4, which the source lacks, is applied: skipped.
        let d = drift(source.plan(&applied(&source, &[1, 3, 4]), None, &table));
        assert_eq!(
            d,
            Drift::Skipped {
                version: 2,
                description: "b".into(),
                ahead: vec![4]
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
