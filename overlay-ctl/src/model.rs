//! The cluster's desired state as the agent sees it: nodes, services with
//! their ServIPs, and instances with their node and NamespaceIP.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 prefix such as `10.30.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// The `n`th address of the prefix.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + n)
    }

    pub fn size(&self) -> u32 {
        1u32.checked_shl(32 - self.prefix as u32).unwrap_or(0)
    }

    /// A node's numeric id in the dataplane, unique because subnets are
    /// leased to one node each and never overlap. A subnet of /24 or wider
    /// has its first /24's number, which lets the dataplane bind a tunnel
    /// packet's inner source to its sender without a lookup. A narrower one
    /// has [`NARROW_NODE`] set above its address's upper 30 bits: never a
    /// /24 number (so never matched that way: the dataplane looks the
    /// source up in its routes instead), and distinct for any two subnets of
    /// /30 or wider. Nonzero for every node subnet (none lies in 0.0.0.0/8).
    pub fn node_id(&self) -> u32 {
        let base = u32::from(self.addr);
        if self.prefix <= 24 {
            base >> 8
        } else {
            NARROW_NODE | base >> 2
        }
    }
}

/// Marks the id of a node whose subnet is narrower than a /24
/// ([`Subnet::node_id`]).
pub const NARROW_NODE: u32 = 1 << 31;

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{p}` is not a prefix length 0-32"))?;
        let net = Subnet { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!("`{s}` has host bits set"));
        }
        Ok(net)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

pub use crate::health::{Health, Readiness};
pub use overlay_common::policy::Policy;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(default = "default_ewp")]
    pub ewp: u16,
    pub subnet: Subnet,
    /// Coordinates: the distance fallback while no RTT is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::balance::Location>,
    /// Behind NAT (`ip`/`ewp` being its public mapping): its own address
    /// and EWP, which the nodes behind the same public address use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<std::net::SocketAddrV4>,
    /// Its uplink's MTU (0: not known; then this node's own is assumed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u16,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

impl NodeSpec {
    /// Where `from` sends this node's tunnel packets (and its probes): the
    /// node's own address when both are behind the same public address (no
    /// router hairpinning needed), else `ip`/`ewp`.
    pub fn reached_from(&self, from: Option<&NodeSpec>) -> std::net::SocketAddrV4 {
        match (self.own, from) {
            (Some(own), Some(me)) if me.own.is_some() && me.ip == self.ip => own,
            _ => std::net::SocketAddrV4::new(self.ip, self.ewp),
        }
    }
}

fn default_ewp() -> u16 {
    overlay_common::DEFAULT_EWP
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `app.appns.svc.svcns`
    pub name: String,
    /// Cluster-wide numeric id (the dataplane's service key).
    pub id: u32,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default, alias = "statefull")]
    pub stateful: bool,
    /// One ServIP per policy; empty for a stateful service.
    #[serde(default)]
    pub servips: BTreeMap<Policy, Ipv4Addr>,
    /// Reachable from outside the cluster at every node's address and `ports`.
    #[serde(default)]
    pub exposed: bool,
    /// Services (`app.appns.svc.svcns`) this one may open new flows to;
    /// empty: no restriction (unless the cluster denies by default).
    #[serde(default)]
    pub needs: Vec<String>,
    /// How its instances are checked; absent: any of `ports` accepting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub service: String,
    pub instance: u32,
    pub node: String,
    pub nsip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<Ipv4Addr>,
    /// Only ready instances get new flows; written only when not ready, so
    /// a ready instance's record is the previous release's.
    #[serde(default, skip_serializing_if = "Health::is_ready")]
    pub health: Health,
}

impl InstanceSpec {
    /// Backend id in the dataplane: the NamespaceIP, unique cluster-wide.
    pub fn backend_id(&self) -> u32 {
        u32::from(self.nsip)
    }
}

/// A stateful instance's fixed IP as the orchestrator allocated it: it stays
/// a ServIP (failing fast) while its instance is not running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedIp {
    pub service: String,
    pub instance: u32,
    pub ip: Ipv4Addr,
}

/// Settings every node of the cluster applies (store key `cluster/settings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Services without `needs` may open no new flows; absent: each agent's
    /// own `default_deny` (false unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<bool>,
    /// Exposed ports must lie in this range; absent: any port that is not
    /// reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<PortRange>,
    /// The nodes' local ephemeral port range, which an exposed port would
    /// take from the nodes' own outgoing connections; absent: Linux's
    /// default, [`PortRange::LINUX_EPHEMERAL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_ports: Option<PortRange>,
    /// Where node subnets come from and how long each is; absent:
    /// [`NodeSubnets::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_subnets: Option<NodeSubnets>,
}

impl ClusterSettings {
    /// The node subnet pool and length in force.
    pub fn node_subnets(&self) -> NodeSubnets {
        self.node_subnets.unwrap_or(NodeSubnets::DEFAULT)
    }
}

pub use crate::subnets::NodeSubnets;

/// An inclusive range of ports, written `FIRST-LAST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `net.ipv4.ip_local_port_range`'s default.
    pub const LINUX_EPHEMERAL: PortRange = PortRange {
        first: 32768,
        last: 60999,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port range FIRST-LAST (1-65535, FIRST <= LAST)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (first, last): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A north-south gateway (store key `gateways/<name>`): it may tunnel
/// external clients' packets to every node's NSP, and gets their replies
/// tunnelled back to `ip:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(default = "default_nsp")]
    pub port: u16,
}

fn default_nsp() -> u16 {
    overlay_common::DEFAULT_NSP
}

/// A node or gateway name: 1-63 ASCII letters, digits, '-' or '_'.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl GatewaySpec {
    /// Why the record cannot be registered, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !is_plain_name(&self.name) {
            return Err(format!(
                "gateway name `{}`: must be 1-63 letters, digits, '-' or '_'",
                self.name
            ));
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(format!(
                "gateway address {ip}: must be a unicast address the nodes can reach"
            ));
        }
        if self.port == 0 {
            return Err("gateway port: must be 1-65535".into());
        }
        Ok(())
    }
}

/// Everything the reconciler turns into maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    #[serde(default)]
    pub fixed: Vec<FixedIp>,
    #[serde(default)]
    pub settings: ClusterSettings,
    #[serde(default)]
    pub gateways: Vec<GatewaySpec>,
    /// Smoothed RTT in µs that each node measured to the others: node → peer → µs.
    #[serde(default)]
    pub rtt: BTreeMap<String, BTreeMap<String, u32>>,
    /// Active flows each node has open to each instance: node → NamespaceIP → flows.
    #[serde(default)]
    pub load: BTreeMap<String, BTreeMap<Ipv4Addr, u32>>,
}

impl ClusterState {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Distance from node `from` to node `to` in µs: what `from` measured,
    /// else what `to` measured back, else the coordinates' estimate
    /// (`docs/policies.md`). `None`: unknown.
    pub fn distance(&self, from: &str, to: &str) -> Option<u32> {
        if from == to {
            return Some(0);
        }
        let measured = |a: &str, b: &str| self.rtt.get(a).and_then(|m| m.get(b)).copied();
        measured(from, to)
            .or_else(|| measured(to, from))
            .or_else(|| {
                let (a, b) = (self.node(from)?.location?, self.node(to)?.location?);
                Some(crate::balance::geo_rtt_us(a, b))
            })
    }

    /// Whether `other` differs from this state at most in its measurements
    /// (`rtt`, `load`), which change the weights but nothing else.
    pub fn same_but_measurements(&self, other: &ClusterState) -> bool {
        self.nodes == other.nodes
            && self.services == other.services
            && self.instances == other.instances
            && self.fixed == other.fixed
            && self.settings == other.settings
    }

    /// Active flows toward the instance at `nsip`, summed over every node.
    pub fn load_of(&self, nsip: Ipv4Addr) -> u32 {
        self.load.values().filter_map(|m| m.get(&nsip)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.30.5.0/24".parse().unwrap();
        assert!(s.contains(Ipv4Addr::new(10, 30, 5, 9)));
        assert!(!s.contains(Ipv4Addr::new(10, 30, 6, 9)));
        assert_eq!(s.host(2), Ipv4Addr::new(10, 30, 5, 2));
        assert_eq!(s.size(), 256);
        assert_eq!(s.node_id(), (10 << 16) | (30 << 8) | 5);
        let wide: Subnet = "10.30.4.0/23".parse().unwrap();
        assert_eq!(wide.node_id(), (10 << 16) | (30 << 8) | 4);
        for bad in ["10.30.5.1/24", "10.30.5.0/33", "10.30.5.0", "x/24"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }
}
