//! `check`'s findings and report: what a rehearsed migration locked, scanned and rewrote,
//! what it broke for the release still running, which findings its `schemagate:allow`
//! comments accept, and the two ways to print it all (a table for people, JSON for CI).
//! The rehearsal itself (scratch database, observation, catalog) is in `pg.rs` and
//! `catalog.rs`; the command that drives it is `cmd/check.rs`.

pub mod catalog;
pub mod guard;
pub mod other;
pub mod outside;
pub mod pg;
pub mod rehearse;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use catalog::Snapshot;

/// The whole check, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scratch database the rehearsal ran on (dropped afterwards unless given).
    pub scratch_database: String,
    /// What the catalog was compared against: the release still running.
    pub baseline: String,
    pub migrations: Vec<MigrationReport>,
    pub findings: usize,
    pub unaccepted: usize,
    pub duration_ms: u128,
}

/// One rehearsed migration (or one external migrator run).
#[derive(Debug, Serialize)]
pub struct MigrationReport {
    /// `<version> <description>`, or the external command.
    pub migration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// How its locks were observed, with the sampling resolution where it sampled.
    pub observed: String,
    pub duration_ms: f64,
    /// `lock_timeout` in force in its transaction (`None`: not set, waits forever).
    pub lock_timeout: Option<String>,
    /// Whether locks were observed at all (false on MySQL and SQLite: catalog only).
    pub locks_observed: bool,
    /// Locks on tables that existed before it (new tables are nobody else's yet).
    pub locks: Vec<LockReport>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub table: String,
    /// PostgreSQL's name for it: `ACCESS EXCLUSIVE`, `SHARE`, ...
    pub mode: String,
    /// What it does to the release still running, in words.
    pub effect: String,
    /// The table was read in full while the lock was held (validation, index build,
    /// update), so on a big table the lock lasts as long as that scan.
    pub scanned: bool,
    /// The table was rewritten (its relfilenode changed).
    pub rewritten: bool,
}

/// The finding kinds no allow comment accepts, because the rehearsal itself went wrong:
/// it changed the database the URL names, or an external migrator never touched the
/// scratch database. `check` then exits 1, not 5: its report cannot be trusted.
pub const ESCAPED: &str = "changed-real-database";
pub const UNTOUCHED: &str = "scratch-untouched";
const NEVER_ACCEPTED: [&str; 2] = [ESCAPED, UNTOUCHED];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// As an allow comment names it: `drop-column`, `rewrite`, ...
    pub kind: String,
    /// `table`, `table.column`, `type.label`, `function(args)`.
    pub object: String,
    pub migration: String,
    pub detail: String,
    pub accepted: bool,
}

impl Finding {
    /// Whether an allow comment or flag can accept a finding of this kind.
    pub fn acceptable(kind: &str) -> bool {
        !NEVER_ACCEPTED.contains(&kind)
    }
}

impl MigrationReport {
    /// Add a finding seen outside the catalog diff (a statement check did not run, a change
    /// to the real database), keeping the list in report order.
    pub fn add(
        &mut self,
        kind: &str,
        object: String,
        detail: String,
        allowed: &[(String, String)],
    ) {
        self.findings.push(Finding {
            accepted: accepted(allowed, kind, &object),
            kind: kind.to_owned(),
            object,
            migration: self.migration.clone(),
            detail,
        });
        self.findings
            .sort_by(|a, b| (&a.kind, &a.object).cmp(&(&b.kind, &b.object)));
    }
}

/// The finding kinds that break the release still running (the catalog's compatibility
/// findings): what a contract migration is for, and what an expand one must not do.
pub const BREAKING: [&str; 13] = [
    "drop-table",
    "drop-view",
    "rename-table",
    "drop-column",
    "rename-column",
    "change-type",
    "set-not-null",
    "add-not-null-column",
    "drop-default",
    "drop-enum-value",
    "drop-function",
    "add-unique",
    "add-check",
];

impl MigrationReport {
    /// Judge the breaking findings by the migration's phase (`docs/src/phases.md`): in a
    /// contract migration they are what it is for, and the gate runs it only once the
    /// older release is gone: accepted. In an expand migration, which runs while the older
    /// release is live, one no allow comment accepts says where it belongs.
    pub fn judge_phase(&mut self, phase: crate::phase::Phase) {
        for f in self
            .findings
            .iter_mut()
            .filter(|f| BREAKING.contains(&f.kind.as_str()))
        {
            match phase {
                crate::phase::Phase::Contract if !f.accepted => {
                    f.accepted = true;
                    f.detail.push_str(
                        " (accepted: a contract migration runs only once no instance of the \
                         older release is live)",
                    );
                }
                crate::phase::Phase::Expand if !f.accepted => f.detail.push_str(
                    "; this is an expand migration, applied while the older release still \
                     runs: move the change to a contract migration (`-- schemagate:phase \
                     contract`, or the source's contract/ folder)",
                ),
                _ => {}
            }
        }
    }
}

fn accepted(allowed: &[(String, String)], kind: &str, object: &str) -> bool {
    Finding::acceptable(kind)
        && allowed
            .iter()
            .any(|(k, o)| k == kind && (o == object || o == "*"))
}

/// The lock modes, weakest first, in pg_locks' spelling.
const MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// How strong a pg_locks mode is (0 = ACCESS SHARE), for keeping the strongest per table.
pub fn rank(mode: &str) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// Whether a lock of this rank blocks INSERT, UPDATE and DELETE of other sessions.
fn blocks_writes(rank: usize) -> bool {
    rank >= 4
}

/// `ShareRowExclusiveLock` -> `SHARE ROW EXCLUSIVE`.
pub fn mode_name(mode: &str) -> String {
    let bare = mode.strip_suffix("Lock").unwrap_or(mode);
    let mut out = String::new();
    for (i, c) in bare.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// What a lock held until commit does to everyone else, in plain words.
pub fn effect(mode: &str) -> &'static str {
    match mode {
        "AccessShareLock" => "reads and writes go on; only blocks DDL until commit",
        "RowShareLock" | "RowExclusiveLock" => {
            "reads and writes go on (rows it changed stay locked); blocks DDL and CREATE INDEX until commit"
        }
        "ShareUpdateExclusiveLock" => {
            "reads and writes go on; blocks other DDL and VACUUM until commit"
        }
        "ShareLock" | "ShareRowExclusiveLock" => {
            "blocks every INSERT, UPDATE and DELETE until commit; reads go on"
        }
        "ExclusiveLock" => {
            "blocks every write and SELECT ... FOR UPDATE until commit; plain reads go on"
        }
        "AccessExclusiveLock" => "blocks every read and write until commit",
        _ => "",
    }
}

/// What one migration was seen to do, by whichever observer ran.
#[derive(Debug, Default)]
pub struct Observed {
    /// The strongest mode seen per relation oid.
    pub locks: HashMap<i64, String>,
    /// Relations read in full (sequential scans counted by the statistics).
    pub scanned: HashMap<i64, i64>,
    pub lock_timeout: Option<String>,
    pub duration: Duration,
    pub how: String,
    /// The lock a rewrite always takes on this backend (PostgreSQL: ACCESS EXCLUSIVE),
    /// assumed when a sampler missed it.
    pub rewrite_lock: Option<&'static str>,
    /// Only the catalog was compared (MySQL, SQLite): no locks or lock_timeout to report.
    pub catalog_only: bool,
}

impl Observed {
    pub fn lock(&mut self, oid: i64, mode: &str) {
        let stronger = self.locks.get(&oid).is_none_or(|m| rank(mode) > rank(m));
        if stronger {
            self.locks.insert(oid, mode.to_owned());
        }
    }
}

crate::error::reason! {
    /// Why a migration failed on the scratch database (redacted), for the message that
    /// names it.
    pub struct ApplyFailed;
}

/// Apply the baseline (the migrations up to the release still running) with `apply`, as
/// `migrate` would, minus the statements that act outside the scratch database (their
/// descriptions are gathered in `skipped`, and named in the error of a migration that
/// failed without them). `mysql`: read the statements in MySQL's dialect.
pub async fn baseline(
    source: &crate::source::Source,
    old: &[&crate::source::Entry],
    mysql: bool,
    skipped: &mut Vec<String>,
    mut apply: impl AsyncFnMut(&sqlx::migrate::Migration) -> Result<(), ApplyFailed>,
) -> crate::error::Result<()> {
    for m in old {
        // Read now, checked against the checksum the source was read with.
        let m = &source.migration(m)?;
        let outside = outside::Outside::find(m, mysql, skipped);
        apply(&outside::runnable(m, &outside)).await.map_err(|e| {
            crate::error::Error::Failed(format!(
                "baseline migration {} failed on the scratch database: {e}{}",
                m.version,
                outside::hint(skipped)
            ))
        })?;
    }
    Ok(())
}

/// The `(kind, object)` pairs a migration's `schemagate:allow` comments accept, in any
/// comment syntax (`-- schemagate:allow drop-column users.legacy_email`, `# ...`).
pub fn allows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("schemagate:allow")?;
            // The object is the rest of the line: `full_name(character varying)` has spaces.
            let (kind, object) = rest.trim().split_once(char::is_whitespace)?;
            let object = object.trim().trim_end_matches("*/").trim_end();
            Some((kind.to_owned(), object.to_owned()))
        })
        .collect()
}

/// `--allow 'kind object'` values as pairs; a malformed one is named.
pub fn parse_allow_flags(flags: &[String]) -> crate::error::Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|f| match f.trim().split_once(char::is_whitespace) {
            Some((k, o)) if !o.trim().is_empty() => Ok((k.to_owned(), o.trim().to_owned())),
            _ => Err(crate::error::Error::Config(format!(
                "invalid --allow {f:?}: expected '<finding-kind> <object>', for example \
                     'drop-column users.legacy_email'"
            ))),
        })
        .collect()
}

/// Turn what a migration did into its report: locks in words, rewrites and blocking scans
/// (operational findings), and the catalog's incompatibilities (compatibility findings).
/// Long on purpose: the findings are gathered in one list, in the order they are shown.
pub fn report(
    migration: String,
    version: Option<i64>,
    before: &Snapshot,
    after: &Snapshot,
    observed: Observed,
    allowed: &[(String, String)],
) -> MigrationReport {
    let mut findings: Vec<(String, String, String)> = Vec::new();
    // Locks on relations that existed before: new ones are nobody else's yet.
    let mut by_table: BTreeMap<String, LockReport> = BTreeMap::new();
    let rewritten: Vec<i64> = before
        .relations
        .iter()
        .filter(|(oid, r)| {
            r.filenode != 0
                && after
                    .relations
                    .get(oid)
                    .is_some_and(|now| now.filenode != r.filenode)
        })
        .map(|(oid, _)| *oid)
        .collect();
    for (oid, mode) in &observed.locks {
        let Some(rel) = before.relations.get(oid) else {
            continue;
        };
        by_table.insert(
            rel.display(),
            LockReport {
                table: rel.display(),
                mode: mode_name(mode),
                effect: effect(mode).to_owned(),
                scanned: observed.scanned.get(oid).is_some_and(|n| *n > 0),
                rewritten: rewritten.contains(oid),
            },
        );
    }
    for oid in &rewritten {
        let rel = &before.relations[oid];
        let lock = observed
            .locks
            .get(oid)
            .map(String::as_str)
            .or(observed.rewrite_lock);
        findings.push((
            "rewrite".into(),
            rel.display(),
            match lock {
                Some(mode) => format!(
                    "table rewritten under {}: {} while the whole table is copied",
                    mode_name(mode),
                    if rank(mode) == 7 {
                        "every read and write waits"
                    } else {
                        "every write waits"
                    }
                ),
                None => "table rebuilt: the whole table was copied".into(),
            },
        ));
        // A rewrite the sampler missed still took its lock.
        if let Some(mode) = lock {
            by_table.entry(rel.display()).or_insert_with(|| LockReport {
                table: rel.display(),
                mode: mode_name(mode),
                effect: effect(mode).to_owned(),
                scanned: true,
                rewritten: true,
            });
        }
    }
    for (oid, mode) in &observed.locks {
        let Some(rel) = before.relations.get(oid) else {
            continue;
        };
        if rewritten.contains(oid)
            || !blocks_writes(rank(mode))
            || observed.scanned.get(oid).is_none_or(|n| *n <= 0)
        {
            continue;
        }
        findings.push((
            "blocking-scan".into(),
            rel.display(),
            format!(
                "read in full while holding {}: {} for as long as the scan takes on a big table",
                mode_name(mode),
                if rank(mode) == 7 {
                    "every read and write waits"
                } else {
                    "every write waits"
                }
            ),
        ));
    }
    for b in catalog::diff(before, after) {
        findings.push((b.kind.into(), b.object, b.detail));
    }
    // A stable order (the observers' maps are not): by kind, then object.
    findings.sort();
    let findings = findings
        .into_iter()
        .map(|(kind, object, detail)| Finding {
            accepted: accepted(allowed, &kind, &object),
            kind,
            object,
            migration: migration.clone(),
            detail,
        })
        .collect();
    MigrationReport {
        migration,
        version,
        observed: observed.how,
        duration_ms: (observed.duration.as_secs_f64() * 1e4).round() / 10.0,
        lock_timeout: observed.lock_timeout,
        locks_observed: !observed.catalog_only,
        locks: by_table.into_values().collect(),
        findings,
    }
}

/// The table for people: per migration its locks, then every finding. Long on purpose: the
/// output's layout, line by line.
pub fn print_table(report: &Report) {
    outln!(
        "schemagate check: {} migration run(s) against {}, rehearsed on scratch database {}",
        report.migrations.len(),
        report.baseline,
        report.scratch_database
    );
    for m in &report.migrations {
        outln!();
        outln!("{}  ({:.1} ms)", m.migration, m.duration_ms);
        outln!("  observed: {}", m.observed);
        if !m.locks_observed {
            continue;
        }
        outln!(
            "  lock_timeout: {}",
            m.lock_timeout
                .as_deref()
                .unwrap_or("not set (a lock it waits for queues every query behind it)")
        );
        if m.locks.is_empty() {
            outln!("  no locks on existing tables");
        }
        for l in &m.locks {
            let mut notes = Vec::new();
            if l.rewritten {
                notes.push("rewritten");
            } else if l.scanned {
                notes.push("scanned");
            }
            outln!(
                "  {:<22} {:<22} {}{}",
                l.table,
                l.mode,
                l.effect,
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                }
            );
        }
    }
    let findings: Vec<&Finding> = report.migrations.iter().flat_map(|m| &m.findings).collect();
    outln!();
    if findings.is_empty() {
        outln!("no findings");
    } else {
        outln!(
            "{:<20} {:<32} {:<9} {:<40} detail",
            "finding",
            "object",
            "accepted",
            "migration"
        );
        for f in &findings {
            outln!(
                "{:<20} {:<32} {:<9} {:<40} {}",
                f.kind,
                f.object,
                if f.accepted { "yes" } else { "NO" },
                f.migration,
                f.detail
            );
        }
    }
    outln!();
    outln!(
        "{} finding(s), {} not accepted, in {:.1} s",
        report.findings,
        report.unaccepted,
        report.duration_ms as f64 / 1000.0
    );
    if report.unaccepted > 0 {
        outln!(
            "accept one with a comment in its migration: -- schemagate:allow <finding> <object>"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_comments_in_any_comment_syntax() {
        let sql = "-- schemagate:allow drop-column users.legacy_email\nALTER TABLE x;\n  # schemagate:allow drop-function f(character varying)\n-- schemagate:allow incomplete";
        assert_eq!(
            allows(sql),
            vec![
                ("drop-column".into(), "users.legacy_email".into()),
                ("drop-function".into(), "f(character varying)".into())
            ]
        );
        assert!(matches!(
            parse_allow_flags(&["drop-column".into()]),
            Err(crate::error::Error::Config(_))
        ));
    }

    #[test]
    fn lock_modes_in_words() {
        assert_eq!(mode_name("ShareRowExclusiveLock"), "SHARE ROW EXCLUSIVE");
        assert_eq!(mode_name("AccessExclusiveLock"), "ACCESS EXCLUSIVE");
        assert!(rank("AccessExclusiveLock") > rank("ShareLock"));
        assert!(blocks_writes(rank("ShareLock")));
        assert!(!blocks_writes(rank("ShareUpdateExclusiveLock")));
    }
}
