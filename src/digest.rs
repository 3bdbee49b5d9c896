//! The build-time digest: `schemagate digest --source DIR` hashes every migration once, when
//! the image is built, into `DIR/.schemagate-digest`; `migrate --source` and `wait --source`
//! then answer "already applied" from the file's claim, believed only once the directory
//! is checked against it (names, sizes, modification times; `Claim::check`). What that check
//! sees and what it cannot: `docs/src/how-it-works.md#the-digest-file`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::files::{self, Refused};
use crate::source::Source;

/// The file `schemagate digest` writes beside the migrations (a dot-file: never taken for
/// a migration).
pub const FILE: &str = ".schemagate-digest";

const MAGIC: &str = "schemagate-digest 1";

/// What the digest file says about the source, once checked against the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The newest up migration's version (from the checked names).
    pub version: i64,
    /// How many up migrations there are (from the checked names).
    pub count: usize,
    /// `Source::digest` as computed when the file was written.
    pub digest: String,
}

/// Whether a digest file may stand for the migrations in `dir`. A `sqlx.toml`'s
/// `table-name` does not keep it out: the table the marker's history cross-check reads is
/// resolved before (`MigrationsTable::resolve`). Its `ignored-chars` go into every checksum,
/// and so into the digest: a `sqlx.toml` modified after the digest file was written makes
/// the file stale, as a modified migration does (logged, with the reason). As for the
/// migrations, what only a content check could see is not seen: a `sqlx.toml` put in
/// place with an older time, or removed.
pub fn may_stand_for(dir: &Path) -> Result<bool> {
    // The digest file lists the directory's own files, not a `contract/` folder's: with
    // one, every migration is read.
    if dir.join(crate::phase::CONTRACT_DIR).is_dir() {
        return Ok(false);
    }
    let Some((toml, _)) = crate::sqlx_toml::load(dir)? else {
        return Ok(true);
    };
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    // Without a digest file there is nothing to refuse (`read` finds none).
    if let (Ok(changed), Ok(written)) = (modified(&toml), modified(&dir.join(FILE)))
        && changed > written
    {
        let why = format!("{} was modified after it was written", toml.display());
        ignore(dir, &why);
        return Ok(false);
    }
    Ok(true)
}

/// Write `DIR/.schemagate-digest` for a fully read source; returns its path.
pub fn write(source: &Source) -> Result<PathBuf> {
    let mut files = listing(&source.dir)
        .map_err(|e| unreadable(&source.dir, e))?
        .into_iter()
        .map(|(name, path)| {
            std::fs::metadata(&path)
                .map(|m| (name, m.len()))
                .map_err(|e| unreadable(&source.dir, e))
        })
        .collect::<Result<Vec<_>>>()?;
    files.sort();
    let mut text = format!(
        "{MAGIC}\n\
         # Written by `schemagate digest --source DIR` from the migrations' contents, so that\n\
         # `migrate --source` can answer without reading them. Checked against the names and\n\
         # sizes below, and void once a migration is modified after this file was written:\n\
         # write it again after changing the directory (best: as an image build step).\n\
         digest {}\n",
        source.digest()
    );
    for (name, size) in &files {
        let _ = writeln!(text, "{size} {name}");
    }
    let path = source.dir.join(FILE);
    // Written beside, then renamed: a reader never sees half a file.
    let partial = source.dir.join(format!("{FILE}.partial"));
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The digest file as read, before the directory is checked against it: what it claims.
/// Only `check` makes the claim worth anything.
#[derive(Debug)]
pub struct Claim {
    /// What the file says, with the version and count derived from the names it lists.
    pub summary: Summary,
    /// When the file was written (its modification time).
    written: SystemTime,
    text: String,
    /// The files it lists: (name start, name end) in `text`, and the size.
    files: Vec<(u32, u32, u64)>,
    /// `files` by name: an open-addressing table of index + 1 (0: empty), its length a
    /// power of two at least twice theirs.
    index: Vec<u32>,
}

/// The most a digest file may hold: a line per migration file, so a few MiB for the
/// largest sources. Anything larger was not written by `schemagate digest`, and is not
/// read past this.
const MAX_SIZE: u64 = 16 << 20;

/// Read and parse `DIR/.schemagate-digest`: `None` when there is none, or it is unreadable,
/// too large or malformed (logged, with the reason). Nothing is checked against the
/// directory yet. `Err` (a usage error) when it is not a regular file: a FIFO would block
/// the read, a device never end it.
pub fn read(dir: &Path) -> Result<Option<Claim>> {
    let path = dir.join(FILE);
    let (file, meta) = match files::open(&path) {
        Ok(opened) => opened,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e @ Refused::NotRegular(_)) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}. Remove it, or write it with `schemagate digest --source \
                 {}`",
                path.display(),
                dir.display()
            )));
        }
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            return Ok(None);
        }
    };
    let read = meta.modified().and_then(|written| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SIZE + 1), &mut text)?;
        Ok((written, text))
    });
    let (written, text) = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            return Ok(None);
        }
    };
    if text.len() as u64 > MAX_SIZE {
        ignore(dir, format!("it is larger than {MAX_SIZE} bytes"));
        return Ok(None);
    }
    match parse(text, written) {
        Ok(claim) => Ok(Some(claim)),
        Err(why) => {
            ignore(dir, &why);
            Ok(None)
        }
    }
}

/// The digest file's summary when it still describes `dir`; `None` when there is no
/// digest file, or it is stale (logged, with the reason). `Err` as `read`.
pub fn trusted(dir: &Path) -> Result<Option<Summary>> {
    let Some(claim) = read(dir)? else {
        return Ok(None);
    };
    match claim.check(dir) {
        Ok(()) => Ok(Some(claim.summary)),
        Err(why) => {
            ignore(dir, &why);
            Ok(None)
        }
    }
}

/// Say that the digest file is ignored, and why.
pub fn ignore(dir: &Path, why: impl std::fmt::Display) {
    tracing::warn!(
        "ignoring {}: {why}; reading every migration instead. Run `schemagate digest \
         --source {}` again",
        dir.join(FILE).display(),
        dir.display()
    );
}

crate::error::reason! {
    /// Why the digest file does not describe its directory (it is then ignored).
    pub struct Stale;
}

/// Parse the digest file's `text`. The version and the count of up migrations are derived
/// from the names it lists (`check` then proves the directory holds exactly those), so the
/// file's claim is complete before any directory entry is read. Byte by byte: this runs on
/// every start, once per migration. Long on purpose: one pass over the bytes, each kind of
/// line handled where it is met, then the name index built.
fn parse(text: String, written: SystemTime) -> std::result::Result<Claim, Stale> {
    let bytes = text.as_bytes();
    if text.len() >= u32::MAX as usize {
        return Err(Stale("it is too large".into()));
    }
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut digest = None;
    let mut files = Vec::with_capacity(bytes.len() / 16);
    let mut newest: Option<i64> = None;
    let mut count = 0;
    let mut at = 0;
    let mut first = true;
    while at < bytes.len() {
        let start = at;
        while at < bytes.len() && bytes[at] != b'\n' {
            at += 1;
        }
        let mut end = at;
        at += 1;
        // Tolerate a checkout that turned the file's line ends into CRLF.
        if end > start && bytes[end - 1] == b'\r' {
            end -= 1;
        }
        let line = &bytes[start..end];
        if std::mem::take(&mut first) {
            if line != MAGIC.as_bytes() {
                return Err(Stale(format!("its first line is not {MAGIC:?}")));
            }
            continue;
        }
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        if let Some(d) = line.strip_prefix(b"digest ") {
            if d.len() != 64 || !d.iter().all(u8::is_ascii_hexdigit) {
                return Err(Stale(format!("malformed digest {:?}", lossy(d))));
            }
            digest = Some(lossy(d));
            continue;
        }
        // `<size> <name>`: the size's digits, one space, the name.
        let Some((size, name_at)) = number(line).filter(|&(_, i)| line.get(i) == Some(&b' '))
        else {
            return Err(Stale(format!("malformed line {:?}", lossy(line))));
        };
        let name = &line[name_at + 1..];
        // Every name listed parsed when the file was written (`Source::load`): the version
        // prefix and the `.down.sql` suffix are all that is left to read.
        let version = number(name)
            .filter(|&(_, i)| name.get(i) == Some(&b'_'))
            .and_then(|(v, _)| i64::try_from(v).ok())
            .ok_or_else(|| Stale(format!("{} is not a migration name", lossy(name))))?;
        if !name.ends_with(b".down.sql") {
            count += 1;
            newest = newest.max(Some(version));
        }
        let name_start = start + name_at + 1;
        files.push((name_start as u32, end as u32, size));
    }
    let digest = digest.ok_or_else(|| Stale("it records no digest".into()))?;
    let mut claim = Claim {
        summary: Summary {
            version: newest.ok_or_else(|| Stale("it lists no up migration".into()))?,
            count,
            digest,
        },
        written,
        index: vec![0; (files.len() * 2).next_power_of_two()],
        text,
        files,
    };
    for i in 0..claim.files.len() {
        let name = claim.name(i);
        match claim.slot(name) {
            Ok(_) => return Err(Stale(format!("it lists {} twice", lossy(name)))),
            Err(slot) => claim.index[slot] = i as u32 + 1,
        }
    }
    Ok(claim)
}

/// The decimal number at the start of `b`, and where its digits end; `None` without digits
/// or when it does not fit.
fn number(b: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(b[i] - b'0'))?;
        i += 1;
    }
    (i > 0).then_some((n, i))
}

impl Claim {
    fn name(&self, i: usize) -> &[u8] {
        let (start, end, _) = self.files[i];
        &self.text.as_bytes()[start as usize..end as usize]
    }

    /// Where `name` sits in `index`: `Ok(slot)` when listed, else `Err` with the empty slot
    /// it would take. FNV-1a, then linear probing.
    fn slot(&self, name: &[u8]) -> std::result::Result<usize, usize> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in name {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mask = self.index.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            match self.index[slot] {
                0 => return Err(slot),
                i if self.name(i as usize - 1) == name => return Ok(slot),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Check the directory against the claim: `Err` says why the file does not describe it.
    /// This is the work every replica's start pays per migration: a directory entry, one
    /// `statx` and a hash lookup per file; no path is built, nothing hashed but the name.
    pub fn check(&self, dir: &Path) -> std::result::Result<(), Stale> {
        use std::os::unix::ffi::OsStrExt;
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| Stale(e.to_string()))? {
            let entry = entry.map_err(|e| Stale(e.to_string()))?;
            let name = entry.file_name();
            let name = name.as_bytes();
            if name.first() == Some(&b'.') || !name.ends_with(b".sql") {
                continue;
            }
            let shown = || String::from_utf8_lossy(name).into_owned();
            let kind = entry
                .file_type()
                .map_err(|e| Stale(format!("{}: {e}", shown())))?;
            // A `.sql` entry that is not a file (nor a directory) is one `Source::load`
            // refuses: the file cannot stand for the directory then.
            let meta = if kind.is_file() {
                entry.metadata()
            } else if kind.is_symlink() {
                match std::fs::metadata(entry.path()) {
                    Ok(m) if m.is_file() => Ok(m),
                    Ok(m) if m.is_dir() => continue,
                    Ok(_) => return Err(Stale(format!("{} is not a regular file", shown()))),
                    Err(e) => return Err(Stale(format!("{}: {e} (a dangling symlink?)", shown()))),
                }
            } else if let Some(what) = files::special(kind) {
                return Err(Stale(format!("{} is {what}, not a regular file", shown())));
            } else {
                continue;
            }
            .map_err(|e| Stale(format!("{}: {e}", shown())))?;
            let size = match self.slot(name) {
                Ok(slot) => self.files[self.index[slot] as usize - 1].2,
                Err(_) => return Err(Stale(format!("{} is not listed in it", shown()))),
            };
            if meta.len() != size {
                return Err(Stale(format!(
                    "{} is {} bytes, it recorded {size}",
                    shown(),
                    meta.len()
                )));
            }
            if meta.modified().map_err(|e| Stale(e.to_string()))? > self.written {
                return Err(Stale(format!(
                    "{} was modified after it was written",
                    shown()
                )));
            }
            seen += 1;
        }
        if seen != self.files.len() {
            return Err(Stale(format!(
                "it lists {} migration file(s), the directory holds {seen}",
                self.files.len()
            )));
        }
        Ok(())
    }
}

/// The names and paths of the files `Source::load` reads: `.sql`, not hidden, regular
/// files (or links to one).
fn listing(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".sql") {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

fn unreadable(dir: &Path, e: std::io::Error) -> Error {
    Error::Config(format!(
        "cannot read migration source {}: {e}",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, sql) in files {
            std::fs::write(d.0.join(name), sql).unwrap();
        }
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::hash::{BuildHasher, RandomState};
                let n = RandomState::new().hash_one(std::time::Instant::now());
                let p = std::env::temp_dir().join(format!("schemagate-digest-{n:x}"));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_fresh_digest_file_is_trusted_and_agrees_with_the_source() {
        let d = dir_with(&[
            ("1_a.sql", "CREATE TABLE a (id int);"),
            ("2_b.up.sql", "CREATE TABLE b (id int);"),
            ("2_b.down.sql", "DROP TABLE b;"),
        ]);
        let source = Source::load(&d.0).unwrap();
        write(&source).unwrap();
        let s = trusted(&d.0).unwrap().expect("trusted");
        assert_eq!(
            s,
            Summary {
                version: 2,
                count: 2,
                digest: source.digest()
            }
        );
        // The digest file is not a migration.
        assert_eq!(Source::load(&d.0).unwrap().ups.len(), 2);
    }

    #[test]
    fn a_changed_directory_voids_the_digest_file() {
        let d = dir_with(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        write(&Source::load(&d.0).unwrap()).unwrap();
        // Resized.
        std::fs::write(d.0.join("1_a.sql"), "CREATE TABLE a (id bigint);").unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
        write(&Source::load(&d.0).unwrap()).unwrap();
        assert!(trusted(&d.0).unwrap().is_some());
        // A new migration.
        std::fs::write(d.0.join("2_b.sql"), "SELECT 1;").unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
        write(&Source::load(&d.0).unwrap()).unwrap();
        // A missing one.
        std::fs::remove_file(d.0.join("2_b.sql")).unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
    }

    #[test]
    fn a_same_size_edit_after_the_digest_voids_it() {
        let d = dir_with(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        write(&Source::load(&d.0).unwrap()).unwrap();
        let written = std::fs::metadata(d.0.join(FILE))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(d.0.join("1_a.sql"), "CREATE TABLE b (id int);").unwrap();
        let later = written + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(d.0.join("1_a.sql"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
    }

    #[test]
    fn the_claim_is_complete_before_the_directory_is_read() {
        let d = dir_with(&[
            ("1_a.sql", "CREATE TABLE a (id int);"),
            ("3_c.up.sql", "CREATE TABLE c (id int);"),
            ("3_c.down.sql", "DROP TABLE c;"),
        ]);
        let source = Source::load(&d.0).unwrap();
        write(&source).unwrap();
        let claim = read(&d.0).unwrap().expect("read");
        assert_eq!(
            claim.summary,
            Summary {
                version: 3,
                count: 2,
                digest: source.digest()
            }
        );
        // Renamed after the file was written: the claim stands, the check does not.
        std::fs::rename(d.0.join("1_a.sql"), d.0.join("2_a.sql")).unwrap();
        assert_eq!(
            claim.check(&d.0),
            Err(Stale("2_a.sql is not listed in it".into()))
        );
        assert_eq!(trusted(&d.0).unwrap(), None);
    }

    #[test]
    fn the_listing_order_and_line_ends_do_not_matter_but_a_name_twice_does() {
        let d = dir_with(&[
            ("1_a.sql", "CREATE TABLE a (id int);"),
            ("2_b.sql", "CREATE TABLE b (id int);"),
        ]);
        write(&Source::load(&d.0).unwrap()).unwrap();
        let text = std::fs::read_to_string(d.0.join(FILE)).unwrap();
        let (head, files) = text.split_at(text.find("\n24 1_a.sql").unwrap() + 1);
        let swapped: String = files.lines().rev().map(|l| format!("{l}\n")).collect();
        std::fs::write(d.0.join(FILE), format!("{head}{swapped}")).unwrap();
        assert!(trusted(&d.0).unwrap().is_some());
        std::fs::write(d.0.join(FILE), text.replace('\n', "\r\n")).unwrap();
        assert!(trusted(&d.0).unwrap().is_some());
        std::fs::write(d.0.join(FILE), format!("{text}24 1_a.sql\n")).unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
        let claim = parse(format!("{text}24 1_a.sql\n"), SystemTime::now());
        assert_eq!(claim.unwrap_err().0, "it lists 1_a.sql twice");
    }

    #[test]
    fn a_malformed_digest_file_is_ignored() {
        let d = dir_with(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        write(&Source::load(&d.0).unwrap()).unwrap();
        let text = std::fs::read_to_string(d.0.join(FILE)).unwrap();
        std::fs::write(d.0.join(FILE), text.replace("digest ", "digest zz")).unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
        std::fs::write(d.0.join(FILE), "something else\n").unwrap();
        assert_eq!(trusted(&d.0).unwrap(), None);
    }
}
