//! Forwarding inside the overlay: into a local instance, or through the
//! tunnel to the node that runs the destination.

use aya_ebpf::programs::TcContext;
use overlay_common::{
    maps::{Config, Endpoint},
    stats::Reason,
};

use crate::deliver;
use crate::icmp;
use crate::maps::{ENDPOINTS, NODES};
use crate::packet::{self, Flow};
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

/// A packet for the tunnel that exceeds the overlay MTU: with DF the sender
/// gets ICMP fragmentation needed (its answer is returned), without DF it is
/// dropped. GSO super-packets are segmented later and always fit.
#[inline(always)]
pub fn too_big(
    ctx: &TcContext,
    cfg: &Config,
    f: &Flow,
    dest: &Dest,
) -> Result<Option<(i32, Reason)>, Reason> {
    if matches!(dest, Dest::Local(_)) || f.len <= cfg.mtu || packet::is_gso(ctx) {
        return Ok(None);
    }
    if !f.df {
        return Err(Reason::DropTooBig);
    }
    let action = icmp::reply_unreachable(ctx, f.proto, icmp::CODE_FRAG_NEEDED, cfg.mtu)?;
    Ok(Some((action, Reason::DropTooBig)))
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
