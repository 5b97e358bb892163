//! Encapsulation toward a node's EWP, decapsulation, and getting packets out.
//!
//! Wire format (SPEC section 4): outer IPv4 + UDP (checksum 0, source port
//! from the flow hash) carrying the inner IPv4 packet unchanged.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    programs::TcContext,
};
use overlay_common::{
    ENCAP_OVERHEAD, IPPROTO_UDP,
    flow::encap_sport,
    maps::{Config, Endpoint, Node},
    stats::Reason,
};

use crate::maps::HOPS;
use crate::packet::{Flow, Ipv4, ipv4_csum, read, write};

const AF_INET: u8 = 2;
/// What `bpf_skb_adjust_room` answers when asked to encapsulate a packet
/// the kernel still marks as encapsulated.
const EALREADY: i64 = 114;

/// The frame header of an encapsulated packet, written in one go (packed:
/// the IPv4 header starts at byte 14).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Outer {
    dmac: [u8; 6],
    smac: [u8; 6],
    proto: u16,
    ip: Ipv4,
    udp: [u16; 4],
}

const _: () = assert!(core::mem::size_of::<Outer>() == 14 + ENCAP_OVERHEAD as usize);

/// How to reach a destination on the node's network.
enum NextHop {
    /// Resolved: these MACs, out of `ifindex`.
    Mac {
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
    /// The neighbour (`nh`) is not resolved yet: the kernel resolves it.
    Neigh { ifindex: u32, nh: u32 },
}

/// True for a GSO super-packet: the kernel segments it after encapsulation.
#[inline(always)]
pub fn is_gso(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the program's own context.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// Encapsulates `f` toward `node` and sends it out of the uplink.
/// The caller has checked the size against the overlay MTU.
#[inline(always)]
pub fn encap(ctx: &TcContext, cfg: &Config, node: &Node, f: &Flow) -> Result<i32, Reason> {
    let hop = cached_hop(ctx, cfg, node.ip)?;
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
    let mut ip = Ipv4 {
        vihl: 0x45,
        tos: f.tos,
        tot_len: f.len.wrapping_add(ENCAP_OVERHEAD).to_be(),
        id: 0,
        frag: if f.df { 0x4000u16.to_be() } else { 0 },
        ttl: 64,
        proto: IPPROTO_UDP,
        check: 0,
        saddr: cfg.node_ip,
        daddr: node.ip,
    };
    ip.check = ipv4_csum(&ip);
    let udp = [
        encap_sport(f.hash).to_be(),
        node.port,
        f.len.wrapping_add(8).to_be(),
        0,
    ];
    // The Ethernet addresses are set now if known; else they stay as they
    // are and the kernel fills them when it resolves the neighbour.
    let (dmac, smac) = match hop {
        NextHop::Mac { dmac, smac, .. } => (dmac, smac),
        NextHop::Neigh { .. } => read::<([u8; 6], [u8; 6])>(ctx, 0)?,
    };
    let proto = overlay_common::ETH_P_IP.to_be();
    write(
        ctx,
        0,
        &Outer {
            dmac,
            smac,
            proto,
            ip,
            udp,
        },
    )?;
    Ok(send(hop))
}

/// Removes the outer IPv4 + UDP headers.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Reason> {
    let flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(-(ENCAP_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| Reason::DropHelper)
}

/// Routes a packet from the node's address to `dst` through the node's FIB
/// and sends it; when the neighbour is not resolved yet the kernel resolves it.
#[inline(always)]
pub fn route_out(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<i32, Reason> {
    let hop = next_hop(ctx, cfg, dst)?;
    if let NextHop::Mac { dmac, smac, .. } = hop {
        write(ctx, 0, &[dmac, smac])?;
    }
    Ok(send(hop))
}

/// The next hop toward node address `dst`: from this CPU's cache while it is
/// fresh (within a tick), else from the FIB (then cached if resolved).
#[inline(always)]
fn cached_hop(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<NextHop, Reason> {
    let now = crate::maps::tick();
    // SAFETY: this CPU's entry, copied out at once.
    if let Some(h) = unsafe { HOPS.get(dst) }.filter(|h| now.wrapping_sub(h.tick) <= 1) {
        return Ok(NextHop::Mac {
            ifindex: h.ifindex,
            dmac: h.dmac,
            smac: h.smac,
        });
    }
    let hop = next_hop(ctx, cfg, dst)?;
    if let NextHop::Mac {
        ifindex,
        dmac,
        smac,
    } = hop
    {
        let entry = crate::maps::CachedHop {
            ifindex,
            tick: now,
            dmac,
            smac,
        };
        // A full cache only costs the lookup again.
        let _ = HOPS.insert(dst, entry, 0);
    }
    Ok(hop)
}

/// The FIB's next hop toward `dst` for a packet the node itself sends.
#[inline(always)]
fn next_hop(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<NextHop, Reason> {
    // SAFETY: plain data; zero is a valid starting value for every field.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = IPPROTO_UDP;
    p.ifindex = cfg.uplink_ifindex;
    p.__bindgen_anon_3.ipv4_src = cfg.node_ip;
    p.__bindgen_anon_4.ipv4_dst = dst;
    let size = core::mem::size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: helper call with a valid context and a stack buffer of `size`.
    // OUTPUT: the node itself sends these packets (the uplink still needs forwarding on).
    let rc =
        unsafe { fib_lookup(ctx.skb.skb as *mut _, &mut p, size, BPF_FIB_LOOKUP_OUTPUT) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop::Mac {
            ifindex: p.ifindex,
            dmac: p.dmac,
            smac: p.smac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(NextHop::Neigh {
            ifindex: p.ifindex,
            // SAFETY: reading the union member the lookup filled (the next hop).
            nh: unsafe { p.__bindgen_anon_4.ipv4_dst },
        }),
        // FWD_DISABLED: the uplink needs net.ipv4.conf.<uplink>.forwarding=1.
        _ => Err(Reason::DropNoRoute),
    }
}

#[inline(always)]
fn send(hop: NextHop) -> i32 {
    match hop {
        // SAFETY: helper call.
        NextHop::Mac { ifindex, .. } => unsafe { bpf_redirect(ifindex, 0) as i32 },
        NextHop::Neigh { ifindex, nh } => {
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET as u32,
                __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: nh },
            };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: helper call with a stack buffer of `size`.
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, size, 0) as i32 }
        }
    }
}

/// Delivers into a local instance: its MACs, then straight into its namespace.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, ep: &Endpoint) -> Result<i32, Reason> {
    write(ctx, 0, &[ep.mac, ep.host_mac])?;
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}
