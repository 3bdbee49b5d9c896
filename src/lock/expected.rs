//! What a run expects to find done (a version, its digest and its history), and whether the
//! database shows it: the question asked before the lock (the fast path), while waiting for
//! it, and once it is held.

use crate::db::Conn;
use crate::error::Result;
use crate::formats::Foreign;
use crate::marker::{Decisive, Upto};
use crate::settings::Config;

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
    pub foreign: Option<&'a Foreign>,
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
