//! Django: every app's `migrations/` package under the source directory (a project root,
//! or one app's `migrations/`), read as Python text (never run). The app label is the
//! directory holding `migrations/` (Django's default; an `AppConfig.label` that differs is
//! not read). A migration is `app.name`, as `django_migrations` records it; an app's leaf is
//! the migration no other migration of that app names in its `dependencies`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{Item, Read, read_file, relative, sha256, unreadable};
use crate::error::Result;

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
    for entry in std::fs::read_dir(dir).map_err(unreadable(dir))? {
        let entry = entry.map_err(unreadable(dir))?;
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

pub(super) fn read(dir: &Path) -> Result<Read> {
    let mut dirs = Vec::new();
    apps(dir, 4, &mut dirs)?;
    let mut items = Vec::new();
    let mut heads = Vec::new();
    for migrations in dirs {
        let app = migrations
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut names = Vec::new();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for entry in std::fs::read_dir(&migrations).map_err(unreadable(&migrations))? {
            let entry = entry.map_err(unreadable(&migrations))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".py") else {
                continue;
            };
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            let bytes = read_file(&entry.path())?;
            let text = String::from_utf8_lossy(&bytes);
            named.extend(dependencies_on(&text, &app));
            items.push(Item {
                id: format!("{app}.{name}"),
                file: relative(dir, &entry.path()),
                checksum: sha256(&bytes),
            });
            names.push(name.to_owned());
        }
        names.sort();
        heads.extend(
            names
                .into_iter()
                .filter(|n| !named.contains(n))
                .map(|n| format!("{app}:{n}")),
        );
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    heads.sort();
    Ok((items, HashMap::new(), heads))
}

/// The names of `app`'s migrations a migration depends on: the second string of each
/// `("app", "name")` pair in its `dependencies` list.
fn dependencies_on(text: &str, app: &str) -> Vec<String> {
    let Some(start) = text.find("dependencies") else {
        return Vec::new();
    };
    let rest = &text[start..];
    let Some(open) = rest.find('[') else {
        return Vec::new();
    };
    let mut depth = 0;
    let mut end = rest.len();
    for (i, c) in rest[open..].char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    end = open + i;
                    break;
                }
            }
            _ => {}
        }
    }
    let list = &rest[open..end];
    let mut out = Vec::new();
    for tuple in list.split('(').skip(1) {
        let tuple = tuple.split(')').next().unwrap_or_default();
        let strs: Vec<&str> = tuple.split(['"', '\'']).skip(1).step_by(2).collect();
        if let [a, n, ..] = strs.as_slice()
            && *a == app
        {
            out.push((*n).to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_django_dependencies() {
        let text = "class Migration(migrations.Migration):\n    dependencies = [\n        ('shop', '0001_initial'),\n        (\"auth\", \"0012_x\"),\n    ]\n";
        assert_eq!(super::dependencies_on(text, "shop"), vec!["0001_initial"]);
    }
}
