//! The path MTU toward each peer, as this node's dataplane applies it: the
//! smaller uplink of both nodes (`NODES`), lowered by what underlay routers
//! reported (`PATH_MTU`, written by the programs). The peers where it is
//! below this node's own overlay MTU are published (`node/<name>/path_mtu`:
//! peer → MTU) for `node ls`; everywhere else the MTU follows from the
//! nodes' records.

use std::collections::BTreeMap;

use overlay_common::maps::ip;
use overlay_common::pmtu;

use super::Shared;
use crate::dataplane::{Tables, tick_now};

/// The overlay MTU toward each peer that is below this node's own.
pub fn below_own(agent: &Shared, tables: &Tables) -> BTreeMap<String, u16> {
    let own = agent.node.mtu;
    let reports: BTreeMap<u32, _> = tables
        .path_mtu()
        .into_iter()
        .map(|(addr, r)| (ip::to_wire(addr), r))
        .collect();
    let names: BTreeMap<u32, String> = agent
        .state()
        .cluster
        .nodes
        .iter()
        .filter(|n| n.name != agent.node.name)
        .map(|n| (n.subnet.node_id(), n.name.clone()))
        .collect();
    // What `NODES` holds, from the agent's own copy: no map read per node
    // every period.
    let nodes = agent.maps().applied.nodes.clone();
    let now = tick_now();
    nodes
        .into_iter()
        .filter_map(|(id, (addr, _, node_mtu))| {
            let report = reports.get(&ip::to_wire(addr));
            let mtu = pmtu::overlay_mtu(own, node_mtu, report, now);
            Some((names.get(&id)?.clone(), mtu)).filter(|_| mtu < own)
        })
        .collect()
}

/// Publishes [`below_own`] when it changes.
pub fn publish(agent: &Shared, tables: &Tables, published: &mut BTreeMap<String, u16>) {
    let now = below_own(agent, tables);
    if now != *published {
        if let Some(link) = &agent.store {
            link.registration.set_status("path_mtu", &now);
        }
        *published = now;
    }
}
