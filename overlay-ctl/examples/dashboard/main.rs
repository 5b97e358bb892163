//! `cargo run -p overlay-ctl --example dashboard` (as root): the run behind
//! `docs/dashboard.png`.
//!
//! ```text
//!   etcd 192.0.2.254   prometheus 192.0.2.250 ── br0 ── n1 .11   n2 .12   n3 .13
//!                                                        web-1    web-2    db-1
//!                                                        api-1    api-2    api-3
//! ```
//!
//! Starts etcd, an agent per node (`metrics = "<node IP>:9464"`) and a
//! Prometheus server (Debian package `prometheus`) scraping them every 5 s,
//! all in network namespaces; sends traffic for `DASHBOARD_MINUTES` (default
//! 4): new flows from both `web` instances through every policy of `api`,
//! flows to `db` that `web`'s `needs` deny, datagrams to a port `api` does
//! not forward and to an address nobody holds. Then it evaluates the
//! dashboard's queries (`docs/grafana-dashboard.json`) over the run through
//! Prometheus's HTTP API and draws them with gnuplot (Debian package
//! `gnuplot-nox`) into `DASHBOARD_OUT` (default `docs/dashboard.png`).
//! `OVERLAY_CTL_BIN` names the `overlay-ctl` binary (default: the one built
//! beside this example). Everything is deleted at the end.

#[path = "../common/ctl.rs"]
mod ctl;
mod render;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ctl::Ctl;
use overlay_ctl::store::{Issued, issue, new_ca};
use overlay_testnet::{Etcd, EtcdTls, Netns, NsChild, Topology, require_root, servers, wait_until};
use serde_json::Value;

const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const PROM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);
const METRICS_PORT: u16 = 9464;

/// A private bpffs and work directory, removed on drop.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.0.join("bpf"))
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Ctl {
    fn deploy(&self, dir: &Path, name: &str, ports: &str, needs: &str) -> anyhow::Result<Value> {
        let file = dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "appname: demo\nappns: prod\nservicename: {name}\nservicens: v1\nports: {ports}\nneeds: {needs}\nreadiness: none\n"
        );
        std::fs::write(&file, yaml)?;
        let out = self.store_as(
            "orchestrator",
            &["service", "deploy", &file.to_string_lossy(), "--json"],
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("dashboard failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    require_root()?;
    let minutes: f64 = std::env::var("DASHBOARD_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(4.0);
    let out = std::env::var_os("DASHBOARD_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png"),
        PathBuf::from,
    );
    let bin = match std::env::var_os("OVERLAY_CTL_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above the example")?
            .join("overlay-ctl"),
    };
    let mut topo = Topology::new(3)?;
    let beside_etcd = topo.add_host("etcd", ETCD_IP)?.name().to_string();
    topo.add_host("prom", PROM_IP)?;
    let work = Work(std::env::temp_dir().join(format!("ovt{}-dashboard", std::process::id())));
    std::fs::create_dir_all(work.0.join("bpf"))?;
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(work.0.join("bpf"))
        .status()?;
    if !mounted.success() {
        bail!("cannot mount a bpffs in {}", work.0.display());
    }
    let pki = certificates(&work.0)?;
    let etcd_ns = host(&topo, &beside_etcd)?;
    let tls = EtcdTls {
        ca: pki.join("ca.crt"),
        cert: pki.join("etcd.crt"),
        key: pki.join("etcd.key"),
    };
    let etcd = Etcd::start_tls(etcd_ns, ETCD_IP, tls)?;
    let ctl = Ctl {
        bin,
        pki,
        store: etcd.endpoint(),
        beside_etcd,
    };
    ctl.store_as("root", &["store", "setup"])?;
    let pki_dir = ctl.pki.display().to_string();
    for n in 1..=3 {
        ctl.store_as(
            "root",
            &["node", "add", &format!("n{n}"), "--dir", &pki_dir],
        )?;
    }
    let mut agents = Vec::new();
    for node in topo.nodes() {
        agents.push(agent(&ctl, &work.0, node.ns(), node.index, node.ip)?);
    }
    let prom_ns = host(&topo, "prom")?;
    let prom = prometheus(&work.0, prom_ns)?;
    println!("dashboard: cluster and Prometheus up; deploying web, api, db");
    let api = ctl.deploy(&work.0, "api", "[8080]", "[]")?;
    ctl.deploy(&work.0, "web", "[]", "[demo.prod.api.v1]")?;
    let db = ctl.deploy(&work.0, "db", "[5432]", "[]")?;
    let mut insts = Vec::new();
    for (svc, n, node) in [
        ("web", 1, 1),
        ("web", 2, 2),
        ("api", 1, 1),
        ("api", 2, 2),
        ("api", 3, 3),
        ("db", 1, 3),
    ] {
        let ns = Netns::new(&format!("{svc}{n}"))?;
        let env = [("OVERLAY_API", agents[node - 1].1.display().to_string())];
        let name = format!("demo.prod.{svc}.v1");
        let args = [
            "instance",
            "deploy",
            &name,
            "--instance",
            &n.to_string(),
            "--netns",
            ns.name(),
        ];
        ctl.run(topo.node(node).ns().name(), &env, &args)?;
        match svc {
            "api" => servers::tcp(&ns, 8080, "api"),
            "db" => servers::tcp(&ns, 5432, "db"),
            _ => {}
        }
        insts.push(ns);
    }
    let vip = |rec: &Value, policy: &str| -> anyhow::Result<Ipv4Addr> {
        Ok(rec["servips"][policy].as_str().unwrap_or("").parse()?)
    };
    let vips = [
        vip(&api, "closest")?,
        vip(&api, "roundrobin")?,
        vip(&api, "fastest")?,
    ];
    let db_vip = vip(&db, "roundrobin")?;
    wait_until(Duration::from_secs(20), "api reachable from web-1", || {
        servers::tcp_who(&insts[0], SocketAddr::from((vips[1], 8080))).is_ok()
    })?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(minutes * 60.0);
    println!("dashboard: traffic for {minutes} minutes");
    let mut round = 0u64;
    while Instant::now() < until {
        traffic(&insts[..2], &vips, db_vip, round);
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two more scrapes, so the last rates cover the end of the traffic.
    std::thread::sleep(Duration::from_secs(12));
    render::render(prom_ns, start, &out)?;
    println!("dashboard: wrote {}", out.display());
    drop(prom);
    drop(agents);
    Ok(())
}

/// One round of traffic from the `web` instances; the load rises and falls
/// over a few minutes, so that the panels show more than flat lines.
fn traffic(webs: &[Netns], vips: &[Ipv4Addr], db_vip: Ipv4Addr, round: u64) {
    let phase = (round as f64 / 600.0 * std::f64::consts::TAU).sin();
    let flows = (3.0 + 2.5 * phase).round() as u64;
    for (i, web) in webs.iter().enumerate() {
        for k in 0..flows {
            let vip = vips[(round + k + i as u64) as usize % vips.len()];
            let _ = servers::tcp_who(web, SocketAddr::from((vip, 8080)));
        }
        let _ = web.enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            // Denied by web's needs, in waves.
            if phase > -0.3 {
                s.send_to(b"x", (db_vip, 5432))?;
            }
            // A port api does not forward; an overlay address nobody holds.
            if round.is_multiple_of(4) {
                s.send_to(b"x", (vips[0], 9999))?;
            }
            if round.is_multiple_of(9) {
                s.send_to(b"x", (Ipv4Addr::new(10, 30, 250, 1), 53))?;
            }
            Ok::<_, std::io::Error>(())
        });
    }
}

fn host<'a>(topo: &'a Topology, label: &str) -> anyhow::Result<&'a Netns> {
    topo.hosts()
        .iter()
        .find(|h| h.name().contains(label))
        .with_context(|| format!("no host {label}"))
}

/// The CA, etcd's certificate, root's and the orchestrator's.
fn certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let write = |name: &str, i: &Issued| -> std::io::Result<()> {
        std::fs::write(pki.join(format!("{name}.crt")), &i.cert)?;
        std::fs::write(pki.join(format!("{name}.key")), &i.key)
    };
    let ca = new_ca("dashboard cluster CA")?;
    write("ca", &ca)?;
    write("etcd", &issue(&ca, "etcd", &[ETCD_IP.into()], &[])?)?;
    for name in ["root", "orchestrator"] {
        write(name, &issue(&ca, name, &[], &[])?)?;
    }
    Ok(pki)
}

/// Starts node `n`'s agent (metrics on its address) and waits for its API.
fn agent(
    ctl: &Ctl,
    dir: &Path,
    ns: &Netns,
    n: usize,
    ip: Ipv4Addr,
) -> anyhow::Result<(NsChild, PathBuf)> {
    let base = dir.join(format!("n{n}"));
    std::fs::create_dir_all(&base)?;
    let (sock, config) = (base.join("agent.sock"), base.join("agent.toml"));
    let pki = |f: String| ctl.pki.join(f).display().to_string();
    let toml = format!(
        "node_id = \"n{n}\"\nuplink = \"eth0\"\nstore = \"{}\"\nstore_ca = \"{}\"\nstore_cert = \"{}\"\nstore_key = \"{}\"\nnode_ttl = 5\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\napi_socket = \"{}\"\nmetrics = \"{ip}:{METRICS_PORT}\"\n",
        ctl.store,
        pki("ca.crt".into()),
        pki(format!("n{n}.crt")),
        pki(format!("n{n}.key")),
        base.join("state").display(),
        dir.join("bpf").join(format!("n{n}")).display(),
        sock.display()
    );
    std::fs::write(&config, toml)?;
    let log = std::fs::File::create(base.join("agent.log"))?;
    let mut cmd = ns.cmd(&ctl.bin, ["agent", "--config", &config.to_string_lossy()]);
    cmd.stdout(log.try_clone()?)
        .stderr(log)
        .env("NO_COLOR", "1");
    let child = NsChild::spawn(&mut cmd)?;
    wait_until(Duration::from_secs(20), &format!("agent n{n}"), || {
        sock.exists()
    })?;
    Ok((child, sock))
}

/// Prometheus in namespace `ns`, scraping the three agents every 5 s, each
/// target labelled with its node's name as `instance`.
fn prometheus(dir: &Path, ns: &Netns) -> anyhow::Result<NsChild> {
    let targets: String = (1..=3)
        .map(|n| {
            format!("      - targets: ['192.0.2.1{n}:{METRICS_PORT}']\n        labels: {{instance: n{n}}}\n")
        })
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: overlay\n    static_configs:\n{targets}"
        ),
    )?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let mut cmd = ns.cmd(
        "prometheus",
        [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address={PROM_IP}:9090"),
        ],
    );
    cmd.stdout(log.try_clone()?).stderr(log);
    let child = NsChild::spawn(&mut cmd)?;
    wait_until(Duration::from_secs(20), "prometheus", || {
        render::get(ns, "/-/ready").is_ok()
    })?;
    Ok(child)
}
