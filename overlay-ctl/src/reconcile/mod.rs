//! Desired state to BPF maps, by difference.
//!
//! [`desired`] computes the complete map contents a node should have;
//! [`read`] reads what the maps hold now (a restarted agent starts from
//! there: a full resync); [`apply`] writes only the difference, table by
//! table in dependency order, and carries on past an entry that fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use overlay_common::maps::{Config, Endpoint, ip};
use overlay_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::balance::{self, Candidate, Params};
use crate::dataplane::Tables;

mod apply;
pub mod guard;
pub mod validate;

use crate::model::{ClusterState, FixedIp, InstanceSpec, Policy};
pub use apply::{Changes, Failure, Failures, Passes, apply};

/// The full contents of one node's maps (the parts the agent owns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapSet {
    pub config: Option<Config>,
    /// node id → (address, EWP, overlay MTU toward it)
    pub nodes: BTreeMap<u32, (Ipv4Addr, u16, u16)>,
    /// (subnet, prefix) → node id
    pub routes: BTreeMap<(Ipv4Addr, u32), u32>,
    /// backend id → (NamespaceIP, node id)
    pub backends: BTreeMap<u32, (Ipv4Addr, u32)>,
    /// (service id, port, protocol)
    pub ports: BTreeSet<(u32, u16, u8)>,
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// ServIP → (service id, policy, slots)
    pub servips: BTreeMap<Ipv4Addr, (u32, Policy, Vec<u32>)>,
    /// Services whose new flows are limited to their `needs`
    /// (`DEFAULT_DENY`: the cluster denies services without `needs`).
    pub restricted: BTreeSet<u32>,
    /// (service, service it needs)
    pub needs: BTreeSet<(u32, u32)>,
    /// (node port, protocol) → (closest ServIP, SNAT address)
    pub exposed: BTreeMap<(u16, u8), (Ipv4Addr, Ipv4Addr)>,
    /// Registered north-south gateways: address → port their replies go to.
    pub gateways: BTreeMap<Ipv4Addr, u16>,
    /// Infrastructure instances may not reach: (address, port, protocol) →
    /// what stays allowed (`infra` flags); port and protocol 0: the whole
    /// address (see [`guard::infrastructure`]).
    pub infra: BTreeMap<(Ipv4Addr, u16, u8), u32>,
    /// The overlay's address space: (prefix address, length).
    pub overlay_nets: BTreeSet<(Ipv4Addr, u32)>,
    /// Every instance of the cluster: NamespaceIP → service id.
    pub nsip_services: BTreeMap<Ipv4Addr, u32>,
    /// Records of the desired state left out for breaking a rule
    /// (`validate`; not map contents: reported with every pass, as failures).
    pub refused: Vec<Failure>,
}

/// What this node contributes besides the cluster state.
pub struct LocalNode<'a> {
    pub name: &'a str,
    pub config: Config,
    /// Local instances' endpoints, keyed by NamespaceIP.
    pub endpoints: &'a BTreeMap<Ipv4Addr, Endpoint>,
    /// Source address of north-south flows toward backends (this node's subnet).
    pub snat: Ipv4Addr,
    /// Services without `needs` may open no new flows.
    pub default_deny: bool,
    /// Serve exposed ports only when this node runs an instance of the service.
    pub expose_where_running: bool,
    /// Tuning of the balancing policies.
    pub balance: Params,
}

/// The maps a node should hold for `state`.
pub fn desired(state: &ClusterState, local: &LocalNode) -> MapSet {
    let pools = validate::Pools::of(&state.settings);
    let (state, refused) = validate::validated(state, local.name, &pools);
    let state = &state;
    let mut m = MapSet {
        config: Some(local.config),
        endpoints: local.endpoints.clone(),
        refused,
        ..Default::default()
    };
    let node_ids: BTreeMap<&str, u32> = state
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.subnet.node_id()))
        .collect();
    let me = state.node(local.name);
    for n in &state.nodes {
        let id = n.subnet.node_id();
        let at = n.reached_from(me);
        let uplink_mtu = local.config.mtu + overlay_common::ENCAP_OVERHEAD;
        let mtu = overlay_common::pmtu::between(uplink_mtu, n.mtu);
        m.nodes.insert(id, (*at.ip(), at.port(), mtu));
        m.routes.insert((n.subnet.addr, n.subnet.prefix as u32), id);
    }
    m.gateways = state.gateways.iter().map(|g| (g.ip, g.port)).collect();
    let ids: BTreeMap<String, u32> = state
        .services
        .iter()
        .map(|s| (s.name.to_ascii_lowercase(), s.id))
        .collect();
    if local.default_deny {
        m.restricted.insert(overlay_common::maps::DEFAULT_DENY);
    }
    // Instances grouped by service once: O(services + instances).
    let mut by_service: BTreeMap<String, Vec<(&InstanceSpec, u32)>> = BTreeMap::new();
    for i in &state.instances {
        if let Some(&n) = node_ids.get(i.node.as_str()) {
            by_service
                .entry(i.service.to_ascii_lowercase())
                .or_default()
                .push((i, n));
        }
    }
    let local_id = node_ids
        .get(local.name)
        .copied()
        .unwrap_or(local.config.node_id);
    let distance: BTreeMap<&str, Option<u32>> = state
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), state.distance(local.name, &n.name)))
        .collect();
    let mut fixed: BTreeMap<String, Vec<&FixedIp>> = BTreeMap::new();
    for f in &state.fixed {
        fixed
            .entry(f.service.to_ascii_lowercase())
            .or_default()
            .push(f);
    }
    for svc in &state.services {
        let key = svc.name.to_ascii_lowercase();
        let live: &[(&InstanceSpec, u32)] = by_service.get(&key).map_or(&[], Vec::as_slice);
        for (inst, node) in live {
            m.backends.insert(inst.backend_id(), (inst.nsip, *node));
            m.nsip_services.insert(inst.nsip, svc.id);
        }
        let runs_here = live.iter().any(|(_, n)| *n == local_id);
        access(
            &mut m,
            svc,
            &ids,
            local.snat,
            !local.expose_where_running || runs_here,
        );
        for &port in &svc.ports {
            m.ports.insert((svc.id, port, IPPROTO_TCP));
            m.ports.insert((svc.id, port, IPPROTO_UDP));
        }
        m.ports.insert((svc.id, 0, IPPROTO_ICMP));
        // Only ready instances get new flows; the others keep their backend
        // entry above, so that their established flows go on.
        let candidates: Vec<Candidate> = live
            .iter()
            .filter(|(inst, _)| inst.health.is_ready())
            .map(|(inst, node)| Candidate {
                id: inst.backend_id(),
                local: *node == local_id,
                distance: distance.get(inst.node.as_str()).copied().flatten(),
                load: state.load_of(inst.nsip),
            })
            .collect();
        for (&pol, &vip) in &svc.servips {
            let table = slots(pol, &candidates, &local.balance);
            m.servips.insert(vip, (svc.id, pol, table));
        }
        fixed_ips(
            &mut m,
            svc.id,
            live,
            fixed.get(&key).map_or(&[], Vec::as_slice),
        );
    }
    guard::overlay_nets(&mut m, &pools);
    m
}

/// `needs` and exposure of one service.
/// `expose` is false when this node must not serve the service's ports.
fn access(
    m: &mut MapSet,
    svc: &crate::model::ServiceSpec,
    ids: &BTreeMap<String, u32>,
    snat: Ipv4Addr,
    expose: bool,
) {
    if !svc.needs.is_empty() {
        m.restricted.insert(svc.id);
        // A needed service not deployed yet is allowed once it is.
        for need in &svc.needs {
            if let Some(&dst) = ids.get(&need.to_ascii_lowercase()) {
                m.needs.insert((svc.id, dst));
            }
        }
    }
    if let (true, Some(&vip)) = (svc.exposed && expose, svc.servips.get(&Policy::Closest)) {
        for &port in &svc.ports {
            m.exposed.insert((port, IPPROTO_TCP), (vip, snat));
            m.exposed.insert((port, IPPROTO_UDP), (vip, snat));
        }
    }
}

/// The slot table of one policy (`balance`), sorted or laid out the same
/// way on every node for the same inputs.
pub fn slots(pol: Policy, candidates: &[Candidate], p: &Params) -> Vec<u32> {
    match pol {
        Policy::Closest => balance::closest(candidates, p),
        Policy::Roundrobin => balance::roundrobin(candidates),
        Policy::Fastest => balance::fastest(candidates, p),
        // Fixed IPs lead to one instance each (`fixed_ips`); a service
        // record listing one among its ServIPs gets a table without backends.
        Policy::Fixed => Vec::new(),
    }
}

/// Fixed IPs lead to exactly their instance. A claimed IP whose instance is
/// not running, or not ready, stays a ServIP without backends, so new
/// connections to it fail fast (ICMP host unreachable) and never go
/// elsewhere; established ones go on through their conntrack entries.
fn fixed_ips(m: &mut MapSet, service: u32, live: &[(&InstanceSpec, u32)], claims: &[&FixedIp]) {
    for c in claims {
        m.servips.insert(c.ip, (service, Policy::Fixed, Vec::new()));
    }
    for (inst, _) in live {
        let claimed = claims
            .iter()
            .find(|c| c.instance == inst.instance)
            .map(|c| c.ip);
        if let Some(ip) = claimed.or(inst.fixed_ip) {
            let slots = match inst.health.is_ready() {
                true => vec![inst.backend_id()],
                false => Vec::new(),
            };
            m.servips.insert(ip, (service, Policy::Fixed, slots));
        }
    }
}

/// What the maps hold now.
pub fn read(t: &Tables) -> MapSet {
    let mut m = MapSet {
        config: t.config().ok().filter(|c| c.node_id != 0),
        ..Default::default()
    };
    for (id, n) in t.nodes() {
        let at = (ip::from_wire(n.ip), ip::port_from_wire(n.port));
        m.nodes.insert(id, (at.0, at.1, n.mtu));
    }
    for (addr, prefix, node) in t.routes() {
        m.routes.insert((addr, prefix), node);
    }
    for (id, b) in t.backends() {
        m.backends.insert(id, (ip::from_wire(b.nsip), b.node));
    }
    for k in t.ports() {
        m.ports
            .insert((k.service, ip::port_from_wire(k.port), k.proto));
    }
    m.endpoints = t.endpoints().into_iter().collect();
    let mut slots = t.all_slots();
    for (vip, sv) in t.servips() {
        let table = slots.remove(&vip).unwrap_or_default();
        // An unknown code is not ours: the next pass writes the entry anew.
        if let Some(policy) = Policy::from_code(sv.policy) {
            m.servips.insert(vip, (sv.service, policy, table));
        }
    }
    m.restricted = t.restricted().into_iter().collect();
    m.needs = t.needs().into_iter().map(|k| (k.src, k.dst)).collect();
    m.exposed = t.exposed().into_iter().collect();
    m.gateways = t.gateways().into_iter().collect();
    m.infra = t.infra().into_iter().collect();
    m.overlay_nets = t.overlay_nets().into_iter().collect();
    m.nsip_services = t.nsip_services().into_iter().collect();
    m
}

#[cfg(test)]
mod tests;
