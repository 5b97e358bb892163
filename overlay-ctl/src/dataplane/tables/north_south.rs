//! The north-south maps: the node's exposed ports and the gateways that may
//! tunnel external traffic to its NSP.

use std::net::Ipv4Addr;

use overlay_common::maps::{ExposeKey, Exposed, ip};
use overlay_common::registry::def;

use super::{Result, Tables, ignore_missing, map_err, tunnel_end};

fn expose_key(port: u16, proto: u8) -> ExposeKey {
    ExposeKey {
        port: ip::port_to_wire(port),
        proto,
        _pad: 0,
    }
}

impl Tables {
    /// Exposes `port`/`proto` of the node's address: balanced over `servip`'s
    /// slots, with `snat` (an address of this node's subnet) as the source
    /// backends see.
    pub fn put_exposed(
        &mut self,
        port: u16,
        proto: u8,
        servip: Ipv4Addr,
        snat: Ipv4Addr,
    ) -> Result<()> {
        let val = Exposed {
            servip: ip::to_wire(servip),
            snat: ip::to_wire(snat),
        };
        self.exposed
            .insert(expose_key(port, proto), val, 0)
            .map_err(map_err(&def::EXPOSED))
    }

    pub fn remove_exposed(&mut self, port: u16, proto: u8) -> Result<()> {
        ignore_missing(self.exposed.remove(&expose_key(port, proto)))
            .map_err(map_err(&def::EXPOSED))
    }

    /// (port, protocol) → (ServIP, SNAT address).
    pub fn exposed(&self) -> Vec<((u16, u8), (Ipv4Addr, Ipv4Addr))> {
        self.exposed
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                (
                    (ip::port_from_wire(k.port), k.proto),
                    (ip::from_wire(v.servip), ip::from_wire(v.snat)),
                )
            })
            .collect()
    }

    /// A gateway at `addr` may tunnel external clients' packets to the NSP;
    /// their replies go back to `addr:port`.
    pub fn put_gateway(&mut self, addr: Ipv4Addr, port: u16) -> Result<()> {
        let gw = tunnel_end(addr, port);
        self.gateways
            .insert(gw.ip, gw, 0)
            .map_err(map_err(&def::GATEWAYS))
    }

    pub fn remove_gateway(&mut self, addr: Ipv4Addr) -> Result<()> {
        ignore_missing(self.gateways.remove(&ip::to_wire(addr))).map_err(map_err(&def::GATEWAYS))
    }

    /// Gateway address → the port its replies go to.
    pub fn gateways(&self) -> Vec<(Ipv4Addr, u16)> {
        self.gateways
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, g)| (ip::from_wire(g.ip), ip::port_from_wire(g.port)))
            .collect()
    }
}
