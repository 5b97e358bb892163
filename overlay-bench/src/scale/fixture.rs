//! The simulated cluster's layout: services preloaded into the store,
//! instances spread over the nodes (3 per service, on consecutive nodes),
//! and the node subnet setting that fits them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use overlay_ctl::descriptor::{Descriptor, ServiceRecord};
use overlay_ctl::model::{InstanceSpec, Policy, Subnet};
use overlay_ctl::subnets::NodeSubnets;

/// Preloaded ServIPs come from the upper half of the ServIP pool, so that
/// the deploys measured (which take the lowest free addresses) never meet
/// them.
const PRELOAD_BASE: Ipv4Addr = Ipv4Addr::new(172, 30, 128, 0);

pub fn descriptor(app: &str) -> Descriptor {
    Descriptor {
        appname: app.into(),
        appns: "sim".into(),
        servicename: "web".into(),
        servicens: "v1".into(),
        exposed: false,
        needs: Vec::new(),
        ports: vec![80],
        stateful: false,
        readiness: None,
    }
}

pub fn service_name(s: usize) -> String {
    descriptor(&format!("a{s}")).name()
}

/// `services/<name>` records of `count` services, ids from 1_000_000 up
/// (clear of the ids the measured deploys get).
pub fn service_records(count: usize) -> Vec<(String, Vec<u8>)> {
    let mut addrs = (1u32..)
        .map(|i| Ipv4Addr::from(u32::from(PRELOAD_BASE) + i))
        .filter(|ip| !matches!(ip.octets()[3], 0 | 255));
    (0..count)
        .map(|s| {
            let d = descriptor(&format!("a{s}"));
            let servips: BTreeMap<Policy, Ipv4Addr> = Policy::SERVIPS
                .iter()
                .map(|p| (*p, addrs.next().expect("addresses")))
                .collect();
            let rec = ServiceRecord {
                name: d.name(),
                id: 1_000_000 + s as u32,
                descriptor: d,
                servips,
            };
            let value = serde_json::to_vec(&rec).expect("records serialise");
            (format!("services/{}", rec.name), value)
        })
        .collect()
}

/// Node subnets large enough for `per_node` instances each, out of 10/8.
pub fn node_subnets(per_node: usize) -> NodeSubnets {
    let hosts = (per_node + 3).next_power_of_two().max(8);
    let len = 32 - hosts.trailing_zeros() as u8;
    NodeSubnets {
        pool: "10.0.0.0/8".parse().expect("a prefix"),
        per_node: len,
    }
}

/// Instance `j` of the cluster: service `j / 3`, its `j % 3 + 1`th
/// instance, on node `(j / 3 + j % 3) % nodes`.
pub fn instance_node(j: usize, nodes: usize) -> usize {
    (j / 3 + j % 3) % nodes
}

/// The instances node `me` runs, NamespaceIPs from its subnet's `.2` up.
pub fn instances_of(me: usize, nodes: usize, total: usize, subnet: Subnet) -> Vec<InstanceSpec> {
    (0..total)
        .filter(|&j| instance_node(j, nodes) == me)
        .enumerate()
        .map(|(k, j)| InstanceSpec {
            service: service_name(j / 3),
            instance: (j % 3) as u32 + 1,
            node: super::node_name(me),
            nsip: subnet.host(2 + k as u32),
            fixed_ip: None,
            health: Default::default(),
        })
        .collect()
}

/// Stand-ins for the cluster's NamespaceIPs that loads point at (any
/// addresses of the pool do: only their count and churn matter).
pub fn load_targets(count: usize) -> Vec<Ipv4Addr> {
    (0..count as u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + i * 7))
        .collect()
}
