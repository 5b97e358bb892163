//! A throw-away etcd server inside a test namespace ([`Etcd`]).
//!
//! The server listens for clients on `http://IP:2379` and for peers on
//! `127.0.0.1:2380`, both inside the namespace, with a fresh data directory
//! (under `/dev/shm` when it exists, so that fsyncs are cheap) that survives
//! [`Etcd::stop`]/[`Etcd::kill`] so that [`Etcd::restart`] brings the same
//! data back. Dropping the guard kills the server and deletes the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Netns, Result, command_line};

/// The client port.
pub const CLIENT_PORT: u16 = 2379;
/// The peer port (on 127.0.0.1 inside the namespace).
pub const PEER_PORT: u16 = 2380;
/// How long etcd may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The member name.
const NAME: &str = "ovt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// PEM files of an etcd serving TLS: its certificate and key, and the CA
/// client certificates must be signed by (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An etcd server running inside a network namespace; killed, and its data
/// directory deleted, on drop.
#[derive(Debug)]
pub struct Etcd {
    ns_name: String,
    ns_path: PathBuf,
    ip: Ipv4Addr,
    /// This member's name and the whole cluster (`--initial-cluster`).
    name: String,
    peer: String,
    cluster: String,
    /// Serve clients over TLS, requiring a certificate signed by the CA.
    tls: Option<EtcdTls>,
    dir: PathBuf,
    child: Option<Child>,
    cmd: String,
}

impl Etcd {
    /// Starts `etcd` inside `ns`, serving clients on `http://IP:2379` (`ip`
    /// must be an address of `ns`, e.g. 127.0.0.1 or one the test added),
    /// and waits until it answers a health request.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<Etcd> {
        Etcd::start_with(ns, ip, None)
    }

    /// [`Etcd::start`], serving clients on `https://IP:2379` and refusing
    /// clients without a certificate signed by `tls.ca`.
    pub fn start_tls(ns: &Netns, ip: Ipv4Addr, tls: EtcdTls) -> Result<Etcd> {
        Etcd::start_with(ns, ip, Some(tls))
    }

    fn start_with(ns: &Netns, ip: Ipv4Addr, tls: Option<EtcdTls>) -> Result<Etcd> {
        let peer = format!("http://127.0.0.1:{PEER_PORT}");
        let cluster = format!("{NAME}={peer}");
        let mut etcd = Etcd::new(ns, ip, NAME.into(), peer, cluster)?;
        etcd.tls = tls;
        etcd.launch()?;
        Ok(etcd)
    }

    /// Starts a cluster of one member per address of `ips` (each an address
    /// of `ns`, members talking to each other on port 2380 of their own),
    /// and waits until every member answers.
    pub fn start_cluster(ns: &Netns, ips: &[Ipv4Addr]) -> Result<Vec<Etcd>> {
        let peer = |ip: &Ipv4Addr| format!("http://{ip}:{PEER_PORT}");
        let cluster: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{NAME}{i}={}", peer(ip)))
            .collect();
        let mut members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Etcd::new(ns, *ip, format!("{NAME}{i}"), peer(ip), cluster.join(",")))
            .collect::<Result<Vec<_>>>()?;
        // A member answers only once a quorum runs: start all, then wait.
        for m in &mut members {
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_ready()?;
        }
        Ok(members)
    }

    fn new(ns: &Netns, ip: Ipv4Addr, name: String, peer: String, cluster: String) -> Result<Etcd> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "ovt-etcd-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir); // left by an earlier process with our pid?
        fs::create_dir_all(dir.join("data")).map_err(|source| Error::Io {
            what: format!("creating etcd data directory {}", dir.display()),
            source,
        })?;
        Ok(Etcd {
            ns_name: ns.name().to_owned(),
            ns_path: ns.path().to_owned(),
            ip,
            name,
            peer,
            cluster,
            tls: None,
            dir,
            child: None,
            cmd: String::new(),
        })
    }

    /// `http://IP:2379` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }

    /// The client address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The data directory (kept across stop/restart, deleted on drop).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines etcd wrote to stderr (it logs errors only).
    pub fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.trim().is_empty() {
            "etcd wrote nothing to stderr".to_owned()
        } else {
            tail
        }
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s) and waits for it;
    /// the data stays for [`Etcd::restart`]. Stopping a stopped server is a
    /// no-op.
    pub fn stop(&mut self) -> Result<()> {
        self.halt(true)
    }

    /// Kills the server with SIGKILL (as a crash would) and waits for it;
    /// the data stays for [`Etcd::restart`].
    pub fn kill(&mut self) -> Result<()> {
        self.halt(false)
    }

    fn halt(&mut self, gently: bool) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let running = |c: &mut Child| matches!(c.try_wait(), Ok(None));
        if gently && running(&mut child) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && running(&mut child) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if running(&mut child) {
                eprintln!("overlay-testnet: etcd ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
            }
        }
        if running(&mut child) {
            let _ = child.kill();
        }
        child.wait().map(drop).map_err(|source| Error::Io {
            what: format!("waiting for `{}`", self.cmd),
            source,
        })
    }

    /// Starts the server again on the same data (stopping it first if it
    /// runs) and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Stops the server, deletes its data and starts it again as a new,
    /// empty cluster (as an operator replacing a broken etcd would).
    pub fn wipe(&mut self) -> Result<()> {
        self.stop()?;
        let data = self.data_dir();
        fs::remove_dir_all(&data)
            .and_then(|()| fs::create_dir(&data))
            .map_err(|source| Error::Io {
                what: format!("emptying {}", data.display()),
                source,
            })?;
        self.launch()
    }

    /// Sends `POST path` with a JSON `body` to etcd's HTTP/JSON gateway
    /// (e.g. `/v3/kv/range`) from inside the namespace; returns the
    /// response body, or an error on a non-200 answer.
    pub fn post(&self, path: &str, body: &str) -> Result<String> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{CLIENT_PORT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.ip,
            body.len()
        );
        let what = format!("POST {} {path}", self.endpoint());
        let answer = in_namespace(&self.ns_path, &self.ns_name, || {
            http(
                (self.ip, CLIENT_PORT).into(),
                &request,
                Duration::from_secs(5),
            )
        })?
        .map_err(|source| Error::Io {
            what: what.clone(),
            source,
        })?;
        match answer.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(Error::Io {
                what,
                source: std::io::Error::other(format!("unexpected answer: {answer}")),
            }),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn command(&self) -> Command {
        let client = self.endpoint();
        let peer = &self.peer;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name, "etcd", "--name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "error",
        ]);
        // Flags only: an ETCD_* variable of the caller would conflict.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Spawns the server and waits until it answers a health request.
    fn launch(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| Error::Io {
                what: format!("opening {}", self.log_path().display()),
                source,
            })?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.cmd = command_line(&cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: self.cmd.clone(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server answers a health request.
    fn wait_ready(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::Io {
                what: format!("waiting for `{}`", self.cmd),
                source: std::io::Error::other("not started"),
            });
        };
        let addr = SocketAddr::from((self.ip, CLIENT_PORT));
        let host = self.ip;
        let tls = self.tls.is_some();
        let ready = in_namespace(&self.ns_path, &self.ns_name, || {
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Some(status));
                }
                let get = format!(
                    "GET /health HTTP/1.1\r\nHost: {host}:{CLIENT_PORT}\r\nConnection: close\r\n\r\n"
                );
                // Over TLS the health endpoint wants a client certificate:
                // a listening port will do (the tests' first call waits for
                // the rest).
                let healthy = match tls {
                    true => {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
                    }
                    false => http(addr, &get, Duration::from_secs(2))
                        .is_ok_and(|a| a.contains("\"health\":\"true\"")),
                };
                if healthy {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(None);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })?;
        match ready {
            Ok(()) => Ok(()),
            Err(Some(status)) => {
                self.child = None;
                Err(Error::Command {
                    cmd: self.cmd.clone(),
                    status,
                    stderr: self.stderr_tail(),
                    stdout: String::new(),
                })
            }
            Err(None) => Err(Error::Timeout {
                what: format!(
                    "etcd at {} to answer (stderr: {})",
                    self.endpoint(),
                    self.stderr_tail()
                ),
                timeout: START_TIMEOUT,
            }),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Err(err) = self.kill() {
            eprintln!("overlay-testnet: {err}");
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("overlay-testnet: removing {}: {err}", self.dir.display());
        }
    }
}

/// Runs `f` on a scoped thread inside the namespace at `path`.
fn in_namespace<R: Send>(path: &Path, name: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    let file = File::open(path).map_err(|source| Error::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Sys {
                    what: format!("setns into network namespace {name}"),
                    source,
                })?;
                drop(file);
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One HTTP/1.1 exchange (the request must say `Connection: close`).
fn http(addr: SocketAddr, request: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_root;

    // base64("ovt-key") and base64("ovt-value"), as the JSON gateway wants.
    const KEY: &str = "b3Z0LWtleQ==";
    const VALUE: &str = "b3Z0LXZhbHVl";

    fn get(etcd: &Etcd) -> Result<String> {
        etcd.post("/v3/kv/range", &format!(r#"{{"key":"{KEY}"}}"#))
    }

    #[test]
    fn start_stop_restart_keep_the_data_and_failures_are_explained() -> Result<()> {
        require_root()?;
        let ns = Netns::new("etcd")?;
        let mut etcd = Etcd::start(&ns, Ipv4Addr::LOCALHOST)?;
        assert_eq!(etcd.endpoint(), "http://127.0.0.1:2379");
        etcd.post(
            "/v3/kv/put",
            &format!(r#"{{"key":"{KEY}","value":"{VALUE}"}}"#),
        )?;
        assert!(get(&etcd)?.contains(VALUE));

        etcd.stop()?;
        assert!(!etcd.is_running());
        let err = get(&etcd).unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");

        etcd.restart()?;
        assert!(etcd.is_running());
        assert!(get(&etcd)?.contains(VALUE), "the data survives a stop");

        etcd.kill()?;
        etcd.restart()?;
        assert!(get(&etcd)?.contains(VALUE), "the data survives a crash");

        etcd.wipe()?;
        assert!(!get(&etcd)?.contains(VALUE), "a wiped etcd is empty");

        let dir = etcd.data_dir();
        drop(etcd);
        assert!(!dir.exists(), "{} is removed on drop", dir.display());

        // No interface of the namespace has this address: etcd cannot bind.
        let err = Etcd::start(&ns, Ipv4Addr::new(192, 0, 2, 254))
            .unwrap_err()
            .to_string();
        assert!(err.contains("etcd --name ovt"), "{err}");
        assert!(err.contains("192.0.2.254"), "{err}");
        assert!(err.contains("cannot assign requested address"), "{err}");
        Ok(())
    }
}
