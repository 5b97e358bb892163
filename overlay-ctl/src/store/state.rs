//! The node record and the dataplane's view of the store's state keys.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::keys::{self, NodeKey};
use crate::descriptor::ServiceRecord;
use crate::model::{ClusterState, FixedIp, GatewaySpec, InstanceSpec, NodeSpec, Subnet};

/// A node as it registers itself (`node/<name>/record`, under the node's lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    /// The node's own address on the uplink.
    pub ip: Ipv4Addr,
    /// East-West UDP port.
    pub ewp: u16,
    /// North-South UDP port.
    pub nsp: u16,
    /// NAT-mapped address other nodes must use instead of `ip:ewp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<SocketAddrV4>,
    /// Uplink MTU.
    pub mtu: u16,
    /// The node's leased subnetwork ([`Store::lease_subnet`](super::Store::lease_subnet)).
    pub subnet: Subnet,
    /// Coordinates, if the operator configured them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::balance::Location>,
}

impl NodeRecord {
    /// The dataplane's view: the public address and port when behind NAT.
    pub fn spec(&self) -> NodeSpec {
        NodeSpec {
            name: self.name.clone(),
            ip: self.public.map_or(self.ip, |p| *p.ip()),
            ewp: self.public.map_or(self.ewp, |p| p.port()),
            subnet: self.subnet,
            location: self.location,
            own: self
                .public
                .map(|_| std::net::SocketAddrV4::new(self.ip, self.ewp)),
            mtu: self.mtu,
        }
    }
}

/// Whether a key (relative to the prefix) is part of the desired state.
pub(crate) fn is_state_key(key: &str) -> bool {
    ["services/", "fixed/", "gateways/"]
        .iter()
        .any(|p| key.starts_with(p))
        || key == super::cluster::SETTINGS
        || keys::parse_node_key(key).is_some_and(|(_, k)| !matches!(k, NodeKey::Other(_)))
        || legacy_node_key(key).is_some()
}

/// A node-written key of the v1 schema (`nodes/<n>`, `instances/<s>/<i>`,
/// `rtt/<n>`, `load/<n>`), which agents of the previous release still write
/// during a rolling upgrade; the node of an instance is in its value.
fn legacy_node_key(key: &str) -> Option<(Option<&str>, NodeKey<'static>)> {
    if key.starts_with("instances/") {
        return Some((None, NodeKey::Instance));
    }
    let (kind, node) = key.split_once('/')?;
    let kind = match kind {
        "nodes" => NodeKey::Record,
        "rtt" => NodeKey::Rtt,
        "load" => NodeKey::Load,
        _ => return None,
    };
    Some((Some(node), kind))
}

/// Builds the dataplane's state from the state keys ([`is_state_key`])
/// (keys relative to the prefix); other keys are ignored, and entries that
/// do not parse are skipped with a warning so that one bad record cannot
/// take the dataplane down.
///
/// What a node wrote speaks for that node only: the node named by a record
/// under `node/<name>/` is `<name>`, whatever the record says, and an
/// instance's fixed IP is the one the orchestrator allocated (`fixed/`).
pub(crate) fn build_state<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> ClusterState {
    let mut state = ClusterState::default();
    for (key, value) in entries {
        if let Some((node, kind)) = keys::parse_node_key(key) {
            node_entry(&mut state, key, node, kind, value);
        } else if let Some((node, kind)) = legacy_node_key(key) {
            match node {
                Some(node) => node_entry(&mut state, key, node, kind, value),
                None => state.instances.extend(parse::<InstanceSpec>(key, value)),
            }
        } else if key.starts_with("services/") {
            state
                .services
                .extend(parse::<ServiceRecord>(key, value).map(|s| s.spec()));
        } else if let Some(rest) = key.strip_prefix("fixed/") {
            let Some((service, n)) = rest.rsplit_once('/') else {
                continue;
            };
            if let (Ok(instance), Some(ip)) = (n.parse(), parse(key, value)) {
                state.fixed.push(FixedIp {
                    service: service.to_string(),
                    instance,
                    ip,
                });
            }
        } else if key.starts_with("gateways/") {
            state.gateways.extend(parse::<GatewaySpec>(key, value));
        } else if key == super::cluster::SETTINGS {
            state.settings = parse(key, value).unwrap_or_default();
        }
    }
    for i in &mut state.instances {
        i.fixed_ip = state
            .fixed
            .iter()
            .find(|f| f.service == i.service && f.instance == i.instance)
            .map(|f| f.ip);
    }
    sort(&mut state);
    state
}

/// `current` plus the nodes and instances that only the previous schema's
/// store has (agents of the previous release during a rolling upgrade), and
/// those nodes' measurements.
pub fn merge_legacy(mut current: ClusterState, legacy: &ClusterState) -> ClusterState {
    let old: Vec<&NodeSpec> = legacy
        .nodes
        .iter()
        .filter(|n| current.node(&n.name).is_none())
        .collect();
    let only_old = |node: &str| old.iter().any(|n| n.name == node);
    current.nodes.extend(old.iter().map(|n| (*n).clone()));
    // By instance, not by node: an upgraded agent registers before it
    // publishes its instances again, and the flows to them must not end.
    let known = |i: &InstanceSpec| {
        current
            .instances
            .iter()
            .any(|c| (&c.service, c.instance) == (&i.service, i.instance))
    };
    let carried: Vec<InstanceSpec> = legacy
        .instances
        .iter()
        .filter(|i| !known(i))
        .cloned()
        .collect();
    current.instances.extend(carried);
    for (node, m) in legacy.rtt.iter().filter(|(n, _)| only_old(n)) {
        current.rtt.insert(node.clone(), m.clone());
    }
    for (node, m) in legacy.load.iter().filter(|(n, _)| only_old(n)) {
        current.load.insert(node.clone(), m.clone());
    }
    sort(&mut current);
    current
}

fn sort(state: &mut ClusterState) {
    state.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    state.services.sort_by(|a, b| a.name.cmp(&b.name));
    state.gateways.sort_by(|a, b| a.name.cmp(&b.name));
    state
        .instances
        .sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
}

fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value)
        .inspect_err(|e| tracing::warn!("store: skipping `{key}`: {e}"))
        .ok()
}

/// A key under `node/<node>/`, bound to `node`.
fn node_entry(state: &mut ClusterState, key: &str, node: &str, kind: NodeKey, value: &[u8]) {
    match kind {
        NodeKey::Record => state.nodes.extend(parse::<NodeRecord>(key, value).map(|n| {
            let mut spec = n.spec();
            spec.name = node.to_string();
            spec
        })),
        NodeKey::Instance => state
            .instances
            .extend(parse::<InstanceSpec>(key, value).map(|mut i| {
                i.node = node.to_string();
                i
            })),
        NodeKey::Rtt => state
            .rtt
            .extend(parse(key, value).map(|m| (node.to_string(), m))),
        NodeKey::Load => state
            .load
            .extend(parse(key, value).map(|m| (node.to_string(), m))),
        NodeKey::Other(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_spec_prefers_the_public_address() {
        let mut n = NodeRecord {
            name: "n1".into(),
            ip: Ipv4Addr::new(192, 0, 2, 11),
            ewp: 50103,
            nsp: 50104,
            public: None,
            mtu: 1500,
            subnet: "10.30.1.0/24".parse().unwrap(),
            location: None,
        };
        assert_eq!((n.spec().ip, n.spec().ewp), (n.ip, 50103));
        n.public = Some("198.51.100.7:40001".parse().unwrap());
        assert_eq!(n.spec().ip, Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(n.spec().ewp, 40001);
    }

    #[test]
    fn state_skips_bad_records_and_sorts() {
        let inst = |s: &str, i: u32| {
            serde_json::to_vec(&InstanceSpec {
                service: s.into(),
                instance: i,
                node: "n1".into(),
                nsip: Ipv4Addr::new(10, 30, 1, i as u8),
                fixed_ip: None,
                health: Default::default(),
            })
            .unwrap()
        };
        let (a10, a2) = (inst("a.b.c.d", 10), inst("a.b.c.d", 2));
        let state = build_state([
            ("node/n1/instances/a.b.c.d/10", a10.as_slice()),
            ("node/n1/instances/a.b.c.d/2", a2.as_slice()),
            ("node/n1/record", b"{not json".as_slice()),
            ("servips/172.30.0.1", b"{}".as_slice()),
        ]);
        assert!(state.nodes.is_empty());
        let order: Vec<u32> = state.instances.iter().map(|i| i.instance).collect();
        assert_eq!(order, [2, 10]);
    }

    /// A node cannot speak for another: the key's node wins over the
    /// record's, and a fixed IP is the orchestrator's, not the node's.
    #[test]
    fn node_records_are_bound_to_their_key() {
        let forged = serde_json::to_vec(&InstanceSpec {
            service: "a.b.c.d".into(),
            instance: 1,
            node: "n2".into(),
            nsip: Ipv4Addr::new(10, 30, 2, 9),
            fixed_ip: Some(Ipv4Addr::new(172, 30, 0, 1)),
            health: Default::default(),
        })
        .unwrap();
        let state = build_state([("node/n3/instances/a.b.c.d/1", forged.as_slice())]);
        assert_eq!(state.instances[0].node, "n3");
        assert_eq!(state.instances[0].fixed_ip, None);
        let state = build_state([
            ("fixed/a.b.c.d/1", b"\"172.30.0.7\"".as_slice()),
            ("node/n3/instances/a.b.c.d/1", forged.as_slice()),
        ]);
        assert_eq!(
            state.instances[0].fixed_ip,
            Some(Ipv4Addr::new(172, 30, 0, 7))
        );
    }

    /// During a rolling upgrade, the nodes and instances only the v1 keys
    /// hold are kept; the current schema wins where it has them.
    #[test]
    fn legacy_nodes_and_instances_fill_the_gaps() {
        let node = |name: &str, last: u8| NodeSpec {
            name: name.into(),
            ip: Ipv4Addr::new(192, 0, 2, last),
            ewp: 50103,
            subnet: format!("10.30.{last}.0/24").parse().unwrap(),
            location: None,
            own: None,
            mtu: 0,
        };
        let inst = |n: u32, node: &str| InstanceSpec {
            service: "a.b.c.d".into(),
            instance: n,
            node: node.into(),
            nsip: Ipv4Addr::new(10, 30, 0, n as u8),
            fixed_ip: None,
            health: Default::default(),
        };
        let current = ClusterState {
            nodes: vec![node("n1", 1), node("n2", 2)],
            instances: vec![inst(1, "n1")],
            ..Default::default()
        };
        let legacy = ClusterState {
            nodes: vec![node("n2", 9), node("n3", 3)],
            instances: vec![inst(1, "n3"), inst(2, "n2")],
            ..Default::default()
        };
        let merged = merge_legacy(current, &legacy);
        let names: Vec<_> = merged
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.ip.octets()[3]))
            .collect();
        assert_eq!(names, [("n1", 1), ("n2", 2), ("n3", 3)]);
        let insts: Vec<_> = merged
            .instances
            .iter()
            .map(|i| (i.instance, i.node.as_str()))
            .collect();
        assert_eq!(insts, [(1, "n1"), (2, "n2")]);
    }
}
