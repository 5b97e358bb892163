//! The ratios between paths and the targets (`docs/benchmark.md`) judged on a report.

use serde::{Deserialize, Serialize};

use super::{PathSamples, Report};
use crate::plan::PathId;
use crate::stats::{median, paired_ratios};

// ------------------------------------------------------------------ ratios

/// The three data-path metrics that ratios are taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioMetric {
    Tcp,
    UdpPps,
    P50,
    Tcp8,
    WireTcp,
}

impl RatioMetric {
    pub const ALL: [RatioMetric; 5] = [
        RatioMetric::Tcp,
        RatioMetric::UdpPps,
        RatioMetric::P50,
        RatioMetric::Tcp8,
        RatioMetric::WireTcp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RatioMetric::Tcp => "TCP throughput",
            RatioMetric::UdpPps => "UDP 64 B pps",
            RatioMetric::P50 => "p50 latency",
            RatioMetric::Tcp8 => "TCP, 8 streams",
            RatioMetric::WireTcp => "TCP, wire mode",
        }
    }

    fn samples(self, s: &PathSamples) -> &[Option<f64>] {
        match self {
            RatioMetric::Tcp => &s.tcp_gbps,
            RatioMetric::UdpPps => &s.udp_kpps,
            RatioMetric::P50 => &s.p50_us,
            RatioMetric::Tcp8 => &s.tcp8_gbps,
            RatioMetric::WireTcp => &s.wire_tcp_gbps,
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

/// One target and how the run did.
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

/// The targets, judged on `r`.
pub fn targets(r: &Report) -> Vec<Target> {
    use PathId::*;
    use RatioMetric as M;
    let net = |key: &str| r.cost(key).and_then(|c| c.net_ns);
    let converge = r.control.converge.as_ref().map(|c| c.wall_ms / 1000.0);
    vec![
        target(
            "(b)/(a) TCP throughput",
            ratio(r, M::Tcp, OverlayRemote, Plain),
            Goal::AtLeast(0.95),
            "x",
        ),
        target(
            "(b)/(a) TCP, 8 streams",
            ratio(r, M::Tcp8, OverlayRemote, Plain),
            Goal::AtLeast(0.90),
            "x",
        ),
        target(
            "(b)/(a) TCP, wire mode",
            ratio(r, M::WireTcp, OverlayRemote, Plain),
            Goal::AtLeast(0.75),
            "x",
        ),
        target(
            "(b)/(d) TCP, wire mode (vs VXLAN)",
            ratio(r, M::WireTcp, OverlayRemote, Vxlan),
            Goal::AtLeast(1.10),
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
            Goal::AtMost(250.0),
            "ns",
        ),
        target(
            "translate+encapsulate, new flow",
            net("encap_new"),
            Goal::AtMost(600.0),
            "ns",
        ),
        target(
            "new flow with a monitor attached, vs none",
            net("encap_new_monitor")
                .zip(net("encap_new"))
                .map(|(m, n)| m / n),
            Goal::AtMost(1.05),
            "x",
        ),
        target(
            "decapsulate+reverse NAT",
            net("decap_reverse"),
            Goal::AtMost(150.0),
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
