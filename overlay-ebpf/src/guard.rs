//! Isolation at the overlay's edges. Besides `direct` (one byte read for a
//! packet straight to a NamespaceIP), the checks run only for packets that
//! leave the overlay (an instance's packet to an address no instance or node
//! subnet holds) or arrive on the uplink for someone other than the node.
//!
//! * Instances cannot touch the infrastructure (`INFRA`): nodes' tunnel
//!   ports, the store's endpoints and the node's own addresses (but DNS and
//!   pings to the instances' gateway) are answered with ICMP
//!   administratively prohibited.
//! * Nothing leaves through the node's default route for the overlay's own
//!   address space (`OVERLAY_NETS`): an unknown ServIP or a subnet no node
//!   holds is answered with ICMP host unreachable.
//! * `needs` hold for connections to NamespaceIPs too (`direct`), UDP
//!   included (`note_udp` remembers what a restricted instance may answer).
//! * Outsiders reach the overlay only through the front door: a packet on
//!   the uplink to an overlay address (not to the node's own) is dropped,
//!   whatever routes its sender has.

use aya_ebpf::{bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use overlay_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    maps::{Config, CtKey, Endpoint, InfraKey, infra},
    stats::Reason,
};

use crate::events;
use crate::icmp;
use crate::layout::{ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED};
use crate::layout::{IP_OFF, Icmp, Ipv4, L4_OFF, Ports, TCP_ACK, TCP_HDR_FLAGS, TCP_SYN};
use crate::maps::{
    HOST_PREFIX, INFRA, NSIP_SERVICES, OVERLAY_NETS, UDP_PEERS, allowed, count_denied, restricted,
};
use crate::packet::{Flow, L4, read};

/// The DNS port, network order.
const DNS_PORT: u16 = 53u16.to_be();

/// Judges an instance's packet to `ip.daddr`, an address outside the
/// overlay's instances and node subnets: passed to the node's stack (then
/// masqueraded), or refused with an ICMP error to the instance.
#[inline(always)]
pub fn leaving(ctx: &TcContext, ip: &Ipv4) -> Result<(i32, Reason), Reason> {
    let refusal = if to_infrastructure(ctx, ip)? {
        (icmp::CODE_ADMIN_PROHIBITED, Reason::DropInfra)
    } else if in_overlay(ip.daddr) {
        (icmp::CODE_HOST_UNREACH, Reason::DropUnallocated)
    } else {
        return Ok((TC_ACT_OK, Reason::Pass));
    };
    let (code, reason) = refusal;
    // No error about an error (RFC 1122), and a quote needs a plain header.
    if !ip.is_plain() || ip.is_later_fragment() || is_icmp_error(ctx, ip)? {
        return Err(reason);
    }
    Ok((icmp::reply_unreachable(ctx, ip.proto, code, 0)?, reason))
}

/// A new connection (TCP SYN), ping or UDP datagram from an instance of
/// `src_service` straight to an instance's NamespaceIP: the sender's `needs`
/// must allow the destination's service, as for a ServIP (else ICMP
/// administratively prohibited, `drop_denied`). Judged at the sender;
/// replies (a SYN-ACK, an echo reply, ICMP errors) and established segments
/// pass after reading one byte, and a UDP datagram passes as a reply when
/// its peer's datagram to it was delivered here (`note_udp`). Senders that
/// `needs` do not limit pass after one or two lookups.
#[inline(always)]
pub fn direct(
    ctx: &TcContext,
    f: &Flow,
    src_service: u32,
) -> Result<Option<(i32, Reason)>, Reason> {
    let opens = match f.l4 {
        L4::Tcp => read::<u8, _>(ctx, L4_OFF + TCP_HDR_FLAGS)? & (TCP_SYN | TCP_ACK) == TCP_SYN,
        L4::Echo => read::<Icmp, _>(ctx, L4_OFF)?.kind == ICMP_ECHO,
        L4::Udp => true,
        _ => false,
    };
    if !opens || !restricted(src_service) {
        return Ok(None);
    }
    // SAFETY: value copied out at once.
    let Some(dst_service) = unsafe { NSIP_SERVICES.get(f.daddr) }.copied() else {
        // Not an instance: a node's north-south address.
        return Ok(None);
    };
    if allowed(src_service, dst_service) || (f.l4 == L4::Udp && answers(f)) {
        return Ok(None);
    }
    count_denied(src_service);
    events::denied(events::addrs(f), events::ports(f));
    let action = icmp::reply_unreachable(ctx, f.proto, icmp::CODE_ADMIN_PROHIBITED, 0)?;
    Ok(Some((action, Reason::DropDenied)))
}

/// A UDP datagram from an instance, delivered to the local instance `ep`:
/// when `ep`'s `needs` do not allow the sender's service, its replies would
/// be refused as new flows, so the datagram is remembered (`UDP_PEERS`,
/// an LRU) and they pass as replies. Only restricted services pay for more
/// than one or two lookups. Inlined (the uplink's decapsulation path).
#[inline(always)]
pub fn note_udp(f: &Flow, ep: &Endpoint) {
    if f.l4 == L4::Udp {
        note_udp_datagram(f.saddr, f.daddr, ports(f), ep.service);
    }
}

/// [`note_udp`] as a BPF function call with four scalar arguments, for
/// `from_instance`: inlined there, LLVM's code for the program no longer
/// passed the verifier (a spilled register it had not written); and
/// called from the uplink, a fifth argument arrived as a map pointer.
#[inline(never)]
pub fn note_udp_call(saddr: u32, daddr: u32, ports: u32, service: u32) {
    note_udp_datagram(saddr, daddr, ports, service)
}

/// A flow's ports as one scalar: source in the high half.
#[inline(always)]
pub fn ports(f: &Flow) -> u32 {
    (u32::from(f.sport) << 16) | u32::from(f.dport)
}

#[inline(always)]
fn note_udp_datagram(saddr: u32, daddr: u32, ports: u32, service: u32) {
    if !restricted(service) {
        return;
    }
    // SAFETY: value copied out at once.
    let Some(src_service) = unsafe { NSIP_SERVICES.get(saddr) }.copied() else {
        return;
    };
    if allowed(service, src_service) {
        return;
    }
    let seen = CtKey {
        saddr,
        daddr,
        sport: (ports >> 16) as u16,
        dport: ports as u16,
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    // A full LRU evicts its oldest entry; failure leaves the reply refused.
    let _ = UDP_PEERS.insert(seen, 1, 0);
}

/// Whether a UDP datagram answers one delivered here (`note_udp`).
#[inline(always)]
fn answers(f: &Flow) -> bool {
    let asked = CtKey {
        saddr: f.daddr,
        daddr: f.saddr,
        sport: f.dport,
        dport: f.sport,
        proto: f.proto,
        _pad: [0; 3],
    };
    // SAFETY: presence check only.
    unsafe { UDP_PEERS.get(asked) }.is_some()
}

/// Judges an uplink packet that is not addressed to the node itself (or
/// whose header has options): one for an overlay address is an outsider's
/// way around exposure, and one for the instances' gateway a way to the name
/// service: both dropped; the rest is the node's to route.
#[inline(always)]
pub fn arriving(cfg: &Config, ip: &Ipv4) -> Result<(), Reason> {
    if ip.daddr == cfg.node_ip {
        return Ok(());
    }
    // SAFETY: value copied out at once.
    let own = unsafe { INFRA.get(key(ip.daddr, 0, 0)) }.copied();
    if in_overlay(ip.daddr) || own.is_some_and(|allow| allow & infra::INSTANCES_ONLY != 0) {
        return Err(Reason::DropOutsider);
    }
    Ok(())
}

/// Whether an address belongs to the overlay's address space.
#[inline(always)]
pub fn in_overlay(addr: u32) -> bool {
    OVERLAY_NETS.get(Key::new(HOST_PREFIX, addr)).is_some()
}

/// Whether an instance's packet goes to the infrastructure: one of its
/// services (`INFRA` with port and protocol), or one of the node's own
/// addresses beyond what that address allows.
#[inline(always)]
fn to_infrastructure(ctx: &TcContext, ip: &Ipv4) -> Result<bool, Reason> {
    // Options move the L4 header (the overlay path refuses them; the way
    // out does not): its offset from the header length, at most 60 bytes.
    let l4 = IP_OFF + (ip.vihl & 0xf) as usize * 4;
    // Later fragments carry no L4 header; without their first they are harmless.
    let first = !ip.is_later_fragment();
    let tcp_udp = ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP;
    // A header too short for its ports opens nothing: judged by address only.
    let dport = match read::<Ports, _>(ctx, l4) {
        Ok(p) if tcp_udp && first => p.dport,
        _ => 0,
    };
    if dport != 0 && has_entry(ip.daddr, dport, ip.proto) {
        return Ok(true);
    }
    // SAFETY: value copied out at once.
    let Some(allow) = unsafe { INFRA.get(key(ip.daddr, 0, 0)) }.copied() else {
        return Ok(false);
    };
    if !first {
        return Ok(false);
    }
    let dns = allow & infra::ALLOW_DNS != 0 && dport == DNS_PORT;
    Ok(match ip.proto {
        // Opening connections only: the node's own connections to an
        // instance get their replies.
        IPPROTO_TCP => {
            !dns && read::<u8, _>(ctx, l4 + TCP_HDR_FLAGS)? & (TCP_SYN | TCP_ACK) == TCP_SYN
        }
        IPPROTO_UDP => !dns,
        IPPROTO_ICMP => {
            read::<Icmp, _>(ctx, l4)?.kind == ICMP_ECHO && allow & infra::ALLOW_ECHO == 0
        }
        _ => true,
    })
}

#[inline(always)]
fn has_entry(addr: u32, port: u16, proto: u8) -> bool {
    // SAFETY: presence check only.
    unsafe { INFRA.get(key(addr, port, proto)) }.is_some()
}

#[inline(always)]
fn key(addr: u32, port: u16, proto: u8) -> InfraKey {
    InfraKey {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

#[inline(always)]
fn is_icmp_error(ctx: &TcContext, ip: &Ipv4) -> Result<bool, Reason> {
    if ip.proto != IPPROTO_ICMP {
        return Ok(false);
    }
    let kind = read::<Icmp, _>(ctx, L4_OFF)?.kind;
    Ok(matches!(
        kind,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
    ))
}
