//! The agent's configuration file (`agent.toml`; every key: `docs/configuration.md`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {why}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
}

/// Agent settings. Unknown keys are rejected so that a typo never goes unnoticed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub node_id: String,
    /// Interface toward the other nodes.
    pub uplink: String,
    /// Default: the uplink's first IPv4 address.
    pub node_ip: Option<Ipv4Addr>,
    #[serde(default = "default_ewp")]
    pub ewp: u16,
    #[serde(default = "default_nsp")]
    pub nsp: u16,
    /// NAT-mapped address other nodes must use.
    pub public: Option<SocketAddrV4>,
    /// etcd endpoints, comma-separated; absent: `state_file` and `subnet`.
    pub store: Option<String>,
    /// Serve `/metrics` (Prometheus) on this TCP address; off when absent.
    pub metrics: Option<std::net::SocketAddr>,
    /// PEM CA of the store's certificate (`https://` endpoints).
    pub store_ca: Option<PathBuf>,
    /// This node's client certificate and key for the store (PEM).
    pub store_cert: Option<PathBuf>,
    pub store_key: Option<PathBuf>,
    /// Desired state of the cluster (nodes, services, remote instances) as a
    /// JSON file, for clusters without a store.
    pub state_file: Option<PathBuf>,
    /// This node's instance subnet when no store leases one.
    pub subnet: Option<Subnet>,
    pub state_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub api_socket: PathBuf,
    /// Masquerade instance traffic to destinations outside the overlay.
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// Link-local gateway address instances route through.
    #[serde(default = "default_gateway")]
    pub gateway: Ipv4Addr,
    /// Uplink MTU; default: read from the interface.
    pub mtu: Option<u16>,
    /// Serve the `.local` names on the gateway address (DNS) and on the
    /// instance links (mDNS).
    #[serde(default = "default_true")]
    pub dns: bool,
    /// Resolver for names outside `.local` (default: refused).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// TTL of name answers, seconds.
    #[serde(default = "default_dns_ttl")]
    pub dns_ttl: u32,
    /// Attach the XDP early-drop program to the uplink: `true`, `false`, or
    /// absent for automatic (on, except on veth uplinks, where an XDP
    /// program turns off the peer's segmentation offload).
    pub uplink_xdp: Option<bool>,
    /// Serve an exposed service's ports only on nodes that run one of its
    /// instances (default: on every node).
    #[serde(default)]
    pub expose_where_running: bool,
    /// Services without `needs` may open no new flows. A cluster-wide
    /// setting: give every node the same value.
    #[serde(default)]
    pub default_deny: bool,
    /// Seconds the node's registration outlives a silent agent (lease TTL).
    #[serde(default = "default_ttl")]
    pub node_ttl: u64,
    /// Seconds another node stays in this node's tables after its
    /// registration lapsed, while it still answers probes (a store hiccup
    /// is not a death).
    #[serde(default = "default_node_grace")]
    pub node_grace: u64,
    /// Milliseconds `instance rm` lets a removed instance's established
    /// flows finish (it gets no new ones meanwhile) before ending the rest.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// The node's coordinates, `{ lat = 48.26, lon = 11.67 }`: the distance
    /// to nodes without a measured RTT is estimated from them.
    pub location: Option<crate::balance::Location>,
    /// Milliseconds between RTT probes to each other node (0: no probes).
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: u64,
    /// Testing knob: answer probes this many ms late, so that this node
    /// looks farther away (this kernel has no netem). Keep 0 in production.
    #[serde(default)]
    pub probe_echo_delay_ms: u64,
    /// A flow counts as active (load) while it carried a packet within this
    /// many seconds.
    #[serde(default = "default_load_window")]
    pub load_window_s: u32,
    /// Confirmed-flow conntrack entries (two per flow started here; never
    /// evicted: when full, new flows are not established). Changing it
    /// needs `overlay-ctl agent --teardown` first (open flows break).
    #[serde(default = "default_conntrack")]
    pub conntrack_entries: u32,
    /// How long a flow lives without a packet, by protocol and state
    /// (`[conntrack_lifetimes]`, seconds; docs/conntrack.md).
    #[serde(default)]
    pub conntrack_lifetimes: crate::dataplane::Lifetimes,
    /// How often the agent ends the flows past their lifetime, seconds.
    #[serde(default = "default_conntrack_gc")]
    pub conntrack_gc_s: u32,
    /// Tuning of the balancing policies (`[balance]` table, docs/policies.md).
    #[serde(default)]
    pub balance: crate::balance::Params,
}

fn default_conntrack_gc() -> u32 {
    10
}

fn default_conntrack() -> u32 {
    crate::dataplane::Sizes::default().conntrack
}

fn default_probe_interval() -> u64 {
    1000
}

fn default_load_window() -> u32 {
    10
}

fn default_dns_ttl() -> u32 {
    crate::dns::DEFAULT_TTL
}

fn default_ttl() -> u64 {
    crate::store::DEFAULT_NODE_TTL.as_secs()
}

fn default_ewp() -> u16 {
    overlay_common::DEFAULT_EWP
}
fn default_nsp() -> u16 {
    overlay_common::DEFAULT_NSP
}
fn default_true() -> bool {
    true
}
fn default_gateway() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1, 1)
}

fn default_drain_ms() -> u64 {
    5000
}

fn default_node_grace() -> u64 {
    60
}

impl AgentConfig {
    /// The store at `endpoints`, with this node's TLS material.
    pub fn store_access(
        &self,
        endpoints: &str,
    ) -> Result<crate::store::Access, crate::store::StoreError> {
        crate::store::Access::new(
            endpoints,
            self.store_ca.as_deref(),
            self.store_cert.as_deref(),
            self.store_key.as_deref(),
        )
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, why: &str| ConfigError::Invalid {
            path: path.into(),
            key,
            why: why.into(),
        };
        if !crate::model::is_plain_name(&self.node_id) {
            return Err(bad("node_id", "must be 1-63 letters, digits, '-' or '_'"));
        }
        // With a store the name is a label of its keys: no '_'.
        if let (Some(_), Err(why)) = (&self.store, crate::descriptor::check_label(&self.node_id)) {
            return Err(bad("node_id", &format!("with a store, {why}")));
        }
        if self.uplink.is_empty() || self.uplink.len() > 15 || self.uplink.contains('/') {
            return Err(bad(
                "uplink",
                "must be an interface name of 1-15 characters",
            ));
        }
        if self.ewp == 0 || self.nsp == 0 || self.ewp == self.nsp {
            return Err(bad("ewp", "ewp and nsp must be distinct non-zero ports"));
        }
        if self.store.is_none() && self.state_file.is_none() {
            return Err(bad("store", "set `store` (etcd endpoints) or `state_file`"));
        }
        if let Some(endpoints) = &self.store {
            self.store_access(endpoints)
                .map_err(|e| bad("store_ca", &e.to_string()))?;
        }
        if self.store.is_none() && self.subnet.is_none() {
            return Err(bad(
                "subnet",
                "without a store the node's /24 must be configured",
            ));
        }
        if !self.gateway.is_link_local() {
            return Err(bad(
                "gateway",
                "must be a link-local address (169.254.0.0/16)",
            ));
        }
        if self
            .mtu
            .is_some_and(|m| m < 576 + overlay_common::ENCAP_OVERHEAD)
        {
            return Err(bad("mtu", "must be at least 604"));
        }
        if let Some(Err(why)) = self.location.map(|l| l.check()) {
            return Err(bad("location", &why));
        }
        if self.probe_interval_ms != 0 && self.probe_interval_ms < 50 {
            return Err(bad("probe_interval_ms", "must be 0 (off) or at least 50"));
        }
        if !(1024..=1 << 24).contains(&self.conntrack_entries) {
            return Err(bad("conntrack_entries", "must be within 1024..=16777216"));
        }
        if self.load_window_s == 0 {
            return Err(bad("load_window_s", "must be at least 1"));
        }
        if !(1..=3600).contains(&self.conntrack_gc_s) {
            return Err(bad("conntrack_gc_s", "must be within 1..=3600"));
        }
        let l = &self.conntrack_lifetimes;
        if [
            l.tcp_opening,
            l.tcp_established,
            l.tcp_closing,
            l.udp,
            l.icmp,
        ]
        .contains(&0)
        {
            return Err(bad(
                "conntrack_lifetimes",
                "every lifetime must be at least 1 second",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node_id = "n1"
        uplink = "eth0"
        state_file = "/tmp/cluster.json"
        subnet = "10.30.1.0/24"
        state_dir = "/var/lib/overlay/n1"
        bpf_pin_dir = "/sys/fs/bpf/overlay/n1"
        api_socket = "/run/overlay/n1.sock"
    "#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!((c.ewp, c.nsp, c.masquerade), (50103, 50104, true));
        assert_eq!(c.gateway, Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(c.balance, crate::balance::Params::default());
        let tuned = format!(
            "{GOOD}\nlocation = {{ lat = 48.1, lon = 11.6 }}\n[balance]\nfastest_load_us = 1000"
        );
        let c = parse(&tuned).unwrap();
        assert_eq!(c.balance.fastest_load_us, 1000);
        assert_eq!(c.location.unwrap().lat, 48.1);
    }

    #[test]
    fn errors_name_the_key() {
        let typo = GOOD.replace("uplink =", "uplnk =");
        assert!(parse(&typo).unwrap_err().to_string().contains("uplnk"));
        let port = format!("{GOOD}\newp = \"x\"");
        assert!(parse(&port).unwrap_err().to_string().contains("ewp"));
        let gw = format!("{GOOD}\ngateway = \"10.0.0.1\"");
        assert!(parse(&gw).unwrap_err().to_string().contains("gateway"));
        let sub = GOOD.replace("10.30.1.0/24", "10.30.1.0/33");
        assert!(parse(&sub).unwrap_err().to_string().contains("subnet"));
        let id = GOOD.replace("\"n1\"", "\"n 1\"");
        assert!(parse(&id).unwrap_err().to_string().contains("node_id"));
        let store = "store = \"http://192.0.2.254:2379\"\n";
        let under = format!("{store}{}", GOOD.replace("\"n1\"", "\"n_1\""));
        let e = parse(&under).unwrap_err().to_string();
        assert!(e.contains("node_id") && e.contains("with a store"), "{e}");
        let loc = format!("{GOOD}\nlocation = {{ lat = 95.0, lon = 11.0 }}");
        let e = parse(&loc).unwrap_err().to_string();
        assert!(e.contains("location") && e.contains("latitude"), "{e}");
        let knob = format!("{GOOD}\n[balance]\nclosest_margin = 3");
        assert!(
            parse(&knob)
                .unwrap_err()
                .to_string()
                .contains("closest_margin")
        );
        let ct = format!("{GOOD}\nconntrack_entries = 10");
        assert!(
            parse(&ct)
                .unwrap_err()
                .to_string()
                .contains("conntrack_entries")
        );
        let probes = format!("{GOOD}\nprobe_interval_ms = 10");
        assert!(
            parse(&probes)
                .unwrap_err()
                .to_string()
                .contains("probe_interval_ms")
        );
    }
}
