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
    let gso = packet::gso_size(ctx);
    // Every path carries this much: no lookups for small packets.
    if gso == 0 && f.len <= pmtu::MIN_REPORTED - ENCAP_OVERHEAD {
        return Ok(None);
    }
    let limit = crate::pmtu::limit(cfg, id);
    let size = match gso {
        0 => u32::from(f.len),
        _ => segment_len(ctx, f, gso)?,
    };
    if size <= u32::from(limit) {
        return Ok(None);
    }
    let action = icmp::reply_unreachable(ctx, f.proto, icmp::CODE_FRAG_NEEDED, limit)?;
    Ok(Some((action, Reason::DropTooBig)))
}

/// The IPv4 length of each segment of a GSO packet of flow `f` with
/// `gso_size` bytes of payload per segment.
#[inline(always)]
fn segment_len(ctx: &TcContext, f: &Flow, gso_size: u32) -> Result<u32, Reason> {
    let l4 = match f.l4 {
        L4::Tcp => u32::from(read::<u8, _>(ctx, L4_OFF + TCP_HDR_DOFF)? >> 4) * 4,
        L4::Udp => UDP_HLEN as u32,
        _ => 0,
    };
    Ok(IPV4_HLEN as u32 + l4 + gso_size)
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
