//! A node cut off from the store, but not from its peers, is not dead: its
//! peers keep it (and send it traffic) for the grace, then let it go; once
//! the store is back it registers again.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::{Netns, servers, wait_until};

const GRACE: u64 = 8;

/// Whether node 1's maps hold the backend `nsip`.
fn n1_holds(c: &Cluster, nsip: Ipv4Addr) -> bool {
    c.agents[0]
        .maps_json("backends")
        .to_string()
        .contains(&format!("\"{nsip}\""))
}

/// Whether the store lists `node`, and node 1 measured an RTT to it.
fn registered(c: &Cluster, node: &str) -> (bool, bool) {
    let nodes: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
    let rows = nodes.as_array().unwrap();
    let listed = rows.iter().any(|n| n["name"] == node);
    let measured = rows
        .iter()
        .any(|n| n["name"] == "n1" && n["rtt_us"].get(node).is_some());
    (listed, measured)
}

#[test]
fn a_node_cut_off_from_the_store_stays_for_the_grace() {
    let c = Cluster::with_config("grace", |_| format!("node_grace = {GRACE}\n"));
    let api = c.deploy_service(&descriptor("api", &[8080], false));
    c.deploy_service(&descriptor("web", &[], false));
    let rr = servip(&api, "roundrobin");
    let (a2_ns, w1) = (Netns::new("a2").unwrap(), Netns::new("w1").unwrap());
    let a2 = c.agents[1].deploy(API, 2, &a2_ns);
    c.agents[0].deploy(WEB, 1, &w1);
    servers::tcp(&a2_ns, 8080, "api2");
    wait_until(Duration::from_secs(15), "n1 measures n2", || {
        registered(&c, "n2") == (true, true) && n1_holds(&c, a2.nsip)
    })
    .unwrap();

    // n2 loses the store (its packets to etcd dropped), not its peers.
    let n2 = c.topo.node(2).ns();
    n2.run("nft", ["add", "table", "inet", "ovtcut"]).unwrap();
    let chain = "add chain inet ovtcut out { type filter hook output priority 0 ; }";
    n2.run("nft", chain.split(' ')).unwrap();
    let rule = format!("add rule inet ovtcut out ip daddr {ETCD_IP} tcp dport 2379 drop");
    n2.run("nft", rule.split(' ')).unwrap();
    wait_until(Duration::from_secs(TTL + 10), "n2's lease lapses", || {
        !registered(&c, "n2").0
    })
    .unwrap();
    let lapsed = Instant::now();
    assert!(
        n1_holds(&c, a2.nsip),
        "n1 keeps n2's instance while n2 answers probes"
    );
    let answered = who(&w1, rr, 8080, 5);
    assert!(
        answered.contains("api2"),
        "traffic still reaches n2: {answered:?}"
    );

    wait_until(
        Duration::from_secs(GRACE + 10),
        "n2 leaves after the grace",
        || !n1_holds(&c, a2.nsip),
    )
    .unwrap();
    let kept = lapsed.elapsed();
    assert!(kept >= Duration::from_secs(GRACE - 1), "kept only {kept:?}");
    println!("lapsed node kept for {kept:?} (grace {GRACE} s)");

    // The store back: n2 registers again and comes back everywhere.
    n2.run("nft", ["delete", "table", "inet", "ovtcut"])
        .unwrap();
    wait_until(Duration::from_secs(20), "n2 back in n1's maps", || {
        n1_holds(&c, a2.nsip)
    })
    .unwrap();
}
