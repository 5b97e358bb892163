//! The flow cache: what the full path decided for a packet of an
//! established ServIP flow, or for a node's packet delivered to a local
//! instance as it is (`FLOW_CACHE`), so that the flow's next packets take
//! one lookup instead of five (sender, ServIP, conntrack, node, next hop
//! going out; sender node, conntrack, instance coming back).
//!
//! A decision serves only while nothing it rests on can have changed:
//! * within the conntrack tick it was made in: the full path runs at least
//!   once per tick and flow, and refreshes the conntrack entry as before;
//! * within the agent's `EPOCH`: the agent raises it with every change to
//!   the maps a decision reads (`Tables::bump_epoch`), and with every
//!   conntrack entry it ends;
//! * for packets from where the first one came: the same instance veth, or
//!   the same sending node address;
//! * for TCP segments without SYN, FIN or RST (those take the full path,
//!   which records a closing flow).
//!
//! Only confirmed flows are cached (their conntrack entries stay put until
//! the agent ends them), and only packets that the full path would have
//! sent as they are: a packet larger than the path MTU the decision was
//! made with takes the full path, which answers it (a lower path MTU
//! learnt meanwhile raises the epoch).

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use overlay_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    maps::{CachedFlow, Config, CtKey, Endpoint, FlowKey, Scratch, flow_cache::FROM_PEER},
    stats::Reason,
};

use crate::forward::{self, Dest};
use crate::layout::{
    ETH_ADDRS, INNER_IP, INNER_L4, IP_DST, IP_SRC, Ipv4, L4_DPORT, L4_OFF, L4_SPORT,
};
use crate::layout::{Ports, TCP_FIN, Udp};
use crate::layout::{TCP_HDR_FLAGS, TCP_RST, TCP_SYN};
use crate::maps::{CONNTRACK, EPOCH, FLOW_CACHE, HOPS, NODES, SCRATCH, config, tick};
use crate::nat;
use crate::packet::{self, Flow, L4, read, write};
use crate::tunnel::{self, Port};

/// When a decision is looked up or made: the agent's epoch and the tick.
#[derive(Clone, Copy)]
pub struct Now {
    epoch: u32,
    tick: u32,
}

/// Ends every cached decision (the programs' own changes: a lower path MTU).
#[inline(always)]
pub fn changed() {
    if let Some(e) = EPOCH.get_ptr_mut(0) {
        // SAFETY: a field of the map's value, valid for this run.
        let e = unsafe { core::ptr::addr_of_mut!((*e).value) };
        // SAFETY: a valid, aligned u64 in the map for this run. Not atomic
        // (this target has no atomic add in stable Rust): two CPUs learning
        // at once still move it off every value cached decisions carry.
        unsafe { e.write_volatile(e.read_volatile().wrapping_add(1)) };
    }
}

/// The epoch first, then the clock: a decision made after this read is
/// dropped by any change the agent announces after it.
#[inline(always)]
pub fn now() -> Now {
    Now {
        // The low half: a cached decision keeps 32 bits of it.
        epoch: EPOCH.get(0).map_or(0, |e| e.value as u32),
        tick: tick(),
    }
}

/// What the cache did with a packet, in one register for a BPF function
/// call: the verdict (counted) when it sent it, -1 when the full path
/// decides, -2 - reason when it failed (the caller counts and reports it).
#[inline(always)]
pub fn outcome(ctx: &TcContext, r: Result<Option<(i32, Reason)>, Reason>) -> i64 {
    match r {
        Ok(None) => -1,
        Ok(Some((action, reason))) => {
            crate::maps::count(reason, ctx.len());
            i64::from(action)
        }
        Err(reason) => -2 - reason as i64,
    }
}

/// The [`outcome`] of the cache: `None` when the full path decides.
#[inline(always)]
pub fn verdict(v: i64) -> Option<Result<i32, Reason>> {
    match v {
        -1 => None,
        v if v >= 0 => Some(Ok(v as i32)),
        // A reason that cannot be (never given): the full path decides.
        v => Reason::from_index((-2 - v) as u32).map(Err),
    }
}

/// The decision for the packet (`ip`, ports at `l4_off`) coming `way` from
/// `from` (`None`: already checked), if one serves now: a TCP or UDP packet
/// whose key (built in this CPU's scratch space: no stack to spare) is
/// cached. Points into the map: an entry is replaced whole, never edited,
/// and each field is read once. (The key goes to the helper by reference:
/// where it is, not as a copy on the stack.)
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn lookup(
    ctx: &TcContext,
    ip: &Ipv4,
    l4_off: usize,
    way: u8,
    from: Option<u32>,
) -> Option<*const CachedFlow> {
    if !ip.is_plain() || ip.is_fragment() || !(ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        return None;
    }
    // SYN, FIN and RST take the full path (conntrack records them): a new
    // TCP flow's first packet does not even look.
    if ip.proto == IPPROTO_TCP {
        let flags: u8 = read(ctx, l4_off + TCP_HDR_FLAGS).ok()?;
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return None;
        }
    }
    let ports: Ports = read(ctx, l4_off).ok()?;
    let k = SCRATCH.get_ptr_mut(0)? as *mut FlowKey;
    // SAFETY: this CPU's scratch value, larger than a key (`remember`).
    let c = unsafe {
        *k = FlowKey::new(
            nat::ct_key(ip.saddr, ip.daddr, ports.sport, ports.dport, ip.proto),
            way,
        );
        FLOW_CACHE.get_ptr(&*k)?
    };
    // SAFETY: valid for this run (see above).
    let (epoch, tick, sender) = unsafe { ((*c).epoch, (*c).tick, (*c).from) };
    // Read only now: a miss (most packets of the node) pays no clock read.
    let now = now();
    if epoch != now.epoch || tick != now.tick || from.is_some_and(|f| f != sender) {
        return None;
    }
    Some(c)
}

/// `from_instance`'s first step: an instance's packet of an established
/// ServIP flow, sent as the cache says; `None`: the full path decides.
#[inline(always)]
pub fn from_instance(ctx: &TcContext) -> Result<Option<(i32, Reason)>, Reason> {
    packet::pull(ctx);
    // One at a time: a tuple of both made code that read an unset register
    // on the failing path, which the verifier refuses.
    let Some(cfg) = config() else {
        return Ok(None);
    };
    let Ok(Some(ip)) = packet::ipv4(ctx) else {
        return Ok(None);
    };
    // Only a ServIP flow is cached: anything else skips the lookup.
    let pool = EPOCH.get(0).map_or((0, 0), |e| (e.servips, e.servips_mask));
    if ip.daddr & pool.1 != pool.0 {
        return Ok(None);
    }
    // SAFETY: reading the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    to_backend(ctx, cfg, &ip, ifindex)
}

/// `uplink`'s first step: a node's tunnel packet with a reply of an
/// established ServIP flow (`decapped`: by XDP, which checked its sender),
/// delivered as the cache says; `None`: the full path decides.
#[inline(always)]
pub fn from_peer(ctx: &TcContext, decapped: bool) -> Result<Option<(i32, Reason)>, Reason> {
    packet::pull(ctx);
    let Some(cfg) = config() else {
        return Ok(None);
    };
    let Ok(Some(ip)) = packet::ipv4(ctx) else {
        return Ok(None);
    };
    if decapped {
        return to_client(ctx, &ip, L4_OFF, None);
    }
    if !tunnel::to_node(cfg, &ip) || ip.is_fragment() {
        return Ok(None);
    }
    let Ok(udp) = read::<Udp, _>(ctx, L4_OFF) else {
        return Ok(None);
    };
    if tunnel::port(cfg, &ip, &udp) != Some(Port::Ewp) {
        return Ok(None);
    }
    let Ok(inner) = read::<Ipv4, _>(ctx, INNER_IP) else {
        return Ok(None);
    };
    to_client(ctx, &inner, INNER_L4, Some(ip.saddr))
}

/// An instance's packet (arrived on `ifindex`) of an established flow to a
/// ServIP, translated and sent as the cache says; `None`: the full path
/// decides.
#[inline(always)]
fn to_backend(
    ctx: &TcContext,
    cfg: &Config,
    ip: &Ipv4,
    ifindex: u32,
) -> Result<Option<(i32, Reason)>, Reason> {
    let way = overlay_common::maps::flow_cache::FROM_INSTANCE;
    let Some(c) = lookup(ctx, ip, L4_OFF, way, Some(ifindex)) else {
        return Ok(None);
    };
    let Ok(mut f) = packet::flow(ctx, ip, L4_OFF) else {
        return Ok(None);
    };
    // SAFETY: valid for this run (`lookup`).
    let (node, nat_addr, nat_port) = unsafe { ((*c).node, (*c).nat_addr, (*c).nat_port) };
    // SAFETY: as above.
    let mtu = u32::from(unsafe { (*c).mtu });
    if node != 0 && forward::may_exceed(ctx, &f) && forward::wire_size(ctx, &f) > mtu {
        return Ok(None);
    }
    nat::rewrite_addr(ctx, f.l4, IP_DST, f.daddr, nat_addr)?;
    if nat_port != 0 {
        nat::rewrite_port(ctx, f.l4, L4_SPORT, f.sport, nat_port)?;
        f.sport = nat_port;
    }
    if node == 0 {
        return Ok(Some((deliver(ctx, c)?, Reason::DeliverLocal)));
    }
    // SAFETY: as above.
    let action = unsafe { tunnel::encap_cached(ctx, cfg, &f, &*c)? };
    Ok(Some((action, Reason::Encap)))
}

/// A node's packet for a local instance (inner header `inner`, its L4
/// header at `l4_off`; `from`: the sender's address, `None` when XDP
/// decapsulated and checked it), decapsulated if `l4_off` says it still
/// is, given its ServIP back if it is a reply to one, and delivered as the
/// cache says.
#[inline(always)]
pub fn to_client(
    ctx: &TcContext,
    inner: &Ipv4,
    l4_off: usize,
    from: Option<u32>,
) -> Result<Option<(i32, Reason)>, Reason> {
    let way = overlay_common::maps::flow_cache::FROM_PEER;
    let Some(c) = lookup(ctx, inner, l4_off, way, from) else {
        return Ok(None);
    };
    let Ok(f) = packet::flow(ctx, inner, l4_off) else {
        return Ok(None);
    };
    if l4_off != L4_OFF {
        tunnel::decap(ctx)?;
    }
    // SAFETY: valid for this run (`lookup`).
    let (nat_addr, nat_port) = unsafe { ((*c).nat_addr, (*c).nat_port) };
    if nat_addr != 0 {
        nat::rewrite_addr(ctx, f.l4, IP_SRC, f.saddr, nat_addr)?;
    }
    if nat_port != 0 {
        nat::rewrite_port(ctx, f.l4, L4_DPORT, f.dport, nat_port)?;
    }
    Ok(Some((deliver(ctx, c)?, Reason::Decap)))
}

/// Into the local instance the cache names.
#[inline(always)]
fn deliver(ctx: &TcContext, c: *const CachedFlow) -> Result<i32, Reason> {
    // SAFETY: valid for this run (`lookup`).
    let (dmac, smac, ifindex) = unsafe { ((*c).dmac, (*c).smac, (*c).ifindex) };
    write(ctx, ETH_ADDRS, &[dmac, smac])?;
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}

/// Remembers the full path's decision for `f` (as it arrived, `way`, from
/// `from`): translate to `nat_addr` (and `nat_port`, 0: none), send to
/// `dest`. Written into this CPU's scratch space in place, then stored by
/// [`commit`]: the callers have no stack to spare.
#[inline(always)]
pub fn remember(f: &Flow, way: u8, from: u32, nat_addr: u32, nat_port: u16, dest: &Dest) {
    begin(f, way, from);
    let Some(c) = value(nat_addr, nat_port) else {
        return;
    };
    match dest {
        Dest::Local(ep) => local(c, ep),
        // SAFETY: this CPU's scratch value (`value`).
        Dest::Remote(id) => unsafe { (*c).node = *id },
    }
    commit();
}

/// The first half of a decision: the key of `f` (as it arrived, `way`,
/// from `from`) in this CPU's scratch space, which nothing else may use
/// until [`delivered`] (or [`remember`]) finishes it.
#[inline(always)]
pub fn begin(f: &Flow, way: u8, from: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let (k, c) = split(s);
    // Only TCP and UDP are cached: any other key is marked unusable.
    let way = if matches!(f.l4, L4::Tcp | L4::Udp) {
        way
    } else {
        0
    };
    // SAFETY: this CPU's scratch value.
    unsafe {
        *k = FlowKey::new(
            nat::ct_key(f.saddr, f.daddr, f.sport, f.dport, f.proto),
            way,
        );
        (*c).from = from;
    }
}

/// The second half for a packet from another node, now `f`, delivered into
/// the local instance `ep`: a reply that got its ServIP back (its source
/// changed since [`begin`]), or a packet that needed no translation.
#[inline(always)]
pub fn delivered(f: &Flow, ep: &Endpoint) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let (k, _) = split(s);
    // SAFETY: this CPU's scratch value, as `begin` left it.
    let (saddr, dport) = unsafe { ((*k).saddr, (*k).dport) };
    // Untranslated: no address (and no conntrack entry) to keep.
    let nat_addr = if f.saddr != saddr { f.saddr } else { 0 };
    let port = if f.dport != dport { f.dport } else { 0 };
    if let Some(c) = value(nat_addr, port) {
        local(c, ep);
        commit();
    }
}

/// Forgets the decision cached for packets from other nodes with the
/// 5-tuple `k`: a new flow's replies will have it, and need translating.
#[inline(always)]
pub fn forget_reply(k: &CtKey) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let (key, _) = split(s);
    // SAFETY: this CPU's scratch value, unused by the caller meanwhile.
    unsafe {
        *key = FlowKey::new(*k, FROM_PEER);
        // Looked up first: a delete takes the bucket's lock, and there is
        // rarely anything to delete.
        #[allow(clippy::needless_borrows_for_generic_args)]
        if FLOW_CACHE.get_ptr(&*key).is_some() {
            let _ = FLOW_CACHE.remove(&*key);
        }
    }
}

/// A decision to deliver into the local instance `ep`.
#[inline(always)]
fn local(c: *mut CachedFlow, ep: &Endpoint) {
    // SAFETY: this CPU's scratch value (`value`).
    unsafe {
        (*c).node = 0;
        (*c).node_ip = 0;
        (*c).node_port = 0;
        (*c).mtu = 0;
        (*c).ifindex = ep.ifindex;
        (*c).dmac = ep.mac;
        (*c).smac = ep.host_mac;
    }
}

/// The value half of the scratch space, its translation written, if
/// [`begin`] left a usable key there.
#[inline(always)]
fn value(nat_addr: u32, nat_port: u16) -> Option<*mut CachedFlow> {
    let (k, c) = split(SCRATCH.get_ptr_mut(0)?);
    // SAFETY: this CPU's scratch value.
    unsafe {
        if (*k).way == 0 {
            return None;
        }
        (*c).nat_addr = nat_addr;
        (*c).nat_port = nat_port;
    }
    Some(c)
}

/// The key and value halves of a scratch value.
#[inline(always)]
fn split(s: *mut Scratch) -> (*mut FlowKey, *mut CachedFlow) {
    const { assert!(size_of::<FlowKey>() + size_of::<CachedFlow>() <= size_of::<Scratch>()) };
    let k = s as *mut FlowKey;
    // SAFETY: within the scratch value (asserted above), 4-byte aligned.
    let c = unsafe { (s as *mut u8).add(size_of::<FlowKey>()) } as *mut CachedFlow;
    (k, c)
}

/// Stores the decision [`remember`] wrote, completing a tunnelled one with
/// its node's address and next hop (none resolved yet: not stored). A
/// function of its own, for the stack of its lookups.
#[inline(never)]
fn commit() {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let (k, c) = split(s);
    // SAFETY: this CPU's scratch value, as `remember` left it.
    unsafe {
        // Translated: confirmed flows only, whose conntrack entries stay
        // put until the agent ends them (which raises the epoch). The key
        // is the conntrack key of the packet's direction. Untranslated (no
        // address): a new flow that will need translating forgets it
        // (`forget_reply`).
        if (*c).nat_addr != 0 && CONNTRACK.get((*k).tuple()).is_none() {
            return;
        }
        // Read now rather than before the full path's lookups (there is no
        // stack to keep it across them): a change the agent makes during
        // those lookups reaches this flow one tick later at worst.
        let now = now();
        (*c).epoch = now.epoch;
        (*c).tick = now.tick;
        let id = (*c).node;
        if id != 0 {
            let Some(node) = NODES.get(id) else {
                return;
            };
            let Some(hop) = HOPS.get(node.ip) else {
                return;
            };
            if (*c).tick.wrapping_sub(hop.tick) > 1 {
                return;
            }
            let Some(cfg) = config() else {
                return;
            };
            (*c).mtu = crate::pmtu::limit(cfg, id);
            (*c).node_ip = node.ip;
            (*c).node_port = node.port;
            (*c).ifindex = hop.ifindex;
            (*c).dmac = hop.dmac;
            (*c).smac = hop.smac;
        }
        // A full cache evicts its least recently used entry. By reference:
        // the helper reads key and value where they are.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = FLOW_CACHE.insert(&*k, &*c, 0);
    }
}
