//! The balancing policies across three nodes with agents and etcd.
//!
//! This kernel has no netem, so n3 is made farther with the agent's test
//! knob `probe_echo_delay_ms = 40`: n3 answers RTT probes 40 ms late, so
//! every other node measures it ~40 ms away. The client (w1) runs on n1,
//! which has no instance of the service: closest must choose by distance.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::agents::Agent;
use common::store_cluster::*;
use overlay_testnet::{Netns, servers, wait_until};

const PORT: u16 = 8080;
/// Load counts flows that carried a packet within 2 s (2 ticks of 1.07 s:
/// at most 3.2 s), so the test's own short connections stop counting soon
/// after they close.
const CONFIG: &str = "probe_interval_ms = 200\nload_window_s = 2\n";

fn config(node: usize) -> String {
    match node {
        3 => format!("{CONFIG}probe_echo_delay_ms = 40\n"),
        _ => CONFIG.to_string(),
    }
}

/// One connection: who answered, and the open stream.
fn open(ns: &Netns, ip: Ipv4Addr) -> std::io::Result<(String, TcpStream)> {
    let s = ns
        .enter(|| TcpStream::connect_timeout(&SocketAddr::from((ip, PORT)), Duration::from_secs(3)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let name = ask(&s)?;
    Ok((name, s))
}

fn ask(mut s: &TcpStream) -> std::io::Result<String> {
    s.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Who answered `n` new connections, counted.
fn spread(ns: &Netns, ip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let (who, _) = open(ns, ip).expect("connection through the overlay");
        *out.entry(who).or_default() += 1;
    }
    out
}

/// n1's table for `vip` from `overlay-ctl maps backends`: NamespaceIP → weight.
fn weights(a: &Agent, vip: Ipv4Addr) -> BTreeMap<Ipv4Addr, f64> {
    a.maps_json("backends")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["servip"] == vip.to_string() && !r["backend"].is_null())
        .map(|r| {
            (
                r["backend"].as_str().unwrap().parse().unwrap(),
                r["weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn policies_follow_distance_load_and_instances() {
    let c = Cluster::with_config("policies", config);
    c.deploy_service(&descriptor("web", &[], false));
    let api = c.deploy_service(&descriptor("api", &[PORT], false));
    let (closest, rr, fastest) = (
        servip(&api, "closest"),
        servip(&api, "roundrobin"),
        servip(&api, "fastest"),
    );
    let ns: Vec<Netns> = ["w1", "a2", "b2", "a3"]
        .iter()
        .map(|l| Netns::new(l).unwrap())
        .collect();
    let w1 = &ns[0];
    c.agents[0].deploy(WEB, 1, w1);
    let a2 = c.agents[1].deploy(API, 2, &ns[1]).nsip;
    let b2 = c.agents[1].deploy(API, 4, &ns[2]).nsip;
    let a3 = c.agents[2].deploy(API, 3, &ns[3]).nsip;
    for (i, name) in [(1, "api2"), (2, "api2b"), (3, "api3")] {
        servers::tcp(&ns[i], PORT, name);
    }
    let n1 = &c.agents[0];

    // closest: both n2 instances (a tie), not n3, once the RTTs are measured.
    let near: Vec<Ipv4Addr> = vec![a2, b2];
    wait_until(
        Duration::from_secs(15),
        "closest = the two instances on n2",
        || weights(n1, closest).keys().copied().collect::<Vec<_>>() == near,
    )
    .unwrap();
    let got = spread(w1, closest, 30);
    println!("closest, 30 connections: {got:?}");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["api2", "api2b"],
        "near instances only, tie balanced"
    );

    // The measured distances, as the operator sees them.
    wait_until(Duration::from_secs(10), "n1's RTTs published", || {
        let nodes: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
        let n1 = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "n1")
            .unwrap()
            .clone();
        let us = |peer: &str| n1["rtt_us"][peer].as_u64().unwrap_or(0);
        us("n3") >= 40_000 && (1..20_000).contains(&us("n2"))
    })
    .unwrap();
    println!("$ overlay-ctl node ls\n{}", c.ctl_ok(&["node", "ls"]));
    println!(
        "$ overlay-ctl maps backends (n1)\n{}",
        n1.ctl_ok(&[
            "maps",
            "backends",
            "--pin-dir",
            n1.pin_dir.to_str().unwrap()
        ])
    );

    // fastest: the far instance keeps a sliver (once the flows above aged out).
    std::thread::sleep(Duration::from_secs(4));
    let w = weights(n1, fastest);
    println!("fastest weights (n3 40 ms away): {w:?}");
    assert!(w[&a3] <= 0.05 && w[&a2] > 0.4 && w[&b2] > 0.4, "{w:?}");
    let got = spread(w1, fastest, 40);
    println!("fastest, 40 connections: {got:?}");
    assert!(
        got.get("api3").copied().unwrap_or(0) <= 6,
        "far instance avoided: {got:?}"
    );

    // roundrobin: even over 999 new connections (±15 %).
    let got = spread(w1, rr, 999);
    println!("roundrobin, 999 connections: {got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.values().all(|&n| (283..=383).contains(&n)),
        "uneven: {got:?}"
    );

    loaded_instance_loses_new_flows(&c, w1, closest, fastest, a2, b2);
    failover_to_next_closest(&c, w1, closest);
}

/// Holds 30 active connections to api2 (through closest, keeping those that
/// land there): fastest moves new flows to api2b.
fn loaded_instance_loses_new_flows(
    c: &Cluster,
    w1: &Netns,
    closest: Ipv4Addr,
    fastest: Ipv4Addr,
    a2: Ipv4Addr,
    b2: Ipv4Addr,
) {
    std::thread::sleep(Duration::from_secs(4)); // the roundrobin flows age out
    let mut held = Vec::new();
    while held.len() < 30 {
        let (who, s) = open(w1, closest).unwrap();
        if who == "api2" {
            held.push(s);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let keep = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for s in &held {
                    ask(s).expect("a held connection keeps working");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let start = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "fastest shifts away from loaded api2",
        || {
            let w = weights(&c.agents[0], fastest);
            w[&a2] < 0.25 && w[&b2] > 0.7
        },
    )
    .unwrap();
    println!(
        "fastest reacted to 30 active flows in {:?}: {:?}",
        start.elapsed(),
        weights(&c.agents[0], fastest)
    );
    // New flows in small batches, each after the last one aged out.
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(4));
        for (who, n) in spread(w1, fastest, 10) {
            *got.entry(who).or_default() += n;
        }
    }
    println!("fastest with api2 loaded, 40 connections: {got:?}");
    let to = |n: &str| got.get(n).copied().unwrap_or(0);
    assert!(
        to("api2") <= 14 && to("api2b") >= to("api2") + 10,
        "{got:?}"
    );
    stop.store(true, Ordering::Relaxed);
    keep.join().unwrap();
}

/// Undeploying both near instances: closest moves on to n3 at once.
fn failover_to_next_closest(c: &Cluster, w1: &Netns, closest: Ipv4Addr) {
    let start = Instant::now();
    c.agents[1].ctl_ok(&["instance", "rm", API, "--instance", "2"]);
    c.agents[1].ctl_ok(&["instance", "rm", API, "--instance", "4"]);
    wait_until(Duration::from_secs(5), "closest fails over to n3", || {
        servers::tcp_who(w1, SocketAddr::from((closest, PORT))).is_ok_and(|(w, _)| w == "api3")
    })
    .unwrap();
    println!(
        "closest failed over to the next closest in {:?}",
        start.elapsed()
    );
    assert_eq!(spread(w1, closest, 10).keys().collect::<Vec<_>>(), ["api3"]);
}

/// fixed: instance N and nothing else; when N is gone, fail fast.
#[test]
fn fixed_sticks_and_fails_fast() {
    let c = Cluster::with_config("fixed", config);
    c.deploy_service(&descriptor("web", &[], false));
    c.deploy_service(&descriptor("db", &[PORT], true));
    let ns: Vec<Netns> = ["w1", "d1", "d2"]
        .iter()
        .map(|l| Netns::new(l).unwrap())
        .collect();
    c.agents[0].deploy(WEB, 1, &ns[0]);
    c.agents[1].deploy(DB, 1, &ns[1]);
    c.agents[2].deploy(DB, 2, &ns[2]);
    servers::tcp(&ns[1], PORT, "db1");
    servers::tcp(&ns[2], PORT, "db2");
    let ls: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["service", "ls", "--json"])).unwrap();
    let db = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == DB)
        .unwrap();
    let fixed2: Ipv4Addr = db["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == 2)
        .unwrap()["fixed_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "db 2 reachable at its fixed IP",
        || servers::tcp_who(&ns[0], SocketAddr::from((fixed2, PORT))).is_ok(),
    )
    .unwrap();
    let got = spread(&ns[0], fixed2, 20);
    assert_eq!(
        got,
        BTreeMap::from([("db2".to_string(), 20)]),
        "fixed sticks to instance 2"
    );

    c.agents[2].ctl_ok(&["instance", "rm", DB, "--instance", "2"]);
    wait_until(Duration::from_secs(5), "db 2 gone from n1's table", || {
        weights(&c.agents[0], fixed2).is_empty()
    })
    .unwrap();
    let start = Instant::now();
    let err =
        servers::tcp_who(&ns[0], SocketAddr::from((fixed2, PORT))).expect_err("instance 2 is gone");
    assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        start.elapsed()
    );
    let rows = c.agents[0].maps_json("backends");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["servip"] == fixed2.to_string() && r["backend"].is_null()),
        "the fixed IP stays, without backend: {rows}"
    );
}
