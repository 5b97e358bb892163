//! Nanoseconds per packet on the two hot paths. Printed, never asserted
//! (the machine is noisy); the verdicts and counters are asserted.
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs the program N times on the
//! *same* skb and reports the mean time per run (the kernel divides by N
//! itself, so aya's `duration` is already per packet). A program that
//! rewrites the packet sees its own output from the second run on, so two
//! figures are printed per path:
//!
//! * `fresh`: mean and median of the kernel's time for single runs, each on
//!   a new copy of the packet: the real path, plus the timer's own overhead
//!   (shown by the IPv6 baseline).
//! * `repeat 1000000`: what the rerun measures, i.e. almost only what the
//!   program does with its own output (the counters show which path).

use overlay_common::stats::Reason;
use overlay_ctl::dataplane::{Dataplane, programs};

use crate::harness::*;

const REPEAT: u32 = 1_000_000;
const FRESH: usize = 100_000;

/// Runs `name` on fresh copies of `frame`, every verdict `ret`: the mean and
/// median of the kernel's per-run times, in ns.
fn fresh(dp: &mut Dataplane, name: &'static str, frame: &[u8], ret: u32) -> (f64, u128) {
    let mut ns: Vec<u128> = (0..FRESH)
        .map(|_| {
            let r = tc(dp, name, frame, LO, 1).unwrap();
            assert_eq!(r.ret, ret);
            r.time.as_nanos()
        })
        .collect();
    ns.sort_unstable();
    let mean = ns.iter().sum::<u128>() as f64 / ns.len() as f64;
    (mean, ns[ns.len() / 2])
}

/// `repeat` runs on one skb: the last verdict must be `ret`; returns ns per run.
fn repeated(dp: &mut Dataplane, name: &'static str, frame: &[u8], ret: u32) -> u128 {
    let r = tc(dp, name, frame, LO, REPEAT).unwrap();
    assert_eq!(r.ret, ret);
    r.time.as_nanos()
}

#[test]
fn per_packet_cost() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    let request = from(&CLIENT, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    let reply = tunnel(PEER_IP, &tcp(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT));
    let ipv6 = eth(
        CLIENT.mac,
        CLIENT.host_mac,
        etherparse::EtherType::IPV6,
        &[0x60; 60],
    );
    up.ns
        .enter(|| {
            let (mean, median) = fresh(&mut dp, programs::FROM_INSTANCE, &ipv6, TC_ACT_OK);
            println!("baseline: from_instance passing an IPv6 frame, fresh: mean {mean:.0} ns, median {median} ns");

            // Establish the flow, then measure the established path.
            assert_eq!(from_instance(&mut dp, &request, LO).0, TC_ACT_REDIRECT);
            let before = snapshot(&dp);
            let (mean, median) = fresh(&mut dp, programs::FROM_INSTANCE, &request, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::Encap, FRESH as u64)]);
            println!("from_instance: established remote flow (conntrack, DNAT, encap, FIB), fresh: mean {mean:.0} ns, median {median} ns");
            let before = snapshot(&dp);
            let ns = repeated(&mut dp, programs::FROM_INSTANCE, &request, TC_ACT_SHOT);
            let counted = [(Reason::Encap, 1), (Reason::DropSpoofed, REPEAT as u64 - 1)];
            assert_eq!(before.delta(&dp), counted);
            println!("from_instance: repeat {REPEAT}: {ns} ns per run (1 encap, then drop_spoofed on its own output)");

            let before = snapshot(&dp);
            let (mean, median) = fresh(&mut dp, programs::UPLINK, &reply, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::Decap, FRESH as u64)]);
            println!("uplink: tunnel reply (decap, reverse NAT, delivery), fresh: mean {mean:.0} ns, median {median} ns");
            let before = snapshot(&dp);
            let ns = repeated(&mut dp, programs::UPLINK, &reply, TC_ACT_OK);
            assert_eq!(before.delta(&dp), [(Reason::Decap, 1)]);
            println!("uplink: repeat {REPEAT}: {ns} ns per run (1 decap, then the uncounted pass path on its own output)");
        })
        .unwrap();
}
