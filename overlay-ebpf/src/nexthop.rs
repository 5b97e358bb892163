//! Packets the node itself sends out of the uplink (tunnel packets, and
//! replies to external clients): the next hop from the FIB, cached per CPU,
//! and the redirect toward it.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{IPPROTO_UDP, maps::Config, stats::Reason};

use crate::layout::ETH_ADDRS;
use crate::maps::{CachedHop, HOPS};
use crate::packet::write;

const AF_INET: u8 = 2;

/// How to reach a destination on the node's network.
pub enum NextHop {
    /// Resolved: these MACs, out of `ifindex`.
    Mac {
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
    /// The neighbour (`nh`) is not resolved yet: the kernel resolves it.
    Neigh { ifindex: u32, nh: u32 },
}

/// Routes a packet from the node's address to `dst` through the node's FIB
/// and redirects it; when the neighbour is not resolved yet the kernel
/// resolves it.
#[inline(always)]
pub fn route_out(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<i32, Reason> {
    let hop = lookup(ctx, cfg, dst)?;
    if let NextHop::Mac { dmac, smac, .. } = hop {
        write(ctx, ETH_ADDRS, &[dmac, smac])?;
    }
    Ok(redirect(hop))
}

/// The next hop toward node address `dst`: from this CPU's cache while it is
/// fresh (within a tick), else from the FIB (then cached if resolved).
#[inline(always)]
pub fn cached(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<NextHop, Reason> {
    let now = crate::maps::tick();
    // SAFETY: this CPU's entry, copied out at once.
    if let Some(h) = unsafe { HOPS.get(dst) }.filter(|h| now.wrapping_sub(h.tick) <= 1) {
        return Ok(NextHop::Mac {
            ifindex: h.ifindex,
            dmac: h.dmac,
            smac: h.smac,
        });
    }
    let hop = lookup(ctx, cfg, dst)?;
    if let NextHop::Mac {
        ifindex,
        dmac,
        smac,
    } = hop
    {
        let entry = CachedHop {
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
fn lookup(ctx: &TcContext, cfg: &Config, dst: u32) -> Result<NextHop, Reason> {
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

/// Redirects the packet out of the hop's interface: straight when its MACs
/// are known, else through the kernel's neighbour resolution.
#[inline(always)]
pub fn redirect(hop: NextHop) -> i32 {
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
