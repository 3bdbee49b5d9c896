//! `schemagate status`: marker history, applied / pending migrations, dirty state and the
//! lock holder, as text or as one JSON document (shape documented in README.md).

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Serialize;

use super::Outcome;
use super::StatusConfig;
use crate::db::{self, Holder, Marker};
use crate::error::{Error, Result};
use crate::formats::{Foreign, Format, history};
use crate::lock;
use crate::redact::redact;
use crate::settings::Config;
use crate::source::{Source, hex};
use sqlx::migrate::AppliedMigration;

#[derive(Debug, Serialize)]
struct Report {
    database: String,
    backend: &'static str,
    table: String,
    lock: LockReport,
    markers: Vec<Marker>,
    migrations: Migrations,
    /// The release registry: live instances (oldest expected version first), and the
    /// newest contract migration that has run or is running (`docs/src/phases.md`).
    instances: Vec<crate::registry::Instance>,
    contract_barrier: Option<i64>,
    /// Only with another migrator's --source: its history table against the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<HistoryReport>,
}

#[derive(Debug, Serialize)]
struct HistoryReport {
    format: &'static str,
    table: String,
    /// The migrations directories read (Rails' `db/migrate` and `db/post_migrate`, each
    /// `--source`'s).
    paths: Vec<String>,
    /// The version (heads) and digest derived from the files.
    version: String,
    digest: String,
    ready: bool,
    /// Each migration of the files: `applied`, `pending`, or `modified` (applied, and its
    /// file differs from the one the last `succeeded` marker recorded).
    files: Vec<FileReport>,
    /// Entries of the history the files do not have (a newer release's).
    unknown: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FileReport {
    id: String,
    file: String,
    /// The migrations directory it came from (one of `paths`).
    path: String,
    state: &'static str,
    /// `expand` or `contract`, as the migrator's convention says (`docs/src/phases.md`).
    phase: crate::phase::Phase,
}

#[derive(Debug, Serialize)]
struct LockReport {
    name: String,
    /// A string: the key is a 64-bit integer, beyond what JSON readers (jq, JavaScript)
    /// hold exactly.
    #[serde(serialize_with = "as_string")]
    key: i64,
    /// The lock `--lock auto` uses from this connection: `advisory`, `lease`, `get_lock`
    /// or `file`, and why.
    kind: &'static str,
    reason: String,
    /// Who holds it now (a live lease first, else the advisory lock's session).
    holder: Option<Holder>,
}

#[derive(Debug, Serialize)]
struct Migrations {
    dirty: Option<i64>,
    /// PostgreSQL: indexes left invalid, typically by a failed CREATE INDEX CONCURRENTLY.
    invalid_indexes: Vec<String>,
    applied: Vec<Applied>,
    /// Only with --source: in the source, not applied.
    pending: Option<Vec<Pending>>,
}

#[derive(Debug, Serialize)]
struct Applied {
    version: i64,
    checksum: String,
    /// Only with --source: "ok", "modified" or "missing" (not in the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Pending {
    version: i64,
    description: String,
    no_transaction: bool,
    /// `expand` or `contract` (`migrate --phase`).
    phase: crate::phase::Phase,
    /// A `.down.sql` exists for it.
    reversible: bool,
}

fn as_string<S: serde::Serializer>(key: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_string())
}

pub async fn run(args: &StatusConfig) -> Result<Outcome> {
    if !args.targets.is_empty() {
        return fleet(args).await;
    }
    let cfg = &args.db;
    let (source, foreign) = match &args.source {
        Some(spec) if spec.format == Format::Sqlx => (Some(Source::load(&spec.dirs[0])?), None),
        Some(spec) => (None, Some(Foreign::load(spec)?)),
        None => (None, None),
    };
    if cfg.backend == crate::settings::Backend::Sqlite {
        // Reading never creates the file: a missing one is a wrong path, not an empty
        // database.
        let file = db::sqlite_options(cfg)
            .map_err(|e| Error::Config(format!("invalid database URL: {}", db::describe(&e))))?;
        if !file.get_filename().exists() {
            return Err(Error::Config(format!(
                "the SQLite database file {} does not exist",
                file.get_filename().display()
            )));
        }
    }
    let mut conn = db::connect(cfg).await?;
    let history = match &foreign {
        Some(f) => Some(history_report(&mut conn, cfg, f).await?),
        None => None,
    };
    let markers = conn.markers(&cfg.table, args.limit).await?;
    // The lock as `migrate` resolves it from here: the same name and key.
    let resolved = lock::resolve(&mut conn, cfg).await?;
    let holder = lock::holder(&mut conn, &resolved).await?;
    // What `--lock auto` picks from here, and why (the probe takes a random key, never the
    // real lock).
    let choice = lock::choose(&mut conn, cfg).await?;
    let invalid_indexes = conn.invalid_indexes().await?;
    let (applied, dirty) = conn.applied(&cfg.migrations_table).await?;
    let instances = crate::registry::live(&mut conn, cfg).await?;
    let contract_barrier = crate::registry::barrier(&mut conn, cfg).await?;
    conn.close().await;

    let report = Report {
        database: cfg.display_url.clone(),
        backend: cfg.backend.name(),
        table: cfg.table.qualified.clone(),
        lock: LockReport {
            name: resolved.lock.name,
            key: resolved.lock.key,
            kind: choice.kind,
            reason: choice.reason,
            holder,
        },
        markers,
        migrations: migrations_report(source.as_ref(), &applied, dirty, invalid_indexes),
        instances,
        contract_barrier,
        history,
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report).expect("report serializes");
        json.push('\n');
        json
    } else {
        render_text(&report)
    };
    // Marker details were redacted when written, but by whichever version wrote them.
    crate::stdout::print(&redact(&text));
    Ok(Outcome {
        message: "status printed".into(),
        ..Outcome::default()
    })
}

/// The applied migrations (each against the source, when one is given) and the pending
/// ones.
fn migrations_report(
    source: Option<&Source>,
    applied: &[AppliedMigration],
    dirty: Option<i64>,
    invalid_indexes: Vec<String>,
) -> Migrations {
    let comparison = source.map(|s| s.compare(applied));
    let state = |version: i64| {
        comparison.as_ref().map(|c| {
            if c.modified.contains(&version) {
                "modified"
            } else if c.missing.contains(&version) || c.ahead.contains(&version) {
                "missing"
            } else {
                "ok"
            }
        })
    };
    let pending = source.zip(comparison.as_ref()).map(|(s, c)| {
        c.pending
            .iter()
            .map(|m| Pending {
                version: m.version,
                description: m.description.to_string(),
                no_transaction: m.no_tx,
                phase: m.phase,
                reversible: s.downs.contains_key(&m.version),
            })
            .collect()
    });
    Migrations {
        dirty,
        invalid_indexes,
        applied: applied
            .iter()
            .map(|a| Applied {
                version: a.version,
                checksum: hex(&a.checksum),
                source: state(a.version),
            })
            .collect(),
        pending,
    }
}

async fn history_report(conn: &mut db::Conn, cfg: &Config, f: &Foreign) -> Result<HistoryReport> {
    let h = history::read(conn, f).await?;
    let standing = f.standing(&h.rows);
    let manifest = history::last_manifest(conn, &cfg.table, f.format).await?;
    let modified: HashSet<&str> = manifest
        .as_deref()
        .map(|m| {
            f.modified_since(m)
                .into_iter()
                .map(|i| i.id.as_str())
                .collect()
        })
        .unwrap_or_default();
    let pending: HashSet<&str> = standing.pending.iter().map(String::as_str).collect();
    Ok(HistoryReport {
        format: f.format.name(),
        table: f.history_table().to_owned(),
        paths: f.paths.iter().map(|p| p.display().to_string()).collect(),
        version: f.version(),
        digest: f.digest(),
        ready: standing.ready(),
        files: f
            .items
            .iter()
            .map(|i| FileReport {
                id: i.id.clone(),
                file: i.file.clone(),
                path: i.origin.display().to_string(),
                state: if pending.contains(i.id.as_str()) {
                    "pending"
                } else if modified.contains(i.id.as_str()) {
                    "modified"
                } else {
                    "applied"
                },
                phase: i.phase,
            })
            .collect(),
        unknown: standing.unknown,
    })
}

/// One line of the text report (writing to a String cannot fail).
macro_rules! say {
    ($out:ident) => { $out.push('\n') };
    ($out:ident, $($t:tt)*) => {{ let _ = writeln!($out, $($t)*); }};
}

fn render_text(r: &Report) -> String {
    let mut out = String::new();
    render_lock_and_markers(&mut out, r);
    say!(out);
    match &r.history {
        Some(h) => render_history(&mut out, h),
        None => render_migrations(&mut out, &r.migrations),
    }
    render_instances(&mut out, r);
    out
}

/// The release registry, one line per release: what it expects and its live instances.
fn render_instances(out: &mut String, r: &Report) {
    if r.instances.is_empty() && r.contract_barrier.is_none() {
        return;
    }
    say!(out);
    say!(out, "live instances: {}", r.instances.len());
    let mut releases: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for i in &r.instances {
        let shown = format!(
            "{} (seen {:.1}s ago)",
            i.instance,
            i.seen_ms_ago as f64 / 1000.0
        );
        match releases
            .iter_mut()
            .find(|(rel, e, _)| *rel == i.release && *e == i.expects)
        {
            Some((_, _, names)) => names.push(shown),
            None => releases.push((&i.release, &i.expects, vec![shown])),
        }
    }
    for (release, expects, names) in releases {
        say!(
            out,
            "  release {release} (expects {expects}): {}",
            names.join(", ")
        );
    }
    if let Some(b) = r.contract_barrier {
        say!(
            out,
            "contract barrier: {b} (instances built for an older version may not start)"
        );
    }
}

fn render_lock_and_markers(out: &mut String, r: &Report) {
    say!(out, "database  {} ({})", r.database, r.backend);
    say!(out, "lock      {:?} key {}", r.lock.name, r.lock.key);
    say!(out, "kind      {} ({})", r.lock.kind, r.lock.reason);
    match &r.lock.holder {
        Some(h) => say!(out, "holder    {h}"),
        None => say!(out, "holder    none"),
    }
    say!(out);
    say!(out, "markers in {} (newest first):", r.table);
    if r.markers.is_empty() {
        say!(out, "  none");
    }
    for m in &r.markers {
        say!(
            out,
            "  #{:<4} {:<10} {:<9} {:<20} applied {:<3} {} .. {}  {}{}",
            m.id,
            m.action,
            m.status,
            m.version,
            m.applied,
            m.started_at,
            m.finished_at,
            m.runner,
            m.detail
                .as_deref()
                .map(|d| match d.split_once('\n') {
                    // A file list (another migrator's succeeded run): its first line only.
                    Some((first, rest)) if first.starts_with("schemagate files") => {
                        format!("\n         {first}: {} files", rest.lines().count())
                    }
                    _ => format!("\n         {d}"),
                })
                .unwrap_or_default()
        );
    }
}

fn render_history(out: &mut String, h: &HistoryReport) {
    say!(
        out,
        "{} history in {} against the files in {}: version {} (digest {})",
        h.format,
        h.table,
        h.paths.join(", "),
        h.version,
        &h.digest[..12]
    );
    for f in &h.files {
        let contract = if f.phase == crate::phase::Phase::Contract {
            ", contract"
        } else {
            ""
        };
        if h.paths.len() > 1 {
            say!(
                out,
                "  {:<9} {} ({}, from {}{contract})",
                f.state,
                f.id,
                f.file,
                f.path
            );
        } else {
            say!(out, "  {:<9} {} ({}{contract})", f.state, f.id, f.file);
        }
    }
    for u in &h.unknown {
        say!(out, "  ahead     {u} (in {}, not in the files)", h.table);
    }
    for f in h.files.iter().filter(|f| f.state == "modified") {
        say!(
            out,
            "modified: {} changed since it was applied (the last succeeded marker \
             recorded another checksum)",
            f.file
        );
    }
    say!(
        out,
        "{}",
        if h.ready {
            "ready: every migration of the files is applied"
        } else {
            "not ready: migrations are pending"
        }
    );
}

fn render_migrations(out: &mut String, migrations: &Migrations) {
    say!(out, "applied migrations: {}", migrations.applied.len());
    for a in migrations
        .applied
        .iter()
        .filter(|a| a.source.is_some_and(|s| s != "ok"))
    {
        say!(out, "  {} {}", a.version, a.source.unwrap_or_default());
    }
    if let Some(v) = migrations.dirty {
        say!(
            out,
            "dirty: migration {v} failed part-way; see `schemagate migrate` for the repair"
        );
    }
    for index in &migrations.invalid_indexes {
        say!(
            out,
            "invalid index: {index} (a failed CREATE INDEX CONCURRENTLY? drop it and re-run)"
        );
    }
    if let Some(pending) = &migrations.pending {
        say!(out, "pending migrations: {}", pending.len());
        for p in pending {
            say!(out, "  {} {} ({})", p.version, p.description, p.phase);
        }
    }
}

// ----- `status --targets`: the fleet, one line per target -----

/// How many targets are read at once (each holds one connection while it is read).
const FLEET_READERS: usize = 16;

#[derive(Debug, Serialize)]
struct FleetReport {
    targets: usize,
    /// How many targets are in each state.
    states: std::collections::BTreeMap<&'static str, usize>,
    results: Vec<TargetStatus>,
}

#[derive(Debug, Serialize)]
struct TargetStatus {
    target: String,
    /// `up-to-date`, `pending` (with --source), `failed` (the newest marker is),
    /// `drift`, `never-migrated`, `migrated` (no --source: a `succeeded` newest marker),
    /// or `unreadable`.
    state: &'static str,
    /// The newest marker's version and status.
    version: Option<String>,
    marker: Option<String>,
    /// With --source: the migrations not applied.
    pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

async fn fleet(args: &StatusConfig) -> Result<Outcome> {
    // A target's read holds a connection that is not `Send`: on this thread, as `fleet`.
    tokio::task::LocalSet::new()
        .run_until(fleet_local(args))
        .await
}

async fn fleet_local(args: &StatusConfig) -> Result<Outcome> {
    let source = match &args.source {
        Some(spec) => Some(std::rc::Rc::new(Source::load(&spec.dirs[0])?)),
        None => None,
    };
    let mut results = Vec::with_capacity(args.targets.len());
    let mut running = tokio::task::JoinSet::new();
    let mut queue = args.targets.iter().cloned().enumerate();
    loop {
        while running.len() < FLEET_READERS {
            let Some((i, (id, cfg))) = queue.next() else {
                break;
            };
            let source = source.clone();
            running.spawn_local(async move {
                let status = match read_target(&cfg, source.as_deref()).await {
                    Ok(s) => s,
                    Err(e) => TargetStatus {
                        target: String::new(),
                        state: "unreadable",
                        version: None,
                        marker: None,
                        pending: None,
                        detail: Some(redact(&format!("{e:#}"))),
                    },
                };
                (
                    i,
                    TargetStatus {
                        target: id,
                        ..status
                    },
                )
            });
        }
        match running.join_next().await {
            Some(Ok(done)) => results.push(done),
            Some(Err(e)) => return Err(Error::Failed(format!("a target's read failed: {e}"))),
            None => break,
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<TargetStatus> = results.into_iter().map(|(_, r)| r).collect();
    let mut states = std::collections::BTreeMap::new();
    for r in &results {
        *states.entry(r.state).or_insert(0) += 1;
    }
    let unreadable = states.get("unreadable").copied().unwrap_or(0);
    let report = FleetReport {
        targets: results.len(),
        states,
        results,
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report).expect("report serializes");
        json.push('\n');
        json
    } else {
        render_fleet(&report)
    };
    crate::stdout::print(&redact(&text));
    if unreadable > 0 {
        return Err(Error::Failed(format!(
            "{unreadable} of {} target(s) could not be read",
            report.targets
        )));
    }
    Ok(Outcome {
        message: "status printed".into(),
        ..Outcome::default()
    })
}

/// One target: its newest marker, and with a source what is pending or drifted.
async fn read_target(cfg: &Config, source: Option<&Source>) -> Result<TargetStatus> {
    let mut conn = db::connect(cfg).await?;
    let newest = conn.markers(&cfg.table, 1).await?.into_iter().next();
    let (applied, dirty) = conn.applied(&cfg.migrations_table).await?;
    conn.close().await;
    let comparison = source.map(|s| s.compare(&applied));
    let drift = dirty.is_some()
        || comparison
            .as_ref()
            .is_some_and(|c| !c.modified.is_empty() || !c.missing.is_empty());
    let pending = comparison.as_ref().map(|c| c.pending.len());
    let marker = newest.as_ref().map(|m| m.status.clone());
    let state = if drift {
        "drift"
    } else if marker.as_deref() == Some("failed") && pending != Some(0) {
        "failed"
    } else if newest.is_none() && applied.is_empty() {
        "never-migrated"
    } else {
        match pending {
            Some(0) => "up-to-date",
            Some(_) => "pending",
            None => "migrated",
        }
    };
    let detail = if let Some(v) = dirty {
        Some(format!("migration {v} is dirty"))
    } else {
        comparison.filter(|_| drift).map(|c| {
            let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            format!(
                "modified: [{}], missing from the source: [{}]",
                list(&c.modified),
                list(&c.missing)
            )
        })
    };
    Ok(TargetStatus {
        target: String::new(),
        state,
        version: newest.map(|m| m.version),
        marker,
        pending,
        detail,
    })
}

fn render_fleet(r: &FleetReport) -> String {
    let counts: Vec<String> = r.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut out = format!("{} target(s): {}\n", r.targets, counts.join(", "));
    let width = r
        .results
        .iter()
        .map(|t| t.target.chars().count())
        .max()
        .unwrap_or(0);
    for t in &r.results {
        let mut line = format!("  {:<14}  {:<width$}", t.state, t.target);
        if let (Some(v), Some(m)) = (&t.version, &t.marker) {
            let _ = write!(line, "  newest marker {v} ({m})");
        }
        if let Some(n) = t.pending.filter(|n| *n > 0) {
            let _ = write!(line, "  {n} pending");
        }
        if let Some(d) = &t.detail {
            let _ = write!(line, "  {d}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
