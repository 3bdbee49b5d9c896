//! The bits of SQL that differ by backend for statements written once for all of them (the
//! release registry): each backend names its `Dialect` (`Conn::dialect`).

/// How a backend spells what portable statements need.
#[derive(Debug)]
pub struct Dialect {
    /// A text column that can be a key (MySQL cannot index TEXT without a length).
    pub key_text: &'static str,
    /// The type a CAST to a 64-bit integer names.
    pub int64: &'static str,
    /// The server's clock, in milliseconds since the epoch.
    pub now_ms: &'static str,
    /// A backslash is an escape in a plain string literal (MySQL).
    pub backslash_escapes: bool,
    /// A literal holding a backslash is written `E'…'` (PostgreSQL, so that it reads the
    /// same whatever `standard_conforming_strings` says).
    pub e_strings: bool,
    /// A row whose key exists is updated by `ON DUPLICATE KEY UPDATE` (MySQL) rather than
    /// `ON CONFLICT (key) DO UPDATE`.
    pub on_duplicate_key: bool,
}

impl Dialect {
    /// `s` as a string literal (NUL bytes dropped: no backend stores them in text).
    pub fn lit(&self, s: &str) -> String {
        let s = s.replace('\0', "").replace('\'', "''");
        if self.backslash_escapes || (self.e_strings && s.contains('\\')) {
            let e = if self.e_strings { "E" } else { "" };
            return format!("{e}'{}'", s.replace('\\', "\\\\"));
        }
        format!("'{s}'")
    }

    /// `insert` (an `INSERT … VALUES …`) completed so that a row whose `key` exists has
    /// `columns` set from the new row instead.
    pub fn upsert(&self, insert: &str, key: &str, columns: &[&str]) -> String {
        if self.on_duplicate_key {
            let set: Vec<String> = columns
                .iter()
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            return format!("{insert} ON DUPLICATE KEY UPDATE {}", set.join(", "));
        }
        let set: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(
            "{insert} ON CONFLICT ({key}) DO UPDATE SET {}",
            set.join(", ")
        )
    }
}
