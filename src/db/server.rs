//! What a connection learns about the server it reached: which Postgres-compatible engine
//! it is, and what the lock connection saw when it was prepared.

/// A Postgres-compatible engine that is not PostgreSQL, named by its `version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    /// `pg_try_advisory_lock` is a stub that always returns true; `pg_locks` is empty;
    /// no LISTEN/NOTIFY.
    CockroachDb,
    /// Advisory locks are off unless enabled; no LISTEN/NOTIFY.
    YugabyteDb,
}

/// What `version()` contains on each engine that is not PostgreSQL: read here, and in SQL
/// by `prepare_for_lock` (`Engine::not_postgres_sql`).
const ENGINE_MARKS: [(&str, Engine); 3] = [
    ("CockroachDB", Engine::CockroachDb),
    ("-YB-", Engine::YugabyteDb),
    ("YugabyteDB", Engine::YugabyteDb),
];

impl Engine {
    pub fn from_version(version: &str) -> Engine {
        ENGINE_MARKS
            .iter()
            .find(|(mark, _)| version.contains(mark))
            .map_or(Engine::Postgres, |&(_, engine)| engine)
    }

    /// Whether the engine has LISTEN/NOTIFY: on one without, the marker is written without
    /// NOTIFY (its waiters poll).
    pub fn notifies(self) -> bool {
        self == Engine::Postgres
    }

    /// A condition true when the text column `v` (a `version()`) names PostgreSQL itself,
    /// as `from_version` reads it.
    pub(super) fn not_postgres_sql(v: &str) -> String {
        ENGINE_MARKS
            .iter()
            .map(|(mark, _)| format!("{v} NOT LIKE '%{mark}%'"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// What the lock connection learns about the server it reached.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `version()`: names a Postgres-compatible engine (CockroachDB, YugabyteDB) whose
    /// advisory locks are not real.
    pub version: String,
    /// `pg_backend_pid()`: the server session this statement ran in.
    pub pid: i64,
    /// The backend pid announced at startup (BackendKeyData). A pooler announces its own.
    pub startup_pid: i64,
    /// Whether a session held the advisory lock on the run's key when this was read: a
    /// run that would only wait need not prove the advisory lock yet.
    pub advisory_held: bool,
    /// Whether another run was proving the advisory lock (held the probe key) then.
    pub proving: bool,
    /// Whether this session took the probe key in the same statement: done on a direct
    /// PostgreSQL session (see `prepare_for_lock`) when the lock was free, so that the run
    /// that proves needs no round trip of its own to claim the proof, and the others learn
    /// that it is claimed without one.
    pub probe_taken: bool,
}
