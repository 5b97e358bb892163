//! `/metrics` of a running cluster: a scrape `promtool` accepts, exact
//! denied and new flow counts, an RTT gauge per peer, the watch's lag.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::store_cluster::*;
use overlay_testnet::{Netns, wait_until};

/// `GET /metrics` from node `i`'s agent (it listens on its namespace's loopback).
fn scrape(c: &Cluster, i: usize) -> String {
    let ns = c.topo.node(i).ns();
    ns.enter(|| {
        let mut s = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, 9464)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .unwrap()
    .unwrap()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_count_exactly_and_pass_promtool() {
    let c = Cluster::with_config("metrics", |_| "metrics = \"127.0.0.1:9464\"\n".into());
    let api = c.deploy_service(&access("api", &[8080], false, false, &[]));
    let api_vip = servip(&api, "roundrobin");
    let web = c.deploy_service(&access("web", &[], false, false, &[API]));
    let other = c.deploy_service(&access("db", &[5432], false, false, &[]));
    let db_vip = servip(&other, "roundrobin");
    let (w1, d2) = (Netns::new("w1").unwrap(), Netns::new("d2").unwrap());
    let a3 = Netns::new("a3").unwrap();
    c.agents[0].deploy(WEB, 1, &w1);
    c.agents[1].deploy(DB, 1, &d2);
    c.agents[2].deploy(API, 1, &a3);
    let name = web["name"].as_str().unwrap().to_string();
    let denied = format!("overlay_flows_denied_total{{service=\"{name}\"}}");
    wait_until(Duration::from_secs(20), "RTT gauges for both peers", || {
        let text = scrape(&c, 1);
        ["n2", "n3"]
            .iter()
            .all(|p| sample(&text, &format!("overlay_peer_rtt_seconds{{peer=\"{p}\"}}")).is_some())
    })
    .unwrap();
    let before = sample(body(&scrape(&c, 1)), &denied).unwrap_or(0.0);

    // web may open flows to api only: 100 new flows to db, one datagram each.
    w1.enter(|| {
        for _ in 0..100 {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"x", (db_vip, 5432)).unwrap();
        }
    })
    .unwrap();
    wait_until(Duration::from_secs(5), "100 denied flows counted", || {
        sample(body(&scrape(&c, 1)), &denied) == Some(before + 100.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", body(&scrape(&c, 1))));

    // web may open flows to api: 10 new flows, one datagram each, once the
    // node has api's backend.
    let api_name = api["name"].as_str().unwrap();
    let new = format!("overlay_flows_new_total{{service=\"{api_name}\"}}");
    let udp_to_api = || {
        w1.enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"x", (api_vip, 8080)).unwrap();
        })
        .unwrap()
    };
    wait_until(Duration::from_secs(10), "a first new flow to api", || {
        udp_to_api();
        sample(body(&scrape(&c, 1)), &new).is_some()
    })
    .unwrap();
    let before = sample(body(&scrape(&c, 1)), &new).unwrap();
    (0..10).for_each(|_| udp_to_api());
    wait_until(Duration::from_secs(5), "10 new flows counted", || {
        sample(body(&scrape(&c, 1)), &new) == Some(before + 10.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", body(&scrape(&c, 1))));

    // Name queries by result: one known name, one unknown.
    let dns = |result: &str| {
        sample(
            body(&scrape(&c, 1)),
            &format!("overlay_dns_queries_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (ok0, nx0) = (dns("noerror"), dns("nxdomain"));
    for name in [
        "demo.prod.api.v1.any.closest.local",
        "demo.prod.nope.v1.any.closest.local",
    ] {
        w1.run("dig", ["@169.254.1.1", "+short", "+tries=1", name])
            .unwrap();
    }
    assert_eq!((dns("noerror"), dns("nxdomain")), (ok0 + 1.0, nx0 + 1.0));

    let answer = scrape(&c, 1);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
    let text = body(&answer);
    assert_eq!(sample(text, "overlay_store_connected"), Some(1.0), "{text}");
    assert!(sample(text, "overlay_store_revision").is_some_and(|r| r > 0.0));
    // Confirmed current at least every 2 s (progress requests) while connected.
    let lag = sample(text, "overlay_store_watch_lag_seconds");
    assert!(lag.is_some_and(|s| s < 3.0), "watch lag {lag:?}");
    let probes = |what: &str| sample(text, &format!("overlay_probes_{what}_total{{peer=\"n2\"}}"));
    let (sent, answered) = (probes("sent").unwrap(), probes("answered").unwrap());
    assert!(
        sent >= answered && answered > 0.0,
        "{sent} sent, {answered} answered"
    );
    for series in [
        "overlay_packets_total{reason=\"deliver_local\"}",
        "overlay_map_capacity{map=\"CONNTRACK\"}",
        "overlay_map_entries{map=\"SERVIPS\"}",
        "overlay_reconcile_failing_entries",
    ] {
        assert!(sample(text, series).is_some(), "{series} in\n{text}");
    }
    // The agent reconciled at least once (its first sync), in some time.
    assert!(sample(text, "overlay_reconcile_passes_total").is_some_and(|n| n >= 1.0));
    assert!(sample(text, "overlay_reconcile_seconds_total").is_some_and(|s| s > 0.0));
    let file = c.work.dir.join("scrape.prom");
    std::fs::write(&file, text).unwrap();
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
