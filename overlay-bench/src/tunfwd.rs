//! The Oakestra design, reduced to its data path: a TUN device in a node
//! namespace whose packets an [`overlay_testnet::tun::Forwarder`] sends,
//! bare, in UDP to the node that holds the destination's subnet (port
//! 50103); datagrams from known nodes go back into the device. What is
//! bench-specific is only that /24 next-hop table.

use std::net::{Ipv4Addr, SocketAddrV4};

use overlay_common::DEFAULT_EWP;
use overlay_testnet::Netns;
use overlay_testnet::tun::Forwarder;

pub use overlay_testnet::tun::check_available;

pub const TUN_NAME: &str = "tun0";

/// Creates [`TUN_NAME`] in `ns` and a UDP socket on `local`:50103, and
/// starts forwarding. `peers` maps each remote /24 to its node address; only
/// those nodes may inject packets. The caller brings the device up and
/// routes into it.
pub fn start(
    ns: &Netns,
    local: Ipv4Addr,
    peers: Vec<(Ipv4Addr, Ipv4Addr)>,
) -> anyhow::Result<Forwarder> {
    let nodes: Vec<Ipv4Addr> = peers.iter().map(|p| p.1).collect();
    let fwd = Forwarder::start(
        ns,
        TUN_NAME,
        SocketAddrV4::new(local, DEFAULT_EWP),
        move |packet| next_hop(packet, &peers).map(|node| SocketAddrV4::new(node, DEFAULT_EWP)),
        move |from| nodes.contains(from.ip()),
    )?;
    Ok(fwd)
}

/// The node that holds the destination's /24, for an IPv4 packet.
pub fn next_hop(packet: &[u8], peers: &[(Ipv4Addr, Ipv4Addr)]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], 0);
    peers.iter().find(|p| p.0 == dst).map(|p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hop_by_destination_subnet() {
        let peers = [(Ipv4Addr::new(10, 30, 2, 0), Ipv4Addr::new(192, 0, 2, 12))];
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[16..20].copy_from_slice(&[10, 30, 2, 2]);
        assert_eq!(
            next_hop(&packet, &peers),
            Some(Ipv4Addr::new(192, 0, 2, 12))
        );
        packet[18] = 3;
        assert_eq!(next_hop(&packet, &peers), None, "unknown subnet");
        packet[18] = 2;
        packet[0] = 0x60;
        assert_eq!(next_hop(&packet, &peers), None, "not IPv4");
        assert_eq!(next_hop(&packet[..19], &peers), None, "truncated");
    }
}
