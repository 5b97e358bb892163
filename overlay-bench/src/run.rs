//! One benchmark run: the data paths round by round, the per-packet costs,
//! the control plane; then the files under `target/bench/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::plan::{Metric, PathId, Plan};
use crate::report::{Report, markdown};
use crate::topo::Testbed;
use crate::{chart, control, cost, traffic, tunfwd};

/// Set by SIGINT: loops stop, the run unwinds and the namespaces are deleted.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C ends the iperf3 children (same process group) and sets
/// [`INTERRUPTED`]; the run then unwinds so every namespace is dropped.
pub fn install_sigint() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Which parts to run (all by default; the others are for development).
#[derive(Clone, Debug, Default)]
pub struct Sections {
    pub paths: bool,
    pub cost: bool,
    pub control: bool,
    pub dns: bool,
    /// Only these per-packet paths (keys such as `encap_established`); all when empty.
    pub cost_only: Vec<String>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the plan; measurement failures are recorded in the report, an
/// interruption is an error.
pub fn run(plan: Plan, sections: &Sections) -> anyhow::Result<Report> {
    overlay_testnet::require_root()?;
    let start = Instant::now();
    let mut r = Report::new(plan.clone());
    r.meta.started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    r.meta.kernel = read_trim("/proc/sys/kernel/osrelease");
    r.meta.cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    r.meta.loadavg_start = loadavg();

    if sections.paths
        && let Err(e) = data_paths(&plan, &mut r)
    {
        interrupted()?;
        r.errors.push(format!("data paths: {e:#}"));
    }
    interrupted()?;
    if sections.dns
        && let Err(e) = dns(&plan, &mut r)
    {
        interrupted()?;
        r.errors.push(format!("dns: {e:#}"));
    }
    interrupted()?;
    if sections.cost {
        eprintln!(
            "bench: per-packet cost, {} fresh runs per path",
            plan.cost_runs
        );
        match cost::run(plan.cost_runs, &sections.cost_only, &INTERRUPTED) {
            Ok((rows, overhead)) => {
                r.costs = rows;
                r.stats_overhead_ns = overhead;
            }
            Err(e) => {
                interrupted()?;
                r.errors.push(format!("per-packet cost: {e:#}"));
            }
        }
    }
    interrupted()?;
    if sections.control {
        control_plane(&plan, &mut r);
    }
    interrupted()?;
    r.meta.loadavg_end = loadavg();
    r.meta.elapsed_s = start.elapsed().as_secs_f64();
    Ok(r)
}

fn data_paths(plan: &Plan, r: &mut Report) -> anyhow::Result<()> {
    tunfwd::check_available()?;
    eprintln!("bench: building the five test networks, and again in wire mode");
    let t = Instant::now();
    let mut default = Testbed::build(false)?;
    let mut wire = Testbed::build(true)?;
    eprintln!("bench: built in {:.1} s", t.elapsed().as_secs_f64());
    let steps = plan.schedule();
    let total = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        interrupted()?;
        let bed = match step.metric {
            Metric::WireTcp => &mut wire,
            _ => &mut default,
        };
        // Path (b)'s programs report their own run time during TCP and UDP.
        let in_situ = step.path == PathId::OverlayRemote
            && matches!(step.metric, Metric::Tcp | Metric::Udp | Metric::WireTcp);
        let stats = in_situ
            .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).ok())
            .flatten();
        let before = match &stats {
            Some(_) => bed.overlay.prog_stats().ok(),
            None => None,
        };
        let env = bed.env(step.path);
        let what = format!(
            "round {} {:?} ({}) {}",
            step.round + 1,
            step.metric,
            step.path.letter(),
            step.path.label()
        );
        eprint!("bench: [{:>3}/{total}] {what}: ", i + 1);
        let s = r.path_mut(step.path);
        let result = match step.metric {
            Metric::Tcp => {
                let uplink = bed.client_node(step.path);
                let before = uplink.and_then(|ns| traffic::tx_counters(ns, "eth0").ok());
                let result = traffic::tcp(&env, plan.tcp_secs);
                let after = uplink.and_then(|ns| traffic::tx_counters(ns, "eth0").ok());
                let skb = match (before, after) {
                    (Some((p0, b0)), Some((p1, b1))) if p1 > p0 => {
                        Some((b1 - b0) as f64 / (p1 - p0) as f64)
                    }
                    _ => None,
                };
                result.map(|t| {
                    s.uplink_skb_bytes.push(skb);
                    s.tcp_gbps.push(Some(t.gbps));
                    s.tcp_retransmits.push(Some(t.retransmits));
                    s.cpu_s_per_gbit
                        .push(Some(t.cpu_s_per_gbit).filter(|x| x.is_finite()));
                    format!(
                        "{:.2} Gbit/s, {:.2} CPU s/Gbit, uplink skbs of {} B",
                        t.gbps,
                        t.cpu_s_per_gbit,
                        crate::report::num(skb, 0)
                    )
                })
            }
            Metric::Udp => traffic::udp(&env, plan.udp_secs).map(|u| {
                s.udp_kpps.push(Some(u.received_kpps));
                s.udp_sent_kpps.push(Some(u.sent_kpps));
                format!(
                    "{:.0} kpps received of {:.0} sent",
                    u.received_kpps, u.sent_kpps
                )
            }),
            Metric::Tcp8 => traffic::tcp_streams(&env, plan.tcp_secs, 8).map(|t| {
                s.tcp8_gbps.push(Some(t.gbps));
                format!("{:.2} Gbit/s in 8 streams", t.gbps)
            }),
            Metric::WireTcp => traffic::tcp(&env, plan.tcp_secs).map(|t| {
                s.wire_tcp_gbps.push(Some(t.gbps));
                format!("{:.2} Gbit/s in wire mode", t.gbps)
            }),
            Metric::Latency => traffic::latency(&env, plan.pings, &INTERRUPTED).map(|l| {
                s.p50_us.push(Some(l.p50_us));
                s.p99_us.push(Some(l.p99_us));
                s.lost_pings.push(Some(l.lost as f64));
                format!("p50 {:.0} us, p99 {:.0} us", l.p50_us, l.p99_us)
            }),
        };
        if let Some(before) = before
            && let Ok(after) = bed.overlay.prog_stats()
        {
            record_in_situ(r, step.metric, &before, &after);
        }
        drop(stats);
        let s = r.path_mut(step.path);
        match result {
            Ok(line) => eprintln!("{line}"),
            Err(e) => {
                eprintln!("failed");
                interrupted()?;
                // Keep the rounds aligned: a failed measurement is a gap.
                match step.metric {
                    Metric::Tcp => {
                        s.uplink_skb_bytes.push(None);
                        s.tcp_gbps.push(None);
                        s.tcp_retransmits.push(None);
                        s.cpu_s_per_gbit.push(None);
                    }
                    Metric::Udp => {
                        s.udp_kpps.push(None);
                        s.udp_sent_kpps.push(None);
                    }
                    Metric::Latency => {
                        s.p50_us.push(None);
                        s.p99_us.push(None);
                        s.lost_pings.push(None);
                    }
                    Metric::Tcp8 => s.tcp8_gbps.push(None),
                    Metric::WireTcp => s.wire_tcp_gbps.push(None),
                }
                let env = bed.env(step.path);
                let mut msg = format!("{what} ({}): {e:#}", traffic::describe(&env));
                if matches!(step.path, PathId::OverlayRemote | PathId::OverlayLocal) {
                    msg += &format!("; dataplane counters: {}", bed.overlay_stats());
                }
                r.errors.push(msg);
            }
        }
    }
    let bed = default;
    drop(wire);
    let fwd: Vec<String> = bed
        .tun
        .forwarders
        .iter()
        .map(|f| format!("{:?}", f.counts()))
        .collect();
    eprintln!(
        "bench: TUN forwarders (to UDP, to TUN, dropped): {}; overlay counters: {}",
        fwd.join(" "),
        bed.overlay_stats()
    );
    eprintln!("bench: deleting the test networks");
    drop(bed);
    Ok(())
}

/// Our DNS server against dnsmasq, round by round, the first server
/// alternating; a failed run is a gap in its round.
fn dns(plan: &Plan, r: &mut Report) -> anyhow::Result<()> {
    eprintln!(
        "bench: DNS: {} services x 3 names, ours and dnsmasq",
        plan.dns_services
    );
    let bed = crate::dns::DnsBed::build(plan.dns_services)?;
    r.dns.services = bed.services;
    r.dns.names = bed.names();
    r.dns.secs = plan.dns_secs;
    let n = crate::dns::Which::ALL.len();
    for round in 0..plan.rounds {
        for i in 0..n {
            interrupted()?;
            let which = crate::dns::Which::ALL[(i + round) % n];
            eprint!("bench: round {} DNS {}: ", round + 1, which.label());
            let result = bed.measure(which, plan.dns_secs);
            let (qps, lost) = match which {
                crate::dns::Which::Ours => (&mut r.dns.ours_qps, &mut r.dns.ours_lost),
                crate::dns::Which::Dnsmasq => (&mut r.dns.dnsmasq_qps, &mut r.dns.dnsmasq_lost),
            };
            match result {
                Ok(p) => {
                    eprintln!("{:.0} queries/s, {} of {} lost", p.qps, p.lost, p.sent);
                    qps.push(Some(p.qps));
                    lost.push(Some(p.lost as f64));
                }
                Err(e) => {
                    eprintln!("failed");
                    qps.push(None);
                    lost.push(None);
                    interrupted()?;
                    r.errors
                        .push(format!("round {} DNS {}: {e:#}", round + 1, which.label()));
                }
            }
        }
    }
    Ok(())
}

/// What each program of path (b) mostly did during `metric`.
fn work(metric: Metric, node: &str, program: &str) -> &'static str {
    use overlay_ctl::dataplane::programs::{FROM_INSTANCE, UPLINK, UPLINK_XDP};
    match (metric, node, program) {
        (Metric::WireTcp, "n1", FROM_INSTANCE) => "translate + encapsulate, TSO super-packets",
        (Metric::WireTcp, "n1", UPLINK_XDP) => "decapsulate ACKs (MTU-size frames)",
        (Metric::WireTcp, "n1", UPLINK) => "reverse NAT + deliver ACKs (after GRO)",
        (Metric::WireTcp, "n2", UPLINK_XDP) => "decapsulate MTU-size frames",
        (Metric::WireTcp, "n2", UPLINK) => "deliver (no NAT), after GRO",
        (Metric::WireTcp, "n2", FROM_INSTANCE) => "encapsulate replies (ACKs)",
        (Metric::Udp, "n1", FROM_INSTANCE) => "translate + encapsulate, 64 B datagrams",
        (Metric::Tcp, "n1", FROM_INSTANCE) => "translate + encapsulate, TSO super-packets",
        (Metric::Udp, "n2", UPLINK) => "decapsulate + deliver (no NAT), 64 B datagrams",
        (Metric::Tcp, "n2", UPLINK) => "decapsulate + deliver (no NAT), MTU-size segments",
        (Metric::Tcp, "n1", UPLINK) => "decapsulate + reverse NAT, ACKs",
        (Metric::Tcp, "n2", FROM_INSTANCE) => "encapsulate replies (ACKs)",
        (_, _, UPLINK_XDP) => "pass to TC",
        _ => "little (control traffic)",
    }
}

/// Adds the `bpf_stats` deltas of one measurement of (b) to the report.
fn record_in_situ(
    r: &mut Report,
    metric: Metric,
    before: &[(String, &'static str, u64, u64)],
    after: &[(String, &'static str, u64, u64)],
) {
    let during = match metric {
        Metric::Tcp => "TCP",
        Metric::Udp => "UDP 64 B",
        Metric::Latency => "ping-pong",
        Metric::Tcp8 => "TCP, 8 streams",
        Metric::WireTcp => "TCP, wire mode",
    };
    for ((node, program, t0, n0), (_, _, t1, n1)) in before.iter().zip(after) {
        let runs = n1.saturating_sub(*n0);
        let time = t1.saturating_sub(*t0);
        let i = match r
            .in_situ
            .iter()
            .position(|x| x.during == during && x.node == *node && x.program == *program)
        {
            Some(i) => i,
            None => {
                r.in_situ.push(crate::report::InSitu {
                    during: during.to_owned(),
                    node: node.clone(),
                    program: (*program).to_owned(),
                    work: work(metric, node, program).to_owned(),
                    ..Default::default()
                });
                r.in_situ.len() - 1
            }
        };
        r.in_situ[i].runs += runs;
        r.in_situ[i].run_time_ns += time;
    }
}

fn control_plane(plan: &Plan, r: &mut Report) {
    eprintln!(
        "bench: control plane: {} services x 3 instances into 3 nodes",
        plan.control_services
    );
    match control::converge(plan.control_services) {
        Ok(c) => r.control.converge = Some(c),
        Err(e) => r.errors.push(format!("control plane, converge: {e:#}")),
    }
    eprintln!(
        "bench: control plane: full resync of {} services",
        plan.resync_services
    );
    match control::resync(plan.resync_services, plan.resync_nodes) {
        Ok((x, mut dp)) => {
            r.control.resync = Some(x);
            match control::map_memory(&mut dp) {
                Ok(m) => r.control.memory = m,
                Err(e) => r.errors.push(format!("map memory: {e:#}")),
            }
        }
        Err(e) => r.errors.push(format!("control plane, resync: {e:#}")),
    }
}

/// Writes `results.md`, `results.json` and `ratios.svg` into `dir`; returns
/// the markdown.
pub fn write_outputs(r: &Report, dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = markdown(r);
    let mut json = serde_json::to_value(r)?;
    json["targets"] = serde_json::to_value(crate::report::targets(r))?;
    let files: [(&str, String); 3] = [
        ("results.md", md.clone()),
        ("results.json", serde_json::to_string_pretty(&json)? + "\n"),
        ("ratios.svg", chart::svg(r)),
    ];
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(md)
}

/// `<workspace>/target/bench`: `CARGO_MANIFEST_DIR` (set by `cargo run`)
/// or the compiled-in crate directory, one level up.
pub fn default_out_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let ws = manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"))
        .join("bench")
}
