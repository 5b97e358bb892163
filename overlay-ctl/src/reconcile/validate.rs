//! Every record of the desired state is checked before it reaches the maps.
//!
//! The store may hold what no command of ours would write (a buggy or
//! hostile writer, a hand edit): a node subnet of `0.0.0.0/0` would reroute
//! every instance's traffic, a ServIP of 8.8.8.8 would capture that address.
//! A record that breaks a rule is left out alone and reported as a
//! [`Failure`]; the rest of the cluster is applied. Where two records claim
//! the same thing, the first in the store's order keeps it, on every node
//! alike.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use overlay_common::registry::limits;

use super::Failure;
use crate::model::{ClusterSettings, ClusterState, NodeSpec, ServiceSpec, Subnet};
use crate::store::{DEFAULT_SERVICE_POOL, DEFAULT_SUBNET_POOL};

/// Where the cluster's addresses come from.
#[derive(Clone, Copy, Debug)]
pub struct Pools {
    /// ServIPs and fixed instance IPs.
    pub services: Subnet,
    /// Node subnets.
    pub subnets: Subnet,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            services: DEFAULT_SERVICE_POOL,
            subnets: DEFAULT_SUBNET_POOL,
        }
    }
}

impl Pools {
    /// The pools `settings` name. A node subnet setting that is not valid
    /// (a hand edit: `cluster set` refuses one) counts as the default, so
    /// that it cannot widen what the overlay claims as its own.
    pub fn of(settings: &ClusterSettings) -> Pools {
        let services = DEFAULT_SERVICE_POOL;
        let set = settings.node_subnets();
        let subnets = match set.check(services) {
            Ok(()) => set.pool,
            Err(_) => DEFAULT_SUBNET_POOL,
        };
        Pools { services, subnets }
    }
}

/// `state` without the records that break a rule, and why each was left
/// out. `local` names this node, whose own record is trusted.
pub fn validated(state: &ClusterState, local: &str, pools: &Pools) -> (ClusterState, Vec<Failure>) {
    let mut out = ClusterState {
        settings: state.settings.clone(),
        rtt: state.rtt.clone(),
        load: state.load.clone(),
        ..Default::default()
    };
    let mut refused = Vec::new();
    let mut refuse = |table: &'static str, key: String, error: String| {
        refused.push(Failure { table, key, error });
    };
    for n in &state.nodes {
        match check_node(n, &out.nodes, local, pools) {
            Ok(()) => out.nodes.push(n.clone()),
            Err(e) => refuse("nodes", n.name.clone(), e),
        }
    }
    // Addresses of the service pool taken so far (ServIPs and fixed IPs).
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for s in &state.services {
        match check_service(s, &taken, &ids, pools) {
            Ok(()) => {
                taken.extend(s.servips.values().copied());
                ids.insert(s.id);
                out.services.push(s.clone());
            }
            Err(e) => refuse("services", s.name.clone(), e),
        }
    }
    for f in &state.fixed {
        let key = format!("{}/{}", f.service, f.instance);
        match check_address(f.ip, pools.services, &taken) {
            Ok(()) => {
                taken.insert(f.ip);
                out.fixed.push(f.clone());
            }
            Err(e) => refuse("fixed", key, format!("fixed IP {e}")),
        }
    }
    let claimed: BTreeMap<(String, u32), Ipv4Addr> = out
        .fixed
        .iter()
        .map(|f| ((f.service.to_ascii_lowercase(), f.instance), f.ip))
        .collect();
    let mut nsips = BTreeSet::new();
    for i in &state.instances {
        let key = format!("{}/{}", i.service, i.instance);
        let node = out.nodes.iter().find(|n| n.name == i.node);
        let check = match node {
            // An instance of a node that is not (or no longer) valid is not
            // wrong itself: it just has nowhere to go yet.
            None => continue,
            Some(n) => check_nsip(i.nsip, n, &nsips).and_then(|()| {
                let own = claimed.get(&(i.service.to_ascii_lowercase(), i.instance));
                match i.fixed_ip {
                    Some(ip) if own != Some(&ip) => check_address(ip, pools.services, &taken)
                        .map_err(|e| format!("fixed IP {e}")),
                    _ => Ok(()),
                }
            }),
        };
        match check {
            Ok(()) => {
                nsips.insert(i.nsip);
                taken.extend(i.fixed_ip);
                out.instances.push(i.clone());
            }
            Err(e) => refuse("instances", key, e),
        }
    }
    for g in &state.gateways {
        let node = out.nodes.iter().any(|n| n.ip == g.ip);
        let check = g.check().and_then(|()| match node {
            true => Err(format!("gateway address {} is a node's", g.ip)),
            false => Ok(()),
        });
        match check {
            Ok(()) => out.gateways.push(g.clone()),
            Err(e) => refuse("gateways", g.name.clone(), e),
        }
    }
    (out, refused)
}

/// A node's subnet lies in the pool and overlaps no other node's; its
/// address is one the nodes can reach, outside the overlay's own ranges.
fn check_node(n: &NodeSpec, valid: &[NodeSpec], local: &str, pools: &Pools) -> Result<(), String> {
    if valid.len() >= limits::NODES {
        return Err(format!("more than {} nodes", limits::NODES));
    }
    if valid.iter().any(|v| v.name == n.name) {
        return Err("registered twice".into());
    }
    if n.name == local {
        return Ok(());
    }
    let s = n.subnet;
    let inside =
        s.prefix >= pools.subnets.prefix && s.prefix <= 30 && pools.subnets.contains(s.addr);
    if !inside || u32::from(s.addr) & !s.mask() != 0 {
        return Err(format!(
            "subnet {}/{} is not a node subnet of {}/{}",
            s.addr, s.prefix, pools.subnets.addr, pools.subnets.prefix
        ));
    }
    if let Some(o) = valid.iter().find(|v| overlap(v.subnet, s)) {
        return Err(format!(
            "subnet {}/{} overlaps node {}'s",
            s.addr, s.prefix, o.name
        ));
    }
    let ip = n.ip;
    let overlay = pools.subnets.contains(ip) || pools.services.contains(ip);
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() || overlay
    {
        return Err(format!("address {ip} cannot be a node's"));
    }
    if n.ewp == 0 {
        return Err("EWP 0".into());
    }
    Ok(())
}

fn overlap(a: Subnet, b: Subnet) -> bool {
    let mask = a.mask() & b.mask();
    u32::from(a.addr) & mask == u32::from(b.addr) & mask
}

/// A service's ServIPs lie in the pool, unclaimed; its id is its own; its
/// ports and `needs` fit the limits.
fn check_service(
    s: &ServiceSpec,
    taken: &BTreeSet<Ipv4Addr>,
    ids: &BTreeSet<u32>,
    pools: &Pools,
) -> Result<(), String> {
    if s.id == 0 || ids.contains(&s.id) {
        return Err(format!("service id {} is not its own", s.id));
    }
    let over = |what: &str, n: usize, max: usize| {
        (n > max).then(|| format!("{n} {what}, more than the {max} a service may have"))
    };
    if let Some(e) = over("ports", s.ports.len(), limits::PORTS_PER_SERVICE)
        .or_else(|| over("needs", s.needs.len(), limits::NEEDS_PER_SERVICE))
    {
        return Err(e);
    }
    if s.ports.contains(&0) {
        return Err("port 0".into());
    }
    let mut own = BTreeSet::new();
    for (policy, &ip) in &s.servips {
        check_address(ip, pools.services, taken)
            .and_then(|()| {
                own.insert(ip)
                    .then_some(())
                    .ok_or_else(|| format!("{ip} twice"))
            })
            .map_err(|e| format!("{} ServIP {e}", policy.as_str()))?;
    }
    Ok(())
}

/// `ip` is a host address of `pool` that nothing has claimed yet.
fn check_address(ip: Ipv4Addr, pool: Subnet, taken: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    let host = u32::from(ip) & !pool.mask();
    if !pool.contains(ip) || host == 0 || host == !pool.mask() {
        return Err(format!(
            "{ip} is not an address of the pool {}/{}",
            pool.addr, pool.prefix
        ));
    }
    if taken.contains(&ip) {
        return Err(format!("{ip} is claimed already"));
    }
    Ok(())
}

/// An instance's NamespaceIP is a host address of its node's subnet (not
/// the node's own first address) that no other instance has.
fn check_nsip(ip: Ipv4Addr, node: &NodeSpec, seen: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    let s = node.subnet;
    let host = u32::from(ip) & !s.mask();
    if !s.contains(ip) || host <= 1 || host == !s.mask() {
        return Err(format!(
            "NamespaceIP {ip} is not a host of node {}'s subnet",
            node.name
        ));
    }
    if seen.contains(&ip) {
        return Err(format!("NamespaceIP {ip} is another instance's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FixedIp, GatewaySpec, InstanceSpec, Policy};
    use crate::reconcile::tests::node;

    fn service(name: &str, id: u32, first: u8) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            id,
            ports: vec![80],
            stateful: false,
            servips: Policy::SERVIPS
                .iter()
                .zip(first..)
                .map(|(p, i)| (*p, Ipv4Addr::new(172, 30, 0, i)))
                .collect(),
            exposed: false,
            needs: Vec::new(),
            readiness: None,
        }
    }

    fn instance(service: &str, n: u32, node: &str, nsip: Ipv4Addr) -> InstanceSpec {
        InstanceSpec {
            service: service.into(),
            instance: n,
            node: node.into(),
            nsip,
            fixed_ip: None,
            health: Default::default(),
        }
    }

    /// A healthy cluster of two nodes, two services, an instance on each node.
    fn good() -> ClusterState {
        ClusterState {
            nodes: vec![node("n1", 1), node("n2", 2)],
            services: vec![service("a.b.c.d", 7, 1), service("a.b.e.d", 8, 4)],
            instances: vec![
                instance("a.b.c.d", 1, "n1", Ipv4Addr::new(10, 30, 1, 2)),
                instance("a.b.e.d", 1, "n2", Ipv4Addr::new(10, 30, 2, 2)),
            ],
            ..Default::default()
        }
    }

    /// Adds `bad` to a good state: exactly that record is refused, with an
    /// error saying `why`, and every good record is kept.
    fn refused_alone(bad: impl FnOnce(&mut ClusterState), table: &str, key: &str, why: &str) {
        let mut s = good();
        bad(&mut s);
        let (out, refused) = validated(&s, "n1", &Pools::default());
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!((refused[0].table, refused[0].key.as_str()), (table, key));
        assert!(refused[0].error.contains(why), "{}", refused[0].error);
        let g = good();
        assert!(g.nodes.iter().all(|n| out.nodes.contains(n)));
        assert!(g.services.iter().all(|x| out.services.contains(x)));
        assert!(g.instances.iter().all(|i| out.instances.contains(i)));
    }

    #[test]
    fn a_good_cluster_passes_whole() {
        let (out, refused) = validated(&good(), "n1", &Pools::default());
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(out, good());
    }

    #[test]
    fn node_records_that_would_capture_traffic_are_refused() {
        let mut all = node("x", 9);
        all.subnet = "0.0.0.0/0".parse().unwrap();
        refused_alone(|s| s.nodes.push(all), "nodes", "x", "not a node subnet");
        let mut twin = node("x", 9);
        twin.subnet = "10.30.2.128/25".parse().unwrap();
        refused_alone(|s| s.nodes.push(twin), "nodes", "x", "overlaps node n2's");
        let mut inside = node("x", 9);
        inside.ip = Ipv4Addr::new(172, 30, 0, 9);
        refused_alone(|s| s.nodes.push(inside), "nodes", "x", "cannot be a node's");
        refused_alone(|s| s.nodes.push(node("n2", 9)), "nodes", "n2", "twice");
    }

    #[test]
    fn service_records_that_claim_foreign_addresses_are_refused() {
        let mut google = service("a.b.x.d", 9, 20);
        google
            .servips
            .insert(Policy::Closest, Ipv4Addr::new(8, 8, 8, 8));
        refused_alone(
            |s| s.services.push(google),
            "services",
            "a.b.x.d",
            "8.8.8.8 is not",
        );
        let mut dns = service("a.b.x.d", 9, 20);
        dns.servips
            .insert(Policy::Fastest, Ipv4Addr::new(169, 254, 1, 1));
        refused_alone(
            |s| s.services.push(dns),
            "services",
            "a.b.x.d",
            "169.254.1.1",
        );
        let theft = service("a.b.x.d", 9, 2);
        refused_alone(
            |s| s.services.push(theft),
            "services",
            "a.b.x.d",
            "claimed already",
        );
        let same_id = service("a.b.x.d", 7, 20);
        refused_alone(|s| s.services.push(same_id), "services", "a.b.x.d", "id 7");
        let mut huge = service("a.b.x.d", 9, 20);
        huge.ports = (1..=40_000).collect();
        refused_alone(
            |s| s.services.push(huge),
            "services",
            "a.b.x.d",
            "40000 ports",
        );
    }

    #[test]
    fn instance_fixed_and_gateway_records_are_checked() {
        let away = instance("a.b.c.d", 2, "n1", Ipv4Addr::new(10, 30, 2, 9));
        refused_alone(
            |s| s.instances.push(away),
            "instances",
            "a.b.c.d/2",
            "not a host",
        );
        let twin = instance("a.b.c.d", 2, "n2", Ipv4Addr::new(10, 30, 2, 2));
        refused_alone(
            |s| s.instances.push(twin),
            "instances",
            "a.b.c.d/2",
            "another",
        );
        let fixed = FixedIp {
            service: "a.b.c.d".into(),
            instance: 3,
            ip: Ipv4Addr::new(1, 1, 1, 1),
        };
        refused_alone(
            |s| s.fixed.push(fixed),
            "fixed",
            "a.b.c.d/3",
            "not an address",
        );
        let gw = GatewaySpec {
            name: "edge".into(),
            ip: Ipv4Addr::new(192, 0, 2, 12),
            port: 50104,
        };
        refused_alone(|s| s.gateways.push(gw), "gateways", "edge", "is a node's");
    }

    /// Node subnets from the cluster setting: /26s of another pool are
    /// nodes' subnets, the default pool's no longer; a setting that is not
    /// valid counts as the default.
    #[test]
    fn node_subnets_follow_the_cluster_setting() {
        let mut s = good();
        let set = "10.40.0.0/16".parse().unwrap();
        s.settings.node_subnets = Some(crate::subnets::NodeSubnets {
            pool: set,
            per_node: 26,
        });
        assert_eq!(Pools::of(&s.settings).subnets, set);
        s.nodes[1].subnet = "10.40.0.64/26".parse().unwrap();
        s.instances[1].nsip = Ipv4Addr::new(10, 40, 0, 66);
        let mut old = node("n3", 3);
        old.ip = Ipv4Addr::new(192, 0, 2, 13);
        s.nodes.push(old);
        let (out, refused) = validated(&s, "n1", &Pools::of(&s.settings));
        assert_eq!(out.nodes.len(), 2, "{refused:?}");
        assert_eq!(out.instances.len(), 2, "{refused:?}");
        assert_eq!((refused.len(), refused[0].key.as_str()), (1, "n3"));
        s.settings.node_subnets = Some(crate::subnets::NodeSubnets {
            pool: "0.0.0.0/1".parse().unwrap(),
            per_node: 24,
        });
        assert_eq!(Pools::of(&s.settings).subnets, DEFAULT_SUBNET_POOL);
    }

    /// This node's own record is its agent's, not the store's: trusted.
    #[test]
    fn the_local_node_is_trusted() {
        let mut s = good();
        s.nodes[0].ip = Ipv4Addr::new(10, 30, 1, 1);
        let (out, refused) = validated(&s, "n1", &Pools::default());
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(out.nodes.len(), 2);
    }
}
