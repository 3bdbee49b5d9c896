//! SQLite: an OS file lock on `<database file>.schemagate-lock`, released by the kernel
//! when the process dies. The file holds who took it, for `status` and waiting runs.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;

use crate::db::{self, Holder};
use crate::error::{Error, Result};
use crate::settings::Config;

/// Try once: `Some(file)` (kept open while we hold the lock) or `None` when held.
/// An in-memory database is private to this process: `Some(None)`.
pub fn try_lock(cfg: &Config) -> Result<Option<Option<File>>> {
    let Some(path) = path(cfg) else {
        return Ok(Some(None));
    };
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Say who holds it, for `status` and for the runs that wait.
            let _ = file.set_len(0);
            let _ = write!(file, "{}\n{}\n", cfg.runner, now_unix());
            Ok(Some(Some(file)))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

pub fn release(file: File) {
    let _ = file.set_len(0);
    drop(file);
}

pub fn holder(cfg: &Config) -> Result<Option<Holder>> {
    let Some(path) = path(cfg) else {
        return Ok(None);
    };
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    if file.try_lock_shared().is_ok() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines = text.lines();
    let runner = lines.next().unwrap_or("unknown").to_owned();
    let since: f64 = lines
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now_unix());
    Ok(Some(Holder {
        pid: runner
            .rsplit_once("(pid ")
            .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
            .unwrap_or(0),
        application_name: runner,
        client: "this host".into(),
        held_for_secs: (now_unix() - since).max(0.0),
    }))
}

/// `<database file>.schemagate-lock`, or `None` for an in-memory database.
pub fn path(cfg: &Config) -> Option<PathBuf> {
    let opts = db::sqlite_options(cfg).ok()?;
    let file = opts.get_filename();
    let s = file.to_string_lossy();
    if s.is_empty() || s == ":memory:" || s.starts_with("file::memory:") {
        return None;
    }
    let mut lock = file.as_os_str().to_owned();
    lock.push(".schemagate-lock");
    Some(PathBuf::from(lock))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
