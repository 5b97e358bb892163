//! Nodes behind NAT routers (namespaces with nftables), the rest of the
//! cluster on the switch:
//!
//! ```text
//!   n1 192.0.2.11 (public)     etcd 192.0.2.254
//!   r1 192.0.2.21: n2 10.1.0.12 (public 192.0.2.21:40012), n3 10.1.0.13 (:40013)
//!    └─ MTU 1400 ─ r2 192.0.2.22: n4 10.2.0.14 (public 192.0.2.22:40014)
//! ```
//!
//! Each router forwards one public port to each node's EWP, maps the node's
//! EWP back to it, masquerades everything else (to its WAN address, so with
//! new source ports) and hairpins. Traffic through ServIPs in every
//! direction, after idleness longer than the routers' UDP mappings live,
//! after one NATed node dies and comes back; large transfers across the
//! smaller-MTU hop.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::{Netns, Router, Topology, servers, wait_until};

const R1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
const R2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 22);
const EWP: u16 = overlay_common::DEFAULT_EWP;
const PORT: u16 = 8080;
/// The routers forget an idle UDP mapping after this many seconds.
const UDP_TIMEOUT: u64 = 4;

/// The public EWP a router forwards to node `i`.
fn public_port(i: usize) -> u16 {
    40_000 + 10 + i as u16
}

/// A router's rules: port `public_port(i)` to node `i`'s EWP and back,
/// everything else from the LAN masqueraded to the WAN address, and
/// hairpinning (LAN to the WAN address, rewritten to come from the router).
fn rules(r: &Router, nodes: &[(usize, Ipv4Addr)]) -> String {
    let (wan, lan) = (r.wan, format!("10.{}.0.0/24", r.number));
    let mut pre = String::new();
    let mut post = String::new();
    for (i, ip) in nodes {
        let port = public_port(*i);
        pre += &format!("ip daddr {wan} udp dport {port} dnat to {ip}:{EWP}\n");
        post += &format!("ip saddr {ip} udp sport {EWP} oifname != \"lan\" snat to {wan}:{port}\n");
    }
    format!(
        "table ip nat {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
{pre}  }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
{post}    ip saddr {lan} oifname != \"lan\" snat to {wan}
    ip saddr {lan} oifname \"lan\" masquerade
  }}
}}
"
    )
}

/// n1 public; n2, n3 behind r1; n4 behind r2, which r1 reaches over a link
/// of MTU 1400. Every uplink is at 1500.
fn nat_cluster(label: &str) -> Cluster {
    overlay_testnet::require_root().unwrap();
    let mut topo = Topology::new(1).unwrap();
    let r1 = topo.add_router(R1).unwrap();
    let n2 = topo.add_node_behind(r1).unwrap().ip();
    let n3 = topo.add_node_behind(r1).unwrap().ip();
    let r2 = topo.add_router_behind(r1, R2, 1400).unwrap();
    let n4 = topo.add_node_behind(r2).unwrap().ip();
    for (r, nodes) in [(r1, vec![(2, n2), (3, n3)]), (r2, vec![(4, n4)])] {
        let router = topo.router(r);
        router.nft(&rules(router, &nodes)).unwrap();
        for (key, secs) in [("", UDP_TIMEOUT), ("_stream", UDP_TIMEOUT)] {
            let key = format!("net/netfilter/nf_conntrack_udp_timeout{key}");
            router.ns.set_sysctl(&key, &secs.to_string()).unwrap();
        }
    }
    Cluster::on(label, topo, |i| match i {
        2 | 3 => format!("public = \"{R1}:{}\"\n", public_port(i)),
        4 => format!("public = \"{R2}:{}\"\n", public_port(i)),
        _ => String::new(),
    })
}

/// Service `s<i>` with one instance on node `i`, which answers "s<i>".
struct Site {
    servip: Ipv4Addr,
    nsip: Ipv4Addr,
    inst: Netns,
}

fn deploy_sites(c: &Cluster) -> Vec<Site> {
    (1..=c.agents.len())
        .map(|i| {
            let svc = format!("s{i}");
            let rec = c.deploy_service(&descriptor(&svc, &[PORT], false));
            let inst = Netns::new(&format!("i{i}")).unwrap();
            let name = format!("demo.prod.{svc}.v1");
            let spec = c.agents[i - 1].deploy(&name, 1, &inst);
            servers::tcp(&inst, PORT, Box::leak(svc.into_boxed_str()));
            Site {
                servip: servip(&rec, "roundrobin"),
                nsip: spec.nsip,
                inst,
            }
        })
        .collect()
}

/// Which `(from, to)` pairs of the live `nodes` fail to reach each other
/// through `to`'s ServIP (from `from`'s instance), within `deadline`.
fn failing(sites: &[Site], nodes: &[usize], deadline: Duration) -> Vec<(usize, usize)> {
    let start = Instant::now();
    let pairs: Vec<(usize, usize)> = nodes
        .iter()
        .flat_map(|&a| nodes.iter().map(move |&b| (a, b)))
        .filter(|(a, b)| a != b)
        .collect();
    let mut left = pairs;
    loop {
        left.retain(|&(a, b)| {
            let to = SocketAddr::from((sites[b - 1].servip, PORT));
            !servers::tcp_who(&sites[a - 1].inst, to).is_ok_and(|(w, _)| w == format!("s{b}"))
        });
        if left.is_empty() || start.elapsed() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn peers(c: &Cluster, node: usize) -> BTreeMap<String, String> {
    let v = c.agents[node - 1].maps_json("peers");
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["addr"].as_str().unwrap().to_string(),
                p["node"].to_string(),
            )
        })
        .collect()
}

#[test]
fn nodes_behind_nat_reach_each_other_in_every_direction() {
    let mut c = nat_cluster("nat");
    let sites = deploy_sites(&c);
    let all = [1, 2, 3, 4];
    assert_eq!(failing(&sites, &all, Duration::from_secs(20)), vec![]);

    // What each node's peers see: n2's probes leave r1 from its public port.
    let seen = std::cell::RefCell::new(serde_json::Value::Null);
    let waited = wait_until(Duration::from_secs(10), "n2's observed mapping", || {
        let json: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
        *seen.borrow_mut() = json.clone();
        let n2 = &json[1];
        n2["observed"]["n1"] == format!("{R1}:{}", public_port(2))
            && n2["observed"]["n4"] == format!("{R1}:{}", public_port(2))
            && n2["observed_mismatch"] == false
    });
    assert!(waited.is_ok(), "{:#}", seen.borrow());

    // n2 and n3 talk over their own addresses: neither the shared public
    // address nor the router's (a hairpin's source) is a tunnel source there.
    let p2 = peers(&c, 2);
    assert!(p2.contains_key("10.1.0.13"), "n3's own address: {p2:?}");
    let router = [R1.to_string(), "10.1.0.1".to_string()];
    assert!(!router.iter().any(|r| p2.contains_key(r)), "{p2:?}");
    // Elsewhere, r1's address stands for both nodes behind it.
    assert_eq!(
        peers(&c, 1).get(&R1.to_string()).map(String::as_str),
        Some("\"shared\"")
    );

    large_transfers(&sites);
    // The routers' reports, as each node applies them.
    let seen = std::cell::RefCell::new(serde_json::Value::Null);
    let waited = wait_until(Duration::from_secs(10), "the path MTUs in node ls", || {
        let json: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
        *seen.borrow_mut() = json.clone();
        let across = serde_json::json!(1400 - 28);
        json[0]["path_mtu"]["n4"] == across
            && json[3]["path_mtu"]["n1"] == across
            && json[3]["path_mtu"]["n2"] == across
            && json[0]["path_mtu"]["n2"] == serde_json::json!(1500 - 28)
    });
    assert!(waited.is_ok(), "{:#}", seen.borrow());
    assert!(
        c.ctl_ok(&["node", "ls"])
            .contains("path MTU below 1472: n4 1372")
    );
    oversized_datagram(&sites[0], sites[3].servip);

    // The routers' mappings expire while nobody sends: the probes keep
    // what the nodes need.
    std::thread::sleep(Duration::from_secs(3 * UDP_TIMEOUT));
    assert_eq!(
        failing(&sites, &all, Duration::from_secs(5)),
        vec![],
        "after idleness"
    );

    // n3 dies: n2, which shares its public address, keeps every peer.
    c.agents[2].kill9();
    wait_until(
        Duration::from_secs(TTL + 10),
        "n3 gone from the others",
        || c.everywhere(sites[2].nsip, false),
    )
    .unwrap();
    assert_eq!(
        failing(&sites, &[1, 2, 4], Duration::from_secs(10)),
        vec![],
        "after n3's death"
    );
    // It comes back (registers again) and everyone reaches it.
    c.agents[2].start(c.topo.node(3).ns());
    assert_eq!(
        failing(&sites, &all, Duration::from_secs(20)),
        vec![],
        "after n3's return"
    );
}

/// A UDP datagram too large for the path toward n4 is answered with
/// fragmentation needed: the sending instance's kernel takes the path's MTU
/// for the ServIP.
fn oversized_datagram(from: &Site, servip: Ipv4Addr) {
    let to = SocketAddr::from((servip, PORT));
    let route = || from.inst.ip(["route", "get", &servip.to_string()]).unwrap();
    assert!(!route().contains("mtu"), "{}", route());
    from.inst
        .enter(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            // Linux sets DF on UDP by default (IP_PMTUDISC_WANT).
            s.send_to(&[0x5a; 1400 - 28], to).unwrap();
        })
        .unwrap();
    wait_until(
        Duration::from_secs(3),
        "the instance to learn the MTU",
        || route().contains("mtu 1372"),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", route()));
}

/// 20 MB through a ServIP across r1–r2 (MTU 1400) in both directions: n4
/// sends to n1 (public) and n2 (NATed) sends to n4.
fn large_transfers(sites: &[Site]) {
    const SIZE: usize = 20 << 20;
    for (client, server) in [(1, 4), (4, 1), (4, 2), (2, 4)] {
        let to = SocketAddr::from((sites[server - 1].servip, PORT));
        let start = Instant::now();
        let done = sites[client - 1]
            .inst
            .enter(|| {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                servers::bulk(&mut s, SIZE)?;
                s.flush()
            })
            .unwrap();
        assert!(
            done.is_ok(),
            "20 MB from n{server} to n{client} across the 1400-byte hop: {done:?}"
        );
        println!(
            "20 MB n{server} -> n{client} across MTU 1400: {:?}",
            start.elapsed()
        );
    }
}
