//! Node subnets as a cluster setting: the pool they are leased from and the
//! length of each, which together bound how many nodes a cluster may have
//! and how many instances each node may run.

use std::fmt;
use std::net::Ipv4Addr;

use overlay_common::registry::limits;
use serde::{Deserialize, Serialize};

use crate::model::Subnet;

/// Where node subnets come from (`pool`) and their length (`per_node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSubnets {
    pub pool: Subnet,
    pub per_node: u8,
}

/// The narrowest node subnet: its host addresses 2..=6 carry instances.
pub const NARROWEST: u8 = 29;
/// The widest pool: a shorter one would take a large share of IPv4.
pub const WIDEST_POOL: u8 = 8;

/// Ranges a node subnet pool may not overlap, and why.
const RESERVED: [(Subnet, &str); 4] = [
    (net(0, 0, 8), "0.0.0.0/8 (this network; node id 0)"),
    (net(127, 0, 8), "127.0.0.0/8 (loopback)"),
    (
        net(169, 254, 16),
        "169.254.0.0/16 (link-local: the instances' gateway)",
    ),
    (net(224, 0, 3), "224.0.0.0/3 (multicast and reserved)"),
];

const fn net(a: u8, b: u8, prefix: u8) -> Subnet {
    Subnet {
        addr: Ipv4Addr::new(a, b, 0, 0),
        prefix,
    }
}

fn overlap(a: Subnet, b: Subnet) -> bool {
    a.contains(b.addr) || b.contains(a.addr)
}

impl NodeSubnets {
    /// `10.30.0.0/16` in `/24`s: 256 nodes of 253 instances each.
    pub const DEFAULT: NodeSubnets = NodeSubnets {
        pool: crate::store::DEFAULT_SUBNET_POOL,
        per_node: crate::store::DEFAULT_SUBNET_LEN,
    };

    /// Why these cannot be the cluster's node subnets, if they cannot;
    /// `services` is the ServIP pool, which they may not overlap.
    pub fn check(&self, services: Subnet) -> Result<(), String> {
        let (pool, len) = (self.pool, self.per_node);
        if pool.prefix < WIDEST_POOL {
            return Err(format!("node subnet pool {pool}: at most a /{WIDEST_POOL}"));
        }
        if len < pool.prefix || len > NARROWEST {
            return Err(format!(
                "node subnet length /{len}: must lie between the pool's /{} and /{NARROWEST}",
                pool.prefix
            ));
        }
        if let Some((_, what)) = RESERVED.iter().find(|(r, _)| overlap(*r, pool)) {
            return Err(format!("node subnet pool {pool} overlaps {what}"));
        }
        if overlap(services, pool) {
            return Err(format!(
                "node subnet pool {pool} overlaps the ServIP pool {services}"
            ));
        }
        Ok(())
    }

    /// How many subnets the pool holds.
    pub fn subnets(&self) -> u64 {
        1u64 << (self.per_node - self.pool.prefix).min(32)
    }

    /// How many nodes the cluster may have: one per subnet, up to what the
    /// dataplane's node table holds.
    pub fn max_nodes(&self) -> u64 {
        self.subnets().min(limits::NODES as u64)
    }

    /// How many instances a node may run: its subnet's addresses but the
    /// network address, the north-south source (host 1) and the broadcast
    /// address, up to what the dataplane's endpoint table holds.
    pub fn max_instances(&self) -> u64 {
        let size = 1u64 << (32 - self.per_node);
        size.saturating_sub(3)
            .min(limits::INSTANCES_PER_NODE as u64)
    }

    /// Whether a node subnet of this length takes the dataplane's lookup-free
    /// sender check (see [`Subnet::node_id`]).
    pub fn fast_sender_check(&self) -> bool {
        self.per_node <= 24
    }
}

impl fmt::Display for NodeSubnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in /{}s", self.pool, self.per_node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DEFAULT_SERVICE_POOL;

    fn subnets(pool: &str, per_node: u8) -> NodeSubnets {
        NodeSubnets {
            pool: pool.parse().unwrap(),
            per_node,
        }
    }

    #[test]
    fn limits_follow_the_pool_and_the_length() {
        let d = NodeSubnets::DEFAULT;
        assert_eq!((d.max_nodes(), d.max_instances()), (256, 253));
        let s = subnets("10.30.0.0/16", 26);
        assert_eq!((s.max_nodes(), s.max_instances()), (1024, 61));
        // Capped by the node table.
        let wide = subnets("10.0.0.0/8", 24);
        assert_eq!((wide.subnets(), wide.max_nodes()), (65536, 1024));
        assert!(wide.fast_sender_check() && !s.fast_sender_check());
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let ok = DEFAULT_SERVICE_POOL;
        assert_eq!(NodeSubnets::DEFAULT.check(ok), Ok(()));
        assert_eq!(subnets("10.64.0.0/12", 26).check(ok), Ok(()));
        for (bad, why) in [
            (subnets("10.0.0.0/7", 24), "at most a /8"),
            (
                subnets("10.30.0.0/16", 15),
                "between the pool's /16 and /29",
            ),
            (
                subnets("10.30.0.0/16", 30),
                "between the pool's /16 and /29",
            ),
            (subnets("127.1.0.0/16", 24), "loopback"),
            (subnets("0.0.0.0/16", 24), "node id 0"),
            (subnets("169.254.0.0/16", 24), "link-local"),
            (subnets("239.0.0.0/16", 24), "multicast"),
            (subnets("172.16.0.0/12", 24), "ServIP pool 172.30.0.0/16"),
        ] {
            let err = bad.check(ok).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ids_stay_unique_and_nonzero_in_every_pool() {
        for s in [subnets("10.30.0.0/16", 26), subnets("10.30.0.0/22", 29)] {
            let step = 1u32 << (32 - s.per_node);
            let ids: std::collections::BTreeSet<u32> = (0..s.max_nodes() as u32)
                .map(|i| {
                    Subnet {
                        addr: Ipv4Addr::from(u32::from(s.pool.addr) + i * step),
                        prefix: s.per_node,
                    }
                    .node_id()
                })
                .collect();
            assert_eq!(ids.len() as u64, s.max_nodes(), "{s}");
            assert!(!ids.contains(&0));
            // Never a /24 number, which the dataplane would take for one.
            assert!(ids.iter().all(|id| *id >= 1 << 24));
        }
    }
}
