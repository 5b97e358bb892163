//! Path MTU toward the other nodes: ICMP fragmentation needed from an
//! underlay router about one of our tunnel packets lowers the MTU toward
//! its destination (`PATH_MTU`); `limit` is what an instance's packet to a
//! node must fit (`forward::too_big`). The rules are `overlay_common::pmtu`.

use aya_ebpf::programs::TcContext;
use overlay_common::{IPPROTO_UDP, maps::Config, pmtu};

use crate::icmp::CODE_FRAG_NEEDED;
use crate::layout::{ICMP_DEST_UNREACH, Icmp, Ipv4, L4_OFF, QUOTE};
use crate::maps::{NODES, PATH_MTU, PEERS, tick};
use crate::packet::read;

/// Records what ICMP `ctx` (to this node) reports, if it is fragmentation
/// needed about a tunnel packet this node sent to a registered node address.
/// Whatever the answer, the kernel gets the ICMP message as before.
#[inline(always)]
pub fn learn(ctx: &TcContext, cfg: &Config) {
    let Ok(icmp) = read::<Icmp, _>(ctx, L4_OFF) else {
        return;
    };
    if icmp.kind != ICMP_DEST_UNREACH || icmp.code != CODE_FRAG_NEEDED {
        return;
    }
    let Ok(quoted) = read::<Ipv4, _>(ctx, QUOTE) else {
        return;
    };
    // Ours: from this node, UDP, to an address a node receives tunnel packets at.
    // SAFETY: presence check only.
    let to_node = unsafe { PEERS.get(quoted.daddr) }.is_some();
    if quoted.saddr != cfg.node_ip || quoted.proto != IPPROTO_UDP || !to_node {
        return;
    }
    let now = tick();
    // SAFETY: value copied out at once.
    let old = unsafe { PATH_MTU.get(quoted.daddr) }.copied();
    let uplink = cfg.mtu.saturating_add(overlay_common::ENCAP_OVERHEAD);
    if let Some(new) = pmtu::accept(old.as_ref(), u16::from_be(icmp.mtu), uplink, now)
        && PATH_MTU.insert(quoted.daddr, new, 0).is_ok()
    {
        // Decisions cached with the old MTU are ended.
        crate::flow_cache::changed();
    }
}

/// The overlay MTU toward node `id`: its `NODES` entry's, lowered by a
/// report about its address still in force.
#[inline(always)]
pub fn limit(cfg: &Config, id: u32) -> u16 {
    // SAFETY: value copied out at once.
    let Some(node) = (unsafe { NODES.get(id) }).copied() else {
        return cfg.mtu;
    };
    // SAFETY: value copied out at once.
    let report = unsafe { PATH_MTU.get(node.ip) }.copied();
    pmtu::overlay_mtu(cfg.mtu, node.mtu, report.as_ref(), tick())
}
