//! Desired state to BPF maps, by difference.
//!
//! [`desired`] computes the complete map contents a node should have;
//! [`read`] reads what the maps hold now (a restarted agent starts from
//! there: a full resync); [`apply`] writes only the difference, additions in
//! dependency order and removals after, so no packet ever meets a ServIP whose
//! slots, backends, ports or node are not there yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use overlay_common::maps::{Config, Endpoint, ip, policy};
use overlay_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::balance::{self, Candidate, Params};
use crate::dataplane::{Result, Tables};
use crate::model::{ClusterState, FixedIp, InstanceSpec, Policy};

/// The full contents of one node's maps (the parts the agent owns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapSet {
    pub config: Option<Config>,
    /// node id → (address, EWP)
    pub nodes: BTreeMap<u32, (Ipv4Addr, u16)>,
    /// (subnet, prefix) → node id
    pub routes: BTreeMap<(Ipv4Addr, u32), u32>,
    /// backend id → (NamespaceIP, node id)
    pub backends: BTreeMap<u32, (Ipv4Addr, u32)>,
    /// (service id, port, protocol)
    pub ports: BTreeSet<(u32, u16, u8)>,
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// ServIP → (service id, policy, slots)
    pub servips: BTreeMap<Ipv4Addr, (u32, u8, Vec<u32>)>,
    /// Services whose new flows are limited to their `needs`
    /// (`DEFAULT_DENY`: the cluster denies services without `needs`).
    pub restricted: BTreeSet<u32>,
    /// (service, service it needs)
    pub needs: BTreeSet<(u32, u32)>,
    /// (node port, protocol) → (closest ServIP, SNAT address)
    pub exposed: BTreeMap<(u16, u8), (Ipv4Addr, Ipv4Addr)>,
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
    let mut m = MapSet {
        config: Some(local.config),
        endpoints: local.endpoints.clone(),
        ..Default::default()
    };
    let node_ids: BTreeMap<&str, u32> = state
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.subnet.node_id()))
        .collect();
    for n in &state.nodes {
        let id = n.subnet.node_id();
        m.nodes.insert(id, (n.ip, n.ewp));
        m.routes.insert((n.subnet.addr, n.subnet.prefix as u32), id);
    }
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
        let candidates: Vec<Candidate> = live
            .iter()
            .map(|(inst, node)| Candidate {
                id: inst.backend_id(),
                local: *node == local_id,
                distance: distance.get(inst.node.as_str()).copied().flatten(),
                load: state.load_of(inst.nsip),
            })
            .collect();
        for (&pol, &vip) in &svc.servips {
            let table = slots(pol, &candidates, &local.balance);
            m.servips.insert(vip, (svc.id, pol.code(), table));
        }
        fixed_ips(
            &mut m,
            svc.id,
            live,
            fixed.get(&key).map_or(&[], Vec::as_slice),
        );
    }
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
    }
}

/// Fixed IPs lead to exactly their instance. A claimed IP whose instance is
/// not running stays a ServIP without backends, so connections to it fail
/// fast (ICMP host unreachable) and never go elsewhere.
fn fixed_ips(m: &mut MapSet, service: u32, live: &[(&InstanceSpec, u32)], claims: &[&FixedIp]) {
    for c in claims {
        m.servips.insert(c.ip, (service, policy::FIXED, Vec::new()));
    }
    for (inst, _) in live {
        let claimed = claims
            .iter()
            .find(|c| c.instance == inst.instance)
            .map(|c| c.ip);
        if let Some(ip) = claimed.or(inst.fixed_ip) {
            m.servips
                .insert(ip, (service, policy::FIXED, vec![inst.backend_id()]));
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
        m.nodes
            .insert(id, (ip::from_wire(n.ip), ip::port_from_wire(n.port)));
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
    for (vip, sv) in t.servips() {
        m.servips.insert(vip, (sv.service, sv.policy, t.slots(vip)));
    }
    m.restricted = t.restricted().into_iter().collect();
    m.needs = t.needs().into_iter().map(|k| (k.src, k.dst)).collect();
    m.exposed = t.exposed().into_iter().collect();
    m
}

/// Counts of entries written and removed by one [`apply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub written: usize,
    pub removed: usize,
}

/// Moves the maps from `have` to `want`, touching only what differs.
pub fn apply(t: &mut Tables, have: &MapSet, want: &MapSet) -> Result<Changes> {
    let mut c = Changes::default();
    if let Some(cfg) = want.config.filter(|w| have.config.as_ref() != Some(w)) {
        t.set_config(&cfg)?;
        c.written += 1;
    }
    for (&id, &(addr, ewp)) in changed(&have.nodes, &want.nodes) {
        t.put_node(id, addr, ewp)?;
        c.written += 1;
    }
    for (&(net, prefix), &node) in changed(&have.routes, &want.routes) {
        t.put_route(net, prefix, node)?;
        c.written += 1;
    }
    for (&id, &(nsip, node)) in changed(&have.backends, &want.backends) {
        t.put_backend(id, nsip, node)?;
        c.written += 1;
    }
    for &(svc, port, proto) in want.ports.difference(&have.ports) {
        t.put_port(svc, port, proto)?;
        c.written += 1;
    }
    for (&nsip, ep) in changed(&have.endpoints, &want.endpoints) {
        t.put_endpoint(nsip, ep)?;
        c.written += 1;
    }
    for (&vip, (svc, pol, slots)) in changed(&have.servips, &want.servips) {
        t.put_servip(vip, *svc, *pol, slots)?;
        c.written += 1;
    }
    // Allowances before the restriction that needs them.
    for &(src, dst) in want.needs.difference(&have.needs) {
        t.put_need(src, dst)?;
        c.written += 1;
    }
    for &svc in want.restricted.difference(&have.restricted) {
        t.put_restricted(svc)?;
        c.written += 1;
    }
    for (&(port, proto), &(vip, snat)) in changed(&have.exposed, &want.exposed) {
        t.put_exposed(port, proto, vip, snat)?;
        c.written += 1;
    }
    // Removals, in reverse dependency order.
    for &(port, proto) in gone(&have.exposed, &want.exposed) {
        t.remove_exposed(port, proto)?;
        c.removed += 1;
    }
    for &svc in have.restricted.difference(&want.restricted) {
        t.remove_restricted(svc)?;
        c.removed += 1;
    }
    for &(src, dst) in have.needs.difference(&want.needs) {
        t.remove_need(src, dst)?;
        c.removed += 1;
    }
    for vip in gone(&have.servips, &want.servips) {
        t.remove_servip(*vip)?;
        c.removed += 1;
    }
    for nsip in gone(&have.endpoints, &want.endpoints) {
        t.remove_endpoint(*nsip)?;
        c.removed += 1;
    }
    for &(svc, port, proto) in have.ports.difference(&want.ports) {
        t.remove_port(svc, port, proto)?;
        c.removed += 1;
    }
    for id in gone(&have.backends, &want.backends) {
        t.remove_backend(*id)?;
        c.removed += 1;
    }
    for (net, prefix) in gone(&have.routes, &want.routes) {
        t.remove_route(*net, *prefix)?;
        c.removed += 1;
    }
    for id in gone(&have.nodes, &want.nodes) {
        t.remove_node(*id)?;
        c.removed += 1;
    }
    Ok(c)
}

/// Entries of `want` that `have` lacks or holds with another value.
fn changed<'a, K: Ord, V: PartialEq>(
    have: &'a BTreeMap<K, V>,
    want: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    want.iter().filter(move |(k, v)| have.get(k) != Some(v))
}

/// Keys of `have` that `want` no longer has.
fn gone<'a, K: Ord, V>(
    have: &'a BTreeMap<K, V>,
    want: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    have.keys().filter(move |k| !want.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeSpec, ServiceSpec};

    fn node(name: &str, o: u8) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            ip: Ipv4Addr::new(192, 0, 2, 10 + o),
            ewp: 50103,
            subnet: format!("10.30.{o}.0/24").parse().unwrap(),
            location: None,
        }
    }

    fn inst(n: u32, node: &str, o: u8) -> InstanceSpec {
        InstanceSpec {
            service: "a.b.c.d".into(),
            instance: n,
            node: node.into(),
            nsip: Ipv4Addr::new(10, 30, o, 2),
            fixed_ip: None,
        }
    }

    fn state() -> ClusterState {
        ClusterState {
            nodes: vec![node("n1", 1), node("n2", 2)],
            services: vec![ServiceSpec {
                name: "a.b.c.d".into(),
                id: 7,
                ports: vec![80],
                stateful: false,
                servips: Policy::ALL
                    .iter()
                    .zip(1..)
                    .map(|(p, i)| (*p, Ipv4Addr::new(172, 30, 0, i)))
                    .collect(),
                exposed: false,
                needs: Vec::new(),
            }],
            instances: vec![inst(1, "n1", 1), inst(2, "n2", 2)],
            ..Default::default()
        }
    }

    fn local<'a>(eps: &'a BTreeMap<Ipv4Addr, Endpoint>) -> LocalNode<'a> {
        let config = Config {
            node_id: "10.30.1.0/24"
                .parse::<crate::model::Subnet>()
                .unwrap()
                .node_id(),
            ..Default::default()
        };
        LocalNode {
            name: "n1",
            config,
            endpoints: eps,
            snat: Ipv4Addr::new(10, 30, 1, 1),
            default_deny: false,
            expose_where_running: false,
            balance: Params::default(),
        }
    }

    #[test]
    fn policies_pick_their_slots() {
        let eps = BTreeMap::new();
        let m = desired(&state(), &local(&eps));
        let n1 = u32::from(Ipv4Addr::new(10, 30, 1, 2));
        let n2 = u32::from(Ipv4Addr::new(10, 30, 2, 2));
        assert_eq!(
            m.servips[&Ipv4Addr::new(172, 30, 0, 1)].2,
            vec![n1],
            "closest keeps the local instance"
        );
        assert_eq!(m.servips[&Ipv4Addr::new(172, 30, 0, 2)].2, vec![n1, n2]);
        assert_eq!(m.ports.len(), 3, "tcp, udp and icmp echo");
        assert_eq!(m.nodes.len(), 2);
    }

    /// n1 (this node) runs nothing; n2 is 30 ms away, n3 0.4 ms.
    #[test]
    fn distances_and_loads_shape_the_tables() {
        let mut s = state();
        s.instances.remove(0);
        s.nodes.push(node("n3", 3));
        s.instances.push(inst(3, "n3", 3));
        s.rtt.insert(
            "n1".into(),
            [("n2".into(), 30_000), ("n3".into(), 400)].into(),
        );
        let eps = BTreeMap::new();
        let (n2, n3) = (Ipv4Addr::new(10, 30, 2, 2), Ipv4Addr::new(10, 30, 3, 2));
        let table = |m: &MapSet, last: u8| m.servips[&Ipv4Addr::new(172, 30, 0, last)].2.clone();
        let share = |t: &[u32], ip: Ipv4Addr| t.iter().filter(|&&id| id == u32::from(ip)).count();
        let m = desired(&s, &local(&eps));
        assert_eq!(table(&m, 1), [u32::from(n3)], "closest: the near node");
        assert_eq!(table(&m, 2).len(), 2, "roundrobin: both");
        let fast = table(&m, 3);
        assert_eq!((share(&fast, n2), share(&fast, n3)), (1, 31), "{fast:?}");
        // n3's instance gets busy (flows from n2): fastest shifts toward n2.
        s.load.insert("n2".into(), [(n3, 300)].into());
        let fast = table(&desired(&s, &local(&eps)), 3);
        assert!(share(&fast, n2) > share(&fast, n3), "{fast:?}");
        // Without a measurement the reverse direction or coordinates count.
        s.rtt.clear();
        s.rtt.insert("n2".into(), [("n1".into(), 200)].into());
        assert_eq!(table(&desired(&s, &local(&eps)), 1), [u32::from(n2)]);
        s.rtt.clear();
        let at = |lat| Some(crate::balance::Location { lat, lon: 11.0 });
        (
            s.nodes[0].location,
            s.nodes[1].location,
            s.nodes[2].location,
        ) = (at(48.0), at(48.1), at(52.0));
        assert_eq!(table(&desired(&s, &local(&eps)), 1), [u32::from(n2)]);
    }

    /// A claimed fixed IP without its instance stays, without backends.
    #[test]
    fn fixed_ip_of_a_missing_instance_fails_fast() {
        let mut s = state();
        s.services[0].servips.clear();
        s.services[0].stateful = true;
        let ip = Ipv4Addr::new(172, 30, 1, 9);
        s.fixed.push(FixedIp {
            service: "A.b.c.d".into(),
            instance: 2,
            ip,
        });
        let eps = BTreeMap::new();
        let want = |m: MapSet| m.servips[&ip].clone();
        let n2 = u32::from(Ipv4Addr::new(10, 30, 2, 2));
        assert_eq!(
            want(desired(&s, &local(&eps))),
            (7, policy::FIXED, vec![n2])
        );
        s.instances.pop();
        assert_eq!(want(desired(&s, &local(&eps))), (7, policy::FIXED, vec![]));
    }

    #[test]
    fn fixed_ips_for_stateful_instances() {
        let mut s = state();
        s.services[0].servips.clear();
        s.services[0].stateful = true;
        s.instances[1].fixed_ip = Some(Ipv4Addr::new(172, 30, 1, 2));
        let eps = BTreeMap::new();
        let m = desired(&s, &local(&eps));
        assert_eq!(m.servips.len(), 1);
        let (_, pol, slots) = &m.servips[&Ipv4Addr::new(172, 30, 1, 2)];
        assert_eq!(
            (*pol, slots.clone()),
            (policy::FIXED, vec![u32::from(Ipv4Addr::new(10, 30, 2, 2))])
        );
    }

    #[test]
    fn needs_and_exposure() {
        let mut s = state();
        s.services[0].exposed = true;
        s.services.push(ServiceSpec {
            name: "a.b.web.d".into(),
            id: 8,
            ports: vec![],
            stateful: false,
            servips: BTreeMap::new(),
            exposed: false,
            needs: vec!["A.B.C.D".into(), "not.deployed.yet.x".into()],
        });
        let eps = BTreeMap::new();
        let m = desired(&s, &local(&eps));
        assert_eq!(m.restricted, BTreeSet::from([8]));
        assert_eq!(m.needs, BTreeSet::from([(8, 7)]));
        let closest = Ipv4Addr::new(172, 30, 0, 1);
        let snat = Ipv4Addr::new(10, 30, 1, 1);
        assert_eq!(m.exposed.get(&(80, IPPROTO_TCP)), Some(&(closest, snat)));
        assert_eq!(m.exposed.len(), 2, "tcp and udp");

        // Only where an instance runs: n1 runs instance 1, so it still serves.
        let mut l = local(&eps);
        l.expose_where_running = true;
        assert_eq!(desired(&s, &l).exposed.len(), 2);
        s.instances.retain(|i| i.node != "n1");
        assert!(
            desired(&s, &l).exposed.is_empty(),
            "no local instance: not exposed here"
        );
    }

    #[test]
    fn difference_helpers() {
        let have: BTreeMap<u32, u32> = [(1, 1), (2, 2)].into();
        let want: BTreeMap<u32, u32> = [(2, 3), (4, 4)].into();
        assert_eq!(
            changed(&have, &want).map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert_eq!(gone(&have, &want).copied().collect::<Vec<_>>(), vec![1]);
    }
}
