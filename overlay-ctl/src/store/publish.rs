//! How a node publishes its measurements (`node/<node>/rtt`, `.../load`).
//!
//! Every agent watches every key, so each write of a node reaches every
//! node: N nodes writing N-sized RTT maps whenever one moves cost O(N³)
//! bytes cluster-wide. A node's own decisions use its own measurements
//! (they never wait for the store), so what it publishes serves the others
//! only: the load of the instances they share, and the distance back to
//! this node for the peers it is near (the policies' fallback when a node
//! has not measured a peer itself). Hence: a summary, at a bounded pace.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Registration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Publishing {
    /// The measurement writes all nodes together may make per second: each
    /// node writes at most once per `nodes / budget` seconds (both keys in
    /// one transaction). `None`: on every change.
    pub cluster_writes_per_s: Option<f64>,
    /// Only the RTTs to this many nearest peers; `None`: to every peer.
    pub rtt_peers: Option<usize>,
}

impl Publishing {
    /// 30 writes/s cluster-wide (a node of 100 writes at most every 3.3 s,
    /// its keepalive's period; of 1,000, every 33 s), the 8 nearest peers
    /// (`docs/scale.md`).
    pub const DEFAULT: Publishing = Publishing {
        cluster_writes_per_s: Some(30.0),
        rtt_peers: Some(8),
    };

    /// The previous release's: every change, every peer (for comparison).
    pub const EVERY_CHANGE: Publishing = Publishing {
        cluster_writes_per_s: None,
        rtt_peers: None,
    };

    /// How long a node of a cluster of `nodes` waits between writes.
    pub fn pace(&self, nodes: usize) -> Duration {
        self.cluster_writes_per_s.map_or(Duration::ZERO, |w| {
            Duration::from_secs_f64(nodes as f64 / w)
        })
    }

    /// Sets `reg`'s pace for a cluster of `nodes`.
    pub fn apply(&self, reg: &Registration, nodes: usize) {
        reg.pace_status(self.pace(nodes));
    }

    /// What of the measured RTTs `all` (peer → µs) is published.
    pub fn rtt(&self, all: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let Some(k) = self.rtt_peers.filter(|k| *k < all.len()) else {
            return all.clone();
        };
        let mut near: Vec<(&String, &u32)> = all.iter().collect();
        near.sort_by_key(|(name, us)| (**us, *name));
        near.into_iter()
            .take(k)
            .map(|(n, us)| (n.clone(), *us))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_peers_are_published() {
        let all: BTreeMap<String, u32> = (0..20).map(|i| (format!("n{i}"), 1000 - i)).collect();
        let some = Publishing::DEFAULT.rtt(&all);
        assert_eq!(some.len(), 8);
        assert!(some.values().all(|us| *us <= 1000 - 12));
        assert_eq!(Publishing::EVERY_CHANGE.rtt(&all), all);
        let pace = |n| Publishing::DEFAULT.pace(n).as_secs();
        assert_eq!((pace(3), pace(100), pace(1000)), (0, 3, 33));
    }
}
