//! This node's measurements, as the policies use them and the store
//! publishes them (`node/<node>/rtt`, `node/<node>/load`): the smoothed RTT to each
//! other node (from the probes) and the active flows toward each instance
//! (from conntrack). A value is taken over only when it moved by more than a
//! margin, so that jitter does not rewrite slot tables every second.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::dataplane::Tables;
use crate::probe::{Peer, Prober};

/// An RTT is taken over when it moves by more than this percentage...
const RTT_MOVE_PCT: u32 = 20;
/// ... and by more than this many µs.
const RTT_MOVE_US: u32 = 100;
/// A load is taken over when it moves by more than this percentage or by
/// more than one flow.
const LOAD_MOVE_PCT: u32 = 10;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Peer node → RTT, µs.
    pub rtt: BTreeMap<String, u32>,
    /// Instance NamespaceIP → active flows from this node.
    pub load: BTreeMap<Ipv4Addr, u32>,
    /// Peer node → probes sent and answered (for `/metrics`, not published).
    pub probes: BTreeMap<String, crate::probe::ProbeCounts>,
}

impl Metrics {
    /// Takes `fresh` RTTs if any moved; returns whether they did.
    pub fn take_rtt(&mut self, fresh: BTreeMap<String, u32>) -> bool {
        take(&mut self.rtt, fresh, RTT_MOVE_PCT, RTT_MOVE_US)
    }

    /// Takes `fresh` loads if any moved; returns whether they did.
    pub fn take_load(&mut self, fresh: BTreeMap<Ipv4Addr, u32>) -> bool {
        take(&mut self.load, fresh, LOAD_MOVE_PCT, 1)
    }
}

fn take<K: Ord>(have: &mut BTreeMap<K, u32>, fresh: BTreeMap<K, u32>, pct: u32, abs: u32) -> bool {
    let moved = have.len() != fresh.len()
        || fresh.iter().any(|(k, &new)| {
            have.get(k)
                .is_none_or(|&old| old.abs_diff(new) > abs.max(old / 100 * pct))
        });
    if moved {
        *have = fresh;
    }
    moved
}

/// Conntrack ticks (2^30 ns) covering `seconds`.
pub(crate) fn window_ticks(seconds: u32) -> u32 {
    (seconds as u64 * 1_000_000_000).div_ceil(overlay_common::maps::ct::TICK_NS) as u32
}

/// Every period: point the prober at the cluster's other nodes, take the
/// RTTs and conntrack's loads, publish what moved and reconcile, so that
/// closest and fastest follow the network within a period or two.
///
/// `scan` is a handle of its own on the pinned maps: the conntrack scan
/// reads the whole table, so it runs on a blocking thread and takes none of
/// the agent's locks.
pub async fn measure(agent: Shared, prober: Option<Prober>, scan: Arc<Tables>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = window_ticks(agent.cfg.load_window_s);
    let mut keys = super::probe_keys::KeyFollower::default();
    let mut conflicts = Vec::new();
    let mut seen = BTreeMap::new();
    let mut path_mtu = BTreeMap::new();
    loop {
        ticker.tick().await;
        listeners(&agent, &mut conflicts);
        super::path_mtu::publish(&agent, &scan, &mut path_mtu);
        if let Some(p) = &prober {
            observed(&agent, p, &mut seen);
        }
        if let (Some(p), Some(link)) = (&prober, &agent.store) {
            keys.refresh(&link.store, p).await;
        }
        let rtt = match &prober {
            Some(p) => {
                p.set_peers(peers(
                    &agent.state().cluster_with_lapsed(),
                    &agent.node.name,
                ));
                let rtts = p.rtts();
                rtts.into_iter()
                    .map(|(name, r)| (name, r.srtt_us.max(1)))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        let tables = scan.clone();
        let Ok(load) = tokio::task::spawn_blocking(move || tables.active_flows(window)).await
        else {
            return;
        };
        let grace = Duration::from_secs(agent.cfg.node_grace);
        let (rtt_moved, load_moved, lapsed_left, now) = {
            let mut st = agent.state();
            if let Some(p) = &prober {
                st.metrics.probes = p.counts();
            }
            let rtt_moved = st.metrics.take_rtt(rtt);
            let load_moved = st.metrics.take_load(load);
            let left = st.prune_lapsed(grace, std::time::Instant::now());
            (rtt_moved, load_moved, left, st.metrics.clone())
        };
        if let Some(link) = &agent.store {
            let publishing = crate::store::Publishing::DEFAULT;
            publishing.apply(&link.registration, agent.state().cluster.nodes.len());
            if rtt_moved {
                link.registration
                    .set_status("rtt", &publishing.rtt(&now.rtt));
            }
            if load_moved {
                link.registration.set_status("load", &now.load);
            }
        }
        if rtt_moved || load_moved || lapsed_left {
            match agent.reconcile_quietly() {
                Ok(c) => tracing::debug!(
                    rtt = ?now.rtt,
                    load = ?now.load,
                    written = c.written,
                    "measurements moved; maps reconciled"
                ),
                Err(e) => tracing::error!("reconcile failed: {e}"),
            }
        }
    }
}

/// Notices the node's own listeners: a port that starts or stops being
/// listened on changes what this node exposes (reconciled at once), and the
/// exposed ports it cannot take are published (`node/<name>/conflicts`).
fn listeners(agent: &Shared, published: &mut Vec<String>) {
    let busy = super::listeners::busy(agent.node.ip);
    let (moved, now) = {
        let mut st = agent.state();
        let moved = st.listening != busy;
        st.listening = busy;
        (moved, conflicts(&st.cluster, &st.listening))
    };
    if moved && let Err(e) = agent.reconcile() {
        tracing::error!("reconcile failed: {e}");
    }
    if now != *published {
        if let Some(link) = &agent.store {
            link.registration.set_status("conflicts", &now);
        }
        *published = now;
    }
}

/// Publishes where this node sees each peer's probes come from
/// (`node/<name>/observed`: peer → address:port), when it changes: the
/// peers' view of a node behind NAT, for `node ls`.
fn observed(agent: &Shared, prober: &Prober, published: &mut BTreeMap<String, String>) {
    let names: BTreeMap<u32, String> = agent
        .state()
        .cluster_with_lapsed()
        .nodes
        .iter()
        .map(|n| (n.subnet.node_id(), n.name.clone()))
        .collect();
    let now: BTreeMap<String, String> = prober
        .observed()
        .into_iter()
        .filter_map(|(id, addr)| Some((names.get(&id)?.clone(), addr.to_string())))
        .collect();
    if now != *published {
        if let Some(link) = &agent.store {
            link.registration.set_status("observed", &now);
        }
        *published = now;
    }
}

/// Exposed ports of `state` that this node listens on itself, as
/// `PORT/PROTO SERVICE`.
fn conflicts(
    state: &crate::model::ClusterState,
    busy: &std::collections::BTreeSet<(u16, u8)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for svc in state.services.iter().filter(|s| s.exposed) {
        for &port in &svc.ports {
            for (proto, name) in [
                (overlay_common::IPPROTO_TCP, "tcp"),
                (overlay_common::IPPROTO_UDP, "udp"),
            ] {
                if busy.contains(&(port, proto)) {
                    out.push(format!("{port}/{name} {}", svc.name));
                }
            }
        }
    }
    out
}

/// The other registered nodes, as probe targets.
fn peers(state: &crate::model::ClusterState, me: &str) -> Vec<Peer> {
    let own = state.node(me);
    state
        .nodes
        .iter()
        .filter(|n| n.name != me)
        .map(|n| Peer {
            name: n.name.clone(),
            node_id: n.subnet.node_id(),
            addr: n.reached_from(own),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_ignored_moves_are_taken() {
        let mut m = Metrics::default();
        let rtt = |v: u32| BTreeMap::from([("n2".to_string(), v)]);
        assert!(m.take_rtt(rtt(1000)), "a new peer");
        assert!(!m.take_rtt(rtt(1150)), "15 % is jitter");
        assert_eq!(m.rtt["n2"], 1000);
        assert!(m.take_rtt(rtt(1300)));
        assert!(!m.take_rtt(rtt(1390)), "90 µs is jitter");
        assert!(m.take_rtt(BTreeMap::new()), "a peer gone");
        let ip = Ipv4Addr::new(10, 30, 2, 5);
        assert!(m.take_load(BTreeMap::from([(ip, 20)])));
        assert!(!m.take_load(BTreeMap::from([(ip, 21)])));
        assert!(m.take_load(BTreeMap::from([(ip, 23)])));
        assert_eq!(window_ticks(10), 10);
    }
}
