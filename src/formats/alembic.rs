//! Alembic: the revision files of a script directory, read as Python (never run). Each
//! file's module-level `revision`, `down_revision` (a string, a tuple for a merge, or None)
//! and `depends_on`. The heads are the revisions no other revision names as its
//! `down_revision`, as `alembic heads` prints them (merges and branch labels included).
//!
//! Where the revisions are, as Alembic finds them from `alembic.ini`'s `[alembic]` section:
//! the `version_locations`, else `script_location`'s `versions/`. `%(here)s` is the ini
//! file's directory (absolute, once). A relative location is relative to the directory
//! Alembic runs in, which schemagate cannot see: it tries its own working directory, then
//! the ini's directory and each of its parents (mlflow's `script_location =
//! mlflow/store/db_migrations` is relative to the repository root). When none of these
//! exists, a `versions/` beside the ini is used (Flask-Migrate's, Superset's).
//!
//! Subdirectories of a versions directory are always read: Keystone and Neutron keep
//! revisions in `versions/<release>/{expand,contract}/` and hand Alembic those directories
//! from code, where no ini says so.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::python::{Scope, Value, assigned};
use super::{Item, Read, first_visit, read_file, relative, sha256, unreadable};
use crate::error::{Error, Result};
use crate::phase::Phase;

/// The `[section]` of an ini file as Python's configparser reads it: `key = value` or
/// `key: value`, keys in lower case, indented lines continuing a value, `#` and `;` lines
/// comments.
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut inside = false;
    let mut last: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            inside = name.trim() == section;
            last = None;
            continue;
        }
        if !inside || trimmed.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t'])
            && let Some(key) = &last
        {
            let value = out.entry(key.clone()).or_default();
            value.push('\n');
            value.push_str(trimmed);
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            continue;
        };
        let key = line[..at].trim().to_ascii_lowercase();
        out.insert(key.clone(), line[at + 1..].trim().to_owned());
        last = Some(key);
    }
    out
}

/// configparser's interpolation: `%(here)s` is the ini's directory, `%(key)s` another key of
/// the section, `%%` a `%`.
fn interpolate(value: &str, section: &HashMap<String, String>, here: &Path, depth: u8) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(r) = rest.strip_prefix("%%") {
            out.push('%');
            rest = r;
        } else if let Some((name, r)) = rest.strip_prefix("%(").and_then(|r| r.split_once(")s")) {
            let name = name.to_ascii_lowercase();
            if name == "here" {
                out.push_str(&here.display().to_string());
            } else if let Some(v) = section.get(&name).filter(|_| depth < 10) {
                out.push_str(&interpolate(v, section, here, depth + 1));
            }
            rest = r;
        } else {
            out.push('%');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The directory a location names, tried where Alembic could have been run (see the module
/// comment); every path tried is added to `tried`.
fn locate(value: &str, ini_dir: &Path, tried: &mut Vec<PathBuf>) -> Option<PathBuf> {
    let value = value.trim();
    let path = Path::new(value);
    let relative: PathBuf = if path.is_absolute() {
        return if path.is_dir() {
            Some(path.to_owned())
        } else {
            tried.push(path.to_owned());
            None
        };
    } else if let Some((package, rest)) = value.split_once(':') {
        // A package resource, `myapp.db:migrations`: the package's directory, from wherever
        // the project's code is.
        PathBuf::from(package.replace('.', "/")).join(rest.replace(':', "/"))
    } else {
        path.to_owned()
    };
    let cwd = std::env::current_dir().ok();
    let candidates = cwd
        .iter()
        .map(|c| c.join(&relative))
        .chain(ini_dir.ancestors().map(|a| a.join(&relative)));
    for c in candidates {
        if c.is_dir() {
            return Some(c);
        }
        if tried.len() < 3 {
            tried.push(c);
        }
    }
    None
}

/// `version_locations` split as Alembic splits it: on `path_separator` (or the older
/// `version_path_separator`), else on spaces and commas.
fn split_locations(value: &str, separator: Option<&str>) -> Vec<String> {
    let parts: Vec<&str> = match separator {
        Some("space") => value.split(' ').collect(),
        Some("newline") => value.split('\n').collect(),
        Some("os" | ":") => value.split(':').collect(),
        Some(";") => value.split(';').collect(),
        _ => value
            .split(',')
            .flat_map(|p| p.split([' ', '\n']))
            .collect(),
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The directories holding the revisions.
fn version_locations(dir: &Path) -> Result<Vec<PathBuf>> {
    let ini = dir.join("alembic.ini");
    let Ok(text) = crate::files::read_text(&ini) else {
        // A script directory, or its `versions/`, given directly.
        let versions = dir.join("versions");
        return Ok(vec![if versions.is_dir() {
            versions
        } else {
            dir.to_owned()
        }]);
    };
    let here = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let section = ini_section(&text, "alembic");
    let get = |key: &str| {
        section
            .get(key)
            .map(|v| interpolate(v, &section, &here, 0))
            .filter(|v| !v.trim().is_empty())
    };
    let mut tried = Vec::new();
    if let Some(locations) = get("version_locations") {
        let separator = get("path_separator").or_else(|| get("version_path_separator"));
        // Alembic skips a location that does not exist.
        let found: Vec<PathBuf> = split_locations(&locations, separator.as_deref())
            .iter()
            .filter_map(|l| locate(l, &here, &mut tried))
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
    } else if let Some(script) = get("script_location")
        && let Some(script) = locate(&script, &here, &mut tried)
    {
        let versions = script.join("versions");
        if versions.is_dir() {
            return Ok(vec![versions]);
        }
        tried.push(versions);
    }
    let versions = dir.join("versions");
    if versions.is_dir() {
        if !tried.is_empty() {
            tracing::debug!(
                "{}: {} not found; reading {}",
                ini.display(),
                tried
                    .iter()
                    .map(|t| t.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                versions.display()
            );
        }
        return Ok(vec![versions]);
    }
    Err(Error::Config(format!(
        "cannot find the alembic revisions {} names: tried {}{}, and {}; run schemagate \
         from the directory alembic runs in, or give --source the script directory",
        ini.display(),
        tried
            .iter()
            .map(|t| t.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if tried.len() >= 3 {
            " (and the parents of the ini's directory)"
        } else {
            ""
        },
        versions.display()
    )))
}

/// A directory of `.py` files, one of which assigns `down_revision`.
pub(super) fn looks_like(dir: &Path, top: &[(String, bool)]) -> bool {
    top.iter()
        .filter(|(n, d)| !d && n.ends_with(".py"))
        .take(3)
        .any(|(n, _)| {
            crate::files::read_text(&dir.join(n))
                .is_ok_and(|t| assigned(&t, "down_revision", Scope::Module).is_some())
        })
}

/// The `.py` files below `dir` (not `__init__.py`, caches or hidden files).
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

/// The branch label whose revisions are contract (`docs/src/phases.md`).
pub const CONTRACT_LABEL: &str = "contract";

/// Whether `rev` is on the labelled branch: it or a revision below it through
/// `down_revision` (not `depends_on`, which Alembic's labels do not follow) is labelled.
fn on_branch(
    rev: &str,
    labelled: &HashSet<String>,
    downs_of: &HashMap<String, Vec<String>>,
) -> bool {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack = vec![rev];
    while let Some(r) = stack.pop() {
        if labelled.contains(r) {
            return true;
        }
        if seen.insert(r) {
            stack.extend(downs_of.get(r).into_iter().flatten().map(String::as_str));
        }
    }
    false
}

pub(super) fn read(dir: &Path) -> Result<Read> {
    let locations = version_locations(dir)?;
    let here = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut seen = HashSet::new();
    let mut read = Read::default();
    let mut downs: BTreeSet<String> = BTreeSet::new();
    // The revisions labelled `contract`, and each revision's `down_revision`: a branch
    // label belongs to the revision and every revision above it.
    let mut labelled: HashSet<String> = HashSet::new();
    let mut downs_of: HashMap<String, Vec<String>> = HashMap::new();
    for versions in locations {
        if !first_visit(&mut seen, &versions) {
            continue;
        }
        let mut files = Vec::new();
        py_files(&versions, &mut files)?;
        for path in files {
            let bytes = read_file(&path)?;
            let text = String::from_utf8_lossy(&bytes);
            let Some(Value::Str(revision)) = assigned(&text, "revision", Scope::Module) else {
                // Not a revision file (a helper module beside them).
                continue;
            };
            let strings = |name| {
                assigned(&text, name, Scope::Module)
                    .map(|v| v.strings())
                    .unwrap_or_default()
            };
            let down = strings("down_revision");
            if strings("branch_labels").iter().any(|l| l == CONTRACT_LABEL) {
                labelled.insert(revision.clone());
            }
            downs_of.insert(revision.clone(), down.clone());
            let depends = strings("depends_on");
            downs.extend(down.iter().cloned());
            let mut ps = down;
            ps.extend(depends);
            if read.parents.insert(revision.clone(), ps).is_some() {
                return Err(Error::Config(format!(
                    "duplicate alembic revision {revision:?} in {}",
                    versions.display()
                )));
            }
            let base = if path.is_absolute() { &here } else { dir };
            read.items.push(Item {
                id: revision,
                file: relative(base, &path),
                checksum: sha256(&bytes),
                origin: versions.clone(),
                phase: Phase::Expand,
            });
        }
        read.paths.push(versions);
    }
    read.items.sort_by(|a, b| a.id.cmp(&b.id));
    for i in &mut read.items {
        if on_branch(&i.id, &labelled, &downs_of) {
            i.phase = Phase::Contract;
        }
    }
    for i in &read.items {
        for p in &read.parents[&i.id] {
            if !read.parents.contains_key(p) {
                return Err(Error::Config(format!(
                    "alembic revision {} ({}) names {p:?} as its parent, which is not in {}",
                    i.id,
                    i.file,
                    read.paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    read.heads = read
        .items
        .iter()
        .filter(|i| !downs.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_alembic_section_of_an_ini() {
        let text = "[alembic]\n# script_location = wrong\nscript_location = %(here)s/migrations\n\
                    version_locations = %(base)s/a\n  %(here)s/b\nbase: /x\nfile_template = %%(rev)s\n\
                    [other]\nscript_location = no\n";
        let s = ini_section(text, "alembic");
        let here = Path::new("/proj");
        let get = |k: &str| interpolate(&s[k], &s, here, 0);
        assert_eq!(get("script_location"), "/proj/migrations");
        assert_eq!(get("version_locations"), "/x/a\n/proj/b");
        assert_eq!(get("file_template"), "%(rev)s");
        assert_eq!(
            split_locations(&get("version_locations"), None),
            ["/x/a", "/proj/b"]
        );
        assert_eq!(split_locations("a:b", Some("os")), ["a", "b"]);
        assert_eq!(split_locations("a, b c", None), ["a", "b", "c"]);
    }
}
