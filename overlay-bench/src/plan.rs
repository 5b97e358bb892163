//! What a run measures and in which order: the paths, the metrics, how long
//! each measurement lasts, and the interleaved schedule of rounds.

use serde::{Deserialize, Serialize};

/// The five data paths, always measured together so that they can be compared
/// as ratios taken side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathId {
    /// (a) Plain routing through two node namespaces, no eBPF: the limit.
    Plain,
    /// (b) The overlay through a ServIP, backend on the other node.
    OverlayRemote,
    /// (c) The overlay through a ServIP, backend on the same node.
    OverlayLocal,
    /// (d) Kernel VXLAN between the node namespaces.
    Vxlan,
    /// (e) A userspace TUN-to-UDP forwarder: the Oakestra design.
    Tun,
}

impl PathId {
    pub const ALL: [PathId; 5] = [
        PathId::Plain,
        PathId::OverlayRemote,
        PathId::OverlayLocal,
        PathId::Vxlan,
        PathId::Tun,
    ];

    /// The letter that names the path in the report and `docs/benchmark.md`.
    pub fn letter(self) -> char {
        match self {
            PathId::Plain => 'a',
            PathId::OverlayRemote => 'b',
            PathId::OverlayLocal => 'c',
            PathId::Vxlan => 'd',
            PathId::Tun => 'e',
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathId::Plain => "plain routed (limit)",
            PathId::OverlayRemote => "overlay ServIP, cross-node",
            PathId::OverlayLocal => "overlay ServIP, same node",
            PathId::Vxlan => "kernel VXLAN, MTU 1450",
            PathId::Tun => "userspace TUN-UDP (Oakestra)",
        }
    }
}

/// What is measured on each path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// iperf3, one TCP stream; also the CPU time it costs.
    Tcp,
    /// iperf3 -u -l 64 at an unlimited rate: packets per second received.
    Udp,
    /// UDP ping-pong of our own: p50 and p99 round trip.
    Latency,
    /// iperf3, 8 parallel TCP streams.
    Tcp8,
    /// iperf3, one TCP stream, in wire mode: the switch segments every
    /// frame to the MTU and the receiving uplinks coalesce with GRO, as
    /// real NICs do (`Testbed::build`). Not measured on (c).
    WireTcp,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Tcp,
        Metric::Udp,
        Metric::Latency,
        Metric::Tcp8,
        Metric::WireTcp,
    ];

    /// Whether the metric is taken on `path` (wire mode leaves the same-node
    /// path out: it never touches a wire).
    pub fn on(self, path: PathId) -> bool {
        !(self == Metric::WireTcp && path == PathId::OverlayLocal)
    }
}

/// One step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// 0-based round.
    pub round: usize,
    pub metric: Metric,
    pub path: PathId,
}

/// Everything that sizes a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub paths: Vec<PathId>,
    /// Seconds of each iperf3 TCP run.
    pub tcp_secs: u32,
    /// Seconds of each iperf3 UDP run.
    pub udp_secs: u32,
    /// Ping-pong requests per latency measurement (after the warm-up).
    pub pings: usize,
    /// Single `BPF_PROG_TEST_RUN`s per program path, each on a fresh packet.
    pub cost_runs: usize,
    /// Services (3 instances each, 3 nodes) written through the reconciler.
    pub control_services: usize,
    /// Services of the full-resync measurement.
    pub resync_services: usize,
    /// Seconds of each dnsperf run (per server and round).
    pub dns_secs: u32,
    /// Services of the DNS measurement (3 policy names each).
    pub dns_services: usize,
    /// Nodes of the full-resync cluster (3 instances per service spread over
    /// them; a node's endpoint map holds 4,096 local instances).
    pub resync_nodes: usize,
}

/// Default number of rounds of a full run.
pub const DEFAULT_ROUNDS: usize = 5;
/// Default number of rounds of a quick run.
pub const QUICK_ROUNDS: usize = 2;

/// Seconds the setup, teardown and each iperf3 start add, for [`Plan::estimate_secs`].
const SETUP_SECS: f64 = 24.0;
const IPERF_OVERHEAD_SECS: f64 = 0.7;
/// Round trips take tens of microseconds; the TUN path up to ~300.
const PING_SECS: f64 = 150e-6;
/// One fresh `BPF_PROG_TEST_RUN` syscall, skb allocation included.
const TEST_RUN_SECS: f64 = 4e-6;
/// Programs timed per packet, in units of `cost_runs`: 6 paths, 2 trivial
/// baselines and 5 profile rows at a fifth of the runs each.
pub const COST_PROGRAMS: usize = 9;
/// Rough seconds of the control-plane section (dominated by the 10k resync).
const CONTROL_SECS: f64 = 10.0;
/// Starting a DNS server, the first answer, stopping it.
const DNS_START_SECS: f64 = 0.5;

impl Plan {
    /// The plan of `cargo xtask bench [--quick] [--rounds N]`.
    pub fn new(quick: bool, rounds: Option<usize>) -> Plan {
        let rounds = rounds
            .unwrap_or(if quick { QUICK_ROUNDS } else { DEFAULT_ROUNDS })
            .max(1);
        Plan {
            quick,
            rounds,
            paths: PathId::ALL.to_vec(),
            tcp_secs: if quick { 2 } else { 5 },
            udp_secs: if quick { 2 } else { 4 },
            pings: if quick { 2_000 } else { 10_000 },
            cost_runs: 1_000_000,
            control_services: 1_000,
            resync_services: 10_000,
            resync_nodes: 10,
            dns_secs: if quick { 2 } else { 5 },
            dns_services: 100,
        }
    }

    /// The measurements in order: round by round; inside a round, metric by
    /// metric, every path once, starting one path later each round so that
    /// no path always runs first (right after setup, or after the heaviest).
    pub fn schedule(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let n = self.paths.len();
        for round in 0..self.rounds {
            for metric in Metric::ALL {
                for i in 0..n {
                    let path = self.paths[(i + round) % n];
                    if !metric.on(path) {
                        continue;
                    }
                    steps.push(Step {
                        round,
                        metric,
                        path,
                    });
                }
            }
        }
        steps
    }

    /// Expected wall-clock seconds of the run (not a measurement: arithmetic
    /// on the plan, so that a test can keep `--quick` under two minutes).
    pub fn estimate_secs(&self) -> f64 {
        let per_path_round = 3.0 * self.tcp_secs as f64
            + self.udp_secs as f64
            + 4.0 * IPERF_OVERHEAD_SECS
            + self.pings as f64 * PING_SECS;
        let traffic = per_path_round * (self.rounds * self.paths.len()) as f64;
        let cost = (self.cost_runs * COST_PROGRAMS) as f64 * TEST_RUN_SECS;
        let dns = (2.0 * (self.dns_secs as f64 + DNS_START_SECS)) * self.rounds as f64;
        SETUP_SECS + traffic + cost + CONTROL_SECS + dns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_a_to_e() {
        let s: String = PathId::ALL.iter().map(|p| p.letter()).collect();
        assert_eq!(s, "abcde");
    }
}
