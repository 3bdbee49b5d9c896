//! The settings of a `sqlx.toml` that change what the migration history holds, as
//! sqlx-cli reads them: `[migrate] table-name` (where applied migrations are recorded) and
//! `[migrate] ignored-chars` (characters left out of each migration's checksum, such as
//! `"\r"` for files checked out with CRLF line endings). Other settings are sqlx-cli's own
//! and ignored here.
//!
//! Which file: sqlx reads `$CARGO_MANIFEST_DIR/sqlx.toml`, the one at the crate root. So
//! from the source, each directory upward up to the crate root (the nearest directory that
//! holds a `Cargo.toml`), never past it: the nearest `sqlx.toml` wins, and one above the
//! crate root belongs to something else. Without a `Cargo.toml` above (an image that copied
//! the migrations and the `sqlx.toml`, not the crate), the source and its parent.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    migrate: Migrate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Migrate {
    pub table_name: Option<String>,
    #[serde(default)]
    pub ignored_chars: Vec<char>,
}

/// Far more than any `sqlx.toml` holds: a larger file is refused, not read.
const MAX_SIZE: u64 = 1 << 20;

/// The `[migrate]` settings for a source directory, and the file they came from.
pub fn load(dir: &Path) -> Result<Option<(PathBuf, Migrate)>> {
    for path in candidates(dir) {
        let text = match crate::files::read_small(&path, MAX_SIZE) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let file: File = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("invalid {}: {}", path.display(), e.message())))?;
        return Ok(Some((path, file.migrate)));
    }
    Ok(None)
}

/// Where a `sqlx.toml` for the source `dir` may be, nearest first (see the module's doc).
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let dir = absolute(dir);
    let ancestors: Vec<&Path> = dir.ancestors().collect();
    let take = ancestors
        .iter()
        .position(|a| a.join("Cargo.toml").is_file())
        .map_or(2, |root| root + 1);
    ancestors
        .iter()
        .take(take)
        .map(|a| a.join("sqlx.toml"))
        .collect()
}

/// `dir` as an absolute path with `.` and `..` resolved as written: the directories above
/// the source as the operator named it, whatever links lead there.
fn absolute(dir: &Path) -> PathBuf {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut out = PathBuf::new();
    for part in dir.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            part => out.push(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn reads_the_migrate_table() {
        let file: super::File = toml::from_str(
            "[common]\ndatabase-url-var = \"X\"\n[migrate]\ntable-name = \"__durable_sqlx_migrations\"\nignored-chars = [\"\\r\", \" \"]\n",
        )
        .unwrap();
        assert_eq!(
            file.migrate.table_name.as_deref(),
            Some("__durable_sqlx_migrations")
        );
        assert_eq!(file.migrate.ignored_chars, vec!['\r', ' ']);
    }

    /// A directory tree of its own under the temporary directory, holding `files`
    /// (relative paths, empty); removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(files: &[&str]) -> Tree {
            use std::hash::{BuildHasher, RandomState};
            let n = RandomState::new().hash_one(std::time::Instant::now());
            let root = std::env::temp_dir().join(format!("schemagate-sqlx-toml-{n:x}"));
            for f in files {
                let path = root.join(f);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, "").unwrap();
            }
            Tree(root)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn looked_for_from_the_source_up_to_the_crate_root_and_no_further() {
        let t = Tree::new(&["ws/Cargo.toml", "ws/app/Cargo.toml", "ws/app/a/b/m/1_a.sql"]);
        let want: Vec<PathBuf> = ["ws/app/a/b/m", "ws/app/a/b", "ws/app/a", "ws/app"]
            .iter()
            .map(|d| t.0.join(d).join("sqlx.toml"))
            .collect();
        assert_eq!(super::candidates(&t.0.join("ws/app/a/b/m")), want);
        // Named with `.` and `..`: the directories as written.
        assert_eq!(super::candidates(&t.0.join("ws/app/a/./b/../b/m")), want);
    }

    #[test]
    fn without_a_crate_root_the_source_and_its_parent() {
        let t = Tree::new(&["img/migrations/1_a.sql"]);
        assert_eq!(
            super::candidates(&t.0.join("img/migrations")),
            [
                t.0.join("img/migrations/sqlx.toml"),
                t.0.join("img/sqlx.toml")
            ]
        );
        assert_eq!(super::candidates(Path::new("/")), [Path::new("/sqlx.toml")]);
    }
}
