//! Exposed ports (`exposed/<port>`): one service per node port, cluster-wide,
//! and never a port the nodes need for themselves.

use std::collections::BTreeSet;

use overlay_common::registry::limits;

use super::ops::{absent, delete, put, unchanged};
use super::pool::json;
use super::proto::{self, request_op::Request as Op};
use super::{Kv, NodeRecord, Result, Store, StoreError, keys};
use crate::descriptor::Descriptor;
use crate::model::{ClusterSettings, PortRange};

/// What an exposed port may not be.
#[derive(Debug, Default)]
pub struct ExposureRules {
    /// (node, port, what): every node's EWP and NSP, the defaults included.
    pub node_ports: Vec<(String, u16, &'static str)>,
    /// The store's client ports, as this client reaches it.
    pub store_ports: Vec<u16>,
    pub ephemeral: Option<PortRange>,
    pub allowed: Option<PortRange>,
}

impl ExposureRules {
    /// Why `port` may not be exposed, if it may not.
    pub fn refuse(&self, port: u16) -> Option<String> {
        if port == 53 {
            return Some("it is DNS, which the nodes' name service answers".into());
        }
        if let Some((node, _, what)) = self.node_ports.iter().find(|(_, p, _)| *p == port) {
            return Some(format!("it is {node}'s {what}"));
        }
        if self.store_ports.contains(&port) {
            return Some("it is the store's client port".into());
        }
        let ephemeral = self.ephemeral.unwrap_or(PortRange::LINUX_EPHEMERAL);
        if ephemeral.contains(port) {
            return Some(format!(
                "it is in the nodes' local ephemeral range {ephemeral}, where their own \
                 connections take ports (cluster setting ephemeral-ports)"
            ));
        }
        match self.allowed {
            Some(r) if !r.contains(port) => Some(format!(
                "it is outside the cluster's exposed-port range {r} (cluster setting exposed-ports)"
            )),
            _ => None,
        }
    }
}

impl Store {
    /// The rules from the registered nodes and the cluster settings read
    /// in a deploy's transaction.
    pub(super) fn exposure_rules(&self, nodes: &[Kv], settings: &[Kv]) -> Result<ExposureRules> {
        let settings: ClusterSettings = match settings.first() {
            Some(kv) => kv.decode()?,
            None => ClusterSettings::default(),
        };
        let mut node_ports = vec![
            (
                "every node".to_owned(),
                overlay_common::DEFAULT_EWP,
                "default East-West port (EWP)",
            ),
            (
                "every node".to_owned(),
                overlay_common::DEFAULT_NSP,
                "default North-South port (NSP)",
            ),
        ];
        let records = nodes.iter().filter(|kv| {
            keys::parse_node_key(&kv.key).is_some_and(|(_, k)| k == keys::NodeKey::Record)
        });
        for kv in records {
            // A record that does not parse is the validation's business.
            let Ok(n) = kv.decode::<NodeRecord>() else {
                continue;
            };
            let name = format!("node {}", n.name);
            node_ports.push((name.clone(), n.ewp, "East-West port (EWP)"));
            node_ports.push((name.clone(), n.nsp, "North-South port (NSP)"));
            if let Some(public) = n.public {
                node_ports.push((name, public.port(), "public East-West port"));
            }
        }
        let store_ports = self
            .endpoint()
            .split(',')
            .filter_map(|url| url.rsplit(':').next()?.trim_end_matches('/').parse().ok())
            .collect();
        Ok(ExposureRules {
            node_ports,
            store_ports,
            ephemeral: settings.ephemeral_ports,
            allowed: settings.exposed_ports,
        })
    }

    /// Claims `exposed/<port>` for each port of an exposed service (one
    /// service per node port, cluster-wide) and drops claims it no longer
    /// needs. Refused with a clear error: a port another service holds, a
    /// reserved port, or more exposed ports than the cluster may have.
    pub(super) fn expose_ops(
        &self,
        name: &str,
        d: &Descriptor,
        claims: &[Kv],
        rules: &ExposureRules,
    ) -> Result<(Vec<proto::Compare>, Vec<Op>)> {
        let wanted: BTreeSet<u16> = if d.exposed {
            d.ports.iter().copied().collect()
        } else {
            BTreeSet::new()
        };
        for &port in &wanted {
            if let Some(why) = rules.refuse(port) {
                return Err(StoreError::Invalid(format!(
                    "descriptor field `ports`: port {port} may not be exposed: {why}"
                )));
            }
        }
        let mut held = BTreeSet::new();
        let mut others = 0;
        let (mut compare, mut ops) = (Vec::new(), Vec::new());
        for kv in claims {
            let port: u16 = kv.key.trim_start_matches("exposed/").parse().unwrap_or(0);
            let owner: String = kv.decode()?;
            let key = self.key(&kv.key);
            if owner != name {
                if wanted.contains(&port) {
                    return Err(StoreError::Invalid(format!(
                        "descriptor field `ports`: port {port} is already exposed by {owner}"
                    )));
                }
                others += 1;
                continue;
            }
            held.insert(port);
            compare.push(unchanged(&key, kv.mod_revision));
            if !wanted.contains(&port) {
                ops.push(delete(&key));
            }
        }
        if others + wanted.len() > limits::EXPOSED_PORTS {
            return Err(StoreError::Invalid(format!(
                "descriptor field `ports`: the cluster may expose at most {} ports; {others} are \
                 exposed by other services and this one asks for {}",
                limits::EXPOSED_PORTS,
                wanted.len()
            )));
        }
        for port in wanted.difference(&held) {
            let key = self.key(&format!("exposed/{port}"));
            compare.push(absent(&key));
            ops.push(put(&key, json(&name), 0));
        }
        Ok((compare, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_refused_with_their_reason() {
        let rules = ExposureRules {
            node_ports: vec![("node n1".into(), 40001, "East-West port (EWP)")],
            store_ports: vec![2379],
            ephemeral: None,
            allowed: Some(PortRange {
                first: 80,
                last: 32000,
            }),
        };
        let why = |p| rules.refuse(p).unwrap_or_default();
        assert!(why(53).contains("DNS"));
        assert!(why(40001).contains("node n1's East-West"));
        assert!(why(2379).contains("store's client port"));
        assert!(why(32768).contains("ephemeral range 32768-60999"));
        assert!(why(22).contains("outside the cluster's exposed-port range 80-32000"));
        assert_eq!(rules.refuse(8080), None);
        assert_eq!(rules.refuse(32000), None);
    }
}
