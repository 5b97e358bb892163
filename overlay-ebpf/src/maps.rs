//! Map definitions (layouts in `overlay_common::maps`) and the counter helper.
//!
//! The maps the agent writes are not preallocated (`BPF_F_NO_PREALLOC`, as
//! Cilium's load-balancer maps): their memory follows what is deployed, and
//! the capacities are only ceilings. `CONNTRACK`, written per new flow, is a
//! preallocated LRU whose size the agent sets (`conntrack_entries`).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use overlay_common::{
    maps::{
        Backend, Config, Counter, CtEntry, CtKey, DEFAULT_DENY, Endpoint, ExposeKey, Exposed,
        NeedKey, Node, PortKey, ServIp, SlotKey, capacity,
    },
    stats::{REASONS, Reason},
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASONS, 0);

#[map(name = "SERVIPS")]
pub static SERVIPS: HashMap<u32, ServIp> =
    HashMap::with_max_entries(capacity::SERVIPS, BPF_F_NO_PREALLOC);

#[map(name = "SVC_PORTS")]
pub static SVC_PORTS: HashMap<PortKey, u32> =
    HashMap::with_max_entries(capacity::SVC_PORTS, BPF_F_NO_PREALLOC);

#[map(name = "SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> =
    HashMap::with_max_entries(capacity::SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::with_max_entries(capacity::BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> =
    HashMap::with_max_entries(capacity::ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "NODES")]
pub static NODES: HashMap<u32, Node> =
    HashMap::with_max_entries(capacity::NODES, BPF_F_NO_PREALLOC);

/// Registered node addresses (value: node id): the only accepted tunnel sources.
#[map(name = "PEERS")]
pub static PEERS: HashMap<u32, u32> = HashMap::with_max_entries(capacity::NODES, BPF_F_NO_PREALLOC);

/// Node subnets (value: node id), for traffic to a remote NamespaceIP.
#[map(name = "ROUTES")]
pub static ROUTES: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(capacity::ROUTES, BPF_F_NO_PREALLOC);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// Services whose new flows are limited to their `needs` (key `DEFAULT_DENY`:
/// services without `needs` may open none).
#[map(name = "RESTRICTED")]
pub static RESTRICTED: HashMap<u32, u32> =
    HashMap::with_max_entries(capacity::RESTRICTED, BPF_F_NO_PREALLOC);

#[map(name = "NEEDS")]
pub static NEEDS: HashMap<NeedKey, u32> =
    HashMap::with_max_entries(capacity::NEEDS, BPF_F_NO_PREALLOC);

/// Ports of the node's address that lead to exposed services.
#[map(name = "EXPOSED")]
pub static EXPOSED: HashMap<ExposeKey, Exposed> =
    HashMap::with_max_entries(capacity::EXPOSED, BPF_F_NO_PREALLOC);

/// `GATEWAYS[ip]`: registered north-south gateways (see `gateway`).
#[map(name = "GATEWAYS")]
pub static GATEWAYS: HashMap<u32, Node> =
    HashMap::with_max_entries(capacity::GATEWAYS, BPF_F_NO_PREALLOC);

/// New flows denied, per sending service (per CPU).
#[map(name = "DENIED")]
pub static DENIED: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(capacity::RESTRICTED, BPF_F_NO_PREALLOC);

/// Whether service `src` may open a new flow to service `dst`.
#[inline(always)]
pub fn allowed(src: u32, dst: u32) -> bool {
    // SAFETY: presence checks only.
    unsafe {
        if RESTRICTED.get(src).is_some() {
            return NEEDS.get(NeedKey { src, dst }).is_some();
        }
        RESTRICTED.get(DEFAULT_DENY).is_none()
    }
}

/// Counts a denied new flow of `src`.
#[inline(always)]
pub fn count_denied(src: u32) {
    match DENIED.get_ptr_mut(src) {
        // SAFETY: this CPU's own slot.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = DENIED.insert(src, 1, 0);
        }
    }
}

/// Per-CPU scratch space for building packets off the stack.
pub type Scratch = [u64; 12];

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Counts one packet of `len` bytes under `reason`.
#[inline(always)]
pub fn count(reason: Reason, len: u32) {
    if let Some(c) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this program instance writes it now.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Whether a drop for `reason` deserves a log line: the 1st, 2nd, 4th,
/// 8th... on each CPU, so that a flood (from a stranger, say) cannot turn
/// into a log flood while the first occurrences are still seen.
#[inline(always)]
pub fn log_due(reason: Reason) -> bool {
    STATS
        .get(reason as u32)
        .is_some_and(|c| (c.packets + 1).is_power_of_two())
}

/// Logs, sparsely, that a tunnel packet from the unregistered address `src`
/// was dropped for `reason`, and gives `reason` back.
#[inline(always)]
pub fn stranger<C: EbpfContext>(ctx: &C, reason: Reason, src: u32) -> Reason {
    if log_due(reason) {
        aya_log_ebpf::warn!(
            ctx,
            "tunnel packet from unregistered {:i} dropped (reason {})",
            u32::from_be(src),
            reason as u32
        );
    }
    reason
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.node_id != 0)
}

/// A node's next hop as the FIB last gave it, per CPU (no torn MACs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    pub ifindex: u32,
    /// Conntrack tick of the lookup: entries older than a tick are redone.
    pub tick: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// `HOPS[node ip]`: cached FIB results for tunnel destinations, so that an
/// established flow's packets skip `bpf_fib_lookup` (about a quarter of the
/// encapsulation path). Not pinned: a cache that a restart may drop. A
/// changed neighbour or route is seen within two ticks (~2 s).
#[map(name = "HOPS")]
pub static HOPS: PerCpuHashMap<u32, CachedHop> =
    PerCpuHashMap::with_max_entries(capacity::NODES, BPF_F_NO_PREALLOC);

/// `TURNS[servip]`: per-CPU round-robin counters of roundrobin ServIPs.
/// Per CPU, so that no two CPUs ever race for a turn; each CPU goes round
/// the table on its own, which keeps the total even within one turn per CPU.
#[map(name = "TURNS")]
pub static TURNS: PerCpuHashMap<u32, u32> =
    PerCpuHashMap::with_max_entries(capacity::SERVIPS, BPF_F_NO_PREALLOC);

/// The next round-robin turn of `servip` (wire order) on this CPU.
#[inline(always)]
pub fn next_turn(servip: u32) -> u32 {
    match TURNS.get_ptr_mut(servip) {
        // SAFETY: this CPU's own counter, valid for this program run.
        Some(t) => unsafe {
            let turn = *t;
            *t = turn.wrapping_add(1);
            turn
        },
        None => {
            // First new flow on this CPU: take turn 0, the next one is 1.
            let _ = TURNS.insert(servip, 1, 0);
            0
        }
    }
}

/// The current conntrack tick (`overlay_common::maps::ct::tick`).
#[inline(always)]
pub fn tick() -> u32 {
    // SAFETY: a helper without arguments.
    overlay_common::maps::ct::tick(unsafe {
        aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns()
    })
}
