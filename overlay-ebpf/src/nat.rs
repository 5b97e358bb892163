//! Conntrack, backend choice and address translation.
//!
//! NAT state lives only on the client's node (as in Cilium): a new flow to a
//! ServIP writes a FORWARD entry (client → ServIP gives the backend) and a
//! REVERSE entry (backend → client gives the ServIP to restore). Nothing is
//! written per packet afterwards.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use overlay_common::{
    IPPROTO_ICMP,
    flow::choose_slot,
    maps::{CtEntry, CtKey, PortKey, ServIp, SlotKey, ct, policy},
    stats::Reason,
};

use crate::maps::{BACKENDS, CONNTRACK, SLOTS, SVC_PORTS, count};
use crate::packet::{Flow, IP_CSUM, IP_DST, IP_SRC, Ipv4, L4, L4_OFF, read};

/// Where a translated packet goes: a NamespaceIP on a node.
pub struct Target {
    pub nsip: u32,
    pub node: u32,
}

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn tracked(k: &CtKey, dir: u8) -> Option<CtEntry> {
    // SAFETY: the value is copied out at once; LRU entries may be evicted later.
    unsafe { CONNTRACK.get(k) }
        .copied()
        .filter(|e| e.dir == dir)
}

/// The backend of a flow to a ServIP: the tracked one, or a new choice from
/// the slot table (then both conntrack entries are written).
#[inline(always)]
pub fn backend(f: &Flow, sv: &ServIp, src_service: u32, local_node: u32) -> Result<Target, Reason> {
    let fwd = key(f.saddr, f.daddr, f.sport, f.dport, f.proto);
    if let Some(e) = touch(&fwd, ct::FORWARD) {
        return Ok(Target {
            nsip: e.addr,
            node: e.node,
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
        return Err(Reason::DropDenied);
    }
    if sv.count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let turn = match sv.policy {
        policy::ROUNDROBIN => crate::maps::next_turn(f.daddr),
        _ => 0,
    };
    let b = pick(f.daddr, sv, f.hash, turn)?;
    let seen = crate::maps::tick();
    let entry = |addr, node, dir| CtEntry {
        addr,
        node,
        service: sv.service,
        dir,
        _pad: 0,
        port: 0,
        seen,
    };
    let rev = key(b.nsip, f.saddr, f.dport, f.sport, f.proto);
    // Reverse first: a reply must never arrive before its translation exists.
    CONNTRACK
        .insert(rev, entry(f.daddr, local_node, ct::REVERSE), 0)
        .map_err(|_| Reason::DropHelper)?;
    CONNTRACK
        .insert(fwd, entry(b.nsip, b.node, ct::FORWARD), 0)
        .map_err(|_| Reason::DropHelper)?;
    count(Reason::NewFlow, 0);
    Ok(Target {
        nsip: b.nsip,
        node: b.node,
    })
}

/// The entry of an established flow in direction `dir`, with its `seen`
/// refreshed once per tick (that is how the agent counts active flows).
#[inline(always)]
pub fn touch(k: &CtKey, dir: u8) -> Option<CtEntry> {
    let e = CONNTRACK.get_ptr_mut(k)?;
    // SAFETY: valid for this run; a racing eviction at worst loses one refresh.
    unsafe {
        if (*e).dir != dir {
            return None;
        }
        let now = crate::maps::tick();
        if (*e).seen != now {
            (*e).seen = now;
        }
        Some(*e)
    }
}

/// The backend in the slot of `servip`'s live table that the policy picks
/// for a new flow (by `hash`, or by round-robin `turn`).
#[inline(always)]
pub fn pick(
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
    unsafe { BACKENDS.get(id) }
        .copied()
        .ok_or(Reason::DropNoRoute)
}

/// What [`reverse`] did to a packet.
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
pub fn reverse(ctx: &TcContext, f: &mut Flow, node_ip: u32) -> Result<Reversed, Reason> {
    if f.l4 == L4::IcmpError {
        if let Some(e) = icmp_error(ctx, f, ct::REVERSE)? {
            f.saddr = e.addr;
        }
        return Ok(Reversed::Overlay);
    }
    // SAFETY: the value is copied out at once.
    let Some(e) =
        (unsafe { CONNTRACK.get(key(f.saddr, f.daddr, f.sport, f.dport, f.proto)) }).copied()
    else {
        return Ok(Reversed::Overlay);
    };
    match e.dir {
        ct::REVERSE => {
            rewrite(ctx, f.l4, IP_SRC, f.saddr, e.addr)?;
            f.saddr = e.addr;
            Ok(Reversed::Overlay)
        }
        ct::NS_REVERSE => {
            rewrite(ctx, f.l4, IP_SRC, f.saddr, node_ip)?;
            rewrite(ctx, f.l4, IP_DST, f.daddr, e.addr)?;
            rewrite_port(ctx, f.l4, 2, f.dport, e.port)?;
            f.saddr = node_ip;
            f.daddr = e.addr;
            f.dport = e.port;
            Ok(Reversed::External { via: e.node })
        }
        _ => Ok(Reversed::Overlay),
    }
}

/// Rewrites the TCP/UDP port at `at` (0: source, 2: destination) with its checksum.
#[inline(always)]
pub fn rewrite_port(ctx: &TcContext, l4: L4, at: usize, old: u16, new: u16) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    let (csum_off, flags) = match l4 {
        L4::Tcp => (L4_OFF + 16, 0),
        L4::Udp => (L4_OFF + 6, BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    let h = |_| Reason::DropHelper;
    crate::packet::write(ctx, L4_OFF + at, &new)?;
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, (flags | 2) as u64)
        .map_err(h)
}

/// Rewrites the IPv4 address at `off` from `old` to `new`, fixing the IP
/// checksum and, for TCP and UDP, the pseudo-header part of the L4 checksum
/// (the kernel helpers keep CHECKSUM_PARTIAL packets consistent).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, l4: L4, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    let h = |_| Reason::DropHelper;
    crate::packet::write(ctx, off, &new)?;
    // The IP checksum is never offloaded: updated here, without a helper call.
    let check: u16 = read(ctx, IP_CSUM)?;
    crate::packet::write(ctx, IP_CSUM, &crate::packet::csum_replace4(check, old, new))?;
    let (csum_off, flags) = match l4 {
        L4::Tcp => (L4_OFF + 16, BPF_F_PSEUDO_HDR),
        L4::Udp => (L4_OFF + 6, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, (flags | 4) as u64)
        .map_err(h)
}

/// Offset of the packet an ICMP error quotes.
const QUOTE: usize = L4_OFF + 8;
const ICMP_CSUM: usize = L4_OFF + 2;

/// Translates an ICMP error that quotes a tracked flow: the quoted address
/// (and the outer one, when the error comes from / goes to that same address)
/// gets the entry's address. `dir` is the kind of entry to look for.
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, f: &Flow, dir: u8) -> Result<Option<CtEntry>, Reason> {
    let q: Ipv4 = read(ctx, QUOTE)?;
    if q.vihl != 0x45 {
        return Ok(None);
    }
    let ports: [u16; 4] = read(ctx, QUOTE + 20)?;
    let (qs, qd) = if q.proto == IPPROTO_ICMP {
        (ports[2], ports[2])
    } else {
        (ports[0], ports[1])
    };
    // The quoted packet went the other way: swap it into this direction's key.
    let Some(e) = tracked(&key(q.daddr, q.saddr, qd, qs, q.proto), dir) else {
        return Ok(None);
    };
    let (field, old, outer, outer_old) = if dir == ct::REVERSE {
        (QUOTE + 16, q.daddr, crate::packet::IP_SRC, f.saddr)
    } else {
        (QUOTE + 12, q.saddr, crate::packet::IP_DST, f.daddr)
    };
    let h = |_| Reason::DropHelper;
    crate::packet::write(ctx, field, &e.addr)?;
    let new_check = crate::packet::csum_replace4(q.check, old, e.addr);
    crate::packet::write(ctx, QUOTE + 10, &new_check)?;
    // The ICMP checksum covers the quote: both changed fields enter it.
    ctx.l4_csum_replace(ICMP_CSUM, old as u64, e.addr as u64, 4)
        .map_err(h)?;
    ctx.l4_csum_replace(ICMP_CSUM, q.check as u64, new_check as u64, 2)
        .map_err(h)?;
    if outer_old == old {
        rewrite(ctx, L4::IcmpError, outer, old, e.addr)?;
    }
    Ok(Some(e))
}
