//! The maps, expanded from their one declaration in
//! `overlay_common::registry`, and the helpers the programs use them through.
//!
//! The maps the agent writes are not preallocated: their memory follows what
//! is deployed, and the capacities are only ceilings. `CONNTRACK`, written per
//! new flow, is a preallocated LRU whose size the agent sets.

use aya_ebpf::{
    EbpfContext,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use overlay_common::{
    maps::{Config, DEFAULT_DENY, NeedKey},
    stats::Reason,
};

pub use overlay_common::maps::{CachedHop, Scratch};

/// The map type of a registry entry, as aya-ebpf spells it.
macro_rules! bpf_type {
    (Array, $k:ty, $v:ty) => { Array<$v> };
    (PerCpuArray, $k:ty, $v:ty) => { PerCpuArray<$v> };
    (RingBuf, $k:ty, $v:ty) => { RingBuf };
    ($kind:ident, $k:ty, $v:ty) => { $kind<$k, $v> };
}

/// The definition of a registry entry's map (a ring buffer's capacity is its size in bytes).
macro_rules! bpf_new {
    (RingBuf, $t:ty, $cap:expr, $flags:expr) => {
        RingBuf::with_byte_size($cap, $flags)
    };
    ($kind:ident, $t:ty, $cap:expr, $flags:expr) => {
        <$t>::with_max_entries($cap, $flags)
    };
}

/// One `#[map]` static per registry entry, named as the map.
macro_rules! bpf_statics {
    ($( $(#[$doc:meta])* $name:ident $field:ident :
        $kind:ident < $key:ty, $val:ty >, $cap:expr, $flags:expr, $ver:literal; )*) => {
        $(
            $(#[$doc])*
            #[map]
            pub static $name: bpf_type!($kind, $key, $val) =
                bpf_new!($kind, bpf_type!($kind, $key, $val), $cap, $flags);
        )*
    };
}

/// The programs hold every map, pinned or not.
macro_rules! bpf_maps {
    (pinned { $($p:tt)* } private { $($q:tt)* }) => {
        bpf_statics!($($p)*);
        bpf_statics!($($q)*);
    };
}

overlay_common::for_each_map!(bpf_maps);

/// Prefix length of a single address in the `LpmTrie` maps.
pub const HOST_PREFIX: u32 = 32;

/// Whether `needs` (or the cluster's default deny) limit `service`'s flows.
#[inline(always)]
pub fn restricted(service: u32) -> bool {
    // SAFETY: presence checks only.
    unsafe { RESTRICTED.get(service).is_some() || RESTRICTED.get(DEFAULT_DENY).is_some() }
}

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

/// Counts a new flow to service `dst`.
#[inline(always)]
pub fn count_new_flow(dst: u32) {
    match FLOWS_NEW.get_ptr_mut(dst) {
        // SAFETY: this CPU's own slot.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = FLOWS_NEW.insert(dst, 1, 0);
        }
    }
}

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

/// Logs, sparsely, that a tunnel packet from `src` (unregistered, or
/// carrying an inner source it may not use) was dropped for `reason`, and
/// gives `reason` back.
#[inline(always)]
pub fn stranger<C: EbpfContext>(ctx: &C, reason: Reason, src: u32) -> Reason {
    if log_due(reason) {
        aya_log_ebpf::warn!(
            ctx,
            "tunnel packet from {:i} dropped (reason {})",
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
