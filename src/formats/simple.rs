//! Migrators whose history is a list of versions: Rails (`db/migrate/<VERSION>_<name>.rb`),
//! dbmate (`db/migrations/<VERSION>_<name>.sql`) and Diesel (`migrations/<VERSION>_<name>/
//! up.sql`, VERSION written with dashes, such as `2024-01-15-093000`, recorded without
//! them). The head is the newest version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Format, Item, Read, read_file, relative, sha256, unreadable, versioned};
use crate::error::{Error, Result};

fn migrations_dir(dir: &Path, format: Format) -> PathBuf {
    let conventional = match format {
        Format::Rails => dir.join("db/migrate"),
        Format::Dbmate => dir.join("db/migrations"),
        _ => dir.join("migrations"),
    };
    if conventional.is_dir() {
        conventional
    } else {
        dir.to_owned()
    }
}

/// Diesel's version: the name up to the first `_`, dashes removed.
fn diesel_version(name: &str) -> Option<String> {
    let (v, _) = name.split_once('_')?;
    let v = v.replace('-', "");
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then_some(v)
}

/// Read a Rails, dbmate or Diesel directory: each migration's version from its name and a
/// checksum of its contents. Long on purpose: Diesel's directories and the others' files,
/// side by side in one loop.
pub(super) fn read(dir: &Path, format: Format) -> Result<Read> {
    let migrations = migrations_dir(dir, format);
    let mut items = Vec::new();
    for entry in std::fs::read_dir(&migrations).map_err(unreadable(&migrations))? {
        let entry = entry.map_err(unreadable(&migrations))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let (id, bytes) = match format {
            Format::Diesel => {
                if !path.join("up.sql").is_file() {
                    continue;
                }
                let id = diesel_version(&name).ok_or_else(|| {
                    Error::Config(format!(
                        "malformed diesel migration directory {name:?} in {}: expected \
                         <VERSION>_<name>, VERSION digits and dashes",
                        migrations.display()
                    ))
                })?;
                let mut bytes = read_file(&path.join("up.sql"))?;
                if path.join("down.sql").is_file() {
                    bytes.extend(read_file(&path.join("down.sql"))?);
                }
                (id, bytes)
            }
            _ => {
                let ext = if format == Format::Rails {
                    ".rb"
                } else {
                    ".sql"
                };
                if path.is_dir() || !name.ends_with(ext) || name.starts_with('.') {
                    continue;
                }
                if !versioned(&name, ext) {
                    return Err(Error::Config(format!(
                        "malformed {} migration file name {name:?} in {}: expected \
                         <VERSION>_<name>{ext}",
                        format.name(),
                        migrations.display()
                    )));
                }
                let id = name
                    .split_once('_')
                    .map(|(v, _)| v.to_owned())
                    .unwrap_or_default();
                (id, read_file(&path)?)
            }
        };
        if items.iter().any(|i: &Item| i.id == id) {
            return Err(Error::Config(format!(
                "duplicate {} migration version {id} in {}",
                format.name(),
                migrations.display()
            )));
        }
        items.push(Item {
            id,
            file: relative(dir, &path),
            checksum: sha256(&bytes),
        });
    }
    // Versions compare as numbers (all digits): by length, then text.
    items.sort_by(|a, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
    let heads = items.last().map(|i| vec![i.id.clone()]).unwrap_or_default();
    Ok((items, HashMap::new(), heads))
}
