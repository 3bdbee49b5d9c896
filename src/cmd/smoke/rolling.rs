//! `schemagate smoke --rolling`: rehearse rolling updates with expand/contract
//! (docs/src/phases.md) using this very binary as the instances and the migrators.
//!
//! Each update k replaces 3 instances of release k-1 by 3 of release k, as a Deployment
//! does: `migrate --phase expand`, a `migrate --phase contract --wait-for-drain` started at
//! once (the recipe's contract Job), the new instances (`wait --phase expand --release vK
//! -- sleep`), then each old instance ends by a random fault: SIGTERM, SIGKILL of its
//! process group, or (on a server) a partition: its own TCP proxy to the server stops
//! forwarding, and its supervisor must stop the app before its row expires. A new
//! instance is SIGKILLed and replaced at random. Every fifth update skips a release (its
//! source holds the skipped release's contract before its own expand).
//!
//! The apps are watched every 10 ms, and whenever a contract run logs that the gate let a
//! contract through: an app of a release built before that contract seen alive after that
//! line is a violation. Seen alive *after* the line was read, so a violation is never a
//! false alarm of the watch's resolution.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use std::process::{Child, Command};

use super::{Outcome, SmokeConfig, config_for, rehearsal_database, std_command};
use crate::db::Scratch;
use crate::error::{Error, Result};
use crate::settings::{Backend, Config, MigrationsTable};
use crate::signals::Signals;

/// The rehearsed instances' `--instance-ttl`.
const TTL: Duration = Duration::from_secs(3);
/// Instances per release.
const REPLICAS: usize = 3;
/// The acceptance bound on a contract's start after the last old app ended.
const MAX_DELAY: Duration = Duration::from_secs(60);

pub(super) async fn run(args: &SmokeConfig, updates: u32, mut signals: Signals) -> Result<Outcome> {
    let started = Instant::now();
    // Its directory holds the generated sources (and the default SQLite file).
    let temp = Scratch::file("smoke")?;
    let dir = Path::new(&temp.name)
        .parent()
        .expect("a scratch file is in a directory")
        .to_path_buf();
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| temp.url.clone());
    let table = MigrationsTable::resolve(None, None)?;
    let given = config_for(&url, args, &table)?;
    // As plain smoke: a scratch database on a server, a SQLite file must hold no tables.
    let (scratch, cfg) = rehearsal_database(&given, args, &table).await?;
    let proxied = cfg.backend != Backend::Sqlite;
    outln!(
        "schemagate smoke --rolling: {updates} rolling updates of {REPLICAS} instances against {} \
         (faults: SIGTERM, SIGKILL{})",
        cfg.display_url,
        if proxied {
            ", partitions"
        } else {
            "; partitions need a server --database-url"
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut r = Rolling {
        exe: std::env::current_exe()
            .map_err(|e| Error::Failed(format!("cannot find this executable: {e}")))?,
        dir,
        server: if proxied {
            Some(server_addr(&cfg)?)
        } else {
            None
        },
        cfg,
        timeout: args.timeout,
        rng: Rng::seeded(),
        watch: Arc::new(Mutex::new(Watch::default())),
        figures: Figures::default(),
        stop: stop.clone(),
    };
    // Processes, threads and sleeps: plain blocking code on a thread of its own is much
    // smaller in the binary than the same as futures. A signal stops it at its next poll.
    let mut task = tokio::task::spawn_blocking(move || {
        let res = r.rehearse(updates);
        (r, res)
    });
    let joined = tokio::select! {
        j = &mut task => j,
        sig = signals.recv() => {
            stop.store(true, SeqCst);
            task.await.map(|(r, _)| (r, Err(Error::Interrupted(sig))))
        }
    };
    let (r, result) = joined.map_err(|e| Error::Failed(format!("the rehearsal failed: {e}")))?;
    if let Some(scratch) = scratch {
        scratch.drop_it().await;
    }
    let violations = r.watch.lock().expect("watch").violations.clone();
    r.figures.print(updates, started, &violations);
    result?;
    r.figures.verdict(&violations)
}

/// The server's address, for the partition proxies.
fn server_addr(cfg: &Config) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(&cfg.url)
        .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?;
    let host = url.host_str().unwrap_or("localhost");
    let port = url.port().unwrap_or(match cfg.backend {
        Backend::MySql => 3306,
        _ => 5432,
    });
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("cannot resolve {host}:{port}")))
}

/// splitmix64: the faults need no more randomness than this.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(t ^ (u64::from(std::process::id()) << 32))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// A TCP forwarder to the server that can be cut: then it forwards nothing more, either
/// way, and holds its connections open (packets dropped, not refused). Plain threads, as
/// the HTTP client's std::net already is in the binary: little code of its own.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Its connections to the server, closed when it is dropped.
    upstream: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::Failed(format!("cannot start a proxy: {e}")))?;
        let port = listener.local_addr().map_or(0, |a| a.port());
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let (cutting, servers) = (cut.clone(), upstream.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if cutting.load(SeqCst) {
                    // After the cut (or the wake-up of the drop): held, never forwarded.
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if let (Ok(c), Ok(s), Ok(u)) =
                    (client.try_clone(), server.try_clone(), server.try_clone())
                {
                    servers.lock().expect("proxy").push(u);
                    for (from, to) in [(c, s), (server, client)] {
                        let cut = cutting.clone();
                        std::thread::spawn(move || pump(from, to, &cut));
                    }
                }
            }
        });
        Ok(Proxy {
            port,
            cut,
            upstream,
        })
    }

    fn partition(&self) {
        self.cut.store(true, SeqCst);
    }
}

/// Forward `from` to `to` until either ends; once cut, read and drop.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if !cut.load(SeqCst) && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if !cut.load(SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.store(true, SeqCst);
        for s in self.upstream.lock().expect("proxy").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// An app as the watch sees it: its pid and start time (so a reused pid is not it).
struct App {
    name: String,
    expects: i64,
    pid: i32,
    start: String,
    ended: Option<Instant>,
}

/// The fields of /proc/PID/stat after the command name: the state, then the start time.
fn stat(pid: i32) -> Option<(char, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some((rest.first()?.chars().next()?, rest.get(19)?.to_string()))
}

impl App {
    fn alive(&self) -> bool {
        stat(self.pid)
            .is_some_and(|(state, start)| !matches!(state, 'Z' | 'X') && start == self.start)
    }
}

/// The apps, the contracts the gate let through, and what broke the rule.
#[derive(Default)]
struct Watch {
    apps: Vec<App>,
    /// (contract version, when its "may run" line was read).
    gates: Vec<(i64, Instant)>,
    violations: Vec<String>,
}

impl Watch {
    /// Look at every app still running: one of a release built before a contract the gate
    /// let through earlier is a violation; one gone is marked ended.
    fn scan(&mut self) {
        let now = Instant::now();
        for app in self.apps.iter_mut().filter(|a| a.ended.is_none()) {
            if !app.alive() {
                app.ended = Some(now);
                continue;
            }
            for (version, _) in self
                .gates
                .iter()
                .filter(|(v, at)| *v > app.expects && *at <= now)
            {
                let v = format!(
                    "contract {version} started while the app of {} (built for {}) was alive",
                    app.name, app.expects
                );
                if !self.violations.contains(&v) {
                    self.violations.push(v);
                }
            }
        }
    }

    /// A contract run logged that `version` may run.
    fn gate(&mut self, version: i64) {
        self.gates.push((version, Instant::now()));
        self.scan();
    }
}

/// The contract version in a `migrate` log line saying the gate let it through.
fn gate_line(line: &str) -> Option<i64> {
    let rest = line.split_once("contract migration ")?.1;
    let (version, rest) = rest.split_once(' ')?;
    rest.contains(") may run").then(|| version.parse().ok())?
}

#[derive(Default)]
struct Figures {
    updates: u32,
    skips: u32,
    sigterm: u32,
    sigkill: u32,
    partitions: u32,
    new_killed: u32,
    delays: Vec<Duration>,
    refused: u32,
    skip_done: u32,
    skip_failed: u32,
    /// Per partitioned app: how long before its row expired it was seen gone (ms, on the
    /// server's clock; negative: it outlived its row).
    fenced: Vec<i64>,
    /// Whether `wait --once --source` of the last release passed.
    applied: Option<bool>,
    /// Unaccepted findings in expand migrations, accepted ones in contracts.
    check: Option<(usize, usize)>,
}

impl Figures {
    fn print(&self, planned: u32, started: Instant, violations: &[String]) {
        let mut d = self.delays.clone();
        d.sort();
        let delay = match (d.get(d.len() / 2), d.last()) {
            (Some(m), Some(x)) => format!(
                "median {:.1} s, max {:.1} s (TTL {TTL:?})",
                m.as_secs_f64(),
                x.as_secs_f64()
            ),
            _ => "none measured".into(),
        };
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        outln!();
        outln!("| | |\n| --- | --- |");
        for (what, value) in [
            (
                "rolling updates",
                format!(
                    "{} of {planned} ({} skipping a release), {:.0} s, load average {}",
                    self.updates,
                    self.skips,
                    started.elapsed().as_secs_f64(),
                    load.join(" ")
                ),
            ),
            (
                "faults on old instances",
                format!(
                    "{} SIGTERM, {} SIGKILL, {} partitions; {} new instances SIGKILLed",
                    self.sigterm, self.sigkill, self.partitions, self.new_killed
                ),
            ),
            (
                "partitioned apps stopped before their row expired",
                match self.fenced.iter().min() {
                    Some(m) => format!(
                        "{} of {} (least margin {:.2} s)",
                        self.fenced.iter().filter(|m| **m > 0).count(),
                        self.fenced.len(),
                        *m as f64 / 1000.0
                    ),
                    None => "no partition".into(),
                },
            ),
            (
                "contracts started while an older app was alive",
                violations.len().to_string(),
            ),
            ("contract start after the last old app ended", delay),
            (
                "N -> N+2 updates: expand refused (75), completed, failed",
                format!("{}, {}, {}", self.refused, self.skip_done, self.skip_failed),
            ),
            (
                "every migration applied (`wait --once --source`)",
                match self.applied {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "not checked",
                }
                .into(),
            ),
            (
                "`check` findings unaccepted in expands (accepted in contracts)",
                self.check
                    .map_or("not checked".into(), |(e, c)| format!("{e} ({c})")),
            ),
        ] {
            outln!("| {what} | {value} |");
        }
        for v in violations {
            outln!("VIOLATION: {v}");
        }
    }

    fn verdict(&self, violations: &[String]) -> Result<Outcome> {
        let mut failed = Vec::new();
        if !violations.is_empty() {
            failed.push(format!(
                "{} contract(s) started while an older app was alive",
                violations.len()
            ));
        }
        if self.fenced.iter().any(|m| *m <= 0) {
            failed.push("a partitioned app outlived its registry row".into());
        }
        if self.delays.iter().any(|d| *d > MAX_DELAY) {
            failed.push(format!(
                "a contract started more than {MAX_DELAY:?} after the last old app ended"
            ));
        }
        if self.check.is_none_or(|(e, _)| e > 0) {
            failed.push("`check` found breaking changes in expand migrations".into());
        }
        if self.applied != Some(true) {
            failed.push("not every migration was applied".into());
        }
        if failed.is_empty() {
            outln!("\nsmoke --rolling passed");
            return Ok(Outcome {
                version: None,
                applied: None,
                message: "smoke --rolling: every check passed".into(),
                exec: None,
            });
        }
        Err(Error::Failed(format!(
            "smoke --rolling failed: {}",
            failed.join("; ")
        )))
    }
}

/// One rehearsed instance: `wait --release -- sleep`, in a process group of its own.
struct Instance {
    name: String,
    expects: i64,
    child: Child,
    pid: i32,
    proxy: Option<Proxy>,
    app: Option<i32>,
    /// Its stderr, a file in the run's directory.
    log: PathBuf,
}

impl Instance {
    fn kill_group(&self) {
        // SAFETY: kill(2) on the group of a child not reaped yet; no memory effects.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }

    fn signal(&self, signal: i32) {
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, signal) };
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
            let _ = self.child.wait();
        } else if let Some(app) = self.app.filter(|a| stat(*a).is_some()) {
            // SAFETY: as above, on the app the watch found.
            unsafe { libc::kill(app, libc::SIGKILL) };
        }
    }
}

struct Rolling {
    exe: PathBuf,
    dir: PathBuf,
    /// The server's address, for the partition proxies (`None`: SQLite, no partitions).
    server: Option<SocketAddr>,
    cfg: Config,
    timeout: Duration,
    rng: Rng,
    watch: Arc<Mutex<Watch>>,
    figures: Figures,
    /// Set on a signal: every wait gives up at its next poll.
    stop: Arc<AtomicBool>,
}

/// A `migrate` run in the background whose "may run" lines feed the watch; killed if
/// dropped before it ends.
struct Migrating {
    child: Child,
    lines: Option<std::thread::JoinHandle<(Vec<String>, Option<Instant>)>>,
}

impl Drop for Migrating {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sets its flag when dropped (the watch's thread stops).
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

impl Rolling {
    /// Release k's migrations: an expand and a contract per release 1..=k.
    fn source(&self, k: u32) -> Result<PathBuf> {
        let d = self.dir.join(format!("release{k}"));
        let write = |p: PathBuf, sql: String| {
            std::fs::write(&p, sql)
                .map_err(|e| Error::Failed(format!("cannot write {}: {e}", p.display())))
        };
        std::fs::create_dir_all(d.join("contract"))
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", d.display())))?;
        for j in 1..=k {
            write(
                d.join(format!("{j}1_t{j}.sql")),
                format!("CREATE TABLE t{j} (id int, old{j} int);\n"),
            )?;
            write(
                d.join(format!("contract/{j}2_drop_old{j}.sql")),
                format!("ALTER TABLE t{j} DROP COLUMN old{j};\n"),
            )?;
        }
        Ok(d)
    }

    fn command(&self, url: &str) -> Command {
        std_command(&self.exe, url, &self.cfg)
    }

    fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        cmd.spawn()
            .map_err(|e| Error::Failed(format!("cannot start {}: {e}", self.exe.display())))
    }

    /// Poll `ready` every 10 ms until it answers, within `limit`; a signal ends it.
    fn poll<T>(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = ready() {
                return Ok(v);
            }
            if self.stop.load(SeqCst) {
                return Err(Error::Failed("interrupted".into()));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!("{what} within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn migrate(&self, src: &Path, phase: &str, drain: bool) -> Result<Migrating> {
        let mut cmd = self.command(&self.cfg.url);
        cmd.args(["migrate", "--phase", phase, "--source"]).arg(src);
        if drain {
            cmd.arg("--wait-for-drain")
                .arg(humantime::format_duration(self.timeout).to_string());
        }
        let mut child = self.spawn(&mut cmd)?;
        let stderr = child.stderr.take().expect("piped");
        let watch = self.watch.clone();
        let lines = std::thread::spawn(move || {
            let (mut lines, mut last_gate) = (Vec::new(), None);
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(|l| l.ok())
            {
                if let Some(v) = gate_line(&line) {
                    watch.lock().expect("watch").gate(v);
                    last_gate = Some(Instant::now());
                }
                lines.push(line);
            }
            (lines, last_gate)
        });
        Ok(Migrating {
            child,
            lines: Some(lines),
        })
    }

    /// Wait for a `migrate` run: its exit code, its log, when the gate last let it through.
    fn finish(&self, mut m: Migrating) -> Result<(i32, String, Option<Instant>)> {
        let limit = self.timeout + Duration::from_secs(30);
        let status = self.poll(limit, "a migrate run to end", || {
            m.child.try_wait().ok().flatten()
        })?;
        let (lines, gate) = m
            .lines
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let tail = lines[lines.len().saturating_sub(3)..].join("\n");
        Ok((
            status.code().unwrap_or(-1),
            crate::redact::redact(&tail),
            gate,
        ))
    }

    fn start(&self, src: &Path, k: u32, name: String) -> Result<Instance> {
        use std::os::unix::process::CommandExt;
        let proxy = self.server.map(Proxy::start).transpose()?;
        let url = match &proxy {
            Some(p) => {
                let u = url::Url::parse(&self.cfg.url).expect("parsed before");
                format!(
                    "{}127.0.0.1:{}{}",
                    &u[..url::Position::BeforeHost],
                    p.port,
                    &u[url::Position::AfterPort..]
                )
            }
            None => self.cfg.url.clone(),
        };
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", log.display())))?;
        let mut cmd = self.command(&url);
        cmd.args(["wait", "--phase", "expand", "--release", &format!("v{k}")])
            .args([
                "--instance",
                &name,
                "--instance-ttl",
                &format!("{}s", TTL.as_secs()),
            ])
            .arg("--timeout")
            .arg(humantime::format_duration(self.timeout).to_string())
            .arg("--source")
            .arg(src)
            .args(["--", "sleep", "100000"])
            .stderr(file)
            .process_group(0);
        let child = self.spawn(&mut cmd)?;
        Ok(Instance {
            name,
            expects: i64::from(k) * 10 + 2,
            pid: child.id() as i32,
            child,
            proxy,
            app: None,
            log,
        })
    }

    /// Find each instance's app (its child, once `wait` has started it) and watch it.
    fn watch_apps(&self, instances: &mut [Instance]) -> Result<()> {
        for i in instances {
            let children = format!("/proc/{0}/task/{0}/children", i.pid);
            let found = self.poll(self.timeout, "an app to start", || {
                if let Some(pid) = std::fs::read_to_string(&children)
                    .ok()
                    .and_then(|k| k.split_whitespace().next()?.parse::<i32>().ok())
                {
                    return Some(Ok(pid));
                }
                let exited = i.child.try_wait().ok().flatten()?;
                Some(Err(exited))
            });
            let pid = match found {
                Ok(Ok(pid)) => pid,
                other => {
                    let err = std::fs::read_to_string(&i.log).unwrap_or_default();
                    return Err(Error::Failed(format!(
                        "instance {} never started its app ({}): {}",
                        i.name,
                        match other {
                            Ok(Err(status)) => status.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => unreachable!(),
                        },
                        crate::redact::redact(err.trim())
                    )));
                }
            };
            i.app = Some(pid);
            let start = stat(pid).map(|s| s.1).unwrap_or_default();
            self.watch.lock().expect("watch").apps.push(App {
                name: i.name.clone(),
                expects: i.expects,
                pid,
                start,
                ended: None,
            });
        }
        Ok(())
    }

    fn rehearse(&mut self, updates: u32) -> Result<()> {
        let done = Done(Arc::new(AtomicBool::new(false)));
        let (watch, finished) = (self.watch.clone(), done.0.clone());
        std::thread::spawn(move || {
            while !finished.load(SeqCst) {
                watch.lock().expect("watch").scan();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let mut k = 1;
        let src = self.source(1)?;
        let (code, log, _) = self.finish(self.migrate(&src, "contract", false)?)?;
        if code != 0 {
            return Err(Error::Failed(format!(
                "the first migrate exited {code}: {log}"
            )));
        }
        let mut old = (0..REPLICAS)
            .map(|i| self.start(&src, 1, format!("r1-{i}")))
            .collect::<Result<Vec<_>>>()?;
        self.watch_apps(&mut old)?;
        for update in 0..updates {
            let skip = update % 5 == 4;
            let k_new = k + 1 + u32::from(skip);
            let src = self.source(k_new)?;
            let (code, log, _) = self.finish(self.migrate(&src, "expand", false)?)?;
            // A skipped release's contract holds up this release's expand while k runs.
            let refused = code == 75;
            if code != 0 && !refused {
                return Err(Error::Failed(format!(
                    "update {}: expand exited {code}: {log}",
                    update + 1
                )));
            }
            self.figures.refused += u32::from(refused);
            let contract = self.migrate(&src, if refused { "expand" } else { "contract" }, true)?;
            let mut new = (0..REPLICAS)
                .map(|i| self.start(&src, k_new, format!("r{k_new}-{i}")))
                .collect::<Result<Vec<_>>>()?;
            let mut partitioned = Vec::new();
            for i in &old {
                match self.rng.below(if self.server.is_some() { 3 } else { 2 }) {
                    0 => {
                        self.figures.sigterm += 1;
                        i.signal(libc::SIGTERM);
                    }
                    1 => {
                        self.figures.sigkill += 1;
                        i.kill_group();
                    }
                    _ => {
                        self.figures.partitions += 1;
                        partitioned.push((i.app, self.expiry(i)));
                        i.proxy.as_ref().expect("a server").partition();
                    }
                }
                std::thread::sleep(Duration::from_millis(self.rng.below(500)));
            }
            if self.rng.below(2) == 0 {
                let victim = new.remove(self.rng.below(REPLICAS as u64) as usize);
                victim.kill_group();
                self.figures.new_killed += 1;
                new.push(self.start(&src, k_new, format!("r{k_new}-again-{update}"))?);
            }
            let (mut code, mut log, gate) = self.finish(contract)?;
            if code == 0 && refused {
                // The skipped release's contract and this one's expand are applied: now its
                // own contract.
                (code, log, _) = self.finish(self.migrate(&src, "contract", true)?)?;
            }
            if code != 0 {
                self.figures.skip_failed += u32::from(skip);
                return Err(Error::Failed(format!(
                    "update {} (to v{k_new}): the contract run exited {code}: {log}",
                    update + 1
                )));
            }
            self.figures.skip_done += u32::from(skip);
            self.watch_apps(&mut new)?;
            let last_end = self.ended(&old)?;
            if let Some(gate) = gate {
                self.figures
                    .delays
                    .push(gate.saturating_duration_since(last_end));
            }
            // How long before its row expired each partitioned app was seen gone (ms; 0 or
            // less: it outlived its row, or its expiry could not be read). Both ends err
            // towards less margin: the expiry is read early, the end seen up to 10 ms late.
            for (app, expiry) in partitioned {
                let expiry = expiry.join().ok().flatten();
                self.figures.fenced.push(match (expiry, self.end_of(app)) {
                    (Some(x), Some(e)) if x > e => (x - e).as_millis() as i64,
                    (Some(x), Some(e)) => -((e - x).as_millis() as i64),
                    _ => 0,
                });
            }
            for i in &mut old {
                self.poll(self.timeout, "an old instance to exit", || {
                    i.child.try_wait().ok().flatten()
                })?;
            }
            self.figures.updates += 1;
            self.figures.skips += u32::from(skip);
            eprintln!(
                "[smoke --rolling] update {}/{updates}: v{k} -> v{k_new}",
                update + 1
            );
            old = new;
            k = k_new;
        }
        for i in &mut old {
            i.signal(libc::SIGTERM);
            self.poll(self.timeout, "an instance to exit", || {
                i.child.try_wait().ok().flatten()
            })?;
        }
        self.count(&self.source(k)?)
    }

    /// When a partitioned instance's row expires, at the latest: `status --json` run at
    /// once after the cut (while the row still has at least two thirds of its TTL) reads
    /// its time left on the server's clock, counted from when `status` was started, which
    /// is before the server read its clock. `None`: `status` did not list it.
    fn expiry(&self, i: &Instance) -> std::thread::JoinHandle<Option<Instant>> {
        let mut status = self.command(&self.cfg.url);
        status
            .args(["status", "--json"])
            .stdout(std::process::Stdio::piped());
        let key = format!("\"instance\": \"{}\"", i.name);
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = status.output().ok()?;
            let json = String::from_utf8_lossy(&out.stdout);
            let (_, rest) = json.split_once(&key)?.1.split_once("\"expires_in_ms\":")?;
            let rest = rest.trim_start();
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            Some(started + Duration::from_millis(rest[..end].parse().ok()?))
        })
    }

    /// When this app ended, as the watch saw it.
    fn end_of(&self, app: Option<i32>) -> Option<Instant> {
        let w = self.watch.lock().expect("watch");
        w.apps
            .iter()
            .find(|a| Some(a.pid) == app)
            .and_then(|a| a.ended)
    }

    /// When the last of these apps ended, as the watch saw it.
    fn ended(&self, old: &[Instance]) -> Result<Instant> {
        self.poll(self.timeout, "every old app to end", || {
            old.iter()
                .map(|i| self.end_of(i.app))
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .max()
        })
    }

    /// Whether every migration is applied (`wait --once --source`, contracts included), and
    /// what `check` says of them all (`--since 0`).
    fn count(&mut self, src: &Path) -> Result<()> {
        let applied = self
            .command(&self.cfg.url)
            .args(["wait", "--once", "--source"])
            .arg(src)
            .status()
            .map_err(|e| Error::Failed(format!("cannot run wait: {e}")))?;
        self.figures.applied = Some(applied.success());
        let out = self
            .command(&self.cfg.url)
            .args(["check", "--json", "--since", "0", "--source"])
            .arg(src)
            .stdout(std::process::Stdio::piped())
            .output()
            .map_err(|e| Error::Failed(format!("cannot run check: {e}")))?;
        if !matches!(out.status.code(), Some(0 | 5)) {
            return Err(Error::Failed(format!(
                "check exited {:?}: {}",
                out.status.code(),
                crate::redact::redact(String::from_utf8_lossy(&out.stderr).trim())
            )));
        }
        self.figures.check = Some(findings(&String::from_utf8_lossy(&out.stdout)));
        Ok(())
    }
}

/// In `check --json`'s report: the unaccepted findings of expand migrations (versions
/// ending in 1 here) and the accepted ones of contracts (ending in 2). Read without a JSON parser, which the binary
/// has no other use for: a finding's `"accepted"` belongs to the migration whose
/// `"version"` came last before it (a key in quotes never occurs inside a JSON string,
/// where quotes are escaped).
fn findings(json: &str) -> (usize, usize) {
    let (mut version, mut expands, mut contracts) = (0, 0, 0);
    for (at, key) in json.match_indices(['"']) {
        let rest = &json[at + key.len()..];
        let value = |k: &str| rest.strip_prefix(k).map(|r| r.trim_start().to_owned());
        if let Some(v) = value("version\":") {
            version = v
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = value("accepted\":") {
            match (version % 10 == 2, v.starts_with("true")) {
                (false, false) => expands += 1,
                (true, true) => contracts += 1,
                _ => {}
            }
        }
    }
    (expands, contracts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_check_findings_by_phase() {
        let json = r#"{"migrations": [
            {"version": 11, "findings": [{"detail": "a \"version\": 12", "accepted": false}]},
            {"version": 12, "findings": [{"accepted": true}, {"accepted": false}]},
            {"version": 21, "findings": []}]}"#;
        assert_eq!(findings(json), (1, 1));
    }

    #[test]
    fn reads_the_gate_line() {
        let line = "2026-12-03T14:00:00Z INFO contract migration 22 (drop old2) may run: no \
                    live instance was built before it (3 live)";
        assert_eq!(gate_line(line), Some(22));
        assert_eq!(gate_line("waiting before contract migration 22: ..."), None);
    }

    /// The watch reports a real app of an older release alive after a contract's gate
    /// line, naming it, and nothing for a newer one or once the app is gone.
    #[test]
    fn an_older_app_alive_after_the_gate_is_a_violation() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = sleeper.id() as i32;
        let app = |name: &str, expects| App {
            name: name.into(),
            expects,
            pid,
            start: stat(pid).unwrap().1,
            ended: None,
        };
        let mut w = Watch::default();
        w.apps.push(app("r1-0", 12));
        w.apps.push(app("r2-0", 22));
        w.scan();
        assert!(w.violations.is_empty());
        w.gate(22);
        assert_eq!(
            w.violations,
            ["contract 22 started while the app of r1-0 (built for 12) was alive"]
        );
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        w.gate(32);
        assert_eq!(w.violations.len(), 1, "{:?}", w.violations);
        assert!(w.apps.iter().all(|a| a.ended.is_some()));
    }
}
