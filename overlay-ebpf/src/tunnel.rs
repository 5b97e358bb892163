//! The tunnel: which packets are tunnel packets, encapsulation toward a
//! node's (or gateway's) port, and decapsulation.
//!
//! Wire format (`docs/wire-format.md`): outer Ethernet, outer IPv4 from the
//! node's address (DF copied from the inner packet, TTL 64, id 0), UDP with
//! checksum 0 and a source port from the flow hash, then the inner IPv4
//! packet unchanged: `ENCAP_OVERHEAD` (28) bytes in front of it.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use overlay_common::{
    ENCAP_OVERHEAD, ETH_P_IP, IPPROTO_UDP,
    flow::encap_sport,
    maps::{CachedFlow, Config, Node, SHARED_PEER},
    stats::Reason,
};

use crate::csum::fold;
use crate::layout::{DEFAULT_TTL, ETH_OFF, Eth, IP_DF, IP_OFF, Ipv4, UDP_HLEN, Udp, VIHL_PLAIN};
use crate::maps::{GATEWAYS, HOST_PREFIX, NODES, OVERLAY_NETS, PEERS, ROUTES};
use crate::nexthop::{self, NextHop};
use crate::packet::{Flow, ptr_at, read};

/// What `bpf_skb_adjust_room` answers when asked to encapsulate a packet
/// the kernel still marks as encapsulated.
const EALREADY: i64 = 114;

/// The frame header of an encapsulated packet, written in one go (packed:
/// the IPv4 header starts at byte 14).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Outer {
    eth: Eth,
    ip: Ipv4,
    udp: Udp,
}

const _: () = assert!(size_of::<Outer>() == IP_OFF + ENCAP_OVERHEAD as usize);

/// The two tunnel ports of a node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// East-west: tunnel packets from other nodes (and RTT probes).
    Ewp,
    /// North-south: client packets tunnelled by registered gateways.
    Nsp,
}

/// Whether an IPv4 header without options is addressed to this node; the
/// uplink handles no other packets.
#[inline(always)]
pub fn to_node(cfg: &Config, ip: &Ipv4) -> bool {
    ip.daddr == cfg.node_ip && ip.is_plain()
}

/// The tunnel port a packet to this node (`to_node`) is addressed to, if any.
#[inline(always)]
pub fn port(cfg: &Config, ip: &Ipv4, udp: &Udp) -> Option<Port> {
    if ip.proto != IPPROTO_UDP {
        return None;
    }
    if udp.dport == cfg.nsp && cfg.nsp != 0 {
        Some(Port::Nsp)
    } else if udp.dport == cfg.ewp {
        Some(Port::Ewp)
    } else {
        None
    }
}

/// Whether `src` may send to tunnel port `port`: a registered node to the
/// EWP (then its node id), a registered gateway to the NSP (then 0); else
/// the drop reason.
#[inline(always)]
pub fn check_sender(port: Port, src: u32) -> Result<u32, Reason> {
    match port {
        // SAFETY: value copied out at once.
        Port::Ewp => unsafe { PEERS.get(src) }
            .copied()
            .ok_or(Reason::DropUnknownPeer),
        // SAFETY: presence check only.
        Port::Nsp => match unsafe { GATEWAYS.get(src) } {
            Some(_) => Ok(0),
            None => Err(Reason::DropUnknownGateway),
        },
    }
}

/// Whether `inner_src`, the inner source of a tunnel packet from `sender`
/// (as [`check_sender`] gave it), is an address that sender may send from.
/// A node sends from its own subnet only: its instances' NamespaceIPs and
/// its north-south SNAT address (ServIPs and fixed IPs never travel as
/// sources: the client's node translates replies after decapsulation). A
/// gateway carries external clients, never an address of the overlay.
/// The outer source itself is not authenticated (see `docs/isolation.md`).
/// An address several nodes share (`SHARED_PEER`: nodes behind one NAT)
/// sends for the node whose subnet holds the inner source, if that node is
/// registered with the outer source `outer_src`.
#[inline(always)]
pub fn check_inner(port: Port, sender: u32, inner_src: u32, outer_src: u32) -> Result<(), Reason> {
    let host = Key::new(HOST_PREFIX, inner_src);
    let bound = match port {
        // The id of a node with a /24 or wider is its subnet's first /24
        // number (no two nodes share one), so a source in that /24 is the
        // sender's or nobody's: no lookup on the established path. Sources in
        // the rest of a wider subnet take the route lookup, and so does every
        // source of a node with a narrower subnet, whose id is never a /24
        // number (`Subnet::node_id`).
        Port::Ewp if sender == SHARED_PEER => ROUTES.get(host).is_some_and(|node| {
            // SAFETY: value copied out at once.
            unsafe { NODES.get(*node) }.is_some_and(|n| n.ip == outer_src)
        }),
        Port::Ewp => {
            u32::from_be(inner_src) >> 8 == sender
                || ROUTES.get(host).is_some_and(|node| *node == sender)
        }
        Port::Nsp => OVERLAY_NETS.get(host).is_none(),
    };
    if bound {
        Ok(())
    } else {
        Err(Reason::DropForgedInner)
    }
}

/// Encapsulates `f` toward `node` and sends it out of the uplink.
/// The caller has checked the size against the overlay MTU.
#[inline(always)]
pub fn encap(ctx: &TcContext, cfg: &Config, node: &Node, f: &Flow) -> Result<i32, Reason> {
    let hop = nexthop::cached(ctx, cfg, node.ip)?;
    // The Ethernet addresses are set now if known; else they stay as they
    // are and the kernel fills them when it resolves the neighbour.
    let macs = match hop {
        NextHop::Mac { dmac, smac, .. } => Some([dmac, smac]),
        NextHop::Neigh { .. } => None,
    };
    push_outer(ctx, cfg, f, node.ip, node.port, macs)?;
    Ok(nexthop::redirect(hop))
}

/// [`encap`] as the flow cache decided it (`c`: node address and port,
/// next hop).
#[inline(always)]
pub fn encap_cached(
    ctx: &TcContext,
    cfg: &Config,
    f: &Flow,
    c: &CachedFlow,
) -> Result<i32, Reason> {
    push_outer(ctx, cfg, f, c.node_ip, c.node_port, Some([c.dmac, c.smac]))?;
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect(c.ifindex, 0) } as i32)
}

/// Puts the outer headers toward `daddr`:`dport` in front of `f`, with the
/// Ethernet addresses `macs` (`None`: left as they are). Written in place,
/// field by field: nothing is built on the stack, which the programs that
/// encapsulate have little of.
#[inline(always)]
fn push_outer(
    ctx: &TcContext,
    cfg: &Config,
    f: &Flow,
    daddr: u32,
    dport: u16,
    macs: Option<[[u8; 6]; 2]>,
) -> Result<(), Reason> {
    add_room(ctx)?;
    // The headers were pulled into the linear area (`packet::pull`) and the
    // room was added there.
    let o = ptr_at::<Outer, _>(ctx, ETH_OFF).map_err(|_| Reason::DropHelper)?;
    let tot_len = f.len.wrapping_add(ENCAP_OVERHEAD).to_be();
    let frag = if f.df { IP_DF.to_be() } else { 0 };
    let check = outer_csum(f.tos, tot_len, frag, cfg.node_ip, daddr);
    let udp_len = f.len.wrapping_add(UDP_HLEN as u16).to_be();
    // SAFETY: `o` spans the outer headers (checked by `ptr_at`); the fields
    // are written unaligned, as the packed layout requires.
    unsafe {
        use core::ptr::addr_of_mut as at;
        if let Some([dst, src]) = macs {
            at!((*o).eth.dst).write_unaligned(dst);
            at!((*o).eth.src).write_unaligned(src);
        }
        at!((*o).eth.proto).write_unaligned(ETH_P_IP.to_be());
        at!((*o).ip.vihl).write_unaligned(VIHL_PLAIN);
        at!((*o).ip.tos).write_unaligned(f.tos);
        at!((*o).ip.tot_len).write_unaligned(tot_len);
        at!((*o).ip.id).write_unaligned(0);
        at!((*o).ip.frag).write_unaligned(frag);
        at!((*o).ip.ttl).write_unaligned(DEFAULT_TTL);
        at!((*o).ip.proto).write_unaligned(IPPROTO_UDP);
        at!((*o).ip.check).write_unaligned(check);
        at!((*o).ip.saddr).write_unaligned(cfg.node_ip);
        at!((*o).ip.daddr).write_unaligned(daddr);
        at!((*o).udp.sport).write_unaligned(encap_sport(f.hash).to_be());
        at!((*o).udp.dport).write_unaligned(dport);
        at!((*o).udp.len).write_unaligned(udp_len);
        at!((*o).udp.check).write_unaligned(0);
    }
    Ok(())
}

/// The checksum of the outer IPv4 header [`push_outer`] writes, summed from
/// its fields (as they lie in memory) rather than from a copy of it.
#[inline(always)]
fn outer_csum(tos: u8, tot_len: u16, frag: u16, saddr: u32, daddr: u32) -> u16 {
    let words = [
        u16::from_ne_bytes([VIHL_PLAIN, tos]),
        tot_len,
        frag,
        u16::from_ne_bytes([DEFAULT_TTL, IPPROTO_UDP]),
    ];
    let mut sum: u64 = words.iter().map(|&w| u64::from(w)).sum();
    sum += u64::from(saddr & 0xffff) + u64::from(saddr >> 16);
    sum += u64::from(daddr & 0xffff) + u64::from(daddr >> 16);
    fold(sum)
}

/// Makes room for the outer headers in front of the inner IPv4 header.
#[inline(always)]
fn add_room(ctx: &TcContext) -> Result<(), Reason> {
    let flags =
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO;
    if let Err(e) = ctx.adjust_room(ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags as u64) {
        // A packet decapsulated here that still carries the encapsulation
        // mark of its first tunnel (kept across veths): a gateway's reply
        // relayed on. Its inner headers have not moved since that tunnel, so
        // the room alone restores the same framing.
        if e != -EALREADY {
            return Err(Reason::DropHelper);
        }
        let fixed = BPF_F_ADJ_ROOM_FIXED_GSO as u64;
        ctx.adjust_room(ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, fixed)
            .map_err(|_| Reason::DropHelper)?;
    }
    Ok(())
}

/// The uplink's XDP program decapsulated this packet (the value of the
/// 4 bytes of metadata in front of it): TC delivers it as it is.
const XDP_DECAPPED: u32 = 0x4f56_4450;

/// Removes the outer IPv4 + UDP headers in XDP, before the kernel builds an
/// skb, so that GRO sees (and coalesces) the inner packets; marks the
/// packet for TC in its metadata. Only XDP programs write metadata, so a
/// packet from the wire cannot carry the mark.
#[inline(always)]
pub fn decap_xdp(ctx: &XdpContext) -> Result<(), Reason> {
    let eth: Eth = read(ctx, ETH_OFF)?;
    // SAFETY: helper calls on the program's own context.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, ENCAP_OVERHEAD as i32) != 0
            || bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<u32>() as i32)) != 0
        {
            return Err(Reason::DropHelper);
        }
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + size_of::<u32>() > data || data + size_of::<Eth>() > ctx.data_end() {
        return Err(Reason::DropHelper);
    }
    // SAFETY: both ranges were checked against the packet's bounds just above.
    unsafe {
        core::ptr::write_unaligned(meta as *mut u32, XDP_DECAPPED);
        core::ptr::write_unaligned(data as *mut Eth, eth);
    }
    Ok(())
}

/// Whether the uplink's XDP program decapsulated this packet
/// ([`decap_xdp`]).
#[inline(always)]
pub fn decapped_by_xdp(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the program's own context.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + size_of::<u32>() > ctx.data() {
        return false;
    }
    // SAFETY: within the metadata, checked just above.
    unsafe { core::ptr::read_unaligned(meta as *const u32) == XDP_DECAPPED }
}

/// Removes the outer IPv4 + UDP headers.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Reason> {
    let flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(-(ENCAP_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| Reason::DropHelper)
}
