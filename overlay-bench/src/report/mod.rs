//! The results of a run: what was measured (kept per round, for the JSON),
//! the targets (`docs/benchmark.md`) judged on them ([`targets()`]), and the markdown
//! table ([`markdown()`]).

mod markdown;
mod targets;

use serde::{Deserialize, Serialize};

use crate::plan::{PathId, Plan};
use crate::stats::{median, paired_ratios};

pub use markdown::{markdown, num};
pub use targets::{Goal, RatioMetric, Status, Target, med, ratio, targets};

/// Samples of one path, one entry per round (`None`: that measurement failed,
/// see [`Report::errors`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathSamples {
    pub path: Option<PathId>,
    pub tcp_gbps: Vec<Option<f64>>,
    /// 8 parallel streams, all together.
    #[serde(default)]
    pub tcp8_gbps: Vec<Option<f64>>,
    /// One stream in wire mode (see `Metric::WireTcp`).
    #[serde(default)]
    pub wire_tcp_gbps: Vec<Option<f64>>,
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
