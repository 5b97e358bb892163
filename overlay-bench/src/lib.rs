//! `cargo xtask bench`: the overlay measured against what it replaces and
//! what bounds it, in network namespaces on this machine.
//!
//! Module map:
//!
//! * [`plan`]: paths, metrics, durations and the interleaved schedule
//!   (`--quick`, `--rounds N`).
//! * [`topo`]: the five test networks (plain routing, the overlay cross-node
//!   and same-node, kernel VXLAN, the TUN forwarder), built with
//!   `overlay-testnet` and deleted on drop.
//! * [`traffic`]: iperf3 TCP/UDP runs, the UDP ping-pong, CPU time.
//! * [`tunfwd`]: the TUN forwarder path (the Oakestra design): its /24
//!   next-hop table on `overlay_testnet::tun`.
//! * [`cost`] and [`rawbpf`]: per-packet cost of each program path under
//!   `BPF_PROG_TEST_RUN`, fresh packets, minus a trivial program.
//! * [`control`]: reconciler timings and BPF map memory.
//! * [`dns`]: queries per second of our DNS server against dnsmasq (dnsperf).
//! * [`report`], [`chart`], [`stats`]: targets, markdown, JSON and SVG.
//! * [`run`]: one run from start to files.
//! * [`scale`]: `--scale`, N simulated nodes on one etcd (`docs/scale.md`).
//!
//! See `docs/benchmark.md` for what each figure means.

pub mod chart;
pub mod control;
pub mod cost;
pub mod dns;
pub mod plan;
pub mod rawbpf;
pub mod report;
pub mod run;
pub mod scale;
pub mod stats;
pub mod topo;
pub mod traffic;
pub mod tunfwd;
