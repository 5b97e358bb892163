//! Forwarding inside the overlay: into a local instance, or through the
//! tunnel to the node that runs the destination.

use aya_ebpf::programs::TcContext;
use overlay_common::{
    ENCAP_OVERHEAD,
    maps::{Config, Endpoint},
    pmtu,
    stats::Reason,
};

use crate::deliver;
use crate::icmp;
use crate::layout::{IPV4_HLEN, L4_OFF, TCP_HDR_DOFF, UDP_HLEN};
use crate::maps::{ENDPOINTS, NODES};
use crate::packet::{self, Flow, L4, read};
use crate::tunnel;

/// Where a packet is headed inside the overlay.
pub enum Dest {
    Local(Endpoint),
    Remote(u32),
}

/// The destination of NamespaceIP `nsip` on node `node`: this node's
/// instance, or the other node.
#[inline(always)]
pub fn resolve(nsip: u32, node: u32, cfg: &Config) -> Result<Dest, Reason> {
    if node != cfg.node_id {
        return Ok(Dest::Remote(node));
    }
    // SAFETY: value copied out at once.
    let ep = unsafe { ENDPOINTS.get(nsip) }
        .copied()
        .ok_or(Reason::DropNoEndpoint)?;
    Ok(Dest::Local(ep))
}

/// A packet for the tunnel that exceeds the path MTU toward its node
/// (`pmtu::limit`): the sender gets ICMP fragmentation needed with that MTU
/// (its answer is returned). Without DF too: such a packet could only be
/// lost (the far node drops fragments of tunnel packets), and the sender's
/// kernel takes the MTU all the same and fragments to fit. A GSO
/// super-packet is judged by the size of its segments.
#[inline(always)]
pub fn too_big(
    ctx: &TcContext,
    cfg: &Config,
    f: &Flow,
    dest: &Dest,
) -> Result<Option<(i32, Reason)>, Reason> {
    let Dest::Remote(id) = *dest else {
        return Ok(None);
    };
    let limit = limit_exceeded(ctx, cfg, f, id);
    if limit == 0 {
        return Ok(None);
    }
    let action = icmp::reply_unreachable(ctx, f.proto, icmp::CODE_FRAG_NEEDED, limit)?;
    Ok(Some((action, Reason::DropTooBig)))
}

/// The path MTU toward node `id` if `f` exceeds it, else 0.
#[inline(always)]
pub fn limit_exceeded(ctx: &TcContext, cfg: &Config, f: &Flow, id: u32) -> u16 {
    // Every path carries this much: no lookups for small packets.
    if !may_exceed(ctx, f) {
        return 0;
    }
    exceeded(ctx, cfg, f, id)
}

/// The path MTU toward node `id` if `f` (each segment of a GSO packet)
/// exceeds it, else 0. Out of line: the from-instance program's stack is
/// at its limit, and this only runs for large packets.
#[inline(never)]
fn exceeded(ctx: &TcContext, cfg: &Config, f: &Flow, id: u32) -> u16 {
    let limit = crate::pmtu::limit(cfg, id);
    if wire_size(ctx, f) > u32::from(limit) {
        limit
    } else {
        0
    }
}

/// What must fit the path: the IPv4 packet `f`, or each segment of a GSO
/// super-packet (0 when its TCP header cannot be read: nothing to judge).
#[inline(always)]
pub fn wire_size(ctx: &TcContext, f: &Flow) -> u32 {
    let gso = packet::gso_size(ctx);
    match (gso, f.l4) {
        (0, _) => u32::from(f.len),
        (_, L4::Tcp) => match read::<u8, _>(ctx, L4_OFF + TCP_HDR_DOFF) {
            Ok(doff) => IPV4_HLEN as u32 + u32::from(doff >> 4) * 4 + gso,
            Err(_) => 0,
        },
        (_, L4::Udp) => (IPV4_HLEN + UDP_HLEN) as u32 + gso,
        _ => IPV4_HLEN as u32 + gso,
    }
}

/// Whether `f` may be larger than every path carries (so that its size
/// must be judged): a GSO super-packet, or more than the smallest MTU.
#[inline(always)]
pub fn may_exceed(ctx: &TcContext, f: &Flow) -> bool {
    packet::is_gso(ctx) || f.len > pmtu::MIN_REPORTED - ENCAP_OVERHEAD
}

/// Sends `f` to `dest`: delivered locally, or encapsulated toward its node.
#[inline(always)]
pub fn send(ctx: &TcContext, cfg: &Config, f: &Flow, dest: Dest) -> Result<(i32, Reason), Reason> {
    match dest {
        Dest::Local(ep) => Ok((deliver::to_instance(ctx, &ep)?, Reason::DeliverLocal)),
        // Never tunnel to ourselves: an address of our own subnet with no instance.
        Dest::Remote(id) if id == cfg.node_id => Err(Reason::DropNoEndpoint),
        Dest::Remote(id) => {
            // SAFETY: value copied out at once.
            let node = unsafe { NODES.get(id) }
                .copied()
                .ok_or(Reason::DropNoRoute)?;
            Ok((tunnel::encap(ctx, cfg, &node, f)?, Reason::Encap))
        }
    }
}
