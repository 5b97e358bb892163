//! Reading a whole hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`),
//! which aya does not offer. The agent counts the active flows in conntrack
//! every second; one lookup syscall per entry would cost about half a second
//! of CPU per pass over a full table, batches of 4,096 a few milliseconds.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::{HashMap, IterableMap, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};

const CHUNK: usize = 4096;

/// Every entry of `map`: in batches, or one at a time on kernels without
/// batch lookups (before 5.6).
pub fn read_all<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    lookup_all(map.map()).unwrap_or_else(|_| map.iter().filter_map(|r| r.ok()).collect())
}

/// Every entry of the hash map `map` (keys `K`, values `V`), read in batches.
/// Entries changing meanwhile may be seen or not, as with iteration.
fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut chunk = CHUNK;
    let mut out = Vec::new();
    // The position in the table: opaque to userspace (a bucket index for
    // hash maps); absent for the first batch.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * size_of::<V>()];
        let mut next = [0u64; 2];
        // SAFETY: a zeroed bpf_attr is a valid "no options" value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the batch member of the union that this command reads.
        let b = unsafe { &mut attr.batch };
        b.in_batch = if first { 0 } else { token.as_ptr() as u64 };
        b.out_batch = next.as_mut_ptr() as u64;
        b.keys = keys.as_mut_ptr() as u64;
        b.values = values.as_mut_ptr() as u64;
        b.count = chunk as u32;
        b.map_fd = fd as u32;
        // SAFETY: every pointer in `attr` points at a live buffer of the size
        // the kernel writes (count × key/value size, and the token).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        // SAFETY: reading back the count the kernel wrote into the same member.
        let n = unsafe { attr.batch.count } as usize;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // One bucket holds more entries than fit: retry it with more room.
            Some(libc::ENOSPC) if n == 0 => {
                chunk *= 2;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        for i in 0..n.min(chunk) {
            // SAFETY: the kernel filled `n` packed keys and values.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()) as *const K),
                    std::ptr::read_unaligned(values.as_ptr().add(i * size_of::<V>()) as *const V),
                )
            };
            out.push((k, v));
        }
        if err.is_some() {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}
