//! The results of a run: what was measured (kept per round, for the JSON),
//! the targets of issue 9 judged on them, and the markdown table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::plan::{PathId, Plan};
use crate::stats::{median, paired_ratios};

/// Samples of one path, one entry per round (`None`: that measurement failed,
/// see [`Report::errors`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathSamples {
    pub path: Option<PathId>,
    pub tcp_gbps: Vec<Option<f64>>,
    pub tcp_retransmits: Vec<Option<f64>>,
    /// Machine-wide CPU seconds (all cores, /proc/stat) per gigabit moved.
    pub cpu_s_per_gbit: Vec<Option<f64>>,
    /// Mean size of the skbs the client's node sent on its uplink during
    /// the TCP run (bytes / packets of `eth0`): ~64 KB while GSO super-packets
    /// stay whole, ~1.5 KB once they are segmented. None for (c).
    pub uplink_skb_bytes: Vec<Option<f64>>,
    /// 64-byte UDP datagrams received per second, thousands.
    pub udp_kpps: Vec<Option<f64>>,
    /// ... and sent per second, thousands.
    pub udp_sent_kpps: Vec<Option<f64>>,
    pub p50_us: Vec<Option<f64>>,
    pub p99_us: Vec<Option<f64>>,
    /// Requests of the latency run that got no answer within the timeout.
    pub lost_pings: Vec<Option<f64>>,
}

impl PathSamples {
    pub fn new(path: PathId) -> Self {
        PathSamples {
            path: Some(path),
            ..Default::default()
        }
    }
}

/// One program path timed under `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostRow {
    /// Short id, e.g. `encap_new`.
    pub key: String,
    pub description: String,
    pub program: String,
    /// Fresh single runs measured.
    pub runs: u64,
    /// The verdict every run returned.
    pub verdict: String,
    pub median_ns: f64,
    pub mean_ns: f64,
    pub p99_ns: f64,
    /// Key of the trivial program measured the same way (empty for the
    /// baselines themselves).
    pub baseline: String,
    /// `median_ns` minus the baseline's median: the program's own cost.
    pub net_ns: Option<f64>,
    /// The kernel's mean over `repeat` runs on one packet, for paths whose
    /// output is their input (pass, drop), where that figure is valid.
    pub repeat_ns: Option<f64>,
    /// Instructions the verifier processed for the whole program (all paths).
    pub verified_insns: Option<u32>,
    /// Size of the translated (pre-JIT) program, instructions.
    pub xlated_insns: Option<u32>,
}

/// A program's own run-time statistics (`bpf_stats`) while real traffic of
/// path (b) flowed: warm caches, real skbs (a GSO super-packet is one run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InSitu {
    /// The measurement it was taken during, e.g. "UDP 64 B".
    pub during: String,
    /// "n1" (the client's node) or "n2" (the backend's).
    pub node: String,
    pub program: String,
    /// What that program did to most of those packets.
    pub work: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl InSitu {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// 1,000 services written into 3 nodes' maps through the reconciler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Converge {
    pub services: usize,
    pub instances: usize,
    pub nodes: usize,
    /// Per node: `reconcile::desired` plus `reconcile::apply`, ms.
    pub per_node_ms: Vec<f64>,
    /// Map entries each node wrote.
    pub written: Vec<usize>,
    /// All nodes applying at once (threads), until the last one is done, ms.
    pub wall_ms: f64,
}

/// A full resync: read the maps, compute the desired state, diff, apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    pub services: usize,
    pub instances: usize,
    pub nodes: usize,
    /// Instances on the node that resyncs (its endpoints).
    pub local_instances: usize,
    pub read_ms: f64,
    pub desired_ms: f64,
    pub apply_ms: f64,
    pub total_ms: f64,
    pub written: usize,
    /// The same again on the now full maps: what a restart costs when nothing changed.
    pub noop_ms: f64,
    pub noop_written: usize,
}

/// One BPF map of a loaded dataplane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MapMem {
    pub name: String,
    pub map_type: String,
    pub max_entries: u32,
    /// `memlock` from `/proc/self/fdinfo`.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub converge: Option<Converge>,
    pub resync: Option<Resync>,
    /// The maps of one node after the resync.
    pub memory: Vec<MapMem>,
}

impl Control {
    pub fn memory_total(&self) -> u64 {
        self.memory.iter().map(|m| m.bytes).sum()
    }
}

/// Where and when the run happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Seconds since the epoch at the start.
    pub started: u64,
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg` at the start and at the end: other work on the machine.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub elapsed_s: f64,
}

/// Everything one run produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub plan: Plan,
    pub paths: Vec<PathSamples>,
    pub costs: Vec<CostRow>,
    /// `bpf_stats` of the overlay's programs during the (b) runs, summed over rounds.
    pub in_situ: Vec<InSitu>,
    /// What `bpf_stats` reports for the trivial TC program: the statistics'
    /// own cost (two `sched_clock()` reads), to subtract from [`Report::in_situ`].
    pub stats_overhead_ns: Option<f64>,
    pub control: Control,
    /// Queries per second of our DNS server and of dnsmasq.
    pub dns: Dns,
    /// Measurements that failed (the run goes on without them).
    pub errors: Vec<String>,
}

/// dnsperf against our `DnsServer` and dnsmasq, one entry per round each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    pub services: usize,
    /// Distinct A names queried (the same for both servers).
    pub names: usize,
    pub secs: u32,
    pub ours_qps: Vec<Option<f64>>,
    pub dnsmasq_qps: Vec<Option<f64>>,
    /// Queries dnsperf counted as lost (no answer within 1 s), per round.
    pub ours_lost: Vec<Option<f64>>,
    pub dnsmasq_lost: Vec<Option<f64>>,
}

impl Dns {
    /// Ours / dnsmasq: the median of the per-round ratios.
    pub fn ratio(&self) -> Option<f64> {
        let (a, b): (Vec<f64>, Vec<f64>) = self
            .ours_qps
            .iter()
            .zip(&self.dnsmasq_qps)
            .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
            .unzip();
        median(&paired_ratios(&a, &b))
    }
}

impl Report {
    pub fn new(plan: Plan) -> Report {
        Report {
            meta: Meta::default(),
            paths: plan.paths.iter().map(|&p| PathSamples::new(p)).collect(),
            plan,
            costs: Vec::new(),
            in_situ: Vec::new(),
            stats_overhead_ns: None,
            control: Control::default(),
            dns: Dns::default(),
            errors: Vec::new(),
        }
    }

    pub fn path(&self, p: PathId) -> Option<&PathSamples> {
        self.paths.iter().find(|s| s.path == Some(p))
    }

    pub fn path_mut(&mut self, p: PathId) -> &mut PathSamples {
        if let Some(i) = self.paths.iter().position(|s| s.path == Some(p)) {
            &mut self.paths[i]
        } else {
            self.paths.push(PathSamples::new(p));
            self.paths.last_mut().expect("just pushed")
        }
    }

    pub fn cost(&self, key: &str) -> Option<&CostRow> {
        self.costs.iter().find(|c| c.key == key)
    }
}

// ------------------------------------------------------------------ ratios

/// The three data-path metrics that ratios are taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioMetric {
    Tcp,
    UdpPps,
    P50,
}

impl RatioMetric {
    pub const ALL: [RatioMetric; 3] = [RatioMetric::Tcp, RatioMetric::UdpPps, RatioMetric::P50];

    pub fn label(self) -> &'static str {
        match self {
            RatioMetric::Tcp => "TCP throughput",
            RatioMetric::UdpPps => "UDP 64 B pps",
            RatioMetric::P50 => "p50 latency",
        }
    }

    fn samples(self, s: &PathSamples) -> &[Option<f64>] {
        match self {
            RatioMetric::Tcp => &s.tcp_gbps,
            RatioMetric::UdpPps => &s.udp_kpps,
            RatioMetric::P50 => &s.p50_us,
        }
    }
}

/// `num / den` for `metric`: the median of the per-round ratios (rounds are
/// interleaved, so each ratio compares measurements taken seconds apart).
pub fn ratio(r: &Report, metric: RatioMetric, num: PathId, den: PathId) -> Option<f64> {
    let (a, b) = (r.path(num)?, r.path(den)?);
    let (a, b): (Vec<f64>, Vec<f64>) = metric
        .samples(a)
        .iter()
        .zip(metric.samples(b))
        .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
        .unzip();
    median(&paired_ratios(&a, &b))
}

/// Median over the rounds that produced a value.
pub fn med(v: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = v.iter().flatten().copied().collect();
    median(&v)
}

// ----------------------------------------------------------------- targets

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn holds(self, v: f64) -> bool {
        match self {
            Goal::AtLeast(g) => v >= g,
            Goal::AtMost(g) => v <= g,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Missed,
    NotMeasured,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "MISSED",
            Status::NotMeasured => "not measured",
        }
    }
}

/// One target of issue 9 and how the run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub value: Option<f64>,
    pub goal: Goal,
    /// "x" for ratios, "ns", "s".
    pub unit: String,
    pub status: Status,
}

fn target(name: &str, value: Option<f64>, goal: Goal, unit: &str) -> Target {
    let status = match value {
        None => Status::NotMeasured,
        Some(v) if goal.holds(v) => Status::Met,
        Some(_) => Status::Missed,
    };
    Target {
        name: name.to_owned(),
        value,
        goal,
        unit: unit.to_owned(),
        status,
    }
}

/// The targets of issue 9, judged on `r`.
pub fn targets(r: &Report) -> Vec<Target> {
    use PathId::*;
    use RatioMetric as M;
    let net = |key: &str| r.cost(key).and_then(|c| c.net_ns);
    let converge = r.control.converge.as_ref().map(|c| c.wall_ms / 1000.0);
    vec![
        target(
            "(b)/(a) TCP throughput",
            ratio(r, M::Tcp, OverlayRemote, Plain),
            Goal::AtLeast(0.90),
            "x",
        ),
        target(
            "(b)/(a) UDP 64 B pps",
            ratio(r, M::UdpPps, OverlayRemote, Plain),
            Goal::AtLeast(0.85),
            "x",
        ),
        target(
            "(b)/(a) p50 latency",
            ratio(r, M::P50, OverlayRemote, Plain),
            Goal::AtMost(1.15),
            "x",
        ),
        target(
            "(b)/(d) TCP throughput (vs VXLAN)",
            ratio(r, M::Tcp, OverlayRemote, Vxlan),
            Goal::AtLeast(1.25),
            "x",
        ),
        target(
            "(b)/(e) TCP throughput (vs TUN)",
            ratio(r, M::Tcp, OverlayRemote, Tun),
            Goal::AtLeast(15.0),
            "x",
        ),
        target(
            "translate+encapsulate, established flow",
            net("encap_established"),
            Goal::AtMost(150.0),
            "ns",
        ),
        target(
            "translate+encapsulate, new flow",
            net("encap_new"),
            Goal::AtMost(150.0),
            "ns",
        ),
        target(
            "decapsulate+reverse NAT",
            net("decap_reverse"),
            Goal::AtMost(100.0),
            "ns",
        ),
        target(
            "3,000 instances converge on every node",
            converge,
            Goal::AtMost(5.0),
            "s",
        ),
        target(
            "DNS queries/s, ours/dnsmasq",
            r.dns.ratio(),
            Goal::AtLeast(1.0),
            "x",
        ),
    ]
}

// ---------------------------------------------------------------- markdown

/// `v` with `prec` decimals, or "-".
pub fn num(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.prec$}"),
        _ => "-".to_owned(),
    }
}

fn goal_text(g: Goal, unit: &str) -> String {
    let (op, v) = match g {
        Goal::AtLeast(v) => ("≥", v),
        Goal::AtMost(v) => ("≤", v),
    };
    match unit {
        "x" => format!("{op} {v:.2}x"),
        u => format!("{op} {v} {u}"),
    }
}

fn value_text(v: Option<f64>, unit: &str) -> String {
    match (v, unit) {
        (None, _) => "-".to_owned(),
        (Some(v), "x") => format!("{v:.2}x"),
        (Some(v), "ns") => format!("{v:.0} ns"),
        (Some(v), u) => format!("{v:.2} {u}"),
    }
}

/// The whole report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let p = &r.plan;
    let _ = writeln!(s, "# EdgeIO overlay benchmark\n");
    let _ = writeln!(
        s,
        "{} run: {} interleaved round(s), TCP {} s, UDP {} s, {} pings per path and round; \
         kernel {}, {} CPUs; load average {} at the start, {} at the end; {:.0} s in all.\n",
        if p.quick { "Quick" } else { "Full" },
        p.rounds,
        p.tcp_secs,
        p.udp_secs,
        p.pings,
        or_dash(&r.meta.kernel),
        r.meta.cpus,
        or_dash(&r.meta.loadavg_start),
        or_dash(&r.meta.loadavg_end),
        r.meta.elapsed_s,
    );

    let _ = writeln!(s, "## Data paths (medians over the rounds)\n");
    let _ = writeln!(
        s,
        "| path | TCP Gbit/s | CPU s/Gbit | uplink skb B (TCP) | UDP 64 B kpps received | RTT p50 µs | RTT p99 µs |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ps in &r.paths {
        let Some(path) = ps.path else { continue };
        let _ = writeln!(
            s,
            "| ({}) {} | {} | {} | {} | {} | {} | {} |",
            path.letter(),
            path.label(),
            num(med(&ps.tcp_gbps), 2),
            num(med(&ps.cpu_s_per_gbit), 2),
            num(med(&ps.uplink_skb_bytes), 0),
            num(med(&ps.udp_kpps), 0),
            num(med(&ps.p50_us), 0),
            num(med(&ps.p99_us), 0),
        );
    }

    let _ = writeln!(
        s,
        "\n## Ratios to (a) plain routing (median of the per-round ratios)\n"
    );
    let _ = writeln!(s, "| path | TCP | UDP pps | p50 latency |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    for &path in p.paths.iter().filter(|&&q| q != PathId::Plain) {
        let cells: Vec<String> = RatioMetric::ALL
            .iter()
            .map(|&m| value_text(ratio(r, m, path, PathId::Plain), "x"))
            .collect();
        let _ = writeln!(
            s,
            "| ({}) {} | {} |",
            path.letter(),
            path.label(),
            cells.join(" | ")
        );
    }

    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | measured | goal | result |");
    let _ = writeln!(s, "| --- | ---: | ---: | --- |");
    for t in targets(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.name,
            value_text(t.value, &t.unit),
            goal_text(t.goal, &t.unit),
            t.status.label()
        );
    }

    let _ = writeln!(
        s,
        "\n## Per-packet cost under BPF_PROG_TEST_RUN (fresh packet per run)\n"
    );
    let _ = writeln!(
        s,
        "| path | program | runs | verdict | median ns | mean ns | p99 ns | minus trivial ns | repeat ns | verified insns |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &r.costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            c.description,
            c.program,
            c.runs,
            c.verdict,
            c.median_ns,
            c.mean_ns,
            c.p99_ns,
            num(c.net_ns, 0),
            num(c.repeat_ns, 0),
            c.verified_insns
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
    }

    if !r.in_situ.is_empty() {
        let _ = writeln!(
            s,
            "\n## In situ: bpf_stats of the programs while (b) carried traffic (all rounds)\n"
        );
        let _ = writeln!(
            s,
            "Statistics overhead (trivial program, same counters): {} ns per run.\n",
            num(r.stats_overhead_ns, 0)
        );
        let _ = writeln!(
            s,
            "| during | node | program | mostly | runs | ns per run | minus overhead |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | ---: | ---: | ---: |");
        for x in r.in_situ.iter().filter(|x| x.runs > 0) {
            let net = x.ns_per_run().zip(r.stats_overhead_ns).map(|(a, b)| a - b);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                x.during,
                x.node,
                x.program,
                x.work,
                x.runs,
                num(x.ns_per_run(), 0),
                num(net, 0)
            );
        }
    }

    let _ = writeln!(s, "\n## Control plane\n");
    let _ = writeln!(s, "| measurement | value |");
    let _ = writeln!(s, "| --- | ---: |");
    if let Some(c) = &r.control.converge {
        let _ = writeln!(
            s,
            "| {} services × 3 instances over {} nodes ({} instances): every node's maps written, nodes in parallel | {:.0} ms |",
            c.services, c.nodes, c.instances, c.wall_ms
        );
        let per: Vec<String> = c
            .per_node_ms
            .iter()
            .zip(&c.written)
            .map(|(ms, n)| format!("{ms:.0} ms ({n} entries)"))
            .collect();
        let _ = writeln!(s, "| ... per node (desired + apply) | {} |", per.join(", "));
    }
    if let Some(x) = &r.control.resync {
        let _ = writeln!(
            s,
            "| full resync of {} services ({} instances over {} nodes, {} local) against empty maps | {:.0} ms |",
            x.services, x.instances, x.nodes, x.local_instances, x.total_ms
        );
        let _ = writeln!(
            s,
            "| ... read {:.0} ms, desired {:.0} ms, diff + apply {:.0} ms | {} entries |",
            x.read_ms, x.desired_ms, x.apply_ms, x.written
        );
        let _ = writeln!(
            s,
            "| resync again with nothing changed (restart) | {:.0} ms, {} entries |",
            x.noop_ms, x.noop_written
        );
    }
    if !r.control.memory.is_empty() {
        let _ = writeln!(
            s,
            "| BPF map memory of one node (memlock, {} maps) | {:.1} MiB |",
            r.control.memory.len(),
            r.control.memory_total() as f64 / (1024.0 * 1024.0)
        );
        let mut maps = r.control.memory.clone();
        maps.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        let parts: Vec<String> = maps
            .iter()
            .filter(|m| m.bytes >= 64 * 1024)
            .map(|m| format!("{} {:.1}", m.name, m.bytes as f64 / (1024.0 * 1024.0)))
            .collect();
        let _ = writeln!(
            s,
            "| ... maps of 64 KiB or more, MiB | {} |",
            parts.join(", ")
        );
    }

    let d = &r.dns;
    let _ = writeln!(s, "\n## DNS (dnsperf, medians over the rounds)\n");
    if d.ours_qps.is_empty() && d.dnsmasq_qps.is_empty() {
        let _ = writeln!(s, "not measured\n");
    } else {
        let _ = writeln!(
            s,
            "{} A names ({} services × 3 policies), {} s per server and round, \
             server and client namespaces joined by a veth.\n",
            d.names, d.services, d.secs
        );
    }
    let _ = writeln!(s, "| server | queries/s | lost queries |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    for (label, qps, lost) in [
        (crate::dns::Which::Ours.label(), &d.ours_qps, &d.ours_lost),
        (
            crate::dns::Which::Dnsmasq.label(),
            &d.dnsmasq_qps,
            &d.dnsmasq_lost,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            num(med(qps), 0),
            num(med(lost), 0)
        );
    }
    let _ = writeln!(
        s,
        "| ratio ours/dnsmasq (median of per-round ratios) | {} | |",
        value_text(d.ratio(), "x")
    );

    if !r.errors.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for e in &r.errors {
            let _ = writeln!(s, "* {}", e.replace('\n', " "));
        }
    }
    s
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
