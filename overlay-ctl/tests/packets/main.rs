//! The dataplane programs on real packets, through `BPF_PROG_TEST_RUN`.
//!
//! Every test loads its own copy of the object (fresh, unpinned maps), fills
//! the tables of one node (node 1, 192.0.2.11) with a peer (node 2,
//! 192.0.2.12, subnet 10.30.2.0/24), a client instance and two local
//! instances of a service whose ServIP forwards TCP 80, UDP 53 and ICMP echo,
//! builds packets with `etherparse`, runs a program and parses what it left:
//! addresses, MACs, lengths, every checksum recomputed, the verdict, and the
//! `STATS` counters that moved.
//!
//! Tests that encapsulate need a FIB: they run inside a namespace of their
//! own with a veth uplink (`harness::uplink`). Nothing touches the root
//! namespace.
//!
//! * [`translate`]: new flows, conntrack, local delivery, encapsulation.
//! * [`reverse`]: replies, decapsulation, ICMP errors about tracked flows.
//! * [`unreachable`]: the ICMP errors the programs generate.
//! * [`north_south`], [`gateway`]: north-south, direct and tunnelled by a gateway.
//! * [`isolation`]: forged tunnel sources, infrastructure, unallocated
//!   overlay addresses, outsiders.
//! * [`narrow`]: nodes with subnets narrower than a /24.
//! * [`flow_cache`]: cached decisions of established flows, and what ends them.
//! * [`malformed`]: truncation, options, fragments, spoofing, unknown peers.
//! * [`cost`]: nanoseconds per packet on the two hot paths (printed only).

mod cost;
mod flood;
mod flow_cache;
mod gateway;
mod harness;
mod isolation;
mod malformed;
mod narrow;
mod north_south;
mod pmtu;
mod reverse;
mod translate;
mod unreachable;
