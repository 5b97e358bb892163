//! `overlay-bench --scale`: N simulated nodes on one etcd (in a namespace),
//! measured from a cold start through a steady state to service deploys
//! (`docs/scale.md`).
//!
//! * [`light`]: the N light nodes (store client, registration, publishing,
//!   the follower's read and watch, counted);
//! * [`full`]: a few full agents (follower and desired state), whose CPU
//!   time and memory are measured;
//! * [`synth`]: synthetic RTTs and loads; [`fixture`]: the cluster layout;
//! * [`report`]: the figures, their table, JSON and chart.

pub mod fixture;
pub mod full;
pub mod light;
pub mod report;
mod sim;
pub mod synth;

use std::net::Ipv4Addr;
use std::time::Duration;

use overlay_ctl::store::Publishing;

pub use report::ScaleRow;

/// Node `i`'s name (0-based): `n1`, `n2`, ...
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// What to simulate, for every cluster size.
#[derive(Clone, Debug)]
pub struct ScalePlan {
    pub sizes: Vec<usize>,
    pub services: usize,
    pub instances: usize,
    pub full_agents: usize,
    /// Nodes start evenly over this long (zero: all at once).
    pub ramp: Duration,
    /// Time after convergence before the steady state is measured.
    pub settle: Duration,
    /// The steady state's length (at least two publishing paces).
    pub window: Duration,
    pub deploys: usize,
    /// The probe and load period of every node.
    pub period: Duration,
    /// Instances each node has flows to.
    pub flows_per_node: usize,
    pub publishing: Publishing,
    /// Gives up on a phase after this long.
    pub timeout: Duration,
}

impl ScalePlan {
    /// 100, 300 and 1,000 nodes; 10,000 services, 30,000 instances.
    pub fn full() -> ScalePlan {
        ScalePlan {
            sizes: vec![100, 300, 1000],
            services: 10_000,
            instances: 30_000,
            full_agents: 2,
            ramp: Duration::ZERO,
            settle: Duration::from_secs(10),
            window: Duration::from_secs(40),
            deploys: 5,
            period: Duration::from_secs(1),
            flows_per_node: 10,
            publishing: Publishing::DEFAULT,
            timeout: Duration::from_secs(900),
        }
    }

    /// 20 nodes, 200 services, 600 instances: seconds, for the tests.
    pub fn quick() -> ScalePlan {
        ScalePlan {
            sizes: vec![20],
            services: 200,
            instances: 600,
            full_agents: 1,
            settle: Duration::from_secs(1),
            window: Duration::from_secs(4),
            deploys: 2,
            timeout: Duration::from_secs(120),
            ..ScalePlan::full()
        }
    }
}

/// One cluster size of a plan.
#[derive(Clone, Debug)]
pub struct Sim {
    pub nodes: usize,
    pub services: usize,
    pub instances: usize,
    pub period: Duration,
    pub flows_per_node: usize,
    pub publishing: Publishing,
}

/// What every simulated node shares.
#[derive(Debug)]
pub struct Run {
    pub endpoint: String,
    pub plan: Sim,
    /// Addresses the synthetic loads point at.
    pub targets: Vec<Ipv4Addr>,
}

/// Runs every size of `plan`, one fresh etcd each.
pub fn run(plan: &ScalePlan) -> anyhow::Result<Vec<ScaleRow>> {
    plan.sizes
        .iter()
        .map(|&nodes| {
            eprintln!("scale: {nodes} nodes, {} instances", plan.instances);
            let row = sim::one(plan, nodes)?;
            eprintln!("scale: {}", row.summary());
            Ok(row)
        })
        .collect()
}
