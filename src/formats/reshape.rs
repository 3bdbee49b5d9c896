//! Reshape (`migrations/*.toml` or `*.json`): each migration's name (the file's `name`, or
//! its stem), in Reshape's order (file stems compared naturally: `2_x` before `10_x`).
//! Every Reshape migration has both phases: `reshape migration start` is its expand (old and
//! new schema side by side), `reshape migration complete` its contract. Completed ones are
//! listed in `reshape.migrations`; the ones started but not completed in `reshape.data`'s
//! `state` row (`history::reshape_in_progress`).

use std::cmp::Ordering;
use std::path::Path;

use super::{Item, Read, read_file, relative, sha256, unreadable};
use crate::error::Result;
use crate::phase::Phase;

/// Reshape's `lexical_sort::natural_cmp` for plain names: runs of digits compare as numbers.
fn natural(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let nb = std::str::from_utf8(&b[..db])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let o = na.len().cmp(&nb.len()).then(na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                let o = x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase());
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

/// A TOML file's top-level `name = "..."` (before its first table), as Reshape reads it.
fn toml_name(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return None;
        }
        let Some(rest) = line.strip_prefix("name") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        let quoted = value
            .strip_prefix('"')
            .and_then(|v| v.split_once('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.split_once('\'')));
        return quoted.map(|(name, _)| name.to_owned());
    }
    None
}

pub(super) fn read(root: &Path) -> Result<Read> {
    let conventional = root.join("migrations");
    let dir = if conventional.is_dir() {
        conventional
    } else {
        root.to_owned()
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(unreadable(&dir))? {
        let path = entry.map_err(unreadable(&dir))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && matches!(ext, "toml" | "json") {
            files.push(path);
        }
    }
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files.sort_by(|a, b| natural(&stem(a), &stem(b)));
    let mut read = Read::default();
    for path in files {
        let bytes = read_file(&path)?;
        let text = String::from_utf8_lossy(&bytes);
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let id = is_toml
            .then(|| toml_name(&text))
            .flatten()
            .unwrap_or_else(|| stem(&path));
        read.items.push(Item {
            id,
            file: relative(root, &path),
            checksum: sha256(&bytes),
            origin: dir.clone(),
            phase: Phase::Expand,
        });
    }
    read.heads = read
        .items
        .last()
        .map(|i| i.id.clone())
        .into_iter()
        .collect();
    read.paths.push(dir);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order_as_reshape_reads_them() {
        assert_eq!(natural("2_b", "10_a"), Ordering::Less);
        assert_eq!(natural("a", "B"), Ordering::Less);
        assert_eq!(
            toml_name("# c\nname = \"custom\"\n[[actions]]\nname = \"x\"\n"),
            Some("custom".into())
        );
        assert_eq!(toml_name("[[actions]]\nname = \"users\"\n"), None);
    }
}
