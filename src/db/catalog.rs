//! A catalog snapshot: what code written for a schema relies on (relations, columns,
//! defaults, NOT NULL, unique indexes, check constraints, enum labels, functions), as
//! each backend reads it from its own catalog (`Conn::catalog`). `check` compares two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest, Sha256};

/// Schemas that are never the application's: the system's, and check's own bookkeeping.
pub const EXCLUDED: &str = "NOT IN ('pg_catalog', 'information_schema', 'schemagate_check') \
    AND {n} NOT LIKE 'pg\\_toast%' AND {n} NOT LIKE 'pg\\_temp%'";

pub fn excluded(column: &str) -> String {
    format!("{column} {}", EXCLUDED.replace("{n}", column))
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// `r` table, `p` partitioned table, `v` view, `m` materialized view, `f` foreign.
    pub kind: char,
    pub filenode: i64,
}

impl Relation {
    /// `name` in `public`, else `schema.name`.
    pub fn display(&self) -> String {
        display(&self.schema, &self.name)
    }

    pub fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }
}

pub fn display(schema: &str, name: &str) -> String {
    if schema == "public" {
        name.to_owned()
    } else {
        format!("{schema}.{name}")
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    pub has_default: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub relations: HashMap<i64, Relation>,
    /// By relation oid, then attnum.
    pub columns: HashMap<i64, BTreeMap<i32, Column>>,
    /// Unique indexes: (table oid, index name).
    pub unique: BTreeSet<(i64, String)>,
    /// Check constraints: (table oid, constraint name).
    pub checks: BTreeSet<(i64, String)>,
    /// Enum labels by display name of the type.
    pub enums: BTreeMap<String, Vec<String>>,
    /// Functions as `name(identity arguments)` (schema-qualified outside public).
    pub functions: BTreeSet<String>,
    /// Relation ids are derived from names and column numbers shift on a drop (MySQL,
    /// SQLite): match columns by name, so a rename looks like a drop.
    pub by_name: bool,
}

impl Snapshot {
    /// Leave relation `oid` out: it is not the application's (a history table).
    pub fn hide(&mut self, oid: i64) {
        self.relations.remove(&oid);
        self.columns.remove(&oid);
        self.unique.retain(|(t, _)| *t != oid);
        self.checks.retain(|(t, _)| *t != oid);
    }
}

/// A stable id for a relation name, where the catalog has no oid (MySQL, SQLite): a
/// renamed table looks like a dropped one.
pub fn id(name: &str) -> i64 {
    let hash = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}
