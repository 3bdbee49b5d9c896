//! Migrators whose history is a list of versions, each read as the tool itself reads its
//! directories: Rails (`db/migrate/**/<VERSION>_<name>.rb`, and `db/post_migrate/` beside
//! it when present; VERSION is an integer, so `001_setup.rb` is recorded as `1`), dbmate
//! (`db/migrations/<VERSION>*.sql`, one or more directories, VERSION the leading digits)
//! and Diesel (`migrations/<VERSION>_<name>/up.sql`, VERSION written with dashes, such as
//! `2024-01-15-093000`, recorded without them). The head is the newest version in the
//! tool's own order: Rails' integers, dbmate's file names, Diesel's version strings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Format, Item, Read, file_name, first_visit, read_file, sha256, unreadable};
use crate::error::{Error, Result};
use crate::phase::Phase;

/// The migrations directories a `--source` stands for.
fn migrations_dirs(root: &Path, format: Format) -> Vec<PathBuf> {
    let conventional = match format {
        Format::Rails => root.join("db/migrate"),
        Format::Dbmate => root.join("db/migrations"),
        _ => root.join("migrations"),
    };
    let dir = if conventional.is_dir() {
        conventional
    } else {
        root.to_owned()
    };
    let mut dirs = vec![dir.clone()];
    // Mastodon, Discourse and GitLab add `db/post_migrate` to Rails' migration paths (unless
    // SKIP_POST_DEPLOYMENT_MIGRATIONS is set): a release may bring only such a migration.
    if format == Format::Rails
        && dir.file_name().is_some_and(|n| n == "migrate")
        && let Some(db) = dir.parent()
        && db.file_name().is_some_and(|n| n == "db")
        && db.join("post_migrate").is_dir()
    {
        dirs.push(db.join("post_migrate"));
    }
    dirs
}

/// Diesel's version: the name up to the first `_`, dashes removed (as
/// `migrations_internals::version_from_string`).
fn diesel_version(name: &str) -> Option<String> {
    let v = name.split('_').next()?.replace('-', "");
    (!v.is_empty()).then_some(v)
}

/// A version as Rails reads it, from a file name or a `schema_migrations` row: `to_i`, so
/// leading zeros do not count (`001` is `1`).
pub(super) fn rails_version(v: &str) -> String {
    let digits: String = v
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let v = digits.trim_start_matches('0');
    if v.is_empty() { "0".into() } else { v.into() }
}

/// Rails' `MigrationFilenameRegexp`, `\A([0-9]+)_([_a-z0-9]*)\.?([_a-z0-9]*)?\.rb\z`: the
/// version of a file its `[0-9]*_*.rb` glob found, or `None` for a name Rails refuses.
fn rails_file_version(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".rb")?;
    let (version, rest) = stem.split_once('_')?;
    let word = |s: &str| {
        s.bytes()
            .all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let (name, scope) = rest.split_once('.').unwrap_or((rest, ""));
    (!version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && word(name)
        && word(scope))
    .then_some(version)
}

/// Rails' `Dir["#{path}/**/[0-9]*_*.rb"]`: every such file below `dir` (dot directories
/// are not entered, as Ruby's glob does not).
fn rails_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(unreadable(dir))? {
        let entry = entry.map_err(unreadable(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rails_files(&path, out)?;
        } else if name.starts_with(|c: char| c.is_ascii_digit())
            && name.contains('_')
            && name.ends_with(".rb")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Read Rails, dbmate or Diesel directories: each migration's version from its name and a
/// checksum of its contents. Long on purpose: the three layouts side by side in one loop.
pub(super) fn read(roots: &[PathBuf], format: Format) -> Result<Read> {
    let several = roots.len() > 1;
    let mut seen = HashSet::new();
    let mut read = Read::default();
    // dbmate's order (file names across every directory), for its head.
    let mut dbmate_newest: Option<(String, String)> = None;
    for root in roots {
        for dir in migrations_dirs(root, format) {
            if !first_visit(&mut seen, &dir) {
                continue;
            }
            let mut found: Vec<(String, PathBuf, Vec<u8>)> = Vec::new();
            match format {
                Format::Rails => {
                    let mut files = Vec::new();
                    rails_files(&dir, &mut files)?;
                    for path in files {
                        let name = path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let Some(version) = rails_file_version(&name) else {
                            return Err(Error::Config(format!(
                                "illegal name for a rails migration file: {} (Rails refuses \
                                 it too: <VERSION>_<name>.rb, the name in lower-case letters, \
                                 digits and `_`)",
                                path.display()
                            )));
                        };
                        found.push((rails_version(version), path.clone(), read_file(&path)?));
                    }
                }
                Format::Dbmate => {
                    for entry in std::fs::read_dir(&dir).map_err(unreadable(&dir))? {
                        let entry = entry.map_err(unreadable(&dir))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let path = entry.path();
                        // dbmate's `^(\d+).*\.sql$`; any other file is not a migration.
                        let digits: String =
                            name.chars().take_while(char::is_ascii_digit).collect();
                        if path.is_dir() || digits.is_empty() || !name.ends_with(".sql") {
                            continue;
                        }
                        if dbmate_newest.as_ref().is_none_or(|(n, _)| name > *n) {
                            dbmate_newest = Some((name.clone(), digits.clone()));
                        }
                        found.push((digits, path.clone(), read_file(&path)?));
                    }
                }
                _ => {
                    for entry in std::fs::read_dir(&dir).map_err(unreadable(&dir))? {
                        let entry = entry.map_err(unreadable(&dir))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let path = entry.path();
                        if name.starts_with('.') || !path.join("up.sql").is_file() {
                            continue;
                        }
                        let id = diesel_version(&name).ok_or_else(|| {
                            Error::Config(format!(
                                "malformed diesel migration directory {name:?} in {}: \
                                 expected <VERSION>_<name>",
                                dir.display()
                            ))
                        })?;
                        let mut bytes = read_file(&path.join("up.sql"))?;
                        if path.join("down.sql").is_file() {
                            bytes.extend(read_file(&path.join("down.sql"))?);
                        }
                        found.push((id, path, bytes));
                    }
                }
            }
            for (id, path, bytes) in found {
                if let Some(other) = read.items.iter().find(|i: &&Item| i.id == id) {
                    return Err(Error::Config(format!(
                        "duplicate {} migration version {id}: {} and {}",
                        format.name(),
                        other.file,
                        file_name(root, &path, several)
                    )));
                }
                read.items.push(Item {
                    id,
                    file: file_name(root, &path, several),
                    checksum: sha256(&bytes),
                    origin: dir.clone(),
                    // GitLab's convention: post-deployment migrations are the contract.
                    phase: if format == Format::Rails
                        && dir.file_name().is_some_and(|n| n == "post_migrate")
                    {
                        Phase::Contract
                    } else {
                        Phase::Expand
                    },
                });
            }
            read.paths.push(dir);
        }
    }
    // Versions compare as numbers (all digits): by length, then text. The digest follows
    // this order; the head follows the tool's.
    read.items
        .sort_by(|a, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
    let head = match format {
        Format::Dbmate => dbmate_newest.map(|(_, v)| v),
        // Diesel sorts its migrations by version string.
        Format::Diesel => read.items.iter().map(|i| &i.id).max().cloned(),
        _ => read.items.last().map(|i| i.id.clone()),
    };
    read.heads = head.into_iter().collect();
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rails_reads_versions_as_integers() {
        assert_eq!(rails_version("001"), "1");
        assert_eq!(rails_version("20240101000000"), "20240101000000");
        assert_eq!(rails_version("000"), "0");
        assert_eq!(rails_file_version("001_setup.rb"), Some("001"));
        assert_eq!(
            rails_file_version("20240101000000_add_x.scope_a.rb"),
            Some("20240101000000")
        );
        assert_eq!(rails_file_version("1_Bad.rb"), None);
        assert_eq!(rails_file_version("1x_bad.rb"), None);
    }

    #[test]
    fn diesel_versions_drop_dashes() {
        assert_eq!(
            diesel_version("2024-01-15-093000_create").as_deref(),
            Some("20240115093000")
        );
        assert_eq!(
            diesel_version("00000000000000_diesel_initial_setup").as_deref(),
            Some("00000000000000")
        );
        assert_eq!(diesel_version("_x"), None);
    }
}
