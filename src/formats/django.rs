//! Django: every app's `migrations/` package under each source directory (a project root,
//! or one app's `migrations/`), read as Python (never run). The app label is the directory
//! holding `migrations/` (Django's default; an `AppConfig.label` that differs is not read).
//! A migration is `app.name`, as `django_migrations` records it. Each migration's
//! `dependencies` and `replaces` are read from the `Migration` class body (a squash's
//! template comment naming "dependencies" is a comment). The heads are Django's leaves as
//! its loader sees the files alone: squashed migrations stand in for the ones they
//! replace, and an app's leaf is the migration no other of that app depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::python::{Scope, Value, assigned};
use super::{Item, Read, file_name, first_visit, read_file, sha256, unreadable};
use crate::error::{Error, Result};
use crate::phase::Phase;

/// Directories not searched for apps: installed packages and build output.
const SKIP: &[&str] = &[
    "node_modules",
    "site-packages",
    "target",
    "venv",
    "__pycache__",
];

pub(super) fn looks_like(dir: &Path, top: &[(String, bool)]) -> bool {
    let is_migrations = dir.file_name().is_some_and(|n| n == "migrations")
        && top.iter().any(|(n, _)| n == "__init__.py");
    is_migrations
        || top
            .iter()
            .any(|(n, d)| *d && dir.join(n).join("migrations/__init__.py").is_file())
}

fn apps(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if dir.file_name().is_some_and(|n| n == "migrations") && dir.join("__init__.py").is_file() {
        out.push(dir.to_owned());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(unreadable(dir))?
        .collect::<std::io::Result<_>>()
        .map_err(unreadable(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || SKIP.contains(&name.as_str()) || name.ends_with("venv") {
            continue;
        }
        if entry.path().is_dir() {
            apps(&entry.path(), depth - 1, out)?;
        }
    }
    Ok(())
}

/// One migration file, as its class body says.
struct Parsed {
    /// `app.name` of the migrations it depends on.
    dependencies: Vec<String>,
    /// `app.name` of the migrations it replaces (a squash).
    replaces: Vec<String>,
    /// `schemagate_phase = "contract"` in the class body (`None`: not given).
    phase: Option<String>,
}

fn parse(text: &str) -> Parsed {
    let ids = |name| {
        assigned(text, name, Scope::Class)
            .map(|v| {
                v.pairs()
                    .into_iter()
                    .map(|(app, name)| format!("{app}.{name}"))
                    .collect()
            })
            .unwrap_or_default()
    };
    Parsed {
        dependencies: ids("dependencies"),
        replaces: ids("replaces"),
        phase: match assigned(text, "schemagate_phase", Scope::Class) {
            Some(Value::Str(p)) => Some(p),
            Some(_) => Some(String::new()),
            None => None,
        },
    }
}

pub(super) fn read(roots: &[PathBuf]) -> Result<Read> {
    let several = roots.len() > 1;
    let mut seen = HashSet::new();
    let mut read = Read::default();
    let mut dependencies: HashMap<String, Vec<String>> = HashMap::new();
    // Which directory each app label came from: two apps of one label are refused, as
    // Django refuses them.
    let mut labels: BTreeMap<String, PathBuf> = BTreeMap::new();
    for root in roots {
        let mut dirs = Vec::new();
        apps(root, 4, &mut dirs)?;
        for migrations in dirs {
            if !first_visit(&mut seen, &migrations) {
                continue;
            }
            let app = migrations
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(other) = labels.insert(app.clone(), migrations.clone()) {
                return Err(Error::Config(format!(
                    "two django apps labelled {app:?}: {} and {} (Django refuses duplicate \
                     labels too)",
                    other.display(),
                    migrations.display()
                )));
            }
            let mut entries: Vec<_> = std::fs::read_dir(&migrations)
                .map_err(unreadable(&migrations))?
                .collect::<std::io::Result<_>>()
                .map_err(unreadable(&migrations))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = file.strip_suffix(".py") else {
                    continue;
                };
                // Django's loader skips these module names.
                if name.starts_with('_') || name.starts_with('~') || name.starts_with('.') {
                    continue;
                }
                let bytes = read_file(&entry.path())?;
                let parsed = parse(&String::from_utf8_lossy(&bytes));
                let id = format!("{app}.{name}");
                let phase = match parsed.phase.as_deref() {
                    None | Some("expand") => Phase::Expand,
                    Some("contract") => Phase::Contract,
                    Some(other) => {
                        return Err(Error::Config(format!(
                            "migration {}: unknown schemagate_phase {other:?}: expected \
                             \"contract\" or \"expand\"",
                            entry.path().display()
                        )));
                    }
                };
                if !parsed.replaces.is_empty() {
                    read.replaces.insert(id.clone(), parsed.replaces);
                }
                dependencies.insert(id.clone(), parsed.dependencies.clone());
                read.parents.insert(id.clone(), parsed.dependencies);
                read.items.push(Item {
                    id,
                    file: file_name(root, &entry.path(), several),
                    checksum: sha256(&bytes),
                    origin: migrations.clone(),
                    phase,
                });
            }
            read.paths.push(migrations);
        }
    }
    read.items.sort_by(|a, b| a.id.cmp(&b.id));
    read.apps = labels.into_keys().collect();
    read.heads = leaves(&read.items, &read.replaces, &dependencies);
    Ok(read)
}

/// Each app's leaf nodes, `app:name`, as Django's loader builds the graph without a
/// database: every squash stands in for the migrations it replaces (a dependency on a
/// replaced migration is one on the squash), and a leaf is a migration no other migration
/// of its app depends on.
fn leaves(
    items: &[Item],
    replaces: &BTreeMap<String, Vec<String>>,
    dependencies: &HashMap<String, Vec<String>>,
) -> Vec<String> {
    let replaced_by: HashMap<&str, &str> = replaces
        .iter()
        .flat_map(|(squash, rs)| rs.iter().map(move |r| (r.as_str(), squash.as_str())))
        .collect();
    let nodes: BTreeSet<&str> = items
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !replaced_by.contains_key(id))
        .collect();
    let mut depended: HashSet<&str> = HashSet::new();
    for node in &nodes {
        // A squash also inherits what the migrations it replaces depended on, but only
        // its own app's dependents decide whether it is a leaf.
        for dep in dependencies.get(*node).into_iter().flatten() {
            let target = replaced_by.get(dep.as_str()).copied().unwrap_or(dep);
            if target != *node && app_of(target) == app_of(node) {
                depended.insert(target);
            }
        }
    }
    nodes
        .into_iter()
        .filter(|n| !depended.contains(n))
        .map(|n| n.replacen('.', ":", 1))
        .collect()
}

fn app_of(id: &str) -> &str {
    id.split_once('.').map_or(id, |(app, _)| app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> Item {
        Item {
            id: id.into(),
            file: String::new(),
            checksum: String::new(),
            origin: PathBuf::new(),
            phase: crate::phase::Phase::Expand,
        }
    }

    #[test]
    fn a_squash_stands_in_for_what_it_replaces() {
        let items: Vec<Item> = [
            "shop.0001_initial",
            "shop.0001_squashed_0002_b",
            "shop.0002_b",
            "shop.0003_c",
        ]
        .iter()
        .map(|i| item(i))
        .collect();
        let replaces = BTreeMap::from([(
            "shop.0001_squashed_0002_b".to_owned(),
            vec!["shop.0001_initial".to_owned(), "shop.0002_b".to_owned()],
        )]);
        let deps = HashMap::from([
            (
                "shop.0002_b".to_owned(),
                vec!["shop.0001_initial".to_owned()],
            ),
            ("shop.0003_c".to_owned(), vec!["shop.0002_b".to_owned()]),
            (
                "shop.0001_squashed_0002_b".to_owned(),
                vec!["auth.0012_x".to_owned()],
            ),
        ]);
        assert_eq!(leaves(&items, &replaces, &deps), ["shop:0003_c"]);
    }
}
