//! Everything the eBPF programs and the agent must agree on.
//!
//! * [`maps`]: the `#[repr(C)]` keys and values of every BPF map, with explicit
//!   padding and compile-time size checks.
//! * [`policy`]: the balancing policies, for names, maps and model alike.
//! * [`registry`]: every BPF map declared once (name, kind, types, capacity,
//!   pinning, layout version) and the limits user input must respect to fit.
//! * [`events`]: the events the programs send to `overlay-ctl monitor`, and
//!   the monitors' switch and rate limit.
//! * [`stats`]: the per-CPU counter slots (one per verdict or drop reason).
//! * [`flow`]: the flow hash and the slot choice, used by the programs for new
//!   flows and by the agent and tests to predict them.
//! * [`names`]: the service name scheme `app.appns.svc.svcns.instance.policy.local`,
//!   parsed and printed without allocating.
//!
//! Addresses and ports inside map keys and values are kept exactly as they
//! appear on the wire (network byte order), so the programs never swap bytes;
//! the [`maps::ip`] helpers convert on the userspace side.
#![no_std]

pub mod events;
pub mod flow;
pub mod maps;
pub mod names;
pub mod pmtu;
pub mod policy;
pub mod registry;
pub mod stats;

#[cfg(test)]
extern crate std;

/// Default East-West UDP port (the one Oakestra's NetManager uses too).
pub const DEFAULT_EWP: u16 = 50103;
/// Default North-South UDP port.
pub const DEFAULT_NSP: u16 = 50104;
/// Bytes the tunnel adds: outer IPv4 (20) + UDP (8).
pub const ENCAP_OVERHEAD: u16 = 28;
/// First payload byte of an RTT probe on the EWP. A tunnel packet's payload
/// starts with an IPv4 header (0x4_), so the uplink program tells the two
/// apart by this byte and passes probes up to the agent's socket.
pub const PROBE_MARK: u8 = 0xEE;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
