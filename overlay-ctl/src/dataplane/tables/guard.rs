//! The isolation maps: the infrastructure instances may not reach, the
//! overlay's address space, and every instance's service.

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use overlay_common::maps::{InfraKey, ip};
use overlay_common::registry::def;

use super::{Result, Tables, ignore_missing, map_err};

fn infra_key(addr: Ipv4Addr, port: u16, proto: u8) -> InfraKey {
    InfraKey {
        addr: ip::to_wire(addr),
        port: ip::port_to_wire(port),
        proto,
        _pad: 0,
    }
}

impl Tables {
    /// Refuses instances `port`/`proto` of `addr`; with port and protocol 0
    /// the whole address, but what `allow` (`infra` flags) names.
    pub fn put_infra(&mut self, addr: Ipv4Addr, port: u16, proto: u8, allow: u32) -> Result<()> {
        self.infra
            .insert(infra_key(addr, port, proto), allow, 0)
            .map_err(map_err(&def::INFRA))
    }

    pub fn remove_infra(&mut self, addr: Ipv4Addr, port: u16, proto: u8) -> Result<()> {
        ignore_missing(self.infra.remove(&infra_key(addr, port, proto)))
            .map_err(map_err(&def::INFRA))
    }

    /// (address, port, protocol) → allowed.
    pub fn infra(&self) -> Vec<((Ipv4Addr, u16, u8), u32)> {
        self.infra
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                let port = ip::port_from_wire(k.port);
                ((ip::from_wire(k.addr), port, k.proto), v)
            })
            .collect()
    }

    /// An instance of the cluster and its service (`needs` toward NamespaceIPs).
    pub fn put_nsip_service(&mut self, nsip: Ipv4Addr, service: u32) -> Result<()> {
        self.nsip_services
            .insert(ip::to_wire(nsip), service, 0)
            .map_err(map_err(&def::NSIP_SERVICES))
    }

    pub fn remove_nsip_service(&mut self, nsip: Ipv4Addr) -> Result<()> {
        ignore_missing(self.nsip_services.remove(&ip::to_wire(nsip)))
            .map_err(map_err(&def::NSIP_SERVICES))
    }

    pub fn nsip_services(&self) -> Vec<(Ipv4Addr, u32)> {
        self.nsip_services
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (ip::from_wire(k), v))
            .collect()
    }

    /// A prefix of the overlay's address space.
    pub fn put_overlay_net(&mut self, net: Ipv4Addr, prefix: u32) -> Result<()> {
        let key = Key::new(prefix, ip::to_wire(net));
        self.overlay_nets
            .insert(&key, 1, 0)
            .map_err(map_err(&def::OVERLAY_NETS))
    }

    pub fn remove_overlay_net(&mut self, net: Ipv4Addr, prefix: u32) -> Result<()> {
        let key = Key::new(prefix, ip::to_wire(net));
        ignore_missing(self.overlay_nets.remove(&key)).map_err(map_err(&def::OVERLAY_NETS))
    }

    pub fn overlay_nets(&self) -> Vec<(Ipv4Addr, u32)> {
        self.overlay_nets
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, _)| (ip::from_wire(k.data()), k.prefix_len()))
            .collect()
    }
}
