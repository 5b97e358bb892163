//! The bench's logic on canned numbers: the plan and its schedule, the
//! targets, the markdown, the JSON and the chart. Nothing here is timed and
//! nothing needs root.

use overlay_bench::chart;
use overlay_bench::plan::{Metric, PathId, Plan};
use overlay_bench::report::{
    Control, Converge, CostRow, Dns, Goal, MapMem, RatioMetric, Report, Resync, Status, markdown,
    ratio, targets,
};
use overlay_bench::traffic::{CpuTimes, parse_tcp, parse_udp};

#[test]
fn quick_and_full_plans_fit_their_time_budgets() {
    let quick = Plan::new(true, None);
    let full = Plan::new(false, None);
    assert_eq!(quick.rounds, 2);
    assert_eq!(full.rounds, 5);
    // About three minutes (DNS, 8 streams and wire mode added to the earlier 115).
    assert!(quick.estimate_secs() <= 200.0, "{}", quick.estimate_secs());
    assert!(full.estimate_secs() <= 900.0, "{}", full.estimate_secs());
    assert!(quick.tcp_secs < full.tcp_secs);
    for p in [&quick, &full] {
        assert_eq!(p.paths, PathId::ALL, "every path, so every ratio exists");
        assert!(
            p.cost_runs >= 1_000_000,
            "at least 1M runs per program path"
        );
        assert_eq!(p.control_services, 1_000);
        assert_eq!(p.resync_services, 10_000);
        assert_eq!(p.dns_services, 100);
    }
    assert!(quick.dns_secs < full.dns_secs);
    assert_eq!(Plan::new(true, Some(0)).rounds, 1, "at least one round");
    assert_eq!(Plan::new(false, Some(7)).rounds, 7);
}

#[test]
fn schedule_interleaves_every_path_each_round_and_rotates() {
    let plan = Plan::new(false, Some(3));
    let steps = plan.schedule();
    // Wire mode leaves (c) out: it never touches a wire.
    assert_eq!(steps.len(), 3 * (5 * 5 - 1));
    for round in 0..3 {
        for metric in Metric::ALL {
            let mut paths: Vec<PathId> = steps
                .iter()
                .filter(|s| s.round == round && s.metric == metric)
                .map(|s| s.path)
                .collect();
            paths.sort();
            let want: Vec<PathId> = PathId::ALL.into_iter().filter(|&p| metric.on(p)).collect();
            assert_eq!(paths, want);
        }
    }
    assert!(!Metric::WireTcp.on(PathId::OverlayLocal));
    // Each round starts with another path, and a round's steps are contiguous.
    let firsts: Vec<PathId> = (0..3)
        .map(|r| steps.iter().find(|s| s.round == r).unwrap().path)
        .collect();
    assert_eq!(
        firsts,
        [PathId::Plain, PathId::OverlayRemote, PathId::OverlayLocal]
    );
    assert!(steps.windows(2).all(|w| w[0].round <= w[1].round));
}

fn samples(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().map(|x| Some(*x)).collect()
}

/// A report with plausible numbers: (b) at 95 % of (a) for TCP, 80 % for
/// UDP, 1.1x latency; VXLAN and TUN slower.
fn canned() -> Report {
    let mut r = Report::new(Plan::new(true, None));
    let set = |r: &mut Report, p, tcp: &[f64], udp: &[f64], p50: &[f64]| {
        let s = r.path_mut(p);
        s.tcp_gbps = samples(tcp);
        s.cpu_s_per_gbit = samples(&[0.3, 0.3]);
        s.uplink_skb_bytes = samples(&[60000.0, 60000.0]);
        s.udp_kpps = samples(udp);
        s.p50_us = samples(p50);
        s.p99_us = samples(&[90.0, 96.0]);
    };
    set(
        &mut r,
        PathId::Plain,
        &[10.0, 12.0],
        &[200.0, 220.0],
        &[30.0, 40.0],
    );
    set(
        &mut r,
        PathId::OverlayRemote,
        &[9.5, 11.4],
        &[160.0, 176.0],
        &[33.0, 44.0],
    );
    set(
        &mut r,
        PathId::OverlayLocal,
        &[12.0, 13.0],
        &[240.0, 250.0],
        &[20.0, 25.0],
    );
    set(
        &mut r,
        PathId::Vxlan,
        &[7.0, 8.0],
        &[100.0, 110.0],
        &[50.0, 60.0],
    );
    // TUN lost its second TCP round.
    set(&mut r, PathId::Tun, &[0.5], &[50.0, 55.0], &[200.0, 210.0]);
    r.path_mut(PathId::Tun).tcp_gbps.push(None);
    let row = |key: &str, median: f64, baseline: &str, net: Option<f64>| CostRow {
        key: key.into(),
        description: format!("{key} path"),
        program: "prog".into(),
        runs: 1_000_000,
        verdict: "TC_ACT_REDIRECT".into(),
        median_ns: median,
        mean_ns: median + 5.0,
        p99_ns: median * 2.0,
        baseline: baseline.into(),
        net_ns: net,
        repeat_ns: None,
        verified_insns: Some(1234),
        xlated_insns: None,
    };
    r.costs = vec![
        row("trivial_tc", 100.0, "", None),
        row("encap_established", 230.0, "trivial_tc", Some(130.0)),
        row("encap_new", 400.0, "trivial_tc", Some(300.0)),
        row("decap_reverse", 190.0, "trivial_tc", Some(90.0)),
    ];
    r.control = Control {
        converge: Some(Converge {
            services: 1000,
            instances: 3000,
            nodes: 3,
            per_node_ms: vec![140.0, 150.0, 145.0],
            written: vec![10007, 10007, 10007],
            wall_ms: 152.0,
        }),
        resync: Some(Resync {
            services: 10000,
            instances: 30000,
            nodes: 10,
            local_instances: 3000,
            read_ms: 1.0,
            desired_ms: 1500.0,
            apply_ms: 500.0,
            total_ms: 2001.0,
            written: 93021,
            noop_ms: 1400.0,
            noop_written: 0,
        }),
        memory: vec![
            MapMem {
                name: "CONNTRACK".into(),
                map_type: "LruHashMap".into(),
                max_entries: 262144,
                bytes: 24 << 20,
            },
            MapMem {
                name: "CONFIG".into(),
                map_type: "Array".into(),
                max_entries: 1,
                bytes: 4096,
            },
        ],
    };
    r.dns = Dns {
        services: 100,
        names: 300,
        secs: 2,
        ours_qps: samples(&[60000.0, 66000.0]),
        dnsmasq_qps: samples(&[50000.0, 60000.0]),
        ours_lost: samples(&[0.0, 0.0]),
        dnsmasq_lost: samples(&[0.0, 2.0]),
    };
    r
}

#[test]
fn ratios_are_medians_of_paired_rounds() {
    let r = canned();
    let tcp = ratio(&r, RatioMetric::Tcp, PathId::OverlayRemote, PathId::Plain).unwrap();
    assert!((tcp - 0.95).abs() < 1e-9, "{tcp}");
    let udp = ratio(
        &r,
        RatioMetric::UdpPps,
        PathId::OverlayRemote,
        PathId::Plain,
    )
    .unwrap();
    assert!((udp - 0.80).abs() < 1e-9, "{udp}");
    let p50 = ratio(&r, RatioMetric::P50, PathId::OverlayRemote, PathId::Plain).unwrap();
    assert!((p50 - 1.1).abs() < 1e-9, "{p50}");
    // A missing round is skipped, not counted as zero.
    let tun = ratio(&r, RatioMetric::Tcp, PathId::OverlayRemote, PathId::Tun).unwrap();
    assert!((tun - 19.0).abs() < 1e-9, "{tun}");
}

#[test]
fn targets_are_judged_met_missed_or_not_measured() {
    let mut r = canned();
    let t = targets(&r);
    let status = |name: &str| {
        t.iter()
            .find(|x| x.name.starts_with(name))
            .unwrap_or_else(|| panic!("no target {name}"))
            .status
    };
    assert_eq!(status("(b)/(a) TCP throughput"), Status::Met);
    assert_eq!(status("(b)/(a) UDP"), Status::Missed);
    assert_eq!(status("(b)/(a) p50"), Status::Met);
    assert_eq!(status("(b)/(d) TCP throughput"), Status::Met);
    assert_eq!(status("(b)/(a) TCP, 8 streams"), Status::NotMeasured);
    assert_eq!(status("(b)/(a) TCP, wire mode"), Status::NotMeasured);
    assert_eq!(status("(b)/(d) TCP, wire mode"), Status::NotMeasured);
    assert_eq!(status("(b)/(e) TCP"), Status::Met);
    assert_eq!(status("translate+encapsulate, established"), Status::Met);
    assert_eq!(status("translate+encapsulate, new"), Status::Met);
    assert_eq!(status("decapsulate+reverse NAT"), Status::Met);
    // The canned report has no row with a monitor attached.
    assert_eq!(status("new flow with a monitor"), Status::NotMeasured);
    assert_eq!(status("3,000 instances"), Status::Met);
    assert_eq!(status("DNS queries/s"), Status::Met);
    assert_eq!(t.len(), 14);
    assert_eq!(t[0].goal, Goal::AtLeast(0.95));

    r.control.converge = None;
    r.costs.clear();
    r.dns.ours_qps = vec![None, Some(1.0)];
    r.dns.dnsmasq_qps = vec![Some(1.0), None];
    let t = targets(&r);
    assert!(
        t.iter()
            .filter(|x| x.unit != "x" || x.name.starts_with("DNS"))
            .all(|x| x.status == Status::NotMeasured)
    );
}

#[test]
fn markdown_has_every_section_and_the_dns_row() {
    let md = markdown(&canned());
    for needle in [
        "# EdgeIO overlay benchmark",
        "## Data paths",
        "| (a) plain routed (limit) | 11.00 | 0.30 | 60000 | 210 | 35 | 93 |",
        "| (e) userspace TUN-UDP (Oakestra) | 0.50 |",
        "## Ratios to (a) plain routing",
        "| (b) overlay ServIP, cross-node | 0.95x | 0.80x | 1.10x |",
        "| (b)/(a) UDP 64 B pps | 0.80x | ≥ 0.85x | MISSED |",
        "| translate+encapsulate, established flow | 130 ns | ≤ 250 ns | met |",
        "| 3,000 instances converge on every node | 0.15 s | ≤ 5 s | met |",
        "## Per-packet cost",
        "| encap_new path | prog | 1000000 | TC_ACT_REDIRECT | 400 | 405 | 800 | 300 | - | 1234 |",
        "## Control plane",
        "| 1000 services × 3 instances over 3 nodes (3000 instances)",
        "read 1 ms, desired 1500 ms, diff + apply 500 ms | 93021 entries |",
        "BPF map memory of one node (memlock, 2 maps) | 24.0 MiB |",
        "## DNS",
        "300 A names (100 services × 3 policies), 2 s per server and round",
        "| ours (overlay-ctl DnsServer, 1 thread) | 63000 | 0 |",
        "| dnsmasq (hosts file) | 55000 | 1 |",
        "| ratio ours/dnsmasq (median of per-round ratios) | 1.15x | |",
        "| DNS queries/s, ours/dnsmasq | 1.15x | ≥ 1.00x | met |",
    ] {
        assert!(md.contains(needle), "missing `{needle}` in:\n{md}");
    }
    assert!(!md.contains("## Errors"));
    let mut r = canned();
    r.errors.push("round 1 Tcp (e): timed out\nagain".into());
    let md = markdown(&r);
    assert!(
        md.contains("## Errors\n\n* round 1 Tcp (e): timed out again\n"),
        "{md}"
    );
}

#[test]
fn json_round_trips() {
    let r = canned();
    let json = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["paths"][4]["tcp_gbps"][1], serde_json::Value::Null);
    assert_eq!(v["paths"][0]["path"], "plain");
}

#[test]
fn chart_is_an_svg_with_a_bar_per_path_and_metric() {
    let svg = chart::svg(&canned());
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<rect x=").count(),
        4 * 3,
        "4 paths x 3 metrics"
    );
    assert!(svg.contains("0.95x") && svg.contains("goal (b) 0.90"));
    let mut r = canned();
    r.path_mut(PathId::Vxlan).udp_kpps = vec![None, None];
    assert!(chart::svg(&r).contains("not measured"));
}

#[test]
fn iperf3_json_and_proc_stat_parse() {
    let tcp: serde_json::Value = serde_json::json!({
        "end": {
            "sum_sent": {"retransmits": 3},
            "sum_received": {"seconds": 2.0, "bits_per_second": 5e9}
        }
    });
    let t = parse_tcp(&tcp, 2.0).unwrap();
    assert_eq!(t.gbps, 5.0);
    assert_eq!(t.retransmits, 3.0);
    assert!(
        (t.cpu_s_per_gbit - 0.2).abs() < 1e-9,
        "2 s of CPU for 10 Gbit"
    );

    let udp: serde_json::Value = serde_json::json!({
        "end": {
            "sum_sent": {"packets": 240000, "seconds": 2.0},
            "sum_received": {"packets": 239999, "lost_packets": 39999, "seconds": 2.0}
        }
    });
    let u = parse_udp(&udp).unwrap();
    assert_eq!(u.received_kpps, 100.0);
    assert_eq!(u.sent_kpps, 120.0);
    assert!(parse_udp(&serde_json::json!({"end": {}})).is_err());

    let stat = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
    let c = CpuTimes::parse(stat).unwrap();
    assert_eq!(c.busy, 100 + 5 + 50 + 3 + 7 + 2);
    assert_eq!(c.total, c.busy + 1000 + 20);
    assert_eq!(CpuTimes::parse("intr 1 2"), None);
}
