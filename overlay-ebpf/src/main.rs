//! The overlay's eBPF programs. All policy lives in maps that the agent
//! fills (see `overlay_common::maps`).
//!
//! Module map: `hooks/` holds the entry points (one file per hook); beside
//! it are the datapath steps they call:
//! - `layout`: the packet headers and their offsets, named once;
//! - `packet`: bounds-checked access (TC and XDP) and the 5-tuple;
//! - `csum`: checksums computed in the program;
//! - `tunnel`: tunnel ports, encapsulation, decapsulation;
//! - `nexthop`: FIB next hops for packets the node sends, and the redirect;
//! - `deliver`: local delivery into an instance;
//! - `forward`: local or tunnelled, with the overlay MTU check;
//! - `flow_cache`: the decisions of established flows, cached;
//! - `guard`: isolation at the overlay's edges (infrastructure, unallocated
//!   overlay addresses, outsiders);
//! - `nat`: conntrack, backend choice and address translation;
//! - `north_south`: exposed services (north-south);
//! - `icmp`: ICMP errors answered to instances;
//! - `maps`: the maps and the counters;
//! - `events`: drops and new flows reported to `overlay-ctl monitor`.
#![no_std]
#![no_main]

mod csum;
mod deliver;
mod events;
mod flow_cache;
mod forward;
mod guard;
mod hooks;
mod icmp;
mod layout;
mod maps;
mod nat;
mod nexthop;
mod north_south;
mod packet;
mod pmtu;
mod tunnel;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Never reached: no code path panics. Nothing unwraps; every index is a
    // constant or a loop counter below the array's length, and every divisor
    // is a nonzero constant or checked first, so the compiler drops each
    // check. Were a panic path left, this endless loop would be in the object
    // and the verifier would reject any program that can reach it
    // ("infinite loop detected").
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
