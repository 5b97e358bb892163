//! The node record and the dataplane's view of the store's state keys.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::descriptor::ServiceRecord;
use crate::model::{ClusterState, FixedIp, GatewaySpec, InstanceSpec, NodeSpec, Subnet};

/// A node as it registers itself (`nodes/<name>`, under the node's lease).
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
        }
    }
}

/// Whether a key (relative to the prefix) is part of the desired state.
pub(crate) fn is_state_key(key: &str) -> bool {
    [
        "nodes/",
        "services/",
        "instances/",
        "fixed/",
        "rtt/",
        "load/",
        "gateways/",
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || key == super::cluster::SETTINGS
}

/// Builds the dataplane's state from the state keys ([`is_state_key`]) (keys relative to the prefix); other keys are ignored, and
/// entries that do not parse are skipped with a warning so that one bad
/// record cannot take the dataplane down.
pub(crate) fn build_state<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> ClusterState {
    fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
        serde_json::from_slice(value)
            .inspect_err(|e| tracing::warn!("store: skipping `{key}`: {e}"))
            .ok()
    }
    let mut state = ClusterState::default();
    for (key, value) in entries {
        if key.starts_with("nodes/") {
            state
                .nodes
                .extend(parse::<NodeRecord>(key, value).map(|n| n.spec()));
        } else if key.starts_with("services/") {
            state
                .services
                .extend(parse::<ServiceRecord>(key, value).map(|s| s.spec()));
        } else if key.starts_with("instances/") {
            state.instances.extend(parse::<InstanceSpec>(key, value));
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
        } else if let Some(node) = key.strip_prefix("rtt/") {
            state
                .rtt
                .extend(parse(key, value).map(|m| (node.to_string(), m)));
        } else if let Some(node) = key.strip_prefix("load/") {
            state
                .load
                .extend(parse(key, value).map(|m| (node.to_string(), m)));
        }
    }
    state.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    state.services.sort_by(|a, b| a.name.cmp(&b.name));
    state.gateways.sort_by(|a, b| a.name.cmp(&b.name));
    state
        .instances
        .sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
    state
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
            })
            .unwrap()
        };
        let (a10, a2) = (inst("a.b.c.d", 10), inst("a.b.c.d", 2));
        let state = build_state([
            ("instances/a.b.c.d/10", a10.as_slice()),
            ("instances/a.b.c.d/2", a2.as_slice()),
            ("nodes/n1", b"{not json".as_slice()),
            ("servips/172.30.0.1", b"{}".as_slice()),
        ]);
        assert!(state.nodes.is_empty());
        let order: Vec<u32> = state.instances.iter().map(|i| i.instance).collect();
        assert_eq!(order, [2, 10]);
    }
}
