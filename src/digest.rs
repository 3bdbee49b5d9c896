//! The build-time digest: `schemagate digest --source DIR` reads and hashes every migration
//! once, when the image is built, and writes what the no-op path needs into
//! `DIR/.schemagate-digest`. `migrate --source` then answers "already applied" without
//! opening a migration: it lists the directory and checks each file against the digest
//! file instead (the listing runs on a blocking thread while the connection is made).
//!
//! What keeps it honest: the directory must hold exactly the `.sql` files the digest file
//! names, each of the size it records, and none modified after the digest file was written.
//! Anything else (a new, missing, resized or later-modified migration) is "stale": the run
//! reads and hashes every file as it would without a digest, and says so. The digest value
//! itself is never trusted for anything but the fast path's comparison with a marker: a
//! marker only ever records a digest computed from the files' contents, and a run that goes
//! past the fast path computes it again and warns when the digest file disagrees.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
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

/// The digest file's summary when it still describes `dir`; `None` when there is no
/// digest file, or it is stale (logged, with the reason).
pub fn trusted(dir: &Path) -> Option<Summary> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            return None;
        }
    };
    match check(dir, &path, &text) {
        Ok(summary) => Some(summary),
        Err(why) => {
            tracing::warn!(
                "ignoring {}: {why}; reading every migration instead. Run `schemagate \
                 digest --source {}` again",
                path.display(),
                dir.display()
            );
            None
        }
    }
}

/// Check the digest file `text` (at `path`) against the directory: `Err` says why it does
/// not describe it. This is the work every replica's start pays per migration, so it is
/// kept to one `fstatat` and a binary search per file: no path is built, nothing hashed.
fn check(dir: &Path, path: &Path, text: &str) -> std::result::Result<Summary, String> {
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| e.to_string())?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("its first line is not {MAGIC:?}"));
    }
    let mut digest = None;
    let mut recorded: Vec<(&str, u64)> = Vec::new();
    for line in lines.filter(|l| !l.starts_with('#') && !l.is_empty()) {
        if let Some(d) = line.strip_prefix("digest ") {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("malformed digest {d:?}"));
            }
            digest = Some(d);
            continue;
        }
        let (size, name) = line
            .split_once(' ')
            .and_then(|(s, n)| Some((s.parse::<u64>().ok()?, n)))
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        recorded.push((name, size));
    }
    let digest = digest.ok_or("it records no digest")?;
    // Written sorted: then this costs one pass.
    recorded.sort_unstable();
    let mut seen = 0;
    let mut newest: Option<i64> = None;
    let mut count = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".sql") {
            continue;
        }
        let kind = entry.file_type().map_err(|e| format!("{name}: {e}"))?;
        let meta = if kind.is_file() {
            entry.metadata()
        } else if kind.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => Ok(m),
                _ => continue,
            }
        } else {
            continue;
        }
        .map_err(|e| format!("{name}: {e}"))?;
        let size = recorded
            .binary_search_by(|(n, _)| (*n).cmp(&name))
            .map(|i| recorded[i].1)
            .map_err(|_| format!("{name} is not listed in it"))?;
        if meta.len() != size {
            return Err(format!(
                "{name} is {} bytes, it recorded {size}",
                meta.len()
            ));
        }
        if meta.modified().map_err(|e| e.to_string())? > written {
            return Err(format!("{name} was modified after it was written"));
        }
        seen += 1;
        // Version and count come from the checked names, not from the file's say-so. Every
        // name listed parsed when the file was written (`Source::load`), so the version
        // prefix and the `.down.sql` suffix are all that is left to read.
        let version = name
            .split_once('_')
            .filter(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(v, _)| v.parse::<i64>().ok())
            .ok_or_else(|| format!("{name} is not a migration name"))?;
        if !name.ends_with(".down.sql") {
            count += 1;
            newest = newest.max(Some(version));
        }
    }
    if seen != recorded.len() {
        return Err(format!(
            "it lists {} migration file(s), the directory holds {seen}",
            recorded.len()
        ));
    }
    Ok(Summary {
        version: newest.ok_or("it lists no up migration")?,
        count,
        digest: digest.to_owned(),
    })
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

/// `schemagate digest`: read the source, write its digest file, say what it holds.
pub fn run(dir: &Path) -> Result<crate::cmd::Outcome> {
    let source = Source::load(dir)?;
    let path = write(&source)?;
    let digest = source.digest();
    outln!("{digest}  {}", path.display());
    tracing::info!(
        "wrote {}: schema version {}, {} migration(s), digest {digest}",
        path.display(),
        source.version(),
        source.ups.len()
    );
    Ok(crate::cmd::Outcome {
        version: Some(source.version()),
        applied: None,
        message: format!("wrote {}", path.display()),
        exec: None,
    })
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
        let s = trusted(&d.0).expect("trusted");
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
        assert_eq!(trusted(&d.0), None);
        write(&Source::load(&d.0).unwrap()).unwrap();
        assert!(trusted(&d.0).is_some());
        // A new migration.
        std::fs::write(d.0.join("2_b.sql"), "SELECT 1;").unwrap();
        assert_eq!(trusted(&d.0), None);
        write(&Source::load(&d.0).unwrap()).unwrap();
        // A missing one.
        std::fs::remove_file(d.0.join("2_b.sql")).unwrap();
        assert_eq!(trusted(&d.0), None);
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
        assert_eq!(trusted(&d.0), None);
    }

    #[test]
    fn a_malformed_digest_file_is_ignored() {
        let d = dir_with(&[("1_a.sql", "CREATE TABLE a (id int);")]);
        write(&Source::load(&d.0).unwrap()).unwrap();
        let text = std::fs::read_to_string(d.0.join(FILE)).unwrap();
        std::fs::write(d.0.join(FILE), text.replace("digest ", "digest zz")).unwrap();
        assert_eq!(trusted(&d.0), None);
        std::fs::write(d.0.join(FILE), "something else\n").unwrap();
        assert_eq!(trusted(&d.0), None);
    }
}
