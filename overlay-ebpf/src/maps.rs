//! Map definitions and the counter helper.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use overlay_common::{
    maps::Counter,
    stats::{REASONS, Reason},
};

#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASONS, 0);

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
