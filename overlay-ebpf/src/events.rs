//! Events for `overlay-ctl monitor` (layout, slots and rate limit:
//! `overlay_common::events`).
//!
//! The hooks call in at three places: a hook's exit with a drop reason, a
//! new flow's backend choice, and a denied new flow. What the hooks inline
//! is a comparison (is the verdict a drop) and, for a drop, one lookup of
//! `MONITOR` (does any monitor run). Everything else is out of line, in BPF
//! functions with at most three arguments and a small frame, which read
//! what they can from the maps rather than take it as arguments: the
//! from-instance program has no stack to spare, and every value a caller
//! keeps across a call costs it a slot. The event is built in the per-CPU
//! `EVENT` map, then copied into the ring buffer of every open slot whose
//! token bucket has credit (charged before the event is built).

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    maps::RingBuf,
    programs::{TcContext, XdpContext},
};
use overlay_common::{
    ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP,
    events::{Event, Hook, Kind, MONITORS, Monitors, take_credit},
    maps::CtKey,
    stats::Reason,
};

use crate::layout::{ETH_PROTO, IP_OFF, Ipv4, Ports};
use crate::maps::{
    CT_NEW, EVENT, EVENTS_0, EVENTS_1, EVENTS_2, EVENTS_3, LIMITER, MONITOR, NSIP_SERVICES, SERVIPS,
};
use crate::packet::{Flow, Packet, read};

/// Whether a hook's verdict `reason` is a drop the hook reports itself
/// (a denied flow is reported where it is refused, with its services).
#[inline(always)]
fn reported(reason: Reason) -> bool {
    reason as u32 >= Reason::DropMalformed as u32 && reason != Reason::DropDenied
}

/// Whether any monitor was switched on (one array lookup).
#[inline(always)]
fn monitoring() -> bool {
    MONITOR.get(0).is_some_and(Monitors::any)
}

/// Reports a TC program's drop, if `reason` is one and a monitor runs.
#[inline(always)]
pub fn drop_tc(ctx: &TcContext, hook: Hook, reason: Reason) {
    if reported(reason) && monitoring() {
        dropped_tc(ctx.skb.skb, hook as u32, reason as u32);
    }
}

/// Reports an XDP program's drop, if a monitor runs.
#[inline(always)]
pub fn drop_xdp(ctx: &XdpContext, reason: Reason) {
    if reported(reason) && monitoring() {
        dropped_xdp(ctx.ctx, reason as u32);
    }
}

#[inline(never)]
fn dropped_tc(skb: *mut __sk_buff, hook: u32, reason: u32) {
    let ctx = TcContext::new(skb);
    if let Some((ev, ready)) = start() {
        ev.len = ctx.len();
        dropped(&ctx, ev, hook, reason);
        send(ev, ready);
    }
}

#[inline(never)]
fn dropped_xdp(md: *mut xdp_md, reason: u32) {
    let ctx = XdpContext::new(md);
    if let Some((ev, ready)) = start() {
        ev.len = (ctx.data_end() - ctx.data()) as u32;
        dropped(&ctx, ev, Hook::UplinkXdp as u32, reason);
        send(ev, ready);
    }
}

/// Fills a drop event from the packet's own headers: what the program
/// dropped, as it was then.
#[inline(always)]
fn dropped<P: Packet>(ctx: &P, ev: &mut Event, hook: u32, reason: u32) {
    ev.kind = Kind::Drop as u8;
    ev.hook = hook as u8;
    ev.reason = reason;
    let ipv4 = read::<u16, _>(ctx, ETH_PROTO).is_ok_and(|p| p == ETH_P_IP.to_be());
    let Some(ip) = ipv4.then(|| read::<Ipv4, _>(ctx, IP_OFF).ok()).flatten() else {
        return;
    };
    ev.saddr = ip.saddr;
    ev.daddr = ip.daddr;
    ev.proto = ip.proto;
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return;
    }
    // The header's own length: a drop for IP options has them.
    let l4 = IP_OFF + (ip.vihl & 0xf) as usize * 4;
    if let Ok(p) = read::<Ports, _>(ctx, l4) {
        ev.sport = p.sport;
        ev.dport = p.dport;
    }
}

/// A flow's addresses as one scalar argument.
#[inline(always)]
pub fn addrs(f: &Flow) -> u64 {
    (u64::from(f.saddr) << 32) | u64::from(f.daddr)
}

/// A flow's ports and protocol as one scalar argument.
#[inline(always)]
pub fn ports(f: &Flow) -> u64 {
    (u64::from(f.sport) << 48) | (u64::from(f.dport) << 32) | u64::from(f.proto)
}

/// Reports the new flow whose forward conntrack entry was just written
/// under `fwd`. Everything else is read from the maps here, only while a
/// monitor runs: the caller keeps nothing alive across the call.
#[inline(never)]
pub fn new_flow(fwd: &CtKey) {
    let Some((ev, ready)) = start() else {
        return;
    };
    let k = *fwd;
    flow_event(ev, Kind::NewFlow, pack(k.saddr, k.daddr), ports_of(&k));
    ev.reason = Reason::NewFlow as u32;
    // SAFETY: values copied out at once.
    if let Some(e) = unsafe { CT_NEW.get(k) } {
        ev.backend = e.nat_addr;
        ev.node = e.via;
    }
    send(ev, ready);
}

/// Reports a new flow (`addrs`, `ports`: the packers above) that the
/// sender's `needs` refused.
#[inline(never)]
pub fn denied(addrs: u64, ports: u64) {
    if let Some((ev, ready)) = start() {
        flow_event(ev, Kind::Denied, addrs, ports);
        ev.reason = Reason::DropDenied as u32;
        send(ev, ready);
    }
}

#[inline(always)]
fn pack(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

#[inline(always)]
fn ports_of(k: &CtKey) -> u64 {
    (u64::from(k.sport) << 48) | (u64::from(k.dport) << 32) | u64::from(k.proto)
}

/// Fills a flow's event; the services and the policy come from the maps
/// (the sender's from its NamespaceIP; the destination's from its ServIP
/// or, for a flow straight to an instance, its NamespaceIP).
#[inline(always)]
fn flow_event(ev: &mut Event, kind: Kind, addrs: u64, ports: u64) {
    ev.kind = kind as u8;
    ev.hook = Hook::FromInstance as u8;
    ev.saddr = (addrs >> 32) as u32;
    ev.daddr = addrs as u32;
    ev.sport = (ports >> 48) as u16;
    ev.dport = (ports >> 32) as u16;
    ev.proto = ports as u8;
    // SAFETY: values copied out at once.
    unsafe {
        if let Some(s) = NSIP_SERVICES.get(ev.saddr) {
            ev.src_service = *s;
        }
        if let Some(sv) = SERVIPS.get(ev.daddr) {
            ev.dst_service = sv.service;
            ev.policy = sv.policy;
        } else if let Some(s) = NSIP_SERVICES.get(ev.daddr) {
            ev.dst_service = *s;
        }
    }
}

/// The clock, for the deadlines and the buckets.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() }
}

/// When a monitor runs and its bucket has credit: this CPU's cleared
/// event (dated) and the slots to send it to (bit per slot). The buckets
/// are charged here, before the event is built, so that an event over the
/// rate costs no more than the lookups of its slot.
#[inline(always)]
fn start() -> Option<(&'static mut Event, u32)> {
    let all = MONITOR.get(0)?;
    // No clock read while every switch is off (never set, or closed).
    if !all.any() {
        return None;
    }
    let now = now_ns();
    let mut ready = 0;
    let mut i = 0;
    while i < MONITORS {
        if charge(all, i, now) {
            ready |= 1 << i;
        }
        i += 1;
    }
    if ready == 0 {
        return None;
    }
    // SAFETY: this CPU's own slot, valid for this program run.
    let ev = unsafe { &mut *EVENT.get_ptr_mut(0)? };
    *ev = Event {
        time_ns: now,
        ..Event::default()
    };
    Some((ev, ready))
}

/// Whether slot `slot` is open and its bucket on this CPU pays for an
/// event (else the event is counted as suppressed there).
#[inline(always)]
fn charge(all: &Monitors, slot: u32, now: u64) -> bool {
    let Some(m) = all.slots.get(slot as usize).filter(|m| now < m.deadline_ns) else {
        return false;
    };
    let Some(lim) = LIMITER.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's own bucket, valid for this program run.
    let lim = unsafe { &mut *lim };
    if take_credit(lim, m, now) {
        return true;
    }
    lim.suppressed += 1;
    false
}

/// Copies `ev` into the ring of every slot in `ready`.
#[inline(always)]
fn send(ev: &Event, ready: u32) {
    to_slot(0, &EVENTS_0, ev, ready);
    to_slot(1, &EVENTS_1, ev, ready);
    to_slot(2, &EVENTS_2, ev, ready);
    to_slot(3, &EVENTS_3, ev, ready);
}

#[inline(always)]
fn to_slot(slot: u32, ring: &RingBuf, ev: &Event, ready: u32) {
    if ready & (1 << slot) == 0 || ring.output::<Event>(ev, 0).is_ok() {
        return;
    }
    // A full ring: its reader is behind.
    if let Some(lim) = LIMITER.get_ptr_mut(slot) {
        // SAFETY: this CPU's own bucket, valid for this program run.
        unsafe { (*lim).suppressed += 1 };
    }
}
