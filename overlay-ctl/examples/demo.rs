//! `cargo xtask demo`: the product on one machine, as root.
//!
//! ```text
//!   etcd 192.0.2.254 ── br0 ── n1 192.0.2.11   n2 192.0.2.12   n3 192.0.2.13
//!                               web-1, api-1    api-2, db-1     api-3
//! ```
//!
//! Starts etcd and an agent per node in network namespaces, deploys a sample
//! application with the CLI (a client service `web`, a three-instance server
//! `api` spread over the nodes, a stateful `db`), sends traffic from `web-1`
//! through every ServIP and reports which instance answered each policy,
//! reaches the exposed `api` from outside (directly, and through a gateway),
//! then shows `overlay-ctl maps` and `node ls`. Everything is deleted at the
//! end, also after an error or Ctrl-C.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ctl::Ctl;
use overlay_testnet::{
    Etcd, EtcdTls, Netns, NsChild, Topology, require_root, servers, tun, wait_until,
};
use serde_json::Value;

#[path = "common/ctl.rs"]
mod ctl;

const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const FLOWS: usize = 30;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    // Ctrl-C stops the children; the demo sees the failure and unwinds, so
    // every namespace, mount and process is removed by its guard.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let result = run();
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; everything deleted");
        std::process::exit(130);
    }
    if let Err(e) = result {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

/// A private bpffs for the agents' pins, unmounted on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap_or(&self.0));
    }
}

struct Demo {
    ctl: Ctl,
    dir: PathBuf,
}

impl Demo {
    fn orchestrate(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ctl.store_as("orchestrator", args)
    }

    /// Access control on, then each node admitted with its own identity
    /// and certificate: `store setup`, `node add` (as root).
    fn admit(&self, nodes: usize) -> anyhow::Result<()> {
        self.ctl.store_as("root", &["store", "setup"])?;
        let dir = self.pki().display().to_string();
        for n in 1..=nodes {
            self.ctl
                .store_as("root", &["node", "add", &format!("n{n}"), "--dir", &dir])?;
        }
        Ok(())
    }

    fn pki(&self) -> PathBuf {
        self.ctl.pki.clone()
    }

    /// The cluster's CA and certificates, as an operator makes them:
    /// `overlay-ctl cert ca` (with root's and the orchestrator's) and
    /// `overlay-ctl cert issue` for etcd; the nodes' come with `node add`.
    fn certificates(&self) -> anyhow::Result<()> {
        let dir = self.pki().display().to_string();
        let etcd_ip = ETCD_IP.to_string();
        let runs: Vec<Vec<&str>> = vec![
            vec!["cert", "ca", "--dir", &dir],
            vec!["cert", "issue", "etcd", "--dir", &dir, "--ip", &etcd_ip],
        ];
        for args in runs {
            let out = Command::new(&self.ctl.bin).args(&args).output()?;
            if !out.status.success() {
                bail!(
                    "overlay-ctl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Deploys `name` with `ports` and the descriptor lines `extra`.
    fn deploy_service(&self, name: &str, ports: &str, extra: &str) -> anyhow::Result<Value> {
        let file = self.dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "appname: demo\nappns: prod\nservicename: {name}\nservicens: v1\nports: {ports}\n{extra}"
        );
        std::fs::write(&file, yaml)?;
        let mut args = vec!["service", "deploy", file.to_str().unwrap_or(""), "--json"];
        if extra.contains("stateful: true") {
            // The orchestrator allocates the fixed IPs; nodes may not.
            args.extend(["--instances", "2"]);
        }
        Ok(serde_json::from_str(&self.orchestrate(&args)?)?)
    }

    /// Starts node `n`'s agent inside its namespace and waits for its API.
    fn agent(&self, ns: &Netns, n: usize) -> anyhow::Result<(NsChild, PathBuf)> {
        let base = self.dir.join(format!("n{n}"));
        std::fs::create_dir_all(&base)?;
        let (sock, config) = (base.join("agent.sock"), base.join("agent.toml"));
        let toml = format!(
            "node_id = \"n{n}\"\nuplink = \"eth0\"\nstore = \"{}\"\nstore_ca = \"{}\"\nstore_cert = \"{}\"\nstore_key = \"{}\"\nnode_ttl = 5\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\napi_socket = \"{}\"\n",
            self.ctl.store,
            self.pki().join("ca.crt").display(),
            self.pki().join(format!("n{n}.crt")).display(),
            self.pki().join(format!("n{n}.key")).display(),
            base.join("state").display(),
            self.dir.join("bpf").join(format!("n{n}")).display(),
            sock.display()
        );
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(base.join("agent.log"))?;
        let mut cmd = ns.cmd(
            &self.ctl.bin,
            ["agent", "--config", config.to_str().unwrap_or("")],
        );
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .env("NO_COLOR", "1");
        let child = NsChild::spawn(&mut cmd)?;
        wait_until(Duration::from_secs(20), &format!("agent n{n}"), || {
            sock.exists()
        })?;
        Ok((child, sock))
    }
}

fn run() -> anyhow::Result<()> {
    require_root()?;
    let bin = std::env::var_os("OVERLAY_CTL_BIN")
        .map(PathBuf::from)
        .context("OVERLAY_CTL_BIN is not set: run `cargo xtask demo`")?;
    println!("demo: etcd and three nodes in network namespaces");
    let mut topo = Topology::new(3)?;
    let etcd_ns = topo.add_host("etcd", ETCD_IP)?;
    let orchestrator = etcd_ns.name().to_string();
    let dir = std::env::temp_dir().join(format!("ovt{}-demo", std::process::id()));
    std::fs::create_dir_all(dir.join("bpf"))?;
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir.join("bpf"))
        .status()?;
    let _pins = Pins(dir.join("bpf"));
    if !status.success() {
        bail!("cannot mount a bpffs in {}", dir.display());
    }
    let mut demo = Demo {
        ctl: Ctl {
            bin,
            pki: dir.join("pki"),
            store: String::new(),
            beside_etcd: orchestrator,
        },
        dir,
    };
    println!("demo: the cluster's CA and certificates (overlay-ctl cert), etcd over TLS");
    demo.certificates()?;
    let tls = EtcdTls {
        ca: demo.pki().join("ca.crt"),
        cert: demo.pki().join("etcd.crt"),
        key: demo.pki().join("etcd.key"),
    };
    let etcd = Etcd::start_tls(etcd_ns, ETCD_IP, tls)?;
    demo.ctl.store = etcd.endpoint();
    println!("demo: access control on (store setup); nodes n1-n3 admitted (node add)");
    demo.admit(3)?;
    let mut agents = Vec::new();
    for node in topo.nodes() {
        agents.push(demo.agent(node.ns(), node.index)?);
    }
    println!(
        "demo: agents up; deploying services web, api (port 8080, exposed), db (stateful, port 5432)"
    );
    demo.deploy_service("web", "[]", "")?;
    let api = demo.deploy_service("api", "[8080]", "exposed: true\n")?;
    demo.deploy_service("db", "[5432]", "stateful: true\n")?;

    let plan = [
        ("web", 1, 1),
        ("api", 1, 1),
        ("api", 2, 2),
        ("api", 3, 3),
        ("db", 1, 2),
    ];
    let mut insts = BTreeMap::new();
    for (svc, n, node) in plan {
        let ns = Netns::new(&format!("{svc}{n}"))?;
        let sock = agents[node - 1].1.to_str().unwrap_or("").to_string();
        let name = format!("demo.prod.{svc}.v1");
        let out = demo.ctl.run(
            topo.node(node).ns().name(),
            &[("OVERLAY_API", sock.clone())],
            &[
                "instance",
                "deploy",
                &name,
                "--instance",
                &n.to_string(),
                "--netns",
                ns.name(),
            ],
        )?;
        let rec: Value = serde_json::from_str(&out)?;
        println!(
            "  {svc}-{n} on n{node}: NamespaceIP {}",
            rec["nsip"].as_str().unwrap_or("?")
        );
        let label: &'static str = Box::leak(format!("{svc}-{n}@n{node}").into_boxed_str());
        match svc {
            "api" => servers::tcp(&ns, 8080, label),
            "db" => servers::tcp(&ns, 5432, label),
            _ => {}
        }
        insts.insert((svc, n), ns);
    }
    let web = &insts[&("web", 1)];
    let rr: Ipv4Addr = api["servips"]["roundrobin"]
        .as_str()
        .unwrap_or("")
        .parse()?;
    let start = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "all api instances reachable",
        || {
            (0..9)
                .filter_map(|_| servers::tcp_who(web, SocketAddr::from((rr, 8080))).ok())
                .map(|r| r.0)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 3
        },
    )?;
    println!("demo: cluster converged in {:?}", start.elapsed());
    // closest and fastest rank remote instances by the nodes' measured RTTs.
    wait_until(
        Duration::from_secs(15),
        "every node's RTTs measured",
        || {
            let nodes: Value = demo
                .orchestrate(&["node", "ls", "--json"])
                .ok()
                .and_then(|out| serde_json::from_str(&out).ok())
                .unwrap_or_default();
            nodes.as_array().is_some_and(|ns| {
                ns.len() == 3
                    && ns
                        .iter()
                        .all(|n| n["rtt_us"].as_object().is_some_and(|m| m.len() == 2))
            })
        },
    )?;
    println!(
        "demo: RTTs between the nodes measured after {:?}\n",
        start.elapsed()
    );

    println!(
        "  {:<38} {:<16} answered by ({FLOWS} new connections from web-1 on n1)",
        "name", "address"
    );
    for policy in ["closest", "roundrobin", "fastest"] {
        let ip: Ipv4Addr = api["servips"][policy].as_str().unwrap_or("").parse()?;
        report(
            web,
            &format!("demo.prod.api.v1.any.{policy}.local"),
            ip,
            8080,
        )?;
    }
    let services: Value = serde_json::from_str(&demo.orchestrate(&["service", "ls", "--json"])?)?;
    let db = services
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "demo.prod.db.v1")
        .context("db listed")?;
    let fixed: Ipv4Addr = db["instances"][0]["fixed_ip"]
        .as_str()
        .unwrap_or("")
        .parse()?;
    report(web, "demo.prod.db.v1.1.fixed.local", fixed, 5432)?;
    north_south(&demo, &mut topo)?;

    println!(
        "\n$ overlay-ctl node ls\n{}",
        demo.orchestrate(&["node", "ls"])?
    );
    println!(
        "$ overlay-ctl service ls\n{}",
        demo.orchestrate(&["service", "ls"])?
    );
    // Through n1's config: the tables then show service and node names.
    let config = demo.dir.join("n1/agent.toml");
    for table in ["services", "backends", "stats"] {
        let out = Command::new(&demo.ctl.bin)
            .args(["maps", table, "--config"])
            .arg(&config)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let shown: Vec<&str> = text
            .lines()
            .filter(|l| table != "stats" || !l.contains(" 0 "))
            .collect();
        println!(
            "$ overlay-ctl maps {table}   (node n1)\n{}\n",
            shown.join("\n")
        );
    }
    println!("demo: done; deleting agents, etcd, namespaces and pins");
    drop(agents);
    Ok(())
}

/// The exposed api from outside: a host on the switch connects to n1's
/// address; a client behind a gateway (a TUN forwarder registered with
/// `overlay-ctl gateway add`) is tunnelled to n3's NSP.
fn north_south(demo: &Demo, topo: &mut Topology) -> anyhow::Result<()> {
    let n1 = Ipv4Addr::new(192, 0, 2, 11);
    let outside = topo
        .add_host("ext", Ipv4Addr::new(192, 0, 2, 200))?
        .name()
        .to_string();
    let gw_ip = Ipv4Addr::new(192, 0, 2, 201);
    let gw = topo.add_host("gw", gw_ip)?.name().to_string();
    let host = |name: &str| topo.hosts().iter().find(|h| h.name() == name);
    let (outside, gw) = (host(&outside).context("ext")?, host(&gw).context("gw")?);
    let client = Netns::new("client")?;
    let nsp = overlay_common::DEFAULT_NSP;
    let n3 = Ipv4Addr::new(192, 0, 2, 13);
    let _tunnel = tun::gateway_for(
        gw,
        &client,
        SocketAddrV4::new(gw_ip, nsp),
        SocketAddrV4::new(n3, nsp),
    )?;
    // A NIC completes offloaded checksums before the gateway sees them; a veth
    // uplink does not (docs/wire-format.md, "Through a gateway").
    topo.node(3)
        .ns()
        .run("ethtool", ["-K", "eth0", "tx", "off"])?;
    demo.orchestrate(&["gateway", "add", "edge", "--ip", &gw_ip.to_string()])?;
    let n3_api = SocketAddr::from((n3, 8080));
    wait_until(Duration::from_secs(5), "the gateway registered", || {
        servers::tcp_who(&client, n3_api).is_ok()
    })?;
    println!("\n  north-south (api is exposed; its closest instance answers)");
    report(outside, "192.0.2.200 (on the switch) -> n1", n1, 8080)?;
    let via = format!("{} via gateway edge -> n3", tun::GATEWAY_CLIENT);
    report(&client, &via, n3, 8080)?;
    println!(
        "\n$ overlay-ctl gateway ls\n{}",
        demo.orchestrate(&["gateway", "ls"])?
    );
    Ok(())
}

/// Opens `FLOWS` connections to `ip:port` from `ns` and prints who answered.
fn report(ns: &Netns, name: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..FLOWS {
        let (who, _) = servers::tcp_who(ns, SocketAddr::from((ip, port)))
            .with_context(|| format!("connecting to {ip}:{port}"))?;
        *counts.entry(who).or_default() += 1;
    }
    let answered: Vec<String> = counts.iter().map(|(w, n)| format!("{w} x{n}")).collect();
    println!("  {name:<38} {ip:<16} {}", answered.join(", "));
    Ok(())
}
