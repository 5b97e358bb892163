//! The timing itself: every path's fresh single runs, chunk by chunk, checked against the counters.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail, ensure};
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::{Dataplane, programs};

use super::fixtures::{
    CLIENT, CLIENT_HOST_MAC, CLIENT_MAC, CLIENT_PORT, LO, LOCAL, LOCAL_HOST_MAC, LOCAL_MAC,
    NEW_FLOW_PORTS, NODE_IP, OUTSIDE, PEER_IP, PEER_MAC, PORT, REMOTE, STRANGER_IP, UPLINK_MAC,
    VIP_LOCAL, VIP_REMOTE, clear_new_flows, configure, conntrack_map, eth, tcp, tunnel, with_sport,
};
use super::{
    Case, OwnedFdOrProgram, TC_ACT_OK, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, into_rows, monitor,
    stats_overhead, verdict_name,
};
use crate::rawbpf::{self, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP};
use crate::report::CostRow;

/// Fresh runs per chunk: every path runs a chunk in turn (baselines
/// included), so slow drifts of the machine hit all of them alike.
const CHUNK: usize = 25_000;
/// The profile rows (which explain the paths' costs) run a fifth of the runs.
const PROFILE_SHARE: usize = 5;

/// `sizeof(struct __sk_buff)` and the offset of `ifindex` in it.
const SK_BUFF_LEN: usize = 192;
const SK_BUFF_IFINDEX: usize = 40;

pub(super) fn measure(
    runs: usize,
    only: &[String],
    uplink: u32,
    stop: &AtomicBool,
) -> anyhow::Result<(Vec<CostRow>, Option<f64>)> {
    let mut dp = Dataplane::load(None).context("loading the dataplane")?;
    configure(&mut dp, uplink)?;
    let mut ct = conntrack_map(&mut dp)?;

    let request_remote = eth(
        CLIENT_MAC,
        CLIENT_HOST_MAC,
        &tcp(CLIENT, CLIENT_PORT, VIP_REMOTE, PORT),
    );
    let request_local = eth(
        CLIENT_MAC,
        CLIENT_HOST_MAC,
        &tcp(CLIENT, CLIENT_PORT, VIP_LOCAL, PORT),
    );
    let reply = tunnel(PEER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT));
    let mut new_flow = request_remote.clone();
    with_sport(&mut new_flow, NEW_FLOW_PORTS.start);
    let node_traffic = eth(PEER_MAC, UPLINK_MAC, &tcp(PEER_IP, 45000, NODE_IP, 22));
    let stranger = tunnel(STRANGER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT));
    let from_client = |dst| {
        eth(
            CLIENT_MAC,
            CLIENT_HOST_MAC,
            &tcp(CLIENT, CLIENT_PORT, dst, PORT),
        )
    };
    let ipv6 = {
        let mut f = eth(CLIENT_MAC, CLIENT_HOST_MAC, &[0x60; 104]);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f
    };
    let outside = from_client(OUTSIDE);
    let direct_local = from_client(LOCAL);
    let direct_remote = from_client(REMOTE);
    // A tunnel packet of a flow this node did not translate: no reverse NAT.
    let untranslated = tunnel(PEER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT + 1));

    let mut prog =
        |name: &'static str| -> anyhow::Result<(OwnedFdOrProgram, Option<u32>, Option<u32>)> {
            let (fd, info) = if name == programs::UPLINK_XDP {
                let p = dp.xdp(name)?;
                (p.fd()?.try_clone()?, p.info()?)
            } else {
                let p = dp.classifier(name)?;
                (p.fd()?.try_clone()?, p.info()?)
            };
            Ok((
                OwnedFdOrProgram::Prog(fd),
                info.verified_instruction_count(),
                info.size_translated().map(|b| b / 8),
            ))
        };
    let trivial_tc = rawbpf::load_trivial(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK as i32, "bench_tc")
        .context("loading the trivial TC program")?;
    let trivial_xdp = rawbpf::load_trivial(BPF_PROG_TYPE_XDP, XDP_PASS as i32, "bench_xdp")
        .context("loading the trivial XDP program")?;

    let case =
        |key: &'static str,
         description,
         program,
         (fd, verified_insns, xlated_insns): (OwnedFdOrProgram, Option<u32>, Option<u32>),
         frame: &Vec<u8>,
         tc,
         verdict,
         counted,
         baseline,
         idempotent| Case {
            share: if key.starts_with("profile_") {
                PROFILE_SHARE
            } else {
                1
            },
            key,
            description,
            program,
            fd,
            frame: frame.clone(),
            tc,
            verdict,
            counted,
            new_flows: key.starts_with("encap_new"),
            monitor: match key {
                "encap_new_monitor_all" => Some(0),
                k if k.ends_with("_monitor") => Some(overlay_common::events::DEFAULT_RATE),
                _ => None,
            },
            baseline,
            idempotent,
            samples: Vec::with_capacity(runs),
            verified_insns,
            xlated_insns,
        };
    let mut cases = vec![
        case(
            "trivial_tc",
            "baseline: trivial TC program (r0 = TC_ACT_OK)",
            "bench_tc",
            (OwnedFdOrProgram::Raw(trivial_tc), Some(2), Some(2)),
            &request_remote,
            true,
            TC_ACT_OK,
            None,
            "",
            true,
        ),
        case(
            "encap_new",
            "from_instance: translate + encapsulate, new flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &new_flow,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "encap_new_monitor",
            "from_instance: new flow, a monitor attached (default rate; beyond it events are counted as suppressed)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &new_flow,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "encap_new_monitor_all",
            "from_instance: new flow, a monitor attached without rate limit (every event written and read)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &new_flow,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "encap_established",
            "from_instance: translate + encapsulate, established flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &request_remote,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "local_delivery",
            "from_instance: translate + local delivery, established flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &request_local,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::DeliverLocal),
            "trivial_tc",
            false,
        ),
        case(
            "decap_reverse",
            "uplink: decapsulate + reverse NAT + delivery",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &reply,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Decap),
            "trivial_tc",
            false,
        ),
        case(
            "uplink_pass",
            "uplink: node traffic passes (not a tunnel packet)",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &node_traffic,
            true,
            TC_ACT_OK,
            None,
            "trivial_tc",
            true,
        ),
        case(
            "trivial_xdp",
            "baseline: trivial XDP program (r0 = XDP_PASS)",
            "bench_xdp",
            (OwnedFdOrProgram::Raw(trivial_xdp), Some(2), Some(2)),
            &stranger,
            false,
            XDP_PASS,
            None,
            "",
            true,
        ),
        case(
            "xdp_drop",
            "uplink_xdp: drop a tunnel packet from an unknown node",
            programs::UPLINK_XDP,
            prog(programs::UPLINK_XDP)?,
            &stranger,
            false,
            XDP_DROP,
            Some(Reason::DropUnknownPeer),
            "trivial_xdp",
            true,
        ),
        case(
            "xdp_decap",
            "uplink_xdp: check and decapsulate a node's tunnel packet (before GRO)",
            programs::UPLINK_XDP,
            prog(programs::UPLINK_XDP)?,
            &reply,
            false,
            XDP_PASS,
            None,
            "trivial_xdp",
            false,
        ),
        case(
            "xdp_drop_monitor",
            "uplink_xdp: drop from an unknown node, a monitor attached (default rate)",
            programs::UPLINK_XDP,
            prog(programs::UPLINK_XDP)?,
            &stranger,
            false,
            XDP_DROP,
            Some(Reason::DropUnknownPeer),
            "trivial_xdp",
            true,
        ),
        case(
            "profile_ipv6",
            "profile: from_instance passes an IPv6 frame (entry, ethertype)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &ipv6,
            true,
            TC_ACT_OK,
            Some(Reason::Pass),
            "trivial_tc",
            true,
        ),
        case(
            "profile_outside",
            "profile: from_instance passes IPv4 to outside the overlay (4 lookups)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &outside,
            true,
            TC_ACT_OK,
            Some(Reason::Pass),
            "trivial_tc",
            true,
        ),
        case(
            "profile_direct_local",
            "profile: from_instance to a local NamespaceIP (no ServIP, no NAT)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &direct_local,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::DeliverLocal),
            "trivial_tc",
            false,
        ),
        case(
            "profile_direct_remote",
            "profile: from_instance to a remote NamespaceIP (encapsulate + FIB, no NAT)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &direct_remote,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "profile_decap_direct",
            "profile: uplink decapsulates an untranslated flow (no reverse NAT)",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &untranslated,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Decap),
            "trivial_tc",
            false,
        ),
    ];

    cases.retain(|c| {
        only.is_empty() || c.key.starts_with("trivial_") || only.iter().any(|k| k == c.key)
    });

    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&LO.to_ne_bytes());
    let mut out = vec![0u8; 4096];

    // Establish the two flows the established paths use, and check every
    // case once with its output copied out.
    let (fi, _, _) = prog(programs::FROM_INSTANCE)?;
    let fi = fi.as_fd();
    // The local backend's reply confirms its flow (the remote one is
    // confirmed by the first `decap_reverse` run): established flows are
    // confirmed ones, whose decisions the flow cache keeps.
    let local_reply = eth(
        LOCAL_MAC,
        LOCAL_HOST_MAC,
        &tcp(LOCAL, PORT, CLIENT, CLIENT_PORT),
    );
    for f in [&request_remote, &request_local, &local_reply] {
        let r = rawbpf::test_run(fi, f, Some(&mut out), Some(&ctx), 1)?;
        ensure!(
            r.ret == TC_ACT_REDIRECT,
            "establishing a flow: verdict {}",
            r.ret
        );
    }
    for c in &cases {
        let r = rawbpf::test_run(
            c.fd.as_fd(),
            &c.frame,
            Some(&mut out),
            c.tc.then_some(&ctx[..]),
            1,
        )
        .with_context(|| format!("test run of {}", c.key))?;
        ensure!(
            r.ret == c.verdict,
            "{}: verdict {} instead of {}",
            c.key,
            verdict_name(c.tc, r.ret),
            verdict_name(c.tc, c.verdict)
        );
    }
    clear_new_flows(&mut ct, NEW_FLOW_PORTS.start..NEW_FLOW_PORTS.start + 1);

    let counts_before: Vec<u64> = cases
        .iter()
        .map(|c| c.counted.map_or(Ok(0), |r| dp.tables.count(r)))
        .collect::<Result<_, _>>()?;
    let new_before = dp.tables.count(Reason::NewFlow)?;
    let reader = match cases.iter().any(|c| c.monitor.is_some()) {
        true => Some(monitor::Reader::start(&mut dp)?),
        false => None,
    };

    let mut done = 0;
    let ports = NEW_FLOW_PORTS.len();
    let chunk = CHUNK.min(ports);
    while done < runs {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let n = chunk.min(runs - done);
        for c in &mut cases {
            monitor::switch(&mut dp.tables, c.monitor)?;
            let fd = c.fd.as_fd();
            let ctx = c.tc.then_some(&ctx[..]);
            for i in 0..n.div_ceil(c.share) {
                if c.new_flows {
                    with_sport(&mut c.frame, NEW_FLOW_PORTS.start + i as u16);
                }
                let r = rawbpf::test_run(fd, &c.frame, None, ctx, 1)?;
                if r.ret != c.verdict {
                    bail!(
                        "{}: run {} returned {} instead of {}",
                        c.key,
                        done + i,
                        verdict_name(c.tc, r.ret),
                        verdict_name(c.tc, c.verdict)
                    );
                }
                c.samples.push(r.ns);
            }
            // Each new-flow row opens the same flows anew.
            if c.new_flows {
                clear_new_flows(
                    &mut ct,
                    NEW_FLOW_PORTS.start..NEW_FLOW_PORTS.start + n as u16,
                );
            }
        }
        done += n;
    }
    if let Some(reader) = reader {
        monitor::switch(&mut dp.tables, None)?;
        let monitored = cases.iter().filter(|c| c.monitor.is_some());
        reader.finish(&dp.tables, monitored.map(|c| c.samples.len() as u64).sum())?;
    }

    check_counters(&dp, &cases, &counts_before, new_before)?;

    // The kernel's own mean over `repeat` runs, where the packet does not change.
    let mut repeat = Vec::new();
    for c in &cases {
        let r = if c.idempotent {
            let reps = runs.min(u32::MAX as usize) as u32;
            let ctx = c.tc.then_some(&ctx[..]);
            Some(rawbpf::test_run(c.fd.as_fd(), &c.frame, None, ctx, reps)?.ns as f64)
        } else {
            None
        };
        repeat.push(r);
    }

    let overhead = cases
        .iter()
        .find(|c| c.key == "trivial_tc")
        .and_then(|c| stats_overhead(c.fd.as_fd(), &c.frame, &ctx, runs).ok());

    let rows = into_rows(&mut cases, repeat);
    Ok((rows, overhead))
}

/// Checks that every path's counter (and `new_flow`) moved by exactly its
/// runs since `counts_before` and `new_before` were read.
fn check_counters(
    dp: &Dataplane,
    cases: &[Case],
    counts_before: &[u64],
    new_before: u64,
) -> anyhow::Result<()> {
    for (c, before) in cases.iter().zip(counts_before) {
        if let Some(reason) = c.counted {
            let moved = dp.tables.count(reason)? - before;
            let expected: u64 = cases
                .iter()
                .filter(|o| o.counted == Some(reason))
                .map(|o| o.samples.len() as u64)
                .sum();
            ensure!(
                moved == expected,
                "{}: counter {} moved by {moved}, expected {expected}",
                c.key,
                reason.label(),
            );
        }
    }
    let new_flows = dp.tables.count(Reason::NewFlow)? - new_before;
    let expected: u64 = cases
        .iter()
        .filter(|c| c.new_flows)
        .map(|c| c.samples.len() as u64)
        .sum();
    ensure!(
        new_flows == expected,
        "new_flow moved by {new_flows}, expected {expected}"
    );
    Ok(())
}
