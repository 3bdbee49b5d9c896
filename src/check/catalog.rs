//! A catalog snapshot (what code written for a schema relies on: relations, columns,
//! defaults, NOT NULL, unique indexes, check constraints, enum labels, functions) and the
//! diff that says what breaks the release still running. Taken here from PostgreSQL's
//! catalog; `other.rs` fills the same structure from MySQL's and SQLite's.

use std::collections::BTreeMap;

pub use crate::db::catalog::{Column, Relation, Snapshot, display, excluded};

impl Snapshot {
    /// The relation in `self` that plays the role `old` played: the same oid, else one
    /// with the same schema and name (a table re-created under its own name).
    fn counterpart(&self, oid: i64, old: &Relation) -> Option<(i64, &Relation)> {
        self.relations.get(&oid).map(|r| (oid, r)).or_else(|| {
            self.relations
                .iter()
                .find(|(_, r)| r.schema == old.schema && r.name == old.name)
                .map(|(o, r)| (*o, r))
        })
    }
}

/// One incompatibility: its kind (as an allow comment names it), the object, and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub kind: &'static str,
    pub object: String,
    pub detail: String,
}

/// What code written for `old` can no longer do against `new`. Long on purpose: one short
/// rule per finding kind, in the order `--help` lists them, sharing `push`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Break> {
    let mut out = Vec::new();
    let mut push = |kind, object: String, detail: String| {
        out.push(Break {
            kind,
            object,
            detail,
        })
    };
    let mut old_rels: Vec<(&i64, &Relation)> = old.relations.iter().collect();
    old_rels.sort_by_key(|(_, r)| r.display());
    for (&oid, rel) in old_rels {
        let name = rel.display();
        let Some((new_oid, now)) = new.counterpart(oid, rel) else {
            let (kind, what) = if rel.is_view() {
                ("drop-view", "view")
            } else {
                ("drop-table", "table")
            };
            push(
                kind,
                name.clone(),
                format!("{what} {name} is gone: the running release still queries it"),
            );
            continue;
        };
        if now.display() != name {
            push(
                "rename-table",
                name.clone(),
                format!(
                    "renamed to {}: the running release still uses the old name",
                    now.display()
                ),
            );
        }
        let empty = BTreeMap::new();
        let old_cols = old.columns.get(&oid).unwrap_or(&empty);
        let new_cols = new.columns.get(&new_oid).unwrap_or(&empty);
        let same_oid = new_oid == oid && !old.by_name;
        for (attnum, col) in old_cols {
            let object = format!("{name}.{}", col.name);
            // Same table: attnum identifies a column across a rename. Re-created: by name.
            let now_col = if same_oid {
                new_cols.get(attnum)
            } else {
                new_cols.values().find(|c| c.name == col.name)
            };
            let Some(now_col) = now_col else {
                push(
                    "drop-column",
                    object,
                    "the running release still reads or writes it".into(),
                );
                continue;
            };
            if now_col.name != col.name {
                push(
                    "rename-column",
                    object.clone(),
                    format!(
                        "renamed to {}: the running release still uses the old name",
                        now_col.name
                    ),
                );
            }
            let dropped_labels = enum_labels(&col.type_name).zip(enum_labels(&now_col.type_name));
            if let Some((was, now)) = dropped_labels {
                // MySQL's inline enums: name the labels, as for a PostgreSQL enum type.
                for label in was.iter().filter(|l| !now.contains(l)) {
                    push(
                        "drop-enum-value",
                        format!("{object}.{label}"),
                        "the running release may still write or expect this value".into(),
                    );
                }
            } else if now_col.type_name != col.type_name
                && !widens(&col.type_name, &now_col.type_name)
            {
                push(
                    "change-type",
                    object.clone(),
                    format!(
                        "{} -> {}: values the running release writes or reads may not fit",
                        col.type_name, now_col.type_name
                    ),
                );
            }
            if now_col.not_null && !col.not_null {
                push(
                    "set-not-null",
                    object.clone(),
                    "the running release may still write NULL".into(),
                );
            }
            if col.has_default && !now_col.has_default {
                push(
                    "drop-default",
                    object.clone(),
                    "inserts of the running release that omit it get NULL or fail".into(),
                );
            }
        }
        if !rel.is_view() {
            for (attnum, col) in new_cols {
                let existed = if same_oid {
                    old_cols.contains_key(attnum)
                } else {
                    old_cols.values().any(|c| c.name == col.name)
                };
                if !existed && col.not_null && !col.has_default {
                    push(
                        "add-not-null-column",
                        format!("{name}.{}", col.name),
                        "new NOT NULL column without a default: inserts of the running \
                         release do not set it and fail"
                            .into(),
                    );
                }
            }
        }
        let new_unique = new.unique.iter().filter(|(t, _)| *t == new_oid);
        for (_, index) in new_unique {
            if !old.unique.contains(&(oid, index.clone())) {
                push(
                    "add-unique",
                    format!("{name}.{index}"),
                    "new unique index: writes of the running release may violate it".into(),
                );
            }
        }
        for (_, check) in new.checks.iter().filter(|(t, _)| *t == new_oid) {
            if !old.checks.contains(&(oid, check.clone())) {
                push(
                    "add-check",
                    format!("{name}.{check}"),
                    "new check constraint: writes of the running release may violate it".into(),
                );
            }
        }
    }
    for (ty, labels) in &old.enums {
        let now = new.enums.get(ty);
        for label in labels {
            if !now.is_some_and(|l| l.contains(label)) {
                push(
                    "drop-enum-value",
                    format!("{ty}.{label}"),
                    "the running release may still write or expect this value".into(),
                );
            }
        }
    }
    for f in old.functions.difference(&new.functions) {
        push(
            "drop-function",
            f.clone(),
            "the running release may still call it".into(),
        );
    }
    out
}

/// Whether a column type change keeps every value and every write of the old release
/// valid: a longer or unbounded varchar, a wider integer, a wider numeric.
pub fn widens(from: &str, to: &str) -> bool {
    fn bounded<'a>(t: &'a str, base: &str) -> Option<Option<&'a str>> {
        let rest = t.strip_prefix(base)?;
        if rest.is_empty() {
            return Some(None);
        }
        Some(Some(rest.strip_prefix('(')?.strip_suffix(')')?))
    }
    // PostgreSQL's spelling, then MySQL's.
    for varchar in ["character varying", "varchar"] {
        if let Some(Some(n)) = bounded(from, varchar) {
            let n: u32 = n.parse().unwrap_or(u32::MAX);
            return match bounded(to, varchar) {
                Some(None) => true,
                Some(Some(m)) => m.parse::<u32>().is_ok_and(|m| m >= n),
                None => ["text", "mediumtext", "longtext"].contains(&to),
            };
        }
        if from == varchar {
            return to == "text";
        }
    }
    let texts = ["text", "mediumtext", "longtext"];
    if let (Some(a), Some(b)) = (
        texts.iter().position(|t| *t == from),
        texts.iter().position(|t| *t == to),
    ) {
        return b >= a;
    }
    for ints in [
        &["smallint", "integer", "bigint"][..],
        &["tinyint", "smallint", "mediumint", "int", "bigint"][..],
    ] {
        if let (Some(a), Some(b)) = (
            ints.iter().position(|t| *t == from),
            ints.iter().position(|t| *t == to),
        ) {
            return b >= a;
        }
    }
    // MySQL enums: adding labels keeps every old value valid; dropping one does not.
    if let (Some(a), Some(b)) = (enum_labels(from), enum_labels(to)) {
        return a.iter().all(|l| b.contains(l));
    }
    if let Some(Some(ps)) = bounded(from, "numeric") {
        let (p, s) = ps.split_once(',').unwrap_or((ps, "0"));
        return match bounded(to, "numeric") {
            Some(None) => true,
            Some(Some(ps2)) => {
                let (p2, s2) = ps2.split_once(',').unwrap_or((ps2, "0"));
                s2 == s && p2.parse::<u32>().unwrap_or(0) >= p.parse::<u32>().unwrap_or(u32::MAX)
            }
            None => false,
        };
    }
    false
}

/// The labels of a MySQL inline enum type, `enum('a','b')`, unquoted.
fn enum_labels(t: &str) -> Option<Vec<String>> {
    let inner = t.strip_prefix("enum(")?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|l| l.trim().trim_matches('\'').to_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::widens;

    #[test]
    fn widening_is_recognised_and_narrowing_is_not() {
        assert!(widens("character varying(50)", "character varying(200)"));
        assert!(widens("character varying(50)", "text"));
        assert!(widens("character varying(50)", "character varying"));
        assert!(widens("integer", "bigint"));
        assert!(widens("numeric(10,2)", "numeric(12,2)"));
        assert!(!widens("character varying(200)", "character varying(20)"));
        assert!(!widens("bigint", "integer"));
        assert!(!widens("text", "character varying(20)"));
        assert!(!widens("numeric(10,2)", "numeric(12,3)"));
        assert!(!widens("integer", "text"));
        assert!(widens("varchar(20)", "varchar(40)"));
        assert!(widens("int", "bigint"));
        assert!(widens("enum('a','b')", "enum('a','b','c')"));
        assert!(!widens("enum('a','b','c')", "enum('a','c')"));
    }
}
