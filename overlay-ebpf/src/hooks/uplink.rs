//! TC ingress on the uplink: tunnel packets from registered nodes are
//! decapsulated, replies get their ServIP back, and the inner packet is
//! delivered into its instance. RTT probes from registered nodes pass up to
//! the agent. Packets to an exposed port of the node, and those a registered
//! gateway tunnels to the node's NSP, go to `nodeport`.
//! Everything else passes untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use overlay_common::{IPPROTO_UDP, PROBE_MARK, stats::Reason};

use crate::maps::{ENDPOINTS, PEERS, config, count, stranger};
use crate::nat;
use crate::nodeport;
use crate::packet::{self, IP_OFF, Ipv4, L4_OFF, read};
use crate::tunnel;

/// The inner IPv4 header and its L4 header, before decapsulation.
const INNER_IP: usize = L4_OFF + 8;
const INNER_L4: usize = INNER_IP + 20;

#[classifier]
pub fn uplink(ctx: TcContext) -> i32 {
    match try_uplink(&ctx) {
        Ok(Some((action, reason))) => {
            count(reason, ctx.len());
            action
        }
        // Not a tunnel packet: the node's own traffic, not counted.
        Ok(None) => TC_ACT_OK,
        Err(reason) => {
            count(reason, ctx.len());
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_uplink(ctx: &TcContext) -> Result<Option<(i32, Reason)>, Reason> {
    packet::pull(ctx);
    let (Some(cfg), Ok(Some(ip))) = (config(), packet::ipv4(ctx, IP_OFF)) else {
        return Ok(None);
    };
    if ip.daddr != cfg.node_ip || ip.vihl != 0x45 {
        return Ok(None);
    }
    let Ok(udp) = read::<[u16; 4]>(ctx, L4_OFF) else {
        return Ok(None);
    };
    let nsp = udp[1] == cfg.nsp && cfg.nsp != 0;
    if ip.proto != IPPROTO_UDP || (udp[1] != cfg.ewp && !nsp) {
        // Not a tunnel: an exposed service's port, or the node's own traffic.
        return nodeport::inbound(ctx, cfg, &ip, 0);
    }
    // From here on the packet is addressed to a tunnel port: it is ours to judge.
    if u16::from_be(ip.frag) & 0x3fff != 0 {
        return Err(Reason::DropFragment);
    }
    if nsp {
        return nodeport::tunnelled(ctx, cfg, &ip).map(Some);
    }
    // SAFETY: presence check only.
    if unsafe { PEERS.get(ip.saddr) }.is_none() {
        return Err(stranger(ctx, Reason::DropUnknownPeer, ip.saddr));
    }
    if read::<u8>(ctx, INNER_IP)? == PROBE_MARK {
        return Ok(Some((TC_ACT_OK, Reason::Probe)));
    }
    let inner: Ipv4 = read(ctx, INNER_IP)?;
    if inner.vihl >> 4 != 4 || inner.vihl & 0xf < 5 {
        return Err(Reason::DropMalformed);
    }
    let mut f = packet::flow(ctx, &inner, INNER_L4)?;
    tunnel::decap(ctx)?;
    if let nat::Reversed::External { via } = nat::reverse(ctx, &mut f, cfg.node_ip)? {
        return nodeport::outbound(ctx, cfg, &f, via).map(Some);
    }
    // SAFETY: value copied out at once.
    let ep = unsafe { ENDPOINTS.get(f.daddr) }
        .copied()
        .ok_or(Reason::DropNoEndpoint)?;
    Ok(Some((tunnel::to_endpoint(ctx, &ep)?, Reason::Decap)))
}
