//! Scratch databases: `check` and `smoke` rehearse in a database they make and drop
//! (`Scratch`). One that outlives its run (SIGKILL, a lost host) is dropped by a later
//! run: see `stale.rs` for a server's databases; a SQLite rehearsal's scratch directory
//! is held by an `flock` on a file beside it, taken before it is made, and swept here.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::db::{Conn, connect};
use crate::error::{Error, Result};
use crate::settings::Config;

/// A database made for one rehearsal (`smoke`, `check`) and dropped after it, on any
/// backend: a new database on the server the URL names, locked and marked as above, or a
/// file in a new locked temp directory (SQLite). Dropped by `drop_it`, or by `Drop` when
/// the future that owned it was cancelled (a signal).
pub struct Scratch {
    /// The database's name (the file's path, for SQLite).
    pub name: String,
    /// Its URL: the given URL with the scratch database in place of its own.
    pub url: String,
    /// A connection to the URL's own database, open until the scratch database is
    /// dropped: it holds the lock that says the database is in use, and drops it.
    admin: Option<Conn>,
    /// How to reach the server again from `Drop`.
    given: Option<Config>,
    /// SQLite: the temp directory holding the file, and its lock.
    dir: Option<(PathBuf, DirLock)>,
}

impl Scratch {
    /// A new scratch database on the server `given` names (a new file for SQLite), named
    /// after `what` (`check`, `smoke`) and this process. `refused` says why when the
    /// server does not let it be made (given its name and the driver's error).
    pub async fn create(
        given: &Config,
        what: &str,
        refused: impl FnOnce(&str, sqlx::Error) -> Error,
    ) -> Result<Scratch> {
        if !given.backend.has_server() {
            return Scratch::file(what);
        }
        let name = name(what);
        let mut url = url::Url::parse(&given.url)
            .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?;
        url.set_path(&format!("/{name}"));
        let mut admin = connect(given).await?;
        // Scratch databases of killed runs go first; ours is locked before it exists.
        let created = match prepare(&mut admin, &name).await {
            Ok(()) => admin.backend().create_database(&name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            admin.close().await;
            return Err(refused(&name, e));
        }
        mark_created(&mut admin, &name, what).await;
        tracing::info!("created scratch database {name}");
        Ok(Scratch {
            name,
            url: url.to_string(),
            admin: Some(admin),
            given: Some(given.clone()),
            dir: None,
        })
    }

    /// A SQLite file in a new temp directory, locked while it exists.
    pub fn file(what: &str) -> Result<Scratch> {
        sweep_dirs();
        let dir = std::env::temp_dir().join(name(what));
        let lock = lock_dir(&dir)
            .map_err(|e| Error::Failed(format!("cannot lock {}: {e}", dir.display())))?;
        let file = dir.join(format!("{what}.db"));
        let scratch = Scratch {
            name: file.display().to_string(),
            url: format!("sqlite://{}", file.display()),
            admin: None,
            given: None,
            dir: Some((dir.clone(), lock)),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
        Ok(scratch)
    }

    /// `given` with the scratch database's URL in place of its own.
    pub fn config(&self, given: &Config) -> Config {
        Config {
            url: self.url.clone(),
            display_url: crate::redact::redact_url(&self.url),
            read_only: false,
            ..given.clone()
        }
    }

    /// The connection to the URL's own database (server backends).
    pub fn admin(&mut self) -> Option<&mut Conn> {
        self.admin.as_mut()
    }

    /// Drop it now: from the connection that holds its lock, else from a new one.
    pub async fn drop_it(mut self) {
        let Some(mut admin) = self.admin.take() else {
            return; // a file: its directory goes with `Drop`
        };
        let given = self.given.take().expect("a server's scratch database");
        let mut dropped = admin.drop_database(&self.name).await;
        if dropped.is_err()
            && let Ok(mut conn) = connect(&given).await
        {
            dropped = conn.drop_database(&self.name).await;
            conn.close().await;
        }
        admin.close().await;
        match dropped {
            Ok(()) => tracing::info!("dropped scratch database {}", self.name),
            Err(e) => tracing::warn!("the scratch database {} was left behind: {e:#}", self.name),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((dir, lock)) = self.dir.take() {
            lock.release(&dir);
        }
        let Some(given) = self.given.take() else {
            return;
        };
        // Not dropped by `drop_it`: the future that owned it was cancelled. Drop the
        // database from a thread with its own runtime (this one may be shutting down), and
        // wait for it; the lock's connection goes last.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut c = connect(&given).await.ok()?;
                let dropped = c.drop_database(&name).await.ok();
                c.close().await;
                dropped
            })
        })
        .join();
        match dropped {
            Ok(Some(())) => tracing::info!("dropped scratch database {}", self.name),
            _ => tracing::error!(
                "cannot drop the scratch database {}; drop it by hand",
                self.name
            ),
        }
    }
}

/// A name no other rehearsal on this server uses at the same time.
pub fn name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "schemagate_{what}_{}_{:06}",
        std::process::id(),
        nanos / 1000
    )
}

/// Before creating scratch database `name` on `c`'s server: drop the stale ones, then
/// take `name`'s lock (`c` must stay open until `name` is dropped).
pub async fn prepare(c: &mut Conn, name: &str) -> Result<(), sqlx::Error> {
    c.backend().prepare_scratch(name).await
}

/// Mark `name`, just created on `c`'s server, as `what`'s (a failure is only logged: the
/// database is then named in later runs' warnings instead of dropped).
pub async fn mark_created(c: &mut Conn, name: &str, what: &str) {
    if let Err(e) = c.backend().mark_scratch(name, what).await {
        tracing::warn!(
            "cannot mark the scratch database {name} as {what}'s: {}",
            crate::redact::redact(&e.to_string())
        );
    }
}

/// A local scratch directory (a SQLite rehearsal's) in use: an exclusive `flock` on
/// `<dir>.lock`, taken before the directory is made and released by the kernel when the
/// run ends, however it ends.
pub struct DirLock {
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: std::fs::File,
}

/// Lock `dir` (not made yet) for this run.
pub fn lock_dir(dir: &Path) -> std::io::Result<DirLock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(dir))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(DirLock { _file: file })
}

impl DirLock {
    /// The run is over: the directory and its lock file go.
    pub fn release(self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(lock_path(dir));
    }
}

fn lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Remove the scratch directories (and lock files) in the temp directory whose run is gone:
/// their lock can be taken. One without a lock file (an older version's) is left alone.
pub fn sweep_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".lock") else {
            continue;
        };
        // (`schemagate-smoke-<pid>`: the name before smoke's directory was a `Scratch`.)
        if ![
            "schemagate_check_",
            "schemagate_smoke_",
            "schemagate-smoke-",
        ]
        .iter()
        .any(|p| base.starts_with(p))
        {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        // SAFETY: as in lock_dir.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // its run is alive
        }
        let dir = path.with_file_name(base);
        if dir.exists() {
            tracing::warn!(
                "removed the stale scratch directory {}: the run that made it is gone",
                dir.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scratch_directory_is_swept_only_once_its_run_is_gone() {
        let dir =
            std::env::temp_dir().join(format!("schemagate_check_{}_{}", std::process::id(), 1));
        let lock = super::lock_dir(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        // Held by this process (another descriptor cannot take it): left alone.
        super::sweep_dirs();
        assert!(dir.exists());
        // The run ends without cleaning up (as a SIGKILL would leave it): swept.
        drop(lock);
        super::sweep_dirs();
        assert!(!dir.exists());
        assert!(!super::lock_path(&dir).exists());
    }
}
