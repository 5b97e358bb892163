//! TC ingress on the host side of each instance's veth: everything an
//! instance sends enters the overlay here.
//!
//! Source must be the instance's NamespaceIP. A ServIP destination is
//! translated to a backend (conntrack first, slot table for new flows); a
//! reply to a translated flow gets its ServIP back; then the packet goes into
//! a local instance (`bpf_redirect_peer`) or through the tunnel to its node.
//! Destinations outside the overlay go to the node's own stack, unless they
//! are infrastructure or unallocated overlay addresses (`guard`).

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use overlay_common::{
    events::Hook,
    maps::{Config, ServIp, ct, flow_cache::FROM_INSTANCE},
    stats::Reason,
};

use crate::events;
use crate::flow_cache;
use crate::forward::{self, Dest, send, too_big};
use crate::guard;
use crate::icmp;
use crate::layout::{IP_DST, L4_OFF, L4_SPORT};
use crate::maps::{ENDPOINTS, HOST_PREFIX, ROUTES, SERVIPS, config, count, log_due};
use crate::nat::{self, Reversed};
use crate::north_south;
use crate::packet::{self, Flow, L4};

#[classifier]
pub fn from_instance(ctx: TcContext) -> i32 {
    let done = match flow_cache::verdict(cached(ctx.skb.skb)) {
        Some(Ok(action)) => return action,
        Some(Err(reason)) => Err(reason),
        None => try_from_instance(&ctx),
    };
    finish(&ctx, done)
}

/// An established flow's packet sent as the flow cache says (counted), in
/// the form [`flow_cache::outcome`] gives. A function of its own: the full
/// path leaves too little stack for its lookups; it calls nothing, so that
/// its frame only ever adds to the entry's.
#[inline(never)]
fn cached(skb: *mut __sk_buff) -> i64 {
    let ctx = TcContext::new(skb);
    flow_cache::outcome(&ctx, flow_cache::from_instance(&ctx))
}

/// Counts what became of a packet (and reports a drop); its verdict.
#[inline(always)]
fn finish(ctx: &TcContext, done: Result<(i32, Reason), Reason>) -> i32 {
    match done {
        Ok((action, reason)) => {
            count(reason, ctx.len());
            events::drop_tc(ctx, Hook::FromInstance, reason);
            action
        }
        Err(reason) => {
            if matches!(reason, Reason::DropNoRoute | Reason::DropHelper) && log_due(reason) {
                // Never expected in a healthy node: worth a log line.
                aya_log_ebpf::warn!(ctx, "instance packet dropped: reason {}", reason as u32);
            }
            count(reason, ctx.len());
            events::drop_tc(ctx, Hook::FromInstance, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_from_instance(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let pass = Ok((TC_ACT_OK, Reason::Pass));
    packet::pull(ctx);
    let Some(ip) = packet::ipv4(ctx)? else {
        return pass;
    };
    let Some(cfg) = config() else {
        return pass;
    };
    // SAFETY: reading the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: values are copied out of the maps at once.
    let ep = unsafe { ENDPOINTS.get(ip.saddr) }.copied();
    let Some(ep) = ep.filter(|ep| ep.ifindex == ifindex) else {
        return Err(Reason::DropSpoofed);
    };
    // SAFETY: value copied out at once.
    if let Some(sv) = unsafe { SERVIPS.get(ip.daddr) }.copied() {
        let f = packet::flow(ctx, &ip, L4_OFF)?;
        return to_servip(ctx, cfg, f, &sv, ep.service);
    }
    let Some(dest) = lookup_dest(ip.daddr) else {
        return guard::leaving(ctx, &ip);
    };
    let mut f = packet::flow(ctx, &ip, L4_OFF)?;
    if let Some(refused) = guard::direct(ctx, &f, ep.service)? {
        return Ok(refused);
    }
    if let Some(answered) = too_big(ctx, cfg, &f, &dest)? {
        return Ok(answered);
    }
    if let Reversed::External { via } = nat::reverse_nat(ctx, &mut f, cfg.node_ip)? {
        return north_south::reply_out(ctx, cfg, &f, via);
    }
    if let (Dest::Local(ep), L4::Udp) = (&dest, f.l4) {
        guard::note_udp_call(f.saddr, f.daddr, guard::ports(&f), ep.service);
    }
    send(ctx, cfg, &f, dest)
}

/// Translates a packet to a ServIP (or an ICMP error about a flow to one)
/// to its backend and sends it there; refusals are answered with ICMP.
#[inline(always)]
fn to_servip(
    ctx: &TcContext,
    cfg: &Config,
    mut f: Flow,
    sv: &ServIp,
    src_service: u32,
) -> Result<(i32, Reason), Reason> {
    if f.l4 == L4::IcmpError {
        let e = nat::translate_icmp_error(ctx, &f, ct::FORWARD)?.ok_or(Reason::DropPort)?;
        f.daddr = e.nat_addr;
        return send(ctx, cfg, &f, forward::resolve(e.nat_addr, e.via, cfg)?);
    }
    let flags = nat::tcp_flags(ctx, &f)?;
    let t = match nat::choose_backend(&f, sv, src_service, cfg.node_id, flags) {
        Ok(t) => t,
        Err(r) => {
            // Refusals the client should hear about at once.
            let code = match r {
                Reason::DropPort => icmp::CODE_PORT_UNREACH,
                Reason::DropNoBackend => icmp::CODE_HOST_UNREACH,
                Reason::DropDenied => icmp::CODE_ADMIN_PROHIBITED,
                _ => return Err(r),
            };
            return Ok((icmp::reply_unreachable(ctx, f.proto, code, 0)?, r));
        }
    };
    let dest = forward::resolve(t.nsip, t.node, cfg)?;
    // Before the rewrite: the error must come from, and quote, the ServIP.
    if let Some(answered) = too_big(ctx, cfg, &f, &dest)? {
        return Ok(answered);
    }
    if t.confirmed {
        let port = if t.sport != f.sport { t.sport } else { 0 };
        // SAFETY: reading the program's own context (again: no stack to keep it).
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        flow_cache::remember(&f, FROM_INSTANCE, ifindex, t.nsip, port, &dest);
    }
    nat::rewrite_addr(ctx, f.l4, IP_DST, f.daddr, t.nsip)?;
    f.daddr = t.nsip;
    if t.sport != f.sport {
        nat::rewrite_port(ctx, f.l4, L4_SPORT, f.sport, t.sport)?;
        f.sport = t.sport;
    }
    send(ctx, cfg, &f, dest)
}

/// A local instance, or the node whose subnet holds `addr`.
#[inline(always)]
fn lookup_dest(addr: u32) -> Option<Dest> {
    // SAFETY: values copied out at once.
    if let Some(ep) = unsafe { ENDPOINTS.get(addr) } {
        return Some(Dest::Local(*ep));
    }
    ROUTES
        .get(Key::new(HOST_PREFIX, addr))
        .map(|node| Dest::Remote(*node))
}
