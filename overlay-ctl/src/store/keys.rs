//! The key schema (v2), relative to the store's prefix: every key a node
//! writes lies under `node/<name>/`, so that etcd's role-based access can let
//! each node write its own keys and nothing else (`docs/store.md`).

/// Where a node's own keys live.
pub const NODES: &str = "node/";
/// Secrets that nodes and the orchestrator read and nobody else.
pub const PROBE_KEY: &str = "secret/probe-key";
pub const PROBE_KEY_NEXT: &str = "secret/probe-key-next";
/// `2` once the store holds the v2 schema (set by the v1 migration).
pub const SCHEMA: &str = "schema";

/// The prefix of everything node `node` writes.
pub fn node_dir(node: &str) -> String {
    format!("{NODES}{node}/")
}

/// The node's registration (under its lease).
pub fn node_record(node: &str) -> String {
    format!("{NODES}{node}/record")
}

/// One instance the node runs (under its lease).
pub fn instance(node: &str, service: &str, instance: u32) -> String {
    format!("{NODES}{node}/instances/{service}/{instance}")
}

/// The node's RTT measurements (under its lease).
pub fn rtt(node: &str) -> String {
    format!("{NODES}{node}/rtt")
}

/// The node's flow counts per instance (under its lease).
pub fn load(node: &str) -> String {
    format!("{NODES}{node}/load")
}

/// What a key under `node/` is.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeKey<'a> {
    Record,
    Instance,
    Rtt,
    Load,
    Other(&'a str),
}

/// Splits a key under `node/` into the node's name and what the key is.
pub fn parse_node_key(key: &str) -> Option<(&str, NodeKey<'_>)> {
    let rest = key.strip_prefix(NODES)?;
    let (node, what) = rest.split_once('/')?;
    let kind = match what {
        "record" => NodeKey::Record,
        "rtt" => NodeKey::Rtt,
        "load" => NodeKey::Load,
        w if w.starts_with("instances/") => NodeKey::Instance,
        w => NodeKey::Other(w),
    };
    Some((node, kind))
}

/// A record that names its node, which the key it was read from decides.
pub trait OfNode {
    fn bind(&mut self, node: &str);
}

impl OfNode for super::NodeRecord {
    fn bind(&mut self, node: &str) {
        node.clone_into(&mut self.name);
    }
}

impl OfNode for crate::model::InstanceSpec {
    fn bind(&mut self, node: &str) {
        node.clone_into(&mut self.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_round_trip() {
        assert_eq!(
            parse_node_key(&node_record("n1")),
            Some(("n1", NodeKey::Record))
        );
        assert_eq!(
            parse_node_key(&instance("n2", "a.b.c.d", 3)),
            Some(("n2", NodeKey::Instance))
        );
        assert_eq!(parse_node_key(&rtt("n3")), Some(("n3", NodeKey::Rtt)));
        assert_eq!(parse_node_key(&load("n3")), Some(("n3", NodeKey::Load)));
        assert_eq!(parse_node_key("node/n1"), None);
        assert_eq!(parse_node_key("services/x"), None);
        assert!(node_record("n1").starts_with(&node_dir("n1")));
    }
}
