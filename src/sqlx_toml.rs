//! The settings of a `sqlx.toml` that change what the migration history holds, as
//! sqlx-cli reads them: `[migrate] table-name` (where applied migrations are recorded) and
//! `[migrate] ignored-chars` (characters left out of each migration's checksum, such as
//! `"\r"` for files checked out with CRLF line endings). The file is looked for beside the
//! source and in its parent (sqlx-cli's crate root, whose `migrations/` is the source).
//! Other settings are sqlx-cli's own and ignored here.

use std::path::{Path, PathBuf};

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
    let candidates = [
        Some(dir.join("sqlx.toml")),
        dir.parent().map(|p| p.join("sqlx.toml")),
    ];
    for path in candidates.into_iter().flatten() {
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

#[cfg(test)]
mod tests {
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
}
