//! The marker: the row a run writes when it ends, and the rule that reads readiness from
//! the rows. For a version V, the newest row for V decides, unless a later `rollback` row
//! names another version; a SQL source's fast path also needs the migrations table, read in
//! the same query, to agree (docs/src/how-it-works.md, "The marker"). The per-backend SQL
//! that writes and lists rows is in `db/`.

use std::time::Duration;

use serde::Serialize;

use crate::settings::{MigrationsTable, Table};

/// A marker row as read back, timestamps as RFC 3339 text in UTC.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Marker {
    pub id: i64,
    pub version: String,
    pub digest: Option<String>,
    pub status: String,
    pub action: String,
    pub started_at: String,
    pub finished_at: String,
    pub applied: i64,
    pub runner: String,
    pub tool_version: String,
    pub detail: Option<String>,
}

/// A marker row to write.
#[derive(Debug, Clone)]
pub struct NewMarker<'a> {
    pub version: &'a str,
    pub digest: Option<&'a str>,
    pub status: Status,
    pub action: &'a str,
    /// Seconds between the start of the run and now.
    pub elapsed: Duration,
    pub applied: i64,
    pub runner: &'a str,
    pub detail: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// The newest marker that decides readiness for a version: `status`, `digest`, and
/// whether it is a later rollback to another version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub version: String,
    pub status: String,
    pub digest: Option<String>,
    pub detail: Option<String>,
    /// Read in the same query when asked (`newest_marker`'s `upto`): how many migrations
    /// up to that version the migrations table records as applied, and how many as dirty.
    pub applied_upto: i64,
    pub dirty: i64,
}

/// What one read of the marker table tells about a version: the marker that decides it
/// (see `Conn::newest_marker`), the version of the newest `succeeded` marker of any
/// action (for `wait --expect V` when the database has passed V), and the newest marker of
/// all (what `wait` says is there while it waits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisive {
    pub marker: Option<Newest>,
    pub newest_succeeded: Option<String>,
    pub newest: Option<Recorded>,
    /// The history was asked for (`upto`) but `_sqlx_migrations` is not where this
    /// connection looks (another search_path or database than the migrator's): the
    /// marker was read alone, so `Newest::applied_upto` says nothing.
    pub history_missing: bool,
}

/// The newest marker of any version, action and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub version: String,
    pub status: String,
    pub action: String,
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.action.as_str() {
            "migrate" => write!(f, "version {} ({})", self.version, self.status),
            action => write!(f, "version {} ({} {})", self.version, action, self.status),
        }
    }
}

/// Which rows of `_sqlx_migrations` a marker's history check counts as applied.
#[derive(Debug, Clone, Copy)]
pub enum Upto<'a> {
    /// Every migration up to this version (the source's newest).
    Version(i64),
    /// Exactly these versions (`Expected::versions`).
    Only(&'a [i64]),
}

impl Upto<'_> {
    /// The condition on `version` this counts.
    fn condition(&self) -> String {
        match self {
            Upto::Version(v) => format!("version <= {v}"),
            Upto::Only([]) => "false".into(),
            Upto::Only(versions) => format!(
                "version IN ({})",
                versions
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The decisive rows among those `newest_marker_sql` reads for `version`: a later rollback
/// to another version means this one is no longer current. (`db::settle_newest` adds what a
/// failed read means: no table is none yet.)
pub(crate) fn settle(rows: Vec<NewestRow>, version: &str) -> Decisive {
    let mut out = Decisive::default();
    for (v, status, digest, detail, applied_upto, dirty, which) in rows {
        if which == 2 {
            out.newest = Some(Recorded {
                version: v,
                status,
                action: detail.unwrap_or_default(),
            });
        } else if which == 1 {
            out.newest_succeeded = Some(v);
        } else if v == version {
            out.marker = Some(Newest {
                version: v,
                status,
                digest,
                detail,
                applied_upto,
                dirty,
            });
        }
    }
    out
}

/// A row `newest_marker_sql` reads: version, status, digest, detail, the two history
/// counts, and 0 for the decisive row, 1 for the newest `succeeded` one, or 2 for the
/// newest of all (whose `detail` column holds its action).
pub(crate) type NewestRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

/// Up to three rows, in one round trip: the marker that decides `version` (its own newest
/// row, or a later rollback), and with `newest` the newest `succeeded` marker of any action
/// and the newest marker of all (what `wait` reports; `is_done` has no use for them, and on
/// a fresh session they cost as much server time as the rest of the query). `param` is the backend's placeholder for the version;
/// `zero` its 64-bit integer zero. With `upto`, the decisive row also counts the history in
/// `migrations`.
pub(crate) fn newest_marker_sql(
    t: &Table,
    migrations: &MigrationsTable,
    param: &str,
    zero: &str,
    upto: Option<Upto<'_>>,
    newest: bool,
) -> String {
    let one = zero.replace('0', "1");
    let two = zero.replace('0', "2");
    let history = match upto {
        Some(upto) => format!(
            "(SELECT COUNT(*) FROM {migrations} WHERE {} AND success) \
               AS applied_upto, \
             (SELECT COUNT(*) FROM {migrations} WHERE NOT success) AS dirty",
            upto.condition()
        ),
        None => format!("{zero} AS applied_upto, {zero} AS dirty"),
    };
    // Every column named: MySQL refuses a derived table with two columns of one name.
    let q = &t.qualified;
    let decisive = format!(
        "SELECT * FROM (SELECT version, status, digest, detail, {history}, {zero} AS which \
           FROM {q} WHERE version = {param} OR action = 'rollback' ORDER BY id DESC LIMIT 1) \
           AS decisive"
    );
    if !newest {
        return decisive;
    }
    format!(
        "{decisive} \
         UNION ALL \
         SELECT * FROM (SELECT version, status, digest, detail, {zero} AS applied_upto, \
           {zero} AS dirty, {one} AS which \
           FROM {q} WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1) AS newest_ok \
         UNION ALL \
         SELECT * FROM (SELECT version, status, digest, action, {zero} AS applied_upto, \
           {zero} AS dirty, {two} AS which \
           FROM {q} ORDER BY id DESC LIMIT 1) AS newest_all"
    )
}

pub(crate) type MarkerRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
);

pub(crate) fn marker_from_row(r: MarkerRow) -> Marker {
    Marker {
        id: r.0,
        version: r.1,
        digest: r.2,
        status: r.3,
        action: r.4,
        started_at: r.5,
        finished_at: r.6,
        applied: r.7,
        runner: r.8,
        tool_version: r.9,
        detail: r.10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as `newest_marker_sql` returns it; `which`: 0 decisive, 1 newest succeeded,
    /// 2 newest of all (its detail column holds the action).
    fn row(version: &str, status: &str, detail: Option<&str>, which: i64) -> NewestRow {
        let digest = (which == 0).then(|| "d1".to_owned());
        (
            version.into(),
            status.into(),
            digest,
            detail.map(str::to_owned),
            3,
            0,
            which,
        )
    }

    #[test]
    fn settle_reads_the_decisive_row_and_the_newest_ones() {
        let rows = vec![
            row("7", "succeeded", None, 0),
            row("7", "succeeded", None, 1),
            row("8", "failed", Some("rollback"), 2),
        ];
        let d = settle(rows, "7");
        let m = d.marker.expect("the decisive row");
        assert_eq!((m.version.as_str(), m.status.as_str()), ("7", "succeeded"));
        assert_eq!(
            (m.digest.as_deref(), m.applied_upto, m.dirty),
            (Some("d1"), 3, 0)
        );
        assert_eq!(d.newest_succeeded.as_deref(), Some("7"));
        let newest = d.newest.expect("the newest row");
        assert_eq!(newest.to_string(), "version 8 (rollback failed)");
        assert!(!d.history_missing);
    }

    #[test]
    fn settle_ignores_a_decisive_row_for_another_version() {
        // A later rollback to another version decides: this version is no longer current.
        let d = settle(vec![row("6", "succeeded", None, 0)], "7");
        assert_eq!(d.marker, None);
        assert_eq!(settle(Vec::new(), "7"), Decisive::default());
    }

    #[test]
    fn a_migrate_marker_is_shown_without_its_action() {
        let r = Recorded {
            version: "7".into(),
            status: "succeeded".into(),
            action: "migrate".into(),
        };
        assert_eq!(r.to_string(), "version 7 (succeeded)");
    }
}
