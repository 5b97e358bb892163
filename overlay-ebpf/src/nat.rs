//! Conntrack, backend choice and address translation.
//!
//! NAT state lives only on the client's node (as in Cilium): a new flow to a
//! ServIP writes a FORWARD entry (client → ServIP gives the backend) and a
//! REVERSE entry (backend → client gives the ServIP to restore), both in
//! `CT_NEW`, an LRU of flows without a reply. The first reply confirms the
//! flow (TCP: the first after the SYN-ACK, so a completed handshake): both entries move to `CONNTRACK`, a hash map that never evicts, so a
//! flood of new flows cannot push an established one out; when it is full,
//! the reply is dropped (`drop_ct_full`) and the flow is not established.
//! Per packet afterwards: `seen` once per tick, `state` once on FIN/RST.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    programs::TcContext,
};
use overlay_common::{
    IPPROTO_ICMP,
    flow::choose_slot,
    maps::{CtEntry, CtKey, PortKey, ServIp, SlotKey, ct},
    policy::Policy,
    stats::Reason,
};

use crate::csum::csum_replace4;
use crate::events;
use crate::layout::{
    ICMP_CSUM, IP_CSUM, IP_DST, IP_SRC, Ipv4, L4_DPORT, L4_OFF, L4Head, QUOTE, QUOTE_CSUM,
    QUOTE_DST, QUOTE_L4, QUOTE_SRC, TCP_CSUM, TCP_FIN, TCP_HDR_FLAGS, TCP_RST, TCP_SYN, UDP_CSUM,
};

/// `-EEXIST` from a map update with `BPF_NOEXIST`.
const EEXIST: i32 = 17;
use crate::maps::{BACKENDS, CONNTRACK, CT_NEW, SLOTS, SVC_PORTS, count};
use crate::packet::{Flow, L4, read, write};

/// The low bits of `bpf_l4_csum_replace`'s flags: the size of the changed field.
const FIELD_U16: u32 = 2;
const FIELD_U32: u32 = 4;

/// Where a translated packet goes: a NamespaceIP on a node, from the
/// client's port `sport` (translated when the reply tuple was taken).
pub struct Target {
    pub nsip: u32,
    pub node: u32,
    pub sport: u16,
    /// Of a confirmed flow (its decision may be cached).
    pub confirmed: bool,
}

/// Tries for a free source port when a new flow's reply tuple is taken.
const PORT_TRIES: u32 = 4;

/// The conntrack key of a 5-tuple.
#[inline(always)]
pub fn ct_key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// The conntrack entry under `k` (confirmed flows first), if it is of
/// direction `dir`.
#[inline(always)]
pub fn lookup_ct(k: &CtKey, dir: u8) -> Option<CtEntry> {
    // SAFETY: the value is copied out at once; LRU entries may be evicted later.
    unsafe { CONNTRACK.get(k).or_else(|| CT_NEW.get(k)) }
        .copied()
        .filter(|e| e.dir == dir)
}

/// A TCP segment's flags (0 for other protocols).
#[inline(always)]
pub fn tcp_flags(ctx: &TcContext, f: &Flow) -> Result<u8, Reason> {
    if f.l4 == L4::Tcp {
        read::<u8, _>(ctx, L4_OFF + TCP_HDR_FLAGS)
    } else {
        Ok(0)
    }
}

/// Whether TCP `flags` end a flow (FIN or RST).
#[inline(always)]
fn closing(flags: u8) -> bool {
    flags & (TCP_FIN | TCP_RST) != 0
}

/// The backend of a flow to a ServIP: the tracked one, or a new choice from
/// the slot table (then both conntrack entries are written).
#[inline(always)]
pub fn choose_backend(
    f: &Flow,
    sv: &ServIp,
    src_service: u32,
    local_node: u32,
    flags: u8,
) -> Result<Target, Reason> {
    let fwd = ct_key(f.saddr, f.daddr, f.sport, f.dport, f.proto);
    if let Some((e, confirmed)) = refresh_ct(&fwd, Some(ct::FORWARD), flags, true) {
        return Ok(Target {
            nsip: e.nat_addr,
            node: e.via,
            sport: if e.nat_port != 0 { e.nat_port } else { f.sport },
            confirmed,
        });
    }
    let port = match f.l4 {
        L4::Tcp | L4::Udp => f.dport,
        L4::Echo => 0,
        _ => return Err(Reason::DropPort),
    };
    let pk = PortKey {
        service: sv.service,
        port,
        proto: f.proto,
        _pad: 0,
    };
    // SAFETY: presence check only.
    if unsafe { SVC_PORTS.get(pk) }.is_none() {
        return Err(Reason::DropPort);
    }
    if !crate::maps::allowed(src_service, sv.service) {
        crate::maps::count_denied(src_service);
        events::denied(events::addrs(f), events::ports(f));
        return Err(Reason::DropDenied);
    }
    if sv.count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let turn = if sv.policy == Policy::Roundrobin.code() {
        crate::maps::next_turn(f.daddr)
    } else {
        0
    };
    let b = pick_backend(f.daddr, sv, f.hash, turn)?;
    let sport = reply_port(f, b.nsip)?;
    let seen = crate::maps::tick();
    let entry = |addr, node, dir, port| CtEntry {
        nat_addr: addr,
        via: node,
        service: sv.service,
        dir,
        state: ct::OPEN,
        nat_port: port,
        seen,
    };
    // A translated port is kept in both entries: the forward one writes it,
    // the reverse one writes the client's own back.
    let (fwd_port, rev_port) = if sport == f.sport {
        (0, 0)
    } else {
        (sport, f.sport)
    };
    let rev = ct_key(b.nsip, f.saddr, f.dport, sport, f.proto);
    // Reverse first: a reply must never arrive before its translation exists.
    CT_NEW
        .insert(rev, entry(f.daddr, local_node, ct::REVERSE, rev_port), 0)
        .map_err(|_| Reason::DropHelper)?;
    CT_NEW
        .insert(fwd, entry(b.nsip, b.node, ct::FORWARD, fwd_port), 0)
        .map_err(|_| Reason::DropHelper)?;
    // Its replies (tunnelled from the backend's node) must now be
    // translated: a decision cached for that tuple as an untranslated
    // delivery (a direct flow's) goes.
    if b.node != local_node {
        crate::flow_cache::forget_reply(&rev);
    }
    count(Reason::NewFlow, 0);
    crate::maps::count_new_flow(sv.service);
    events::new_flow(&fwd);
    Ok(Target {
        nsip: b.nsip,
        node: b.node,
        sport,
        confirmed: false,
    })
}

/// The client port a new flow to `backend` uses: its own, unless another
/// tracked flow of the same client (to another ServIP of that backend)
/// already has the reply tuple; then a port derived from the flow's hash,
/// as the north-south path does. ICMP echo ids are not translated: the new
/// flow takes the tuple over.
#[inline(always)]
fn reply_port(f: &Flow, backend: u32) -> Result<u16, Reason> {
    let taken = |port: u16| {
        lookup_ct(
            &ct_key(backend, f.saddr, f.dport, port, f.proto),
            ct::REVERSE,
        )
        .is_some_and(|e| e.nat_addr != f.daddr)
    };
    if !taken(f.sport) {
        return Ok(f.sport);
    }
    if f.l4 != L4::Tcp && f.l4 != L4::Udp {
        let rev = ct_key(backend, f.saddr, f.dport, f.sport, f.proto);
        let _ = CONNTRACK.remove(rev);
        return Ok(f.sport);
    }
    let mut i = 0;
    while i < PORT_TRIES {
        let port = (0x8000 | (f.hash >> (i * 8)) as u16 & 0x7fff).to_be();
        if !taken(port) {
            return Ok(port);
        }
        i += 1;
    }
    Err(Reason::DropNoRoute)
}

/// The entry of a tracked flow (of direction `dir`, if given), with its
/// `seen` refreshed once per tick if `touch` (that is how the agent counts
/// active flows and ages flows out) and a FIN or RST in TCP `flags`
/// recorded; and whether the flow is confirmed (in `CONNTRACK`).
#[inline(always)]
pub fn refresh_ct(k: &CtKey, dir: Option<u8>, flags: u8, touch: bool) -> Option<(CtEntry, bool)> {
    let (e, confirmed) = match CONNTRACK.get_ptr_mut(k) {
        Some(e) => (e, true),
        None => (CT_NEW.get_ptr_mut(k)?, false),
    };
    // SAFETY: valid for this run; a racing eviction at worst loses one refresh.
    unsafe {
        if dir.is_some_and(|d| (*e).dir != d) {
            return None;
        }
        if touch {
            let now = crate::maps::tick();
            if (*e).seen != now {
                (*e).seen = now;
            }
        }
        if closing(flags) && (*e).state & ct::CLOSING == 0 {
            (*e).state |= ct::CLOSING;
        }
        Some((*e, confirmed))
    }
}

/// Confirms a new flow at its first reply (`rev`, `e`: the reply's reverse
/// entry in `CT_NEW`): both entries move to `CONNTRACK`. A full table drops
/// the reply (`drop_ct_full`): established flows are never evicted for it.
#[inline(always)]
fn confirm(rev: &CtKey, e: &CtEntry, node_ip: u32) -> Result<(), Reason> {
    let fwd = ct::forward_key(rev, e, node_ip);
    // SAFETY: copied out at once.
    let Some(fe) = (unsafe { CT_NEW.get(fwd) }).copied() else {
        // Its forward entry was evicted by newer flows: the client's next
        // packet starts over; this reply still translates.
        return Ok(());
    };
    let added = |k: &CtKey, v: &CtEntry| match CONNTRACK.insert(k, v, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        // Another CPU confirmed it first.
        Err(e) if e == -EEXIST => Ok(()),
        Err(_) => Err(Reason::DropCtFull),
    };
    added(&fwd, &fe)?;
    if let Err(r) = added(rev, e) {
        let _ = CONNTRACK.remove(fwd);
        return Err(r);
    }
    let _ = CT_NEW.remove(fwd);
    let _ = CT_NEW.remove(rev);
    Ok(())
}

/// The backend in the slot of `servip`'s live table that the policy picks
/// for a new flow (by `hash`, or by round-robin `turn`).
#[inline(always)]
pub fn pick_backend(
    servip: u32,
    sv: &ServIp,
    hash: u32,
    turn: u32,
) -> Result<overlay_common::maps::Backend, Reason> {
    let index = choose_slot(sv.policy, hash, turn, sv.count as u32);
    let slot = SlotKey::new(servip, sv.table, index);
    // SAFETY: values copied out at once.
    let id = unsafe { SLOTS.get(slot) }
        .copied()
        .ok_or(Reason::DropNoRoute)?;
    // SAFETY: value copied out at once.
    unsafe { BACKENDS.get(id) }
        .copied()
        .ok_or(Reason::DropNoRoute)
}

/// What [`reverse_nat`] did to a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reversed {
    /// Not a tracked reply (or an east-west one, now carrying its ServIP):
    /// deliver toward its destination in the overlay.
    Overlay,
    /// A backend's reply to an external client (north-south): now from the
    /// node's address to the client, to be routed out of the node, or
    /// tunnelled to the gateway `via` (0: none) it came through.
    External { via: u32 },
}

/// Restores the ServIP as source of a reply (backend → client), if tracked.
#[inline(always)]
pub fn reverse_nat(ctx: &TcContext, f: &mut Flow, node_ip: u32) -> Result<Reversed, Reason> {
    if f.l4 == L4::IcmpError {
        if let Some(e) = translate_icmp_error(ctx, f, ct::REVERSE)? {
            f.saddr = e.nat_addr;
        }
        return Ok(Reversed::Overlay);
    }
    let key = ct_key(f.saddr, f.daddr, f.sport, f.dport, f.proto);
    let flags = tcp_flags(ctx, f)?;
    // A TCP flow's client acknowledges what it gets (the forward entry
    // stays fresh); other protocols may only receive, so replies count too.
    let tcp = f.l4 == L4::Tcp;
    let Some((e, confirmed)) = refresh_ct(&key, None, flags, !tcp) else {
        return Ok(Reversed::Overlay);
    };
    // The first reply confirms a flow; for TCP the first one after the
    // SYN-ACK, which the backend sends only once the client acknowledged it
    // (a spoofed SYN's sender never does).
    let answered = !tcp || flags & TCP_SYN == 0;
    if !confirmed && answered && (e.dir == ct::REVERSE || e.dir == ct::NS_REVERSE) {
        confirm(&key, &e, node_ip)?;
    }
    match e.dir {
        ct::REVERSE => {
            rewrite_addr(ctx, f.l4, IP_SRC, f.saddr, e.nat_addr)?;
            f.saddr = e.nat_addr;
            if e.nat_port != 0 {
                rewrite_port(ctx, f.l4, L4_DPORT, f.dport, e.nat_port)?;
                f.dport = e.nat_port;
            }
            Ok(Reversed::Overlay)
        }
        ct::NS_REVERSE => {
            rewrite_addr(ctx, f.l4, IP_SRC, f.saddr, node_ip)?;
            rewrite_addr(ctx, f.l4, IP_DST, f.daddr, e.nat_addr)?;
            rewrite_port(ctx, f.l4, L4_DPORT, f.dport, e.nat_port)?;
            f.saddr = node_ip;
            f.daddr = e.nat_addr;
            f.dport = e.nat_port;
            Ok(Reversed::External { via: e.via })
        }
        _ => Ok(Reversed::Overlay),
    }
}

/// Rewrites the TCP/UDP port at `off` (`L4_SPORT` or `L4_DPORT`) with its checksum.
#[inline(always)]
pub fn rewrite_port(ctx: &TcContext, l4: L4, off: usize, old: u16, new: u16) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    let (csum_off, flags) = match l4 {
        L4::Tcp => (TCP_CSUM, 0),
        L4::Udp => (UDP_CSUM, BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    let h = |_| Reason::DropHelper;
    write(ctx, off, &new)?;
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, (flags | FIELD_U16) as u64)
        .map_err(h)
}

/// Rewrites the IPv4 address at `off` from `old` to `new`, fixing the IP
/// checksum and, for TCP and UDP, the pseudo-header part of the L4 checksum
/// (the kernel helpers keep CHECKSUM_PARTIAL packets consistent).
#[inline(always)]
pub fn rewrite_addr(ctx: &TcContext, l4: L4, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    let h = |_| Reason::DropHelper;
    write(ctx, off, &new)?;
    // The IP checksum is never offloaded: updated here, without a helper call.
    let check: u16 = read(ctx, IP_CSUM)?;
    write(ctx, IP_CSUM, &csum_replace4(check, old, new))?;
    let (csum_off, flags) = match l4 {
        L4::Tcp => (TCP_CSUM, BPF_F_PSEUDO_HDR),
        L4::Udp => (UDP_CSUM, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, (flags | FIELD_U32) as u64)
        .map_err(h)
}

/// Translates an ICMP error that quotes a tracked flow: the quoted address
/// (and the outer one, when the error comes from / goes to that same address)
/// gets the entry's address. `dir` is the kind of entry to look for.
#[inline(always)]
pub fn translate_icmp_error(ctx: &TcContext, f: &Flow, dir: u8) -> Result<Option<CtEntry>, Reason> {
    let q: Ipv4 = read(ctx, QUOTE)?;
    if !q.is_plain() {
        return Ok(None);
    }
    let l4: L4Head = read(ctx, QUOTE_L4)?;
    let (qs, qd) = if q.proto == IPPROTO_ICMP {
        (l4.echo_id(), l4.echo_id())
    } else {
        l4.ports()
    };
    // The quoted packet went the other way: swap it into this direction's key.
    let Some(e) = lookup_ct(&ct_key(q.daddr, q.saddr, qd, qs, q.proto), dir) else {
        return Ok(None);
    };
    let (field, old, outer, outer_old) = if dir == ct::REVERSE {
        (QUOTE_DST, q.daddr, IP_SRC, f.saddr)
    } else {
        (QUOTE_SRC, q.saddr, IP_DST, f.daddr)
    };
    let h = |_| Reason::DropHelper;
    write(ctx, field, &e.nat_addr)?;
    let new_check = csum_replace4(q.check, old, e.nat_addr);
    write(ctx, QUOTE_CSUM, &new_check)?;
    // The ICMP checksum covers the quote: both changed fields enter it.
    ctx.l4_csum_replace(ICMP_CSUM, old as u64, e.nat_addr as u64, FIELD_U32 as u64)
        .map_err(h)?;
    ctx.l4_csum_replace(
        ICMP_CSUM,
        q.check as u64,
        new_check as u64,
        FIELD_U16 as u64,
    )
    .map_err(h)?;
    if outer_old == old {
        rewrite_addr(ctx, L4::IcmpError, outer, old, e.nat_addr)?;
    }
    Ok(Some(e))
}
