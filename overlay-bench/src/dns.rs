//! DNS: queries per second of the agent's [`DnsServer`] against dnsmasq
//! serving the same names from a hosts file, both loaded by `dnsperf`.
//!
//! ```text
//!   [dns-cli 10.53.0.2 dnsperf] ─veth─ [dns-srv 10.53.0.1:53 ours | dnsmasq]
//! ```
//!
//! Two namespaces made with `overlay-testnet` (deleted on drop), nothing in
//! the root namespace. The servers take turns on the same address and port:
//! each measurement starts one, checks an answer with `dig`, runs `dnsperf`
//! for a bounded time and stops it. Ours runs on a current-thread Tokio
//! runtime on a thread inside the server namespace (one core, as dnsmasq).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use overlay_ctl::dns::DnsServer;
use overlay_ctl::model::{ClusterState, Policy, ServiceSpec};
use overlay_testnet::{Netns, NsChild, veth, wait_until};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 53, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 53, 0, 2);
pub const PORT: u16 = 53;
/// TTL of both servers' answers.
pub const TTL: u32 = 5;
/// dnsperf's outstanding queries (its default is 100).
pub const OUTSTANDING: &str = "100";
/// A dnsperf run that has not finished this long after its time limit is killed.
const GRACE: Duration = Duration::from_secs(10);

/// The two servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    Ours,
    Dnsmasq,
}

impl Which {
    pub const ALL: [Which; 2] = [Which::Ours, Which::Dnsmasq];

    pub fn label(self) -> &'static str {
        match self {
            Which::Ours => "ours (overlay-ctl DnsServer, 1 thread)",
            Which::Dnsmasq => "dnsmasq (hosts file)",
        }
    }
}

/// The name `policy` of the `i`th bench service, and its ServIP.
pub fn name(i: usize, policy: Policy) -> String {
    format!("app{i}.bench.svc{i}.dns.any.{}.local", policy.as_str())
}

pub fn servip(i: usize, policy: Policy) -> Ipv4Addr {
    let n = (i * 3 + policy.code() as usize) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + 1 + n)
}

/// `services` stateless services with one ServIP per policy.
pub fn state(services: usize) -> anyhow::Result<ClusterState> {
    let mut out = Vec::new();
    for i in 0..services {
        let servips: BTreeMap<Policy, Ipv4Addr> =
            Policy::SERVIPS.iter().map(|&p| (p, servip(i, p))).collect();
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": format!("app{i}.bench.svc{i}.dns"),
            "id": i + 1,
            "ports": [80],
            "servips": servips,
        }))?;
        out.push(spec);
    }
    Ok(ClusterState {
        services: out,
        ..ClusterState::default()
    })
}

/// The hosts file dnsmasq reads and dnsperf's query file, same names.
pub fn files(services: usize) -> (String, String) {
    let (mut hosts, mut queries) = (String::new(), String::new());
    for i in 0..services {
        for p in Policy::SERVIPS {
            hosts += &format!("{} {}\n", servip(i, p), name(i, p));
            queries += &format!("{} A\n", name(i, p));
        }
    }
    (hosts, queries)
}

/// What one dnsperf run reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perf {
    pub qps: f64,
    pub sent: u64,
    pub lost: u64,
}

/// Parses dnsperf's summary (`Queries sent:`, `Queries lost:`, `Queries per second:`).
pub fn parse_dnsperf(out: &str) -> anyhow::Result<Perf> {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let qps: f64 = field("Queries per second:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no `Queries per second` in dnsperf's output: {out}"))?;
    let sent = field("Queries sent:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lost = field("Queries lost:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Perf { qps, sent, lost })
}

/// The two namespaces, the files, and the name set.
pub struct DnsBed {
    pub services: usize,
    dir: PathBuf,
    hosts: PathBuf,
    queries: PathBuf,
    state: ClusterState,
    pub client: Netns,
    pub server: Netns,
}

impl DnsBed {
    pub fn build(services: usize) -> anyhow::Result<DnsBed> {
        let server = Netns::new("dns-srv")?;
        let client = Netns::new("dns-cli")?;
        for ns in [&server, &client] {
            ns.disable_ipv6()?;
            ns.lo_up()?;
        }
        veth(&server, "dns0", &client, "dns0")?;
        server.ip(["addr", "add", &format!("{SERVER_IP}/24"), "dev", "dns0"])?;
        client.ip(["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "dns0"])?;
        let dir = std::env::temp_dir().join(format!("overlay-bench-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (hosts_text, queries_text) = files(services);
        let hosts = dir.join("hosts");
        let queries = dir.join("queries");
        std::fs::write(&hosts, hosts_text)?;
        std::fs::write(&queries, queries_text)?;
        Ok(DnsBed {
            services,
            dir,
            hosts,
            queries,
            state: state(services)?,
            client,
            server,
        })
    }

    pub fn names(&self) -> usize {
        self.services * Policy::SERVIPS.len()
    }

    /// Starts `which` on 10.53.0.1:53, runs dnsperf for `secs`, stops it.
    pub fn measure(&self, which: Which, secs: u32) -> anyhow::Result<Perf> {
        let running = self.start(which)?;
        self.wait_answering()
            .with_context(|| format!("{} does not answer", which.label()))?;
        let perf = self.dnsperf(secs);
        drop(running);
        perf
    }

    fn start(&self, which: Which) -> anyhow::Result<Running> {
        match which {
            Which::Ours => {
                let (tx, rx) = watch::channel(self.state.clone());
                let (ready_tx, ready_rx) = mpsc::channel();
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let thread = self.server.thread(move || -> anyhow::Result<()> {
                    // The sender lives as long as the server.
                    let _state = tx;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let addr = SocketAddr::from((SERVER_IP, PORT));
                        match DnsServer::start(addr, rx, TTL) {
                            Ok(server) => {
                                let _ = ready_tx.send(Ok(()));
                                let _ = stop_rx.await;
                                Ok(server.shutdown().await?)
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                Ok(())
                            }
                        }
                    })
                })?;
                match ready_rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Ok(())) => Ok(Running::Ours {
                        stop: Some(stop_tx),
                        thread: Some(thread),
                    }),
                    Ok(Err(e)) => bail!("starting our DNS server: {e}"),
                    Err(_) => bail!("our DNS server did not start within 10 s"),
                }
            }
            Which::Dnsmasq => {
                let args = [
                    "--no-daemon".to_owned(),
                    "--conf-file=/dev/null".to_owned(),
                    "--no-resolv".to_owned(),
                    "--no-hosts".to_owned(),
                    format!("--addn-hosts={}", self.hosts.display()),
                    format!("--listen-address={SERVER_IP}"),
                    "--bind-interfaces".to_owned(),
                    format!("--port={PORT}"),
                    "--cache-size=10000".to_owned(),
                    format!("--local-ttl={TTL}"),
                    format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()),
                    "--user=root".to_owned(),
                ];
                let mut cmd = self.server.cmd("dnsmasq", args);
                let child = NsChild::spawn(
                    cmd.stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                )?;
                Ok(Running::Dnsmasq(child))
            }
        }
    }

    /// Waits until the server answers the first name with its ServIP.
    fn wait_answering(&self) -> anyhow::Result<()> {
        let want = servip(0, Policy::Closest).to_string();
        let q = name(0, Policy::Closest);
        let at = format!("@{SERVER_IP}");
        let port = PORT.to_string();
        wait_until(Duration::from_secs(10), "the DNS server to answer", || {
            self.client
                .run(
                    "dig",
                    [&at, "-p", &port, "+short", "+time=1", "+tries=1", &q, "A"],
                )
                .is_ok_and(|o| o.trim() == want)
        })?;
        Ok(())
    }

    fn dnsperf(&self, secs: u32) -> anyhow::Result<Perf> {
        let server = SERVER_IP.to_string();
        let port = PORT.to_string();
        let limit = secs.to_string();
        let queries = self.queries.display().to_string();
        let cmd = self.client.cmd(
            "dnsperf",
            [
                "-s",
                &server,
                "-p",
                &port,
                "-d",
                &queries,
                "-l",
                &limit,
                "-q",
                OUTSTANDING,
                "-t",
                "1",
            ],
        );
        let out = crate::traffic::run_bounded(cmd, Duration::from_secs(secs as u64) + GRACE)?;
        parse_dnsperf(&out)
    }
}

impl Drop for DnsBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server that stops when dropped.
enum Running {
    Ours {
        stop: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    },
    /// Killed and reaped by `NsChild`'s drop.
    Dnsmasq(#[allow(dead_code)] NsChild),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Ours { stop, thread } = self {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_the_same_in_both_files() {
        let s = state(100).unwrap();
        let (hosts, queries) = files(100);
        assert_eq!(hosts.lines().count(), 300);
        assert_eq!(queries.lines().count(), 300);
        for line in hosts.lines() {
            let (ip, name) = line.split_once(' ').unwrap();
            assert_eq!(
                overlay_ctl::dns::resolve(&s, name).to_string(),
                ip,
                "{name}"
            );
        }
    }

    #[test]
    fn dnsperf_summary_parses() {
        let out = "Statistics:\n\n  Queries sent:         120000\n  Queries completed:    119990 (99.99%)\n  Queries lost:         10 (0.01%)\n\n  Queries per second:   59994.123456\n";
        let p = parse_dnsperf(out).unwrap();
        assert_eq!(p.sent, 120000);
        assert_eq!(p.lost, 10);
        assert!((p.qps - 59994.123456).abs() < 1e-6);
        assert!(parse_dnsperf("nothing").is_err());
    }
}
