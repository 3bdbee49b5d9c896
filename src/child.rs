//! Running an external command: the migrator under the lock (`migrate -- CMD`), its output
//! streamed into our log, signals forwarded with a grace period; and resolving a command on
//! PATH up front, so "not found" is a usage error before anything else happens.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::error::{Error, Result};
use crate::redact::redact;

/// Find `program` the way a shell would: a path as is, else the first executable on PATH.
pub fn resolve(program: &str) -> Result<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return Err(Error::Config("the command after -- is empty".into()));
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::Config(format!(
                "command not found or not executable: {program}"
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::Config(format!("command not found: {program} (searched PATH)")))
}

/// A running external command whose output goes to our log.
pub struct Running {
    child: Child,
    pid: i32,
    name: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

const TAIL_LINES: usize = 20;

/// Start `command` with `env` added. Each output line is logged as `[name] line`; with
/// `json_logs` it also carries `child` and `stream` fields.
pub fn spawn(command: &[String], env: &[(&str, String)], json_logs: bool) -> Result<Running> {
    let program = resolve(&command[0])?;
    let name = Path::new(&command[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| command[0].clone());
    let mut cmd = Command::new(&program);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches us, and we decide what the
        // child gets and when.
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Config(format!("cannot run {}: {e}", command[0])))?;
    let pid = child.id().map_or(0, |p| p as i32);
    tracing::info!(
        "running {} (pid {pid}) under the lock",
        redact(&command.join(" "))
    );
    let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(stream(
            out,
            name.clone(),
            "stdout",
            None,
            json_logs,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(stream(
            err,
            name.clone(),
            "stderr",
            Some(stderr_tail.clone()),
            json_logs,
        )));
    }
    Ok(Running {
        child,
        pid,
        name,
        stderr_tail,
        readers,
    })
}

/// The longest line logged whole; a longer one is logged in pieces of this size, marked as
/// cut, so a migrator printing without newlines cannot grow our memory without bound.
const MAX_LINE: usize = 64 * 1024;

/// Read one line as bytes (at most `MAX_LINE` of them): `None` at EOF. Whether the line
/// was cut comes back with it.
async fn next_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!buf.is_empty()).then_some(false));
        }
        let room = MAX_LINE - buf.len();
        let take = available.len().min(room);
        if let Some(i) = available[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&available[..i]);
            reader.consume(i + 1);
            return Ok(Some(false));
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if buf.len() == MAX_LINE {
            return Ok(Some(true));
        }
    }
}

async fn stream(
    pipe: impl AsyncRead + Unpin,
    name: String,
    stream: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    json_logs: bool,
) {
    // Bytes, decoded lossily: one byte that is not UTF-8 must not end the reader (the
    // migrator would then die of SIGPIPE at its next write, perhaps mid-migration).
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        let cut = match next_line(&mut reader, &mut buf).await {
            Ok(Some(cut)) => cut,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot read {name}'s {stream}: {e}");
                break;
            }
        };
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let mut line = redact(&String::from_utf8_lossy(&buf));
        if cut {
            line.push_str(" [line cut at 64 KiB]");
        }
        if json_logs {
            tracing::info!(child = %name, stream, "[{name}] {line}");
        } else {
            tracing::info!("[{name}] {line}");
        }
        if let Some(tail) = &tail {
            let mut tail = tail.lock().expect("tail lock");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

impl Running {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Send `signal`, wait up to `grace`, then SIGKILL. Returns how it ended.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> std::io::Result<ExitStatus> {
        self.signal(signal);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    "{} did not exit within {grace:?} of the signal; killing it",
                    self.name
                );
                self.signal(libc::SIGKILL);
                self.child.wait().await
            }
        }
    }

    fn signal(&self, signal: i32) {
        if self.pid > 0 {
            // The whole group: a shell wrapper's children get it too.
            // SAFETY: kill(2) takes plain integers and has no memory effects.
            unsafe {
                libc::kill(-self.pid, signal);
            }
        }
    }

    /// The last lines the command wrote to stderr (redacted), after its output has drained.
    pub async fn stderr_tail(&mut self) -> String {
        for reader in self.readers.drain(..) {
            // A grandchild may hold the pipe open: do not wait for it forever.
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        let tail = self.stderr_tail.lock().expect("tail lock");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// How a finished command ended, in words.
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        _ => "ended".into(),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}
