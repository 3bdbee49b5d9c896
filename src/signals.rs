//! SIGTERM and SIGINT as a future. schemagate is often PID 1, where the kernel applies no
//! default action to these signals: unless we handle them, `docker stop` waits for SIGKILL.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
        }
    }
}

/// A handle that resolves when the first SIGINT or SIGTERM arrives; clone it freely.
#[derive(Clone)]
pub struct Signals(watch::Receiver<Option<Signal>>);

impl Signals {
    /// Install the handlers. Must be called inside the runtime.
    pub fn install() -> std::io::Result<Signals> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => Signal::Term,
                    _ = int.recv() => Signal::Int,
                };
                // Keep the first signal: it decides the exit code.
                tx.send_if_modified(|s| {
                    if s.is_none() {
                        *s = Some(sig);
                        true
                    } else {
                        false
                    }
                });
            }
        });
        Ok(Signals(rx))
    }

    /// A handle that only `stop` fires: `fleet` gives each target's run its own, and passes
    /// a real signal on to it, or stops that one target at its --target-timeout.
    pub fn manual() -> (Signals, watch::Sender<Option<Signal>>) {
        let (tx, rx) = watch::channel(None);
        (Signals(rx), tx)
    }

    /// Wait for the first signal (returns at once if it already came).
    pub async fn recv(&mut self) -> Signal {
        match self.0.wait_for(Option::is_some).await {
            Ok(s) => s.expect("wait_for checked"),
            // The sender never drops while the runtime runs.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Set once a signal arrives during a run: statements running in this process (SQLite runs
/// in-process, where no server can be asked to cancel them) stop at their next progress
/// check, so their transaction rolls back and frees the database for the marker.
static STOP_LOCAL_STATEMENTS: AtomicBool = AtomicBool::new(false);

/// Stop the statement running on this process's lock connection, where the server cannot
/// be asked to (SQLite's progress handler reads the flag).
pub fn stop_local_statements() {
    STOP_LOCAL_STATEMENTS.store(true, Ordering::SeqCst);
}

/// Whether `stop_local_statements` was called.
pub fn local_statements_stopped() -> bool {
    STOP_LOCAL_STATEMENTS.load(Ordering::Relaxed)
}
