//! The isolation maps' desired contents: the infrastructure instances may
//! not reach (`INFRA`) and the overlay's address space (`OVERLAY_NETS`).
//! The programs consult both only off the established fast path (see the
//! eBPF crate's `guard` and `docs/isolation.md`).

use std::net::{Ipv4Addr, SocketAddrV4};

use overlay_common::IPPROTO_TCP;
use overlay_common::IPPROTO_UDP;
use overlay_common::maps::infra::{ALLOW_DNS, ALLOW_ECHO, INSTANCES_ONLY};

use super::MapSet;
use super::validate::Pools;

/// What the node knows of the infrastructure besides the cluster state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Infra {
    /// This node's own addresses (the uplink's and any other interface's).
    pub own: Vec<Ipv4Addr>,
    /// The instances' gateway: the name service's address, which also
    /// answers pings. It stays reachable for those two, from instances only.
    pub gateway: Option<Ipv4Addr>,
    /// The store's client endpoints.
    pub store: Vec<SocketAddrV4>,
    /// The NSP. The cluster state does not carry other nodes' NSP: this
    /// node's stands for all of them (nodes share one configuration).
    pub nsp: u16,
}

/// Fills `m.infra` from the nodes already in `m` and from `infra`.
pub fn infrastructure(m: &mut MapSet, infra: &Infra) {
    m.infra.clear();
    for a in &infra.own {
        m.infra.insert((*a, 0, 0), 0);
    }
    if let Some(gw) = infra.gateway {
        m.infra
            .insert((gw, 0, 0), ALLOW_DNS | ALLOW_ECHO | INSTANCES_ONLY);
    }
    for (addr, ewp, _) in m.nodes.values() {
        m.infra.insert((*addr, *ewp, IPPROTO_UDP), 0);
        if infra.nsp != 0 {
            m.infra.insert((*addr, infra.nsp, IPPROTO_UDP), 0);
        }
    }
    for s in &infra.store {
        m.infra.insert((*s.ip(), s.port(), IPPROTO_TCP), 0);
    }
}

/// Fills `m.overlay_nets`: the pools and every node subnet `m` routes to.
pub fn overlay_nets(m: &mut MapSet, pools: &Pools) {
    m.overlay_nets.clear();
    for p in [pools.services, pools.subnets] {
        m.overlay_nets.insert((p.addr, p.prefix as u32));
    }
    for &net in m.routes.keys() {
        m.overlay_nets.insert(net);
    }
}

/// The endpoints of a store list (`http://10.0.0.1:2379,https://name:2379`):
/// those given by address, and the `host:port` of those given by name (for
/// the caller to resolve).
pub fn store_endpoints(list: &str) -> (Vec<SocketAddrV4>, Vec<String>) {
    let (mut addrs, mut names) = (Vec::new(), Vec::new());
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let hostport = e.split_once("://").map_or(e, |(_, rest)| rest);
        let hostport = hostport.split('/').next().unwrap_or(hostport);
        match hostport.parse::<SocketAddrV4>() {
            Ok(sa) => addrs.push(sa),
            Err(_) => names.push(hostport.to_string()),
        }
    }
    addrs.sort();
    addrs.dedup();
    (addrs, names)
}

/// The IPv4 addresses on this node's interfaces (loopback's 127/8 left out:
/// an instance's own loopback shadows it).
pub fn own_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list `getifaddrs` returned.
        let ifa = unsafe { &*cur };
        // SAFETY: an `AF_INET` address is a `sockaddr_in`.
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            // SAFETY: checked to be `AF_INET` just above.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let a = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !a.is_loopback() {
                out.push(a);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list `getifaddrs` allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

/// Leaves out of `m.exposed` the ports the node itself listens on
/// (`busy`: port, protocol), each reported as a failure of the table.
pub fn local_listeners(m: &mut MapSet, busy: &std::collections::BTreeSet<(u16, u8)>) {
    let taken: Vec<(u16, u8)> = m
        .exposed
        .keys()
        .filter(|k| busy.contains(k))
        .copied()
        .collect();
    for (port, proto) in taken {
        m.exposed.remove(&(port, proto));
        let name = if proto == IPPROTO_TCP { "tcp" } else { "udp" };
        m.refused.push(super::Failure {
            table: "exposed",
            key: format!("{port}/{name}"),
            error: "this node listens on the port itself: not exposed here".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_endpoints_take_addresses_with_or_without_scheme() {
        let got = store_endpoints(
            "http://192.0.2.1:2379, https://192.0.2.2:2380/,192.0.2.1:2379,https://etcd.lan:2379",
        );
        let want: Vec<SocketAddrV4> = vec![
            "192.0.2.1:2379".parse().unwrap(),
            "192.0.2.2:2380".parse().unwrap(),
        ];
        assert_eq!(got, (want, vec!["etcd.lan:2379".to_string()]));
    }

    #[test]
    fn infrastructure_covers_nodes_store_and_own_addresses() {
        let mut m = MapSet::default();
        m.nodes
            .insert(1, (Ipv4Addr::new(192, 0, 2, 11), 50103, 1472));
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let infra = Infra {
            own: vec![Ipv4Addr::new(192, 0, 2, 11), gw],
            gateway: Some(gw),
            store: vec!["192.0.2.100:2379".parse().unwrap()],
            nsp: 50104,
        };
        infrastructure(&mut m, &infra);
        let node = Ipv4Addr::new(192, 0, 2, 11);
        assert_eq!(m.infra.get(&(node, 0, 0)), Some(&0));
        let gw_allows = ALLOW_DNS | ALLOW_ECHO | INSTANCES_ONLY;
        assert_eq!(m.infra.get(&(gw, 0, 0)), Some(&gw_allows));
        assert!(m.infra.contains_key(&(node, 50103, IPPROTO_UDP)));
        assert!(m.infra.contains_key(&(node, 50104, IPPROTO_UDP)));
        assert!(
            m.infra
                .contains_key(&(Ipv4Addr::new(192, 0, 2, 100), 2379, IPPROTO_TCP))
        );
    }
}
