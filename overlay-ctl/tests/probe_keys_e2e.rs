//! Rotating the probe key while probes run: no node loses its RTTs, and an
//! agent that starts after the rotation (knowing only the new key) is
//! measured by the agents that ran through it.

mod common;

use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::wait_until;

/// The peers node `from` measures, as published in the store.
fn measured(c: &Cluster, from: &str) -> Vec<String> {
    let nodes: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
    let row = nodes.as_array().unwrap().iter().find(|n| n["name"] == from);
    row.and_then(|r| r["rtt_us"].as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_probe_key_rotates_without_losing_probes() {
    let mut c = Cluster::new("rotate");
    let all = |c: &Cluster| measured(c, "n1") == ["n2", "n3"];
    wait_until(Duration::from_secs(20), "n1 measures n2 and n3", || all(&c)).unwrap();

    let rotation = std::thread::scope(|s| {
        let rotate = s.spawn(|| c.ctl(&["cluster", "rotate-probe-key"]));
        while !rotate.is_finished() {
            let peers = measured(&c, "n1");
            assert_eq!(
                peers,
                ["n2", "n3"],
                "a peer's RTT lapsed during the rotation"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        rotate.join().unwrap()
    });
    let stdout = String::from_utf8_lossy(&rotation.stdout);
    assert!(rotation.status.success(), "{rotation:?}");
    assert!(stdout.contains("rotated"), "{stdout}");

    // Wait out the old key, then start n3 afresh: it knows only the new key.
    std::thread::sleep(Duration::from_secs(6));
    c.agents[2].kill9();
    // Its registration and measurements expire first: what n3 publishes
    // next, it measured after its restart.
    wait_until(
        Duration::from_secs(TTL + 10),
        "n3's registration expires",
        || !c.ctl_ok(&["node", "ls"]).contains("n3"),
    )
    .unwrap();
    c.agents[2].start(c.topo.node(3).ns());
    let restarted = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "n3 measures n1 with the new key",
        || measured(&c, "n3").contains(&"n1".to_string()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "n1 measures the restarted n3",
        || all(&c),
    )
    .unwrap();
    println!("restarted node measured after {:?}", restarted.elapsed());
}
