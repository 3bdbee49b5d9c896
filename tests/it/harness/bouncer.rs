//! PgBouncer, started for one test in front of a throwaway cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::*;

// ----- PgBouncer -----

/// A PgBouncer in transaction pooling mode in front of `server`, started for one test.
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    pid: u32,
}

impl PgBouncer {
    /// Transaction pooling, 6 server connections per pool.
    pub fn start(server: &PgServer) -> PgBouncer {
        Self::start_with(server, "transaction", 6)
    }

    /// `pool_mode` (`transaction` or `session`) and `default_pool_size` as given.
    pub fn start_with(server: &PgServer, pool_mode: &str, pool_size: u32) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
            });
        let dir = server.dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={sp} user=postgres password={PASSWORD}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/users.txt\npool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\nserver_round_robin = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                sp = server.port,
                d = dir.display()
            ),
        )
        .unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
        }
        // PgBouncer refuses to run as root.
        let out = as_postgres(Path::new(bin))
            .arg("-d")
            .arg(dir.join("pgbouncer.ini"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbouncer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pidfile = dir.join("pgbouncer.pid");
        until(
            "pgbouncer to write its pid",
            Duration::from_secs(10),
            || std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim().parse::<u32>().is_ok()),
        );
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        PgBouncer { port, dir, pid }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hold `n` idle connections to `url` until the returned sender is dropped.
pub fn hold_connections(url: &str, n: usize) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let url = url.to_owned();
    std::thread::spawn(move || {
        block_on(async {
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(
                    PgConnection::connect(&url)
                        .await
                        .expect("hold a connection"),
                );
            }
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            drop(held);
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("connections held");
    tx
}

/// A slow link: a TCP proxy on 127.0.0.1 that forwards to `target_port` and holds each
/// chunk of data for `delay` before passing it on, both ways. A connection through it holds
/// its server slot for the round trips of its start-up and authentication, as on a loaded
/// machine or a distant network, whatever the load here. Stopped when dropped.
pub struct SlowLink {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowLink {
    pub fn start(target_port: u16, delay: Duration) -> SlowLink {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the slow link");
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let pump = move |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    std::thread::sleep(delay);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        SlowLink { port, stop }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accepting thread so that it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A link that can be cut: a TCP proxy on 127.0.0.1 to `target_port` that forwards both
/// ways until `cut`, then forwards nothing more while keeping every connection open, and
/// accepts new connections only to hold them (a network partition: packets dropped,
/// nothing refused or closed). Dropping it closes its connections to the server.
pub struct CutLink {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    upstream: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutLink {
    pub fn start(target_port: u16) -> CutLink {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let pump = |mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    // Cut: read and drop, so the peer sees nothing, not a closed socket.
                    if !cut.load(SeqCst) && to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                if !cut.load(SeqCst) {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                }
            });
        };
        let (cutting, servers) = (cut.clone(), upstream.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cutting.load(SeqCst) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                servers.lock().unwrap().push(server.try_clone().unwrap());
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    cutting.clone(),
                );
                pump(server, client, cutting.clone());
            }
        });
        CutLink {
            port,
            cut,
            upstream,
        }
    }

    /// Stop forwarding, both ways, without closing anything.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by this link's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        for s in self.upstream.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
