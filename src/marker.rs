//! The marker: the row a run writes when it ends, and the rule that reads readiness from
//! the rows. For a version V, the newest row for V decides, unless a later `rollback` row
//! names another version; a SQL source's fast path also needs the migrations table, read in
//! the same query, to agree (docs/src/how-it-works.md, "The marker"). The per-backend SQL
//! that writes and lists rows is in `db/`.

use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, MigrationsTable, Table};
use crate::db::{Conn, db_err, is_undefined_table};
use crate::error::Result;

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

/// The marker that makes waiting for the lock pointless.
pub struct Expected<'a> {
    pub version: &'a str,
    pub digest: Option<&'a str>,
    /// For a SQL source: its newest version and how many migrations it has. The marker
    /// then also needs the migrations table to show exactly that many applied up to that
    /// version, none dirty (read in the same query).
    pub history: Option<(i64, usize)>,
    /// With `--ignore-missing` (two migration tracks in one history): the source's
    /// versions. The history check then counts exactly these, not every row up to the
    /// newest, where another track's rows would make the count never match (and every run
    /// take the lock and append a marker).
    pub versions: Option<&'a [i64]>,
    /// For another migrator's directory (`--format`): the marker also needs that
    /// migrator's history table to show every migration of the directory applied, so a
    /// downgrade made with the migrator itself sends the run down the slow path.
    pub foreign: Option<&'a crate::formats::Foreign>,
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

impl Expected<'_> {
    /// What the history check counts (`Expected::history`, `Expected::versions`).
    pub fn upto(&self) -> Option<Upto<'_>> {
        self.history.map(|(v, _)| match self.versions {
            Some(versions) => Upto::Only(versions),
            None => Upto::Version(v),
        })
    }
}

/// Whether the newest marker for the expected version says it succeeded (same digest), and
/// the history it can see agrees (see `Expected::history`).
pub async fn is_done(conn: &mut Conn, cfg: &Config, expected: &Expected<'_>) -> Result<bool> {
    let decisive = conn
        .newest_marker(
            &cfg.table,
            &cfg.migrations_table,
            expected.version,
            expected.upto(),
            false,
        )
        .await?;
    let marked = marked(&decisive, expected);
    match expected.foreign {
        Some(f) if marked => {
            let rows = crate::formats::history::read(conn, f).await?.rows;
            Ok(f.standing(&rows).ready())
        }
        _ => Ok(marked),
    }
}

/// Whether the marker that decides the expected version (read with its history, as
/// `newest_marker_sql` does) says it succeeded, with the expected digest and history. For
/// another migrator's directory, `is_done` also reads that migrator's table.
pub fn marked(decisive: &Decisive, expected: &Expected<'_>) -> bool {
    decisive.marker.as_ref().is_some_and(|m| {
        m.status == "succeeded"
            && m.digest.as_deref() == expected.digest
            && expected.history.is_none_or(|(_, n)| {
                !decisive.history_missing && m.applied_upto == n as i64 && m.dirty == 0
            })
    })
}

/// The rows `newest_marker_sql` reads, as `Conn::newest_marker` reports them: no table
/// means none yet, and a later rollback to another version means this one is no longer
/// current.
pub(crate) fn settle_newest(
    r: Result<Vec<NewestRow>, sqlx::Error>,
    table: &Table,
    version: &str,
) -> Result<Decisive> {
    let rows = match r {
        Err(e) if is_undefined_table(&e) => return Ok(Decisive::default()),
        r => r.map_err(|e| {
            db_err(
                &format!("cannot read the marker from {}", table.qualified),
                e,
            )
        })?,
    };
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
    Ok(out)
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
