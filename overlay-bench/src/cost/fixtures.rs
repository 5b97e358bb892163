//! The node the costs are measured on: addresses, namespace, tables, and the packets it is fed.

use std::net::Ipv4Addr;

use anyhow::bail;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use overlay_common::maps::{Config, CtEntry, CtKey, Endpoint, ip};
use overlay_common::policy::Policy;
use overlay_common::registry::def;
use overlay_common::{DEFAULT_EWP, IPPROTO_TCP};
use overlay_ctl::dataplane::{Dataplane, programs};
use overlay_testnet::Netns;

/// Node ids as the agent derives them (the subnet's /24 number), so that the
/// tunnel's sender binding takes the path it takes in a cluster.
const NODE_ID: u32 = 0x0a_1e_01;
pub(super) const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub(super) const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const PEER_ID: u32 = 0x0a_1e_02;
pub(super) const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
pub(super) const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
pub(super) const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const MTU: u16 = 1472;
/// Loopback: every namespace has it, so a test run may claim a packet came in on it.
pub(super) const LO: u32 = 1;

pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 2);
pub(super) const CLIENT_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 1, 2];
pub(super) const CLIENT_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 1, 2];
pub(super) const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 3);
/// The local backend's MACs, as `configure` gives its endpoint.
pub(super) const LOCAL_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 1, 3];
pub(super) const LOCAL_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 1, 3];
pub(super) const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 5);
pub(super) const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
pub(super) const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const SERVICE_REMOTE: u32 = 42;
const SERVICE_LOCAL: u32 = 43;
pub(super) const PORT: u16 = 80;
/// Source port of the established flows; new flows use others.
pub(super) const CLIENT_PORT: u16 = 40000;
pub(super) const NEW_FLOW_PORTS: std::ops::Range<u16> = 1024..39_000;
/// Payload of the measured TCP segments.
const PAYLOAD: [u8; 64] = [0x5a; 64];
/// An address outside the overlay.
pub(super) const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

fn wire(a: Ipv4Addr) -> u32 {
    ip::to_wire(a)
}

pub(super) fn eth(src: [u8; 6], dst: [u8; 6], ip_packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip_packet.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

/// An IPv4 header as Linux writes it (DF, TTL 64).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, 64, IpNumber(proto), src.octets(), dst.octets())
        .expect("a valid header");
    h.identification = 0x1234;
    h
}

/// A TCP ACK with 64 bytes of data.
pub(super) fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        ipv4(src, dst, IPPROTO_TCP),
        Default::default(),
    ))
    .tcp(sport, dport, 1000, 64240)
    .ack(1)
    .write(&mut out, &PAYLOAD)
    .expect("a buildable packet");
    out
}

/// `frame` (Ethernet + IPv4 + TCP) with another source port, the TCP
/// checksum updated incrementally (RFC 1624).
pub(super) fn with_sport(frame: &mut [u8], sport: u16) {
    const SPORT: usize = 14 + 20;
    const CSUM: usize = SPORT + 16;
    let old = u16::from_be_bytes([frame[SPORT], frame[SPORT + 1]]);
    let csum = u16::from_be_bytes([frame[CSUM], frame[CSUM + 1]]);
    let mut sum = (!csum as u32) + (!old as u32) + sport as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[SPORT..SPORT + 2].copy_from_slice(&sport.to_be_bytes());
    frame[CSUM..CSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A tunnel packet from `from` to this node's EWP carrying `inner` (no UDP checksum).
pub(super) fn tunnel(from: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        ipv4(from, NODE_IP, overlay_common::IPPROTO_UDP),
        Default::default(),
    ))
    .udp(49999, DEFAULT_EWP)
    .write(&mut out, inner)
    .expect("a buildable packet");
    out[26..28].copy_from_slice(&[0, 0]);
    eth(PEER_MAC, UPLINK_MAC, &out)
}

/// The namespace standing in for the node: `up0` with the node address and
/// a permanent neighbour entry for the peer, forwarding on.
pub(super) fn uplink_ns() -> anyhow::Result<(Netns, u32)> {
    let ns = Netns::new("cost")?;
    ns.disable_ipv6()?;
    let mac = crate::topo::fmt_mac(&UPLINK_MAC);
    ns.ip([
        "link", "add", "up0", "address", &mac, "type", "veth", "peer", "name", "up0p",
    ])?;
    ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"])?;
    ns.ip(["link", "set", "up0", "up"])?;
    ns.ip(["link", "set", "up0p", "up"])?;
    let peer = crate::topo::fmt_mac(&PEER_MAC);
    ns.ip([
        "neigh",
        "add",
        &PEER_IP.to_string(),
        "lladdr",
        &peer,
        "dev",
        "up0",
        "nud",
        "permanent",
    ])?;
    ns.set_sysctl("net.ipv4.conf.all.forwarding", "1")?;
    let (ifindex, _) = crate::topo::link(&ns, "up0")?;
    Ok((ns, ifindex))
}

/// The node's tables: a client, a local backend, a remote backend on the
/// peer node, and one ServIP for each backend (TCP 80).
pub(super) fn configure(dp: &mut Dataplane, uplink_ifindex: u32) -> anyhow::Result<()> {
    let t = &mut dp.tables;
    t.set_config(&Config {
        node_id: NODE_ID,
        node_ip: wire(NODE_IP),
        uplink_ifindex,
        ewp: ip::port_to_wire(DEFAULT_EWP),
        mtu: MTU,
        nsp: ip::port_to_wire(overlay_common::DEFAULT_NSP),
        _pad: 0,
    })?;
    let endpoint = |service, last: u8| Endpoint {
        ifindex: LO,
        service,
        instance: last as u32,
        mac: [0x02, 0xaa, 0, 0, 1, last],
        host_mac: [0x02, 0xbb, 0, 0, 1, last],
    };
    t.put_endpoint(CLIENT, &endpoint(7, 2))?;
    t.put_endpoint(LOCAL, &endpoint(SERVICE_LOCAL, 3))?;
    t.put_node(PEER_ID, PEER_IP, DEFAULT_EWP, 0)?;
    t.put_route(Ipv4Addr::new(10, 30, 2, 0), 24, PEER_ID)?;
    for (vip, service, backend, node) in [
        (VIP_REMOTE, SERVICE_REMOTE, REMOTE, PEER_ID),
        (VIP_LOCAL, SERVICE_LOCAL, LOCAL, NODE_ID),
    ] {
        let id = u32::from(backend);
        t.put_port(service, PORT, IPPROTO_TCP)?;
        t.put_backend(id, backend, node)?;
        t.put_servip(vip, service, Policy::Roundrobin, &[id])?;
    }
    Ok(())
}

/// The conntrack maps of `dp` (confirmed flows, then new ones), opened by
/// id (the `Tables` API does not delete entries one by one).
pub(super) fn conntrack_map(
    dp: &mut Dataplane,
) -> anyhow::Result<Vec<BpfHashMap<MapData, CtKey, CtEntry>>> {
    let info = dp.classifier(programs::FROM_INSTANCE)?.info()?;
    let mut out = Vec::new();
    for name in [def::CONNTRACK.name, def::CT_NEW.name] {
        let id = info
            .map_ids()?
            .unwrap_or_default()
            .into_iter()
            .find(|&id| MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(name)));
        let Some(id) = id else {
            bail!("the from_instance program uses no {name} map")
        };
        let map = Map::from_map_data(MapData::from_id(id)?)?;
        out.push(BpfHashMap::try_from(map)?);
    }
    Ok(out)
}

/// Deletes the conntrack entries of the new flows with these source ports
/// (both directions, as `from_instance` writes them).
pub(super) fn clear_new_flows(
    maps: &mut [BpfHashMap<MapData, CtKey, CtEntry>],
    sports: std::ops::Range<u16>,
) {
    let port = |p: u16| ip::port_to_wire(p);
    for sport in sports {
        let fwd = CtKey {
            saddr: wire(CLIENT),
            daddr: wire(VIP_REMOTE),
            sport: port(sport),
            dport: port(PORT),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let rev = CtKey {
            saddr: wire(REMOTE),
            daddr: wire(CLIENT),
            sport: port(PORT),
            dport: port(sport),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        for ct in maps.iter_mut() {
            let _ = ct.remove(&fwd);
            let _ = ct.remove(&rev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_sport_update_keeps_the_checksum_valid() {
        let mut f = eth(
            CLIENT_MAC,
            CLIENT_HOST_MAC,
            &tcp(CLIENT, 40000, VIP_REMOTE, 80),
        );
        for p in [1024, 65535, 0, 40001] {
            with_sport(&mut f, p);
            let want = eth(CLIENT_MAC, CLIENT_HOST_MAC, &tcp(CLIENT, p, VIP_REMOTE, 80));
            assert_eq!(f, want, "sport {p}");
        }
    }
}
