//! Expand and contract: which phase a migration belongs to, and which pending migrations a
//! phased `migrate` may apply in order.
//!
//! A migration is *expand* (additive: safe while the previous release still runs) unless it
//! says it is *contract* (drops, renames, NOT NULL: safe only once no instance of an older
//! release runs): a `-- schemagate:phase contract` line among the comment lines that open
//! the file (after `-- no-transaction`, which sqlx needs as the very first bytes), or a file
//! in the source's `contract/` folder. Migrations are never reordered: an expand that comes
//! after a pending contract waits for that contract.

use std::fmt;

use crate::error::{Error, Result};

/// The folder of a SQL source whose migrations are all contract.
pub const CONTRACT_DIR: &str = "contract";

/// How far into a file the phase line is looked for: it belongs to the opening comments.
pub const HEAD: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Expand,
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase line `declared` refuses, with the `line` it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadPhase {
    /// Neither `contract` nor `expand`.
    Unknown { phase: String, line: String },
    /// A second phase line, declaring the other phase.
    Two { line: String },
}

impl std::fmt::Display for BadPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadPhase::Unknown { phase, line } => write!(
                f,
                "unknown phase {phase:?} in `{line}`: expected `-- schemagate:phase contract` \
                 or `-- schemagate:phase expand`"
            ),
            BadPhase::Two { line } => write!(f, "two different phases declared (`{line}`)"),
        }
    }
}

impl std::error::Error for BadPhase {}

/// The phase a file's opening comments declare (`None`: none declared). Only the comment
/// lines before the first statement count, so a phase line further down (in a string, in a
/// later comment) never changes what a migration is. An unknown phase is an error naming
/// the line: a typo must not silently make a contract an expand.
pub fn declared(head: &[u8]) -> std::result::Result<Option<Phase>, BadPhase> {
    // The head may end in the middle of a character: only whole lines count anyway.
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some(rest) = comment.trim().strip_prefix("schemagate:phase") else {
            continue;
        };
        let value = rest.trim();
        let phase = match value {
            "contract" => Phase::Contract,
            "expand" => Phase::Expand,
            other => {
                return Err(BadPhase::Unknown {
                    phase: other.to_owned(),
                    line: line.to_owned(),
                });
            }
        };
        if found.is_some_and(|f| f != phase) {
            return Err(BadPhase::Two {
                line: line.to_owned(),
            });
        }
        found = Some(phase);
    }
    Ok(found)
}

/// `migrate --phase`: which migrations a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Pending migrations up to the first pending contract; further only when the gate
    /// lets that contract run now and an expand comes after it.
    Expand,
    /// Every pending migration, each contract only when the gate allows it.
    Contract,
}

/// A phase read from a file's head, or the error naming the file.
pub fn of_file(path: &std::path::Path, head: &[u8], in_contract_dir: bool) -> Result<Phase> {
    let declared = declared(head)
        .map_err(|why| Error::Config(format!("migration {}: {why}", path.display())))?;
    match (declared, in_contract_dir) {
        (Some(Phase::Expand), true) => Err(Error::Config(format!(
            "migration {} is in the {CONTRACT_DIR}/ folder but declares `-- schemagate:phase \
             expand`: move it out, or drop the line",
            path.display()
        ))),
        (Some(p), _) => Ok(p),
        (None, true) => Ok(Phase::Contract),
        (None, false) => Ok(Phase::Expand),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_line_belongs_to_the_opening_comments() {
        let d = |s: &str| declared(s.as_bytes());
        assert_eq!(d("CREATE TABLE a (id int);"), Ok(None));
        assert_eq!(
            d("-- schemagate:phase contract\nALTER TABLE a DROP COLUMN b;"),
            Ok(Some(Phase::Contract))
        );
        // After `-- no-transaction`, which sqlx needs as the first bytes.
        assert_eq!(
            d("-- no-transaction\n\n--   schemagate:phase   contract  \nDROP INDEX x;"),
            Ok(Some(Phase::Contract))
        );
        assert_eq!(
            d("-- schemagate:phase expand\nSELECT 1;"),
            Ok(Some(Phase::Expand))
        );
        // Below the first statement it is just text.
        assert_eq!(
            d("SELECT 1;\n-- schemagate:phase contract\n"),
            Ok(None),
            "a phase line after a statement does not count"
        );
        assert!(matches!(
            d("-- schemagate:phase contracts\n"),
            Err(BadPhase::Unknown { phase, .. }) if phase == "contracts"
        ));
        assert!(matches!(
            d("-- schemagate:phase contract\n-- schemagate:phase expand\n"),
            Err(BadPhase::Two { .. })
        ));
    }
}
