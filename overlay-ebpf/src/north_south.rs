//! North-south: external clients reach an exposed service at a port of any
//! node's own address. The node balances with the service's closest ServIP,
//! rewrites the destination to the backend and the source to an address of
//! its own subnet (so replies come back through it, also from other nodes),
//! and keeps both directions in conntrack.
//!
//! Clients may also come through a registered gateway that tunnels their
//! packets to the node's NSP (same framing as the EWP, the inner packet
//! addressed to the node's exposed port); their replies are tunnelled back to
//! that gateway instead of being routed out.

use aya_ebpf::programs::TcContext;
use overlay_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    maps::{Config, CtEntry, CtKey, ExposeKey, Exposed, ct},
    stats::Reason,
};

use crate::forward::{self, send, too_big};
use crate::layout::{IP_DST, IP_SRC, Ipv4, L4_OFF, L4_SPORT, Ports};
use crate::maps::{CT_NEW, EXPOSED, GATEWAYS, SERVIPS, count};
use crate::nat::{self, ct_key, lookup_ct};
use crate::nexthop;
use crate::packet::{self, Flow, read};
use crate::tunnel;

/// Tries for a free source port on the SNAT address before giving up.
const PORT_TRIES: u32 = 4;

/// Handles an unfragmented packet a registered gateway tunnelled to the
/// node's NSP (`outer` is its outer IPv4 header): only exposed ports.
#[inline(always)]
pub fn decap_from_gateway(
    ctx: &TcContext,
    cfg: &Config,
    outer: &Ipv4,
) -> Result<(i32, Reason), Reason> {
    tunnel::decap(ctx)?;
    let inner = packet::ipv4(ctx)?.ok_or(Reason::DropMalformed)?;
    tunnel::check_inner(tunnel::Port::Nsp, 0, inner.saddr, outer.saddr)?;
    if inner.daddr != cfg.node_ip {
        return Err(Reason::DropPort);
    }
    count(Reason::GatewayIn, 0);
    forward_in(ctx, cfg, &inner, outer.saddr)?.ok_or(Reason::DropPort)
}

/// Sends a backend's reply, already translated back, to its external client:
/// routed out of the node, or tunnelled to the gateway `via` (0: none).
#[inline(always)]
pub fn reply_out(
    ctx: &TcContext,
    cfg: &Config,
    f: &Flow,
    via: u32,
) -> Result<(i32, Reason), Reason> {
    if via == 0 {
        return Ok((
            nexthop::route_out(ctx, cfg, f.daddr)?,
            Reason::NorthSouthOut,
        ));
    }
    // SAFETY: value copied out at once.
    let gw = unsafe { GATEWAYS.get(via) }
        .copied()
        .ok_or(Reason::DropUnknownGateway)?;
    Ok((tunnel::encap(ctx, cfg, &gw, f)?, Reason::GatewayOut))
}

/// Handles a packet to the node's address: `None` when its port is not
/// exposed. `via` is the gateway that tunnelled it (0: none).
#[inline(always)]
pub fn forward_in(
    ctx: &TcContext,
    cfg: &Config,
    ip: &Ipv4,
    via: u32,
) -> Result<Option<(i32, Reason)>, Reason> {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(None);
    }
    let Ok(ports) = read::<Ports, _>(ctx, L4_OFF) else {
        return Ok(None);
    };
    let k = ExposeKey {
        port: ports.dport,
        proto: ip.proto,
        _pad: 0,
    };
    // SAFETY: value copied out at once.
    let Some(exp) = (unsafe { EXPOSED.get(k) }).copied() else {
        return Ok(None);
    };
    let f = packet::flow(ctx, ip, L4_OFF)?;
    let fwd = ct_key(f.saddr, f.daddr, f.sport, f.dport, f.proto);
    let flags = nat::tcp_flags(ctx, &f)?;
    let (backend, node, sport) = match nat::refresh_ct(&fwd, Some(ct::NS_FORWARD), flags, true) {
        Some((e, _)) => (e.nat_addr, e.via, e.nat_port),
        None => open_flow(&f, &exp, &fwd, via)?,
    };
    let dest = forward::resolve(backend, node, cfg)?;
    if let Some(answered) = too_big(ctx, cfg, &f, &dest)? {
        return Ok(Some(answered));
    }
    nat::rewrite_addr(ctx, f.l4, IP_DST, f.daddr, backend)?;
    nat::rewrite_addr(ctx, f.l4, IP_SRC, f.saddr, exp.snat)?;
    nat::rewrite_port(ctx, f.l4, L4_SPORT, f.sport, sport)?;
    count(Reason::NorthSouthIn, 0);
    send(ctx, cfg, &f, dest).map(Some)
}

/// Chooses a backend and a source port, and writes both conntrack entries.
#[inline(always)]
fn open_flow(f: &Flow, exp: &Exposed, fwd: &CtKey, via: u32) -> Result<(u32, u32, u16), Reason> {
    // SAFETY: value copied out at once.
    let sv = unsafe { SERVIPS.get(exp.servip) }
        .copied()
        .ok_or(Reason::DropNoBackend)?;
    if sv.count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let b = nat::pick_backend(exp.servip, &sv, f.hash, 0)?;
    // Keep the client's port unless another client already holds it toward
    // this backend; then try ports derived from the flow hash.
    let mut port = f.sport;
    let mut free = false;
    let mut i = 0;
    while i < PORT_TRIES {
        let rev = ct_key(b.nsip, exp.snat, f.dport, port, f.proto);
        free = lookup_ct(&rev, ct::NS_REVERSE)
            .is_none_or(|e| e.nat_addr == f.saddr && e.nat_port == f.sport);
        if free {
            break;
        }
        port = (0x8000 | (f.hash >> (i * 8)) as u16 & 0x7fff).to_be();
        i += 1;
    }
    if !free {
        return Err(Reason::DropNoRoute);
    }
    let entry = |addr, port, via, dir| CtEntry {
        nat_addr: addr,
        via,
        service: sv.service,
        dir,
        state: ct::OPEN,
        nat_port: port,
        seen: crate::maps::tick(),
    };
    let rev = ct_key(b.nsip, exp.snat, f.dport, port, f.proto);
    CT_NEW
        .insert(rev, entry(f.saddr, f.sport, via, ct::NS_REVERSE), 0)
        .map_err(|_| Reason::DropHelper)?;
    CT_NEW
        .insert(fwd, entry(b.nsip, port, b.node, ct::NS_FORWARD), 0)
        .map_err(|_| Reason::DropHelper)?;
    count(Reason::NewFlow, 0);
    crate::maps::count_new_flow(sv.service);
    Ok((b.nsip, b.node, port))
}
