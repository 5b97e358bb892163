//! The dataplane on a live test network: `cargo xtask demo` (as root).
//!
//! ```text
//!   inst eth0 10.30.1.2 ──veth── vinst1 10.30.1.1  n1  eth0 192.0.2.11 ── br0 ── n2 eth0 192.0.2.12
//!                         (TC from_instance)               (XDP uplink_xdp)
//! ```
//!
//! Loads the dataplane in n1, attaches it to the instance veth and the
//! uplink, sends pings and a short iperf3 run through both hooks, and shows
//! how the counters rose. Every namespace is deleted at the end, also after
//! an error or Ctrl-C (which makes the commands fail and the demo unwind).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use overlay_common::maps::Counter;
use overlay_ctl::dataplane::Dataplane;
use overlay_testnet::{Netns, NsChild, Topology, require_root, veth, wait_until};

const HOST_SIDE: &str = "10.30.1.1";
const INSTANCE: &str = "10.30.1.2";
const PINGS: &str = "5";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

type Stats = BTreeMap<&'static str, Counter>;

fn main() {
    // Ctrl-C kills the ping/ip children; the demo itself survives, sees the
    // failure and unwinds, so the namespaces are dropped.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
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
    let inst = Netns::new("inst")?;
    inst.disable_ipv6()?;
    veth(n1.ns(), "vinst1", &inst, "eth0")?;
    n1.ns()
        .ip(["addr", "add", &format!("{HOST_SIDE}/24"), "dev", "vinst1"])?;
    inst.ip(["addr", "add", &format!("{INSTANCE}/24"), "dev", "eth0"])?;

    let (before, mid, after) = n1.ns().enter(|| -> anyhow::Result<_> {
        let mut dp = Dataplane::load(None).context("loading the dataplane")?;
        dp.attach_instance("vinst1")
            .context("attaching to vinst1")?;
        dp.attach_uplink(&n1.uplink)
            .context("attaching to the uplink")?;
        println!(
            "demo: dataplane loaded in {} (TC on vinst1, XDP on eth0)",
            n1.ns().name()
        );
        let before = snapshot(&dp)?;

        println!("demo: inst -> {HOST_SIDE}: ping x{PINGS}");
        ping(&inst, HOST_SIDE)?;
        let mid = snapshot(&dp)?;

        println!("demo: n2 -> {}: ping x{PINGS}, iperf3 for 1 s", n1.ip());
        ping(n2.ns(), &n1.ip().to_string())?;
        iperf(n1.ns(), n2.ns(), &n1.ip().to_string())?;
        Ok((before, mid, snapshot(&dp)?))
    })??;

    print_table(&before, &after);
    let rose = |a: &Stats, b: &Stats| total(b).packets > total(a).packets;
    ensure!(
        rose(&before, &mid),
        "the counters did not rise while inst pinged through vinst1 (TC hook)"
    );
    ensure!(
        rose(&mid, &after),
        "the counters did not rise while n2 sent to n1's uplink (XDP hook)"
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

fn total(stats: &Stats) -> Counter {
    stats.values().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

fn ping(from: &Netns, to: &str) -> anyhow::Result<()> {
    let out = from.run("ping", ["-c", PINGS, "-i", "0.2", "-W", "1", to])?;
    let summary = out.lines().find(|l| l.contains("received")).unwrap_or("");
    println!("      {summary}");
    Ok(())
}

/// A one-second TCP run from `client` to an iperf3 server on `addr` in `server`.
fn iperf(server: &Netns, client: &Netns, addr: &str) -> anyhow::Result<()> {
    let _srv: NsChild = NsChild::spawn(
        server
            .cmd("iperf3", ["-s", "-1", "-B", addr])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null()),
    )?;
    let listening = || {
        server
            .run("ss", ["-Htln", "sport = :5201"])
            .is_ok_and(|o| !o.trim().is_empty())
    };
    wait_until(Duration::from_secs(5), "iperf3 to listen", listening)?;
    let out = client.run("iperf3", ["-c", addr, "-t", "1", "-f", "m"])?;
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
    let zero = Counter::default();
    for (reason, a) in after {
        let b = before.get(reason).copied().unwrap_or(zero);
        if a.packets + b.packets > 0 {
            line(reason, b, *a);
        }
    }
    line("(all)", total(before), total(after));
    println!();
}
