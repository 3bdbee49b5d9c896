//! Alembic: the revision files of a script directory, read as Python text (never run).
//! Each file's module-level `revision`, `down_revision` (a string, a tuple for a merge, or
//! None) and `depends_on`. The heads are the revisions no other revision names as its
//! `down_revision`, as `alembic heads` prints them (merges and branch labels included).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{Item, Read, read_file, relative, sha256, unreadable};
use crate::error::{Error, Result};

/// The versions directory: from `alembic.ini`'s `script_location`, a script directory's
/// `versions/`, or the directory itself.
fn versions_dir(dir: &Path) -> PathBuf {
    let ini = dir.join("alembic.ini");
    if let Ok(text) = crate::files::read_text(&ini) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=')
                && k.trim() == "script_location"
            {
                let v = v.trim().replace("%(here)s", &dir.display().to_string());
                let script = if Path::new(&v).is_absolute() {
                    PathBuf::from(v)
                } else {
                    dir.join(v)
                };
                return script.join("versions");
            }
        }
    }
    if dir.join("versions").is_dir() {
        return dir.join("versions");
    }
    dir.to_owned()
}

/// A directory of `.py` files, one of which assigns `down_revision`.
pub(super) fn looks_like(dir: &Path, top: &[(String, bool)]) -> bool {
    top.iter()
        .filter(|(n, d)| !d && n.ends_with(".py"))
        .take(3)
        .any(|(n, _)| {
            crate::files::read_text(&dir.join(n))
                .is_ok_and(|t| assignment(&t, "down_revision").is_some())
        })
}

fn py_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(unreadable(dir))? {
        let entry = entry.map_err(unreadable(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || name.starts_with("__") {
            continue;
        }
        if path.is_dir() {
            py_files(&path, out)?;
        } else if name.ends_with(".py") {
            out.push(path);
        }
    }
    Ok(())
}

pub(super) fn read(dir: &Path) -> Result<Read> {
    let versions = versions_dir(dir);
    let mut files = Vec::new();
    py_files(&versions, &mut files)?;
    let mut items = Vec::new();
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    let mut downs: BTreeSet<String> = BTreeSet::new();
    for path in files {
        let bytes = read_file(&path)?;
        let text = String::from_utf8_lossy(&bytes);
        let Some(revision) = assignment(&text, "revision").and_then(|v| v.into_iter().next())
        else {
            // Not a revision file (a helper module beside them).
            continue;
        };
        let down = assignment(&text, "down_revision").unwrap_or_default();
        let depends = assignment(&text, "depends_on").unwrap_or_default();
        downs.extend(down.iter().cloned());
        let mut ps = down;
        ps.extend(depends);
        if parents.insert(revision.clone(), ps).is_some() {
            return Err(Error::Config(format!(
                "duplicate alembic revision {revision:?} in {}",
                versions.display()
            )));
        }
        items.push(Item {
            id: revision,
            file: relative(dir, &path),
            checksum: sha256(&bytes),
        });
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    for i in &items {
        for p in &parents[&i.id] {
            if !parents.contains_key(p) {
                return Err(Error::Config(format!(
                    "alembic revision {} ({}) names {p:?} as its parent, which is not in {}",
                    i.id,
                    i.file,
                    versions.display()
                )));
            }
        }
    }
    let heads = items
        .iter()
        .filter(|i| !downs.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    Ok((items, parents, heads))
}

/// The string literals assigned to a module-level `name` (`name = "x"`, `name: str = "x"`,
/// a tuple or list over several lines, or `None` for none). `None` when not assigned.
fn assignment(text: &str, name: &str) -> Option<Vec<String>> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = rest.trim_start();
        let rhs = if let Some(r) = rest.strip_prefix('=') {
            r
        } else if let Some(annotated) = rest.strip_prefix(':') {
            match annotated.split_once('=') {
                Some((_, r)) => r,
                None => continue,
            }
        } else {
            continue;
        };
        if rhs.starts_with('=') {
            continue;
        }
        // Gather the value until its brackets close.
        let mut value = rhs.to_owned();
        while depth(&value) > 0 {
            match lines.next() {
                Some(l) => {
                    value.push('\n');
                    value.push_str(l);
                }
                None => break,
            }
        }
        return Some(strings(&value));
    }
    None
}

fn depth(s: &str) -> i32 {
    let mut d = 0;
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => d += 1,
            (None, ')' | ']') => d -= 1,
            (None, '#') => break,
            _ => {}
        }
    }
    d
}

fn strings(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                // A comment runs to the end of its line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' => {
                let mut v = String::new();
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    v.push(d);
                }
                out.push(v);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_alembic_assignments() {
        let text = "\"\"\"doc\nRevision ID: x\n\"\"\"\nrevision: str = 'c3'\n\
                    down_revision: Union[str, Sequence[str], None] = (\n    'a1',  # left\n    \"b2\",\n)\n\
                    branch_labels = None\ndepends_on = None\n";
        assert_eq!(assignment(text, "revision"), Some(vec!["c3".to_owned()]));
        assert_eq!(
            assignment(text, "down_revision"),
            Some(vec!["a1".to_owned(), "b2".to_owned()])
        );
        assert_eq!(assignment(text, "depends_on"), Some(vec![]));
        assert_eq!(assignment(text, "missing"), None);
    }
}
