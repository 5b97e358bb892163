//! The agent's name service: unicast DNS on the instances' gateway address
//! and mDNS on every instance link, both answering from the desired state.

use std::net::SocketAddr;

use tokio::sync::watch;

use super::Result;
use crate::config::AgentConfig;
use crate::dns::{self, DnsOptions, DnsServer, Mdns};
use crate::model::{ClusterState, Subnet};

pub struct NameService {
    _dns: DnsServer,
    mdns: Mdns,
    cfg: AgentConfig,
}

impl NameService {
    /// The unicast DNS server's replies by result.
    pub fn counts(&self) -> std::sync::Arc<dns::DnsCounts> {
        self._dns.counts()
    }

    /// Puts the gateway address on the node's loopback and starts serving.
    pub async fn start(
        cfg: &AgentConfig,
        subnet: Subnet,
        state: watch::Receiver<ClusterState>,
    ) -> Result<NameService> {
        crate::netns::ensure_local_addr("lo", cfg.gateway).await?;
        let options = DnsOptions {
            ttl: cfg.dns_ttl,
            upstream: cfg.dns_upstream,
            // The node's instances, and the node itself (queries to a local
            // address come from a local address): not the node's LAN.
            allowed: vec![
                subnet,
                Subnet {
                    addr: std::net::Ipv4Addr::LOCALHOST,
                    prefix: 8,
                },
                Subnet {
                    addr: cfg.gateway,
                    prefix: 32,
                },
            ],
            ..DnsOptions::default()
        };
        let dns =
            DnsServer::start_with(SocketAddr::from((cfg.gateway, 53)), state.clone(), options)?;
        let mdns = Mdns::start(Vec::new(), state, cfg.dns_ttl)?;
        tracing::info!(addr = %cfg.gateway, "serving .local names (DNS, mDNS)");
        Ok(NameService {
            _dns: dns,
            mdns,
            cfg: cfg.clone(),
        })
    }

    /// A new instance link: mDNS on it, and its resolver pointed at us
    /// (for namespaces known by name; others configure their resolv.conf).
    pub fn add(&self, host_if: &str, netns: &str) {
        if let Err(e) = self.mdns.add_interface(host_if, self.cfg.gateway) {
            tracing::warn!("mDNS on {host_if}: {e:#}");
        }
        if is_name(netns)
            && let Err(e) = dns::write_resolv_conf(netns, self.cfg.gateway)
        {
            tracing::warn!("resolv.conf of {netns}: {e:#}");
        }
    }

    pub fn remove(&self, host_if: &str, netns: &str) {
        let _ = self.mdns.remove_interface(host_if);
        if is_name(netns) {
            let _ = dns::remove_resolv_conf(netns);
        }
    }
}

/// Only namespaces given by name have an `/etc/netns/<name>/resolv.conf`.
fn is_name(netns: &str) -> bool {
    matches!(
        netns.parse::<crate::netns::NetnsRef>(),
        Ok(crate::netns::NetnsRef::Name(_))
    )
}
