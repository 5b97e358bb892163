//! An upgrade in place: two nodes and an etcd in namespaces, the previous
//! release's agents (binary from `OVERLAY_PREVIOUS_CTL`, which `cargo xtask
//! test` builds) pin their maps and programs, a client downloads through a
//! ServIP, and both agents are replaced by this tree's in mid-download.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};
use common::agents::{Agent, Workdir, tcx_programs};
use common::store_cluster::{ETCD_IP, TTL, descriptor, servip};
use overlay_testnet::{Etcd, Netns, NsChild, Topology, servers, wait_until};

const PREVIOUS: &str = "OVERLAY_PREVIOUS_CTL";
const DL: &str = "demo.prod.dl.v1";
const WEB: &str = "demo.prod.web.v1";
const PORT: u16 = 8080;
/// The download: 200 MB paced over 12 s, long enough for two agent swaps.
const TOTAL: u64 = 200_000_000;
const SECS: u64 = 12;
/// Pings through the ServIP while the agents are swapped (every 50 ms).
const PINGS: u32 = 160;

/// The previous release's `overlay-ctl`. Without it the test fails: an
/// upgrade test that skips itself would pass without testing anything.
fn previous_ctl() -> PathBuf {
    let Some(path) = std::env::var_os(PREVIOUS) else {
        panic!(
            "{PREVIOUS} is not set: run this test through `cargo xtask test`, which builds the \
             previous release's overlay-ctl, or set {PREVIOUS} to that binary"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{PREVIOUS}={} is not a file: run `cargo xtask test` to build it",
        path.display()
    );
    path
}

/// Fields drop in order: agents, etcd, files, then the namespaces.
struct Nodes {
    agents: Vec<Agent>,
    etcd: Etcd,
    work: Workdir,
    orchestrator: String,
    topo: Topology,
}

impl Nodes {
    /// Two nodes whose agents run `bin`, with an etcd beside the orchestrator.
    fn start(bin: &Path) -> Nodes {
        overlay_testnet::require_root().unwrap();
        let mut topo = Topology::new(2).unwrap();
        let ns = topo.add_host("etcd", ETCD_IP).unwrap();
        let orchestrator = ns.name().to_string();
        let etcd = Etcd::start(ns, ETCD_IP).unwrap();
        let work = Workdir::new("upgrade");
        let mut agents = Vec::new();
        for n in topo.nodes() {
            let name = format!("n{}", n.index);
            let mut a = Agent::configure_store(&work, &name, &etcd.endpoint(), TTL, "");
            a.bin = bin.to_path_buf();
            a.start(n.ns());
            agents.push(a);
        }
        Nodes {
            agents,
            etcd,
            work,
            orchestrator,
            topo,
        }
    }

    /// `overlay-ctl service deploy` with `bin`, run beside etcd; the record.
    fn deploy_service(&self, bin: &Path, json: &str) -> serde_json::Value {
        let path = self.work.dir.join(format!("svc-{}.json", json.len()));
        std::fs::write(&path, json).unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.orchestrator])
            .arg(bin)
            .args(["service", "deploy", path.to_str().unwrap(), "--json"])
            .env("OVERLAY_STORE", self.etcd.endpoint())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "service deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops node `i`'s agent (SIGTERM: its programs stay attached) and
    /// starts this tree's over the same `agent.toml` and pins.
    fn upgrade(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.stop();
        a.bin = PathBuf::from(common::agents::BIN);
        a.start(self.topo.node(i + 1).ns());
    }
}

/// Pinned links of an agent: pin name -> (link id, program id).
fn links(pin_dir: &Path) -> BTreeMap<String, (u32, u32)> {
    let dir = pin_dir.join("links");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|path| {
            let link = PinnedLink::from_pin(&path).expect("pinned link");
            let info = FdLink::from(link).info().expect("link info");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, (info.id(), info.program_id()))
        })
        .collect()
}

/// The agent swapped its programs into the links the previous one pinned:
/// the same links (no teardown), each with a new program, and one program
/// per TCX hook.
fn assert_programs_swapped(
    before: &BTreeMap<String, (u32, u32)>,
    after: &BTreeMap<String, (u32, u32)>,
    ns: &Netns,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the same link pins"
    );
    for (pin, (link, prog)) in before {
        let (new_link, new_prog) = after[pin];
        assert_eq!(
            link, &new_link,
            "{pin}: the same link, not a new attachment"
        );
        assert_ne!(prog, &new_prog, "{pin}: the new agent's program");
        // Pins are named `<program>-<ifname>`; XDP holds one program by itself.
        let (prog_name, ifname) = pin.split_once('-').expect("pin name");
        if !prog_name.ends_with("xdp") {
            assert_eq!(tcx_programs(ns, ifname), 1, "one program on {ifname}");
        }
    }
}

/// The maps hold the new layout: every map of the registry is pinned, its
/// `LAYOUT` record says this tree's version, and every table of the new
/// binary's `overlay-ctl maps` reads.
fn assert_new_layout(agent: &Agent) {
    let registry = overlay_common::registry::PINNED;
    for d in registry {
        assert!(
            agent.pin_dir.join(d.name).exists(),
            "map {} pinned in {}",
            d.name,
            agent.pin_dir.display()
        );
    }
    // The previous release kept no LAYOUT map: the new agent recorded the
    // layout of every map it adopted or migrated.
    let pinned = overlay_ctl::dataplane::Tables::open_pinned(&agent.pin_dir).expect("pins open");
    let recorded = pinned.layout();
    for d in registry {
        assert_eq!(
            recorded.get(d.name),
            Some(&d.version),
            "layout of {}",
            d.name
        );
    }
    let tables = [
        "services",
        "backends",
        "endpoints",
        "nodes",
        "gateways",
        "conntrack",
        "stats",
    ];
    for table in tables {
        let rows = agent.maps_json(table);
        assert!(rows.is_array(), "maps {table}: {rows}");
    }
    // What an operator sees: every map's pinned layout is this build's.
    let layout = agent.maps_json("layout");
    let rows = layout.as_array().expect("maps layout");
    assert_eq!(rows.len(), registry.len(), "{layout}");
    assert!(
        rows.iter().all(|r| r["version"] == r["pinned_version"]),
        "{layout}"
    );
}

/// Connects to `to` from inside `ns`, with a read timeout that fails a
/// stalled download.
fn connect(ns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = ns
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// A short download through `to` that arrives whole.
fn reachable(ns: &Netns, to: SocketAddr) -> bool {
    connect(ns, to)
        .and_then(|mut s| servers::download(&mut s, 1000, 0, &AtomicU64::new(0)))
        .is_ok_and(|n| n == 1000)
}

#[test]
fn agents_upgrade_from_the_previous_release_during_a_download() {
    let prev = previous_ctl();
    let mut c = Nodes::start(&prev);
    let dl = c.deploy_service(&prev, &descriptor("dl", &[PORT], false));
    c.deploy_service(&prev, &descriptor("web", &[], false));
    let (srv, cli) = (Netns::new("dl1").unwrap(), Netns::new("web1").unwrap());
    let s1 = c.agents[1].deploy(DL, 1, &srv); // the server on n2
    c.agents[0].deploy(WEB, 1, &cli); // the client on n1
    servers::paced(&srv, PORT);
    let vip = SocketAddr::from((servip(&dl, "roundrobin"), PORT));
    wait_until(
        Duration::from_secs(10),
        "the server behind the ServIP",
        || reachable(&cli, vip),
    )
    .unwrap();
    let before: Vec<_> = c.agents.iter().map(|a| links(&a.pin_dir)).collect();

    let progress = Arc::new(AtomicU64::new(0));
    let mut conn = connect(&cli, vip).expect("connect to the ServIP");
    let seen = progress.clone();
    let download = std::thread::spawn(move || servers::download(&mut conn, TOTAL, SECS, &seen));
    let mut ping = ping(&cli, servip(&dl, "roundrobin"));
    wait_until(Duration::from_secs(5), "the download under way", || {
        progress.load(Ordering::Relaxed) > TOTAL / 20
    })
    .unwrap();
    for i in 0..c.agents.len() {
        let start = Instant::now();
        c.upgrade(i);
        println!("n{} upgraded in {:?}", i + 1, start.elapsed());
    }
    let at_upgrade = progress.load(Ordering::Relaxed);
    println!("both upgraded after {at_upgrade} of {TOTAL} bytes");
    assert!(
        at_upgrade < TOTAL,
        "the download ended before both agents were upgraded: lengthen it"
    );

    let got = download
        .join()
        .unwrap()
        .expect("the download survives the upgrade");
    assert_eq!(got, TOTAL, "every byte arrives");
    let out = ping_output(&mut ping);
    assert!(
        out.contains(&format!("{PINGS} packets transmitted, {PINGS} received")),
        "no packet may be lost across the upgrade:\n{out}"
    );
    for (i, a) in c.agents.iter().enumerate() {
        assert_programs_swapped(&before[i], &links(&a.pin_dir), c.topo.node(i + 1).ns());
        assert_new_layout(a);
    }
    // The download outlasted the registration lease: the new agents kept
    // the instances (store and maps), and new connections work.
    for a in &c.agents {
        let backends = a.maps_json("backends").to_string();
        assert!(backends.contains(&format!("\"{}\"", s1.nsip)), "{backends}");
    }
    let listed = c.agents[1].ctl_ok(&["instance", "ls"]);
    assert!(listed.contains(&s1.nsip.to_string()), "{listed}");
    assert!(reachable(&cli, vip), "a new connection after the upgrade");
}

/// `ping` through the ServIP every 50 ms, output piped.
fn ping(ns: &Netns, to: Ipv4Addr) -> NsChild {
    let count = PINGS.to_string();
    let mut cmd = ns.cmd(
        "ping",
        ["-i", "0.05", "-c", &count, "-W", "1", &to.to_string()],
    );
    NsChild::spawn(cmd.stdout(std::process::Stdio::piped())).unwrap()
}

/// Waits for `ping` to end; its output.
fn ping_output(ping: &mut NsChild) -> String {
    use std::io::Read;
    ping.wait().unwrap();
    let mut out = String::new();
    if let Some(mut so) = ping.stdout.take() {
        so.read_to_string(&mut out).unwrap();
    }
    out
}
