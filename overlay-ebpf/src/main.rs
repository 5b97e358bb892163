//! The overlay's eBPF programs, one file per hook. All policy lives in maps
//! that the agent fills (see `overlay_common::maps`).
#![no_std]
#![no_main]

mod forward;
mod from_instance;
mod icmp;
mod maps;
mod nat;
mod nodeport;
mod packet;
mod tunnel;
mod uplink;
mod uplink_xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: no code path panics (no unwrap, no indexing).
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
