//! The dataplane on a live test network: `cargo xtask demo` (as root).
//!
//! ```text
//!   inst eth0 10.30.1.2 ── vinst1 10.30.1.1 [n1] eth0 192.0.2.11 ── br0 ── eth0 192.0.2.12 [n2]
//!                    TC from_instance ┘          └ XDP uplink_xdp + TC uplink
//! ```
//!
//! Loads the dataplane in n1, configures the node and registers the instance,
//! then sends traffic through both hooks: pings from the instance to its node,
//! tunnel datagrams from a node that is not registered (dropped by XDP), and
//! ordinary node traffic (ping, one second of iperf3) that passes untouched.
//! Prints how the counters moved. Every namespace is deleted at the end, also
//! after an error or Ctrl-C (which makes the commands fail and the demo unwind).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use overlay_common::maps::{Config, Counter, Endpoint, ip};
use overlay_common::stats::Reason;
use overlay_common::{DEFAULT_EWP, ENCAP_OVERHEAD};
use overlay_ctl::dataplane::Dataplane;
use overlay_testnet::{Netns, NsChild, Topology, require_root, veth, wait_until};

const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 1);
const INSTANCE: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 2);
const PINGS: &str = "5";
const DATAGRAMS: usize = 10;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

type Stats = BTreeMap<&'static str, Counter>;

fn main() {
    // Ctrl-C kills the ping/ip children; the demo itself survives, sees the
    // failure and unwinds, so the namespaces are dropped.
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    let result = run();
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; namespaces deleted");
        std::process::exit(130);
    }
    if let Err(e) = result {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    require_root()?;
    println!("demo: building namespaces: switch, n1, n2, inst");
    let topo = Topology::new(2)?;
    let (n1, n2) = (topo.node(1), topo.node(2));
    let n1ip = n1.ip();
    let inst = Netns::new("inst")?;
    inst.disable_ipv6()?;
    veth(n1.ns(), "vinst1", &inst, "eth0")?;
    let host_side = format!("{HOST_SIDE}/24");
    n1.ns().ip(["addr", "add", &host_side, "dev", "vinst1"])?;
    inst.ip(["addr", "add", &format!("{INSTANCE}/24"), "dev", "eth0"])?;

    let mut dp = n1.ns().enter(|| -> anyhow::Result<Dataplane> {
        let mut dp = Dataplane::load(None).context("loading the dataplane")?;
        dp.attach_instance("vinst1")
            .context("attaching to vinst1")?;
        dp.attach_uplink(&n1.uplink)
            .context("attaching to the uplink")?;
        Ok(dp)
    })??;
    let (uplink, _) = link(n1.ns(), &n1.uplink)?;
    let (vinst1, host_mac) = link(n1.ns(), "vinst1")?;
    let cfg = Config {
        node_id: 1,
        node_ip: ip::to_wire(n1ip),
        uplink_ifindex: uplink,
        ewp: ip::port_to_wire(DEFAULT_EWP),
        mtu: 1500 - ENCAP_OVERHEAD,
    };
    dp.tables.set_config(&cfg)?;
    let ep = Endpoint {
        ifindex: vinst1,
        service: 1,
        instance: 1,
        mac: link(&inst, "eth0")?.1,
        host_mac,
    };
    dp.tables.put_endpoint(INSTANCE, &ep)?;
    println!("demo: dataplane loaded in n1: node 1 at {n1ip}, instance {INSTANCE} on vinst1");
    let before = snapshot(&dp)?;

    println!("demo: inst -> {HOST_SIDE} (its node): ping x{PINGS}");
    ping(&inst, HOST_SIDE)?;
    let mid = snapshot(&dp)?;

    println!("demo: n2 -> {n1ip}:{DEFAULT_EWP}, unregistered node: {DATAGRAMS} datagrams");
    let to = (n1ip, DEFAULT_EWP);
    n2.ns().enter(|| -> std::io::Result<()> {
        let sock = UdpSocket::bind((n2.ip(), 0))?;
        (0..DATAGRAMS).try_for_each(|_| sock.send_to(&[0; 64], to).map(drop))
    })??;
    std::thread::sleep(Duration::from_millis(200));
    let dropped = snapshot(&dp)?;

    println!("demo: n2 -> {n1ip}, plain node traffic: ping x{PINGS}, iperf3 for 1 s");
    ping(n2.ns(), n1ip)?;
    iperf(n1.ns(), n2.ns(), n1ip)?;
    let after = snapshot(&dp)?;

    print_table(&before, &after);
    let rose = |a: &Stats, b: &Stats, r: Reason| {
        let packets = |s: &Stats| s.get(r.label()).map_or(0, |c| c.packets);
        packets(b) > packets(a)
    };
    ensure!(
        rose(&before, &mid, Reason::Pass),
        "`pass` did not rise: TC from_instance"
    );
    let unknown = Reason::DropUnknownPeer;
    ensure!(
        rose(&mid, &dropped, unknown),
        "`drop_unknown_peer` did not rise: XDP uplink"
    );
    println!("demo: counters rose on both hooks; deleting the namespaces");
    Ok(())
}

/// Reads the counters; also where a Ctrl-C that the commands survived
/// (ping exits 0 on SIGINT) ends the demo.
fn snapshot(dp: &Dataplane) -> anyhow::Result<Stats> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(dp
        .stats()?
        .into_iter()
        .map(|(r, c)| (r.label(), c))
        .collect())
}

/// Interface index and MAC address of `dev` in `ns`.
fn link(ns: &Netns, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let out = ns.ip(["-o", "link", "show", "dev", dev])?;
    let index = out.split(':').next().and_then(|i| i.trim().parse().ok());
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1);
    let mac: Option<Vec<u8>> = mac.map(|m| {
        m.split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect()
    });
    match (index, mac.and_then(|m| <[u8; 6]>::try_from(m).ok())) {
        (Some(index), Some(mac)) => Ok((index, mac)),
        _ => bail!("cannot read the index and MAC of {dev} from: {out}"),
    }
}

fn ping(from: &Netns, to: Ipv4Addr) -> anyhow::Result<()> {
    let out = from.run(
        "ping",
        ["-c", PINGS, "-i", "0.2", "-W", "1", &to.to_string()],
    )?;
    let summary = out.lines().find(|l| l.contains("received")).unwrap_or("");
    println!("      {summary}");
    Ok(())
}

/// A one-second TCP run from `client` to an iperf3 server on `addr` in `server`.
fn iperf(server: &Netns, client: &Netns, addr: Ipv4Addr) -> anyhow::Result<()> {
    let addr = addr.to_string();
    let mut cmd = server.cmd("iperf3", ["-s", "-1", "-B", &addr]);
    let _srv = NsChild::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::null()))?;
    let listening = || {
        server
            .run("ss", ["-Htln", "sport = :5201"])
            .is_ok_and(|o| !o.trim().is_empty())
    };
    wait_until(Duration::from_secs(5), "iperf3 to listen", listening)?;
    let out = client.run("iperf3", ["-c", &addr, "-t", "1", "-f", "m"])?;
    match out.lines().find(|l| l.contains("receiver")) {
        Some(line) => println!(
            "      {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
        None => bail!("iperf3 printed no receiver summary:\n{out}"),
    }
    Ok(())
}

fn print_table(before: &Stats, after: &Stats) {
    let line = |r: &str, b: Counter, a: Counter| {
        println!(
            "  {r:<18} {:>12} {:>12} {:>14} {:>14}",
            b.packets, a.packets, b.bytes, a.bytes
        )
    };
    println!(
        "\n  {:<18} {:>12} {:>12} {:>14} {:>14}",
        "counter", "pkts before", "pkts after", "bytes before", "bytes after"
    );
    for (reason, a) in after {
        let b = before.get(reason).copied().unwrap_or_default();
        if a.packets + b.packets > 0 {
            line(reason, b, *a);
        }
    }
    println!();
}
