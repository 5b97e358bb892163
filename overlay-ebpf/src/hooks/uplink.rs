//! TC ingress on the uplink: tunnel packets from registered nodes, with an
//! inner source of the sender's subnet, are decapsulated (here, or already
//! by the uplink's XDP program, which marks them), replies get their
//! ServIP back, and the inner packet is delivered into its instance. RTT probes from registered nodes pass up to
//! the agent. Packets to an exposed port of the node, and those a registered
//! gateway tunnels to the node's NSP, go to `north_south`. Packets for an
//! address of the overlay that are not tunnelled to the node are dropped
//! (`guard`). ICMP fragmentation needed about the node's tunnel packets
//! lowers the path MTU toward their node (`pmtu`). Everything else passes
//! untouched.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use overlay_common::{
    IPPROTO_ICMP, PROBE_MARK,
    events::Hook,
    maps::{Config, flow_cache::FROM_PEER},
    stats::Reason,
};

use crate::deliver;
use crate::events;
use crate::flow_cache;
use crate::guard;
use crate::layout::{INNER_IP, INNER_L4, Ipv4, L4_OFF, Udp};
use crate::maps::{ENDPOINTS, config, count, stranger};
use crate::nat::{self, Reversed};
use crate::north_south;
use crate::packet::{self, Flow, read};
use crate::pmtu;
use crate::tunnel::{self, Port};

#[classifier]
pub fn uplink(ctx: TcContext) -> i32 {
    let decapped = tunnel::decapped_by_xdp(&ctx);
    let done = match flow_cache::verdict(cached(ctx.skb.skb, decapped)) {
        Some(Ok(action)) => return action,
        Some(Err(reason)) => Err(reason),
        None => match try_uplink(&ctx, decapped) {
            Ok(Some(done)) => Ok(done),
            // Not a tunnel packet: the node's own traffic, not counted.
            Ok(None) => return TC_ACT_OK,
            Err(reason) => Err(reason),
        },
    };
    finish(&ctx, done)
}

/// A node's reply of an established flow delivered as the flow cache says
/// (`decapped`: by XDP; counted), in the form [`flow_cache::outcome`]
/// gives. A function of its own, as `from_instance`'s.
#[inline(never)]
fn cached(skb: *mut __sk_buff, decapped: bool) -> i64 {
    let ctx = TcContext::new(skb);
    flow_cache::outcome(&ctx, flow_cache::from_peer(&ctx, decapped))
}

/// Counts what became of a packet (and reports a drop); its verdict.
#[inline(always)]
fn finish(ctx: &TcContext, done: Result<(i32, Reason), Reason>) -> i32 {
    match done {
        Ok((action, reason)) => {
            count(reason, ctx.len());
            events::drop_tc(ctx, Hook::Uplink, reason);
            action
        }
        Err(reason) => {
            count(reason, ctx.len());
            events::drop_tc(ctx, Hook::Uplink, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_uplink(ctx: &TcContext, decapped: bool) -> Result<Option<(i32, Reason)>, Reason> {
    packet::pull(ctx);
    let (Some(cfg), Ok(Some(ip))) = (config(), packet::ipv4(ctx)) else {
        return Ok(None);
    };
    let f = match decapped {
        // A node's tunnel packet, judged and decapsulated by XDP.
        true => {
            let f = packet::flow(ctx, &ip, L4_OFF)?;
            flow_cache::begin(&f, FROM_PEER, 0);
            f
        }
        false => match arriving(ctx, cfg, &ip)? {
            Arrived::Tunnelled(f) => {
                flow_cache::begin(&f, FROM_PEER, ip.saddr);
                f
            }
            Arrived::Done(verdict) => return Ok(verdict),
        },
    };
    to_instance(ctx, cfg, f).map(Some)
}

/// What became of a packet on the uplink before delivery.
enum Arrived {
    /// A node's tunnel packet, decapsulated: the inner packet's flow.
    Tunnelled(Flow),
    /// Anything else, judged: its verdict (`None`: not counted).
    Done(Option<(i32, Reason)>),
}

/// Judges a packet that XDP left as it was: not a tunnel packet, or a
/// tunnel packet XDP did not decapsulate (no XDP program, a gateway's, an
/// RTT probe).
#[inline(always)]
fn arriving(ctx: &TcContext, cfg: &Config, ip: &Ipv4) -> Result<Arrived, Reason> {
    if !tunnel::to_node(cfg, ip) {
        return guard::arriving(cfg, ip).map(|()| Arrived::Done(None));
    }
    if ip.proto == IPPROTO_ICMP {
        // The node's own: only read for what it says about the path MTU.
        pmtu::learn(ctx, cfg);
        return Ok(Arrived::Done(None));
    }
    let Ok(udp) = read::<Udp, _>(ctx, L4_OFF) else {
        return Ok(Arrived::Done(None));
    };
    let Some(port) = tunnel::port(cfg, ip, &udp) else {
        // Not a tunnel: an exposed service's port, or the node's own traffic.
        return north_south::forward_in(ctx, cfg, ip, 0).map(Arrived::Done);
    };
    // From here on the packet is addressed to a tunnel port: it is ours to judge.
    if ip.is_fragment() {
        return Err(Reason::DropFragment);
    }
    let sender = tunnel::check_sender(port, ip.saddr).map_err(|r| stranger(ctx, r, ip.saddr))?;
    match port {
        Port::Nsp => north_south::decap_from_gateway(ctx, cfg, ip).map(|v| Arrived::Done(Some(v))),
        Port::Ewp => from_peer(ctx, sender, ip.saddr),
    }
}

/// A tunnel packet from registered node `sender`: an RTT probe passes up to
/// the agent; anything else whose inner source the sender may use is
/// decapsulated.
#[inline(always)]
fn from_peer(ctx: &TcContext, sender: u32, ip_saddr: u32) -> Result<Arrived, Reason> {
    if read::<u8, _>(ctx, INNER_IP)? == PROBE_MARK {
        return Ok(Arrived::Done(Some((TC_ACT_OK, Reason::Probe))));
    }
    let inner: Ipv4 = read(ctx, INNER_IP)?;
    if !inner.is_v4() {
        return Err(Reason::DropMalformed);
    }
    tunnel::check_inner(Port::Ewp, sender, inner.saddr, ip_saddr)?;
    let f = packet::flow(ctx, &inner, INNER_L4)?;
    tunnel::decap(ctx)?;
    Ok(Arrived::Tunnelled(f))
}

/// A decapsulated packet `f` from another node: a reply gets its ServIP
/// back (or goes back out to its external client); the packet goes into
/// its instance.
#[inline(always)]
fn to_instance(ctx: &TcContext, cfg: &Config, mut f: Flow) -> Result<(i32, Reason), Reason> {
    if let Reversed::External { via } = nat::reverse_nat(ctx, &mut f, cfg.node_ip)? {
        return north_south::reply_out(ctx, cfg, &f, via);
    }
    // SAFETY: value copied out at once.
    let ep = unsafe { ENDPOINTS.get(f.daddr) }
        .copied()
        .ok_or(Reason::DropNoEndpoint)?;
    crate::guard::note_udp(&f, &ep);
    flow_cache::delivered(&f, &ep);
    Ok((deliver::to_instance(ctx, &ep)?, Reason::Decap))
}
