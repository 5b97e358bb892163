//! Ports the node itself listens on. An exposed port takes every packet to
//! the node's address and port before the node's stack sees it, so a port
//! with a local listener (sshd on 22, say) is not exposed on this node, and
//! the conflict is reported (`node ls`, the agent's log).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use overlay_common::{IPPROTO_TCP, IPPROTO_UDP};

/// TCP sockets in LISTEN, in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";
/// UDP sockets bound but not connected, in `/proc/net/udp`.
const UDP_UNCONNECTED: &str = "07";

/// (port, protocol) of the sockets listening on `node_ip` or on every
/// address, in the agent's network namespace (the node's).
pub fn busy(node_ip: Ipv4Addr) -> BTreeSet<(u16, u8)> {
    let mut out = BTreeSet::new();
    for (file, state, proto) in [
        ("/proc/net/tcp", TCP_LISTEN, IPPROTO_TCP),
        ("/proc/net/udp", UDP_UNCONNECTED, IPPROTO_UDP),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        out.extend(
            parse(&text, state, node_ip)
                .into_iter()
                .map(|port| (port, proto)),
        );
    }
    out
}

/// Local ports of the table's sockets in `state` on `node_ip` or 0.0.0.0.
fn parse(table: &str, state: &str, node_ip: Ipv4Addr) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            let (addr, port) = local.split_once(':')?;
            // The address is printed as the kernel's u32 in host order.
            let addr = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_le_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            (st == state && (addr.is_unspecified() || addr == node_ip)).then_some(port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_of_the_node_are_found() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0B0200C0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0B0200C0:A1B2 0C0200C0:0050 01 00000000:00000000 00:00000000 00000000     0        0 4 1
";
        let node = Ipv4Addr::new(192, 0, 2, 11);
        assert_eq!(parse(table, TCP_LISTEN, node), [22, 8080]);
    }
}
