//! Map definitions (layouts in `overlay_common::maps`) and the counter helper.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use overlay_common::{
    maps::{
        Backend, Config, Counter, CtEntry, CtKey, Endpoint, Node, PortKey, ServIp, SlotKey,
        capacity,
    },
    stats::{REASONS, Reason},
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASONS, 0);

#[map(name = "SERVIPS")]
pub static SERVIPS: HashMap<u32, ServIp> = HashMap::with_max_entries(capacity::SERVIPS, 0);

#[map(name = "SVC_PORTS")]
pub static SVC_PORTS: HashMap<PortKey, u32> = HashMap::with_max_entries(capacity::SVC_PORTS, 0);

#[map(name = "SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::with_max_entries(capacity::SLOTS, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(capacity::BACKENDS, 0);

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

#[map(name = "NODES")]
pub static NODES: HashMap<u32, Node> = HashMap::with_max_entries(capacity::NODES, 0);

/// Registered node addresses (value: node id): the only accepted tunnel sources.
#[map(name = "PEERS")]
pub static PEERS: HashMap<u32, u32> = HashMap::with_max_entries(capacity::NODES, 0);

/// Node subnets (value: node id), for traffic to a remote NamespaceIP.
#[map(name = "ROUTES")]
pub static ROUTES: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(capacity::ROUTES, BPF_F_NO_PREALLOC);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

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

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.node_id != 0)
}
