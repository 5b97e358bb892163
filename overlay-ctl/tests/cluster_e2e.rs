//! Three nodes and an etcd in namespaces; services deployed with the CLI,
//! instances through the agents. Propagation time, node death, store outage.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::servers;
use overlay_testnet::{Netns, wait_until};

#[test]
fn services_propagate_and_survive_node_death_and_store_outage() {
    let mut c = Cluster::new("cluster");
    let api = c.deploy_service(&descriptor("api", &[8080], false));
    c.deploy_service(&descriptor("web", &[], false));
    let db = c.deploy_service(&descriptor("db", &[5432], true));
    assert!(
        db["servips"].as_object().unwrap().is_empty(),
        "a stateful service has no policy ServIPs"
    );
    let again = c.deploy_service(&descriptor("api", &[8080], false));
    assert_eq!(again, api, "service deploy is idempotent");

    let nodes = c.ctl_ok(&["node", "ls", "--json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let subnets: BTreeSet<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["subnet"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subnets.len(), 3, "three nodes, three subnets: {nodes}");
    assert!(c.ctl_ok(&["node", "ls"]).starts_with("NODE"));

    // Instances: api on every node, web (the client) on n1, db on n2.
    let inst: Vec<Netns> = ["a1", "a2", "a3", "w1", "d1"]
        .iter()
        .map(|l| Netns::new(l).unwrap())
        .collect();
    c.agents[0].deploy(API, 1, &inst[0]);
    c.agents[1].deploy(API, 2, &inst[1]);
    c.agents[0].deploy(WEB, 1, &inst[3]);
    let d1 = c.agents[1].deploy(DB, 1, &inst[4]);
    for (i, name) in [(0, "api1"), (1, "api2"), (2, "api3")] {
        servers::tcp(&inst[i], 8080, name);
    }
    servers::tcp(&inst[4], 5432, "db1");

    let start = Instant::now();
    let a3 = c.agents[2].deploy(API, 3, &inst[2]);
    wait_until(Duration::from_secs(3), "api 3 in every node's maps", || {
        c.everywhere(a3.nsip, true)
    })
    .unwrap();
    println!(
        "instance deploy -> every node's maps: {:?}",
        start.elapsed()
    );

    let w1 = &inst[3];
    let rr = servip(&api, "roundrobin");
    wait_until(
        Duration::from_secs(10),
        "all three api instances behind roundrobin",
        || who(w1, rr, 8080, 9).len() == 3,
    )
    .unwrap();
    assert_eq!(
        who(w1, servip(&api, "closest"), 8080, 6),
        BTreeSet::from(["api1".to_string()]),
        "closest is local"
    );
    let ls: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["service", "ls", "--json"])).unwrap();
    let dbrow = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == DB)
        .unwrap();
    let fixed: Ipv4Addr = dbrow["instances"][0]["fixed_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(dbrow["instances"][0]["nsip"], d1.nsip.to_string());
    assert_eq!(
        who(w1, fixed, 5432, 3),
        BTreeSet::from(["db1".to_string()]),
        "the fixed IP reaches db 1"
    );

    // Names: glibc through the resolv.conf the agent wrote, dig against the
    // agent, the CLI, and a connection by name.
    for policy in ["closest", "roundrobin", "fastest"] {
        let name = format!("{API}.any.{policy}.local");
        let out = w1.run("getent", ["hosts", &name]).unwrap();
        assert!(
            out.starts_with(&format!("{} ", servip(&api, policy))),
            "getent {name}: {out}"
        );
        let dig = w1
            .run("dig", ["@169.254.1.1", "+short", &name, "A"])
            .unwrap();
        assert_eq!(dig.trim(), servip(&api, policy).to_string(), "dig {name}");
        assert_eq!(
            c.ctl_ok(&["resolve", &name]).trim(),
            servip(&api, policy).to_string()
        );
    }
    let db_name = format!("{DB}.1.fixed.local");
    assert_eq!(
        w1.run("dig", ["@169.254.1.1", "+short", &db_name])
            .unwrap()
            .trim(),
        fixed.to_string()
    );
    let by_name =
        format!("exec 3<>/dev/tcp/{API}.any.closest.local/8080; echo who >&3; head -1 <&3");
    assert_eq!(
        w1.run("bash", ["-c", &by_name]).unwrap().trim(),
        "api1",
        "a connection to NAME:port"
    );
    let dig = |name: &str| w1.run("dig", ["@169.254.1.1", name]).unwrap();
    let nx = dig("demo.prod.nothing.v1.any.closest.local");
    assert!(nx.contains("NXDOMAIN"), "unknown service: {nx}");
    let bad = dig(&format!("{API}.any.nearest.local"));
    assert!(
        bad.contains("FORMERR"),
        "unknown policy is malformed: {bad}"
    );
    assert!(!c.ctl(&["resolve", "not.a.name"]).status.success());

    // Node death: n3's agent killed, its lease left to expire.
    c.agents[2].kill9();
    let died = Instant::now();
    wait_until(
        Duration::from_secs(TTL + 7),
        "api 3 gone from the survivors",
        || c.everywhere(a3.nsip, false),
    )
    .unwrap();
    println!(
        "dead node's instance gone after {:?} (ttl {TTL}s)",
        died.elapsed()
    );
    assert!(
        who(w1, rr, 8080, 12).is_subset(&BTreeSet::from(["api1".to_string(), "api2".to_string()]))
    );

    // Store outage: forwarding goes on, deploys fail clearly, then resync.
    c.etcd.stop().unwrap();
    assert_eq!(
        who(w1, rr, 8080, 16).len(),
        2,
        "known services keep working without the store"
    );
    let out = c.agents[0].ctl(&[
        "instance",
        "deploy",
        API,
        "--instance",
        "4",
        "--netns",
        inst[0].name(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd"),
        "{out:?}"
    );
    let out = c.ctl(&["service", "ls"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot reach etcd"),
        "{out:?}"
    );
    c.etcd.restart().unwrap();
    let extra = Netns::new("a5").unwrap();
    let a5 = c.agents[1].deploy(API, 5, &extra);
    wait_until(
        Duration::from_secs(10),
        "agents resynced after the outage",
        || c.everywhere(a5.nsip, true),
    )
    .unwrap();
}

#[test]
fn bad_descriptors_name_the_field_and_change_nothing() {
    let c = Cluster::new("descr");
    c.deploy_service(&descriptor("api", &[8080], false));
    let before = c.ctl_ok(&["service", "ls", "--json"]);
    let good = descriptor("bad", &[80], false);
    for (from, to, field) in [
        ("\"appname\":\"demo\"", "\"appname\":\"de mo\"", "appname"),
        ("\"appns\":\"prod\"", "\"appns\":\"\"", "appns"),
        (
            "\"servicename\":\"bad\"",
            "\"servicename\":\"-x\"",
            "servicename",
        ),
        ("\"servicens\":\"v1\"", "\"servicens\":\"v_1\"", "servicens"),
        ("\"exposed\":false", "\"exposed\":\"no\"", "exposed"),
        ("\"needs\":[]", "\"needs\":[\"x\"]", "needs"),
        ("\"ports\":[80]", "\"ports\":[0]", "ports"),
        ("\"statefull\":false", "\"statefull\":2", "statefull"),
    ] {
        let path = c.work.dir.join("bad.json");
        std::fs::write(&path, good.replace(from, to)).unwrap();
        let out = c.ctl(&["service", "deploy", path.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
    assert_eq!(
        c.ctl_ok(&["service", "ls", "--json"]),
        before,
        "the store is unchanged"
    );
}

#[test]
fn exposure_from_outside_and_needs_between_services() {
    let c = Cluster::new("access");
    let api = c.deploy_service(&access("api", &[8080], false, true, &[]));
    let other = c.deploy_service(&descriptor("other", &[7070], false));
    c.deploy_service(&access("web", &[], false, false, &[API]));
    let (a, o, w) = (
        Netns::new("a1").unwrap(),
        Netns::new("o1").unwrap(),
        Netns::new("w1").unwrap(),
    );
    let a1 = c.agents[1].deploy(API, 1, &a); // on n2 only
    let o1 = c.agents[2].deploy("demo.prod.other.v1", 1, &o);
    c.agents[0].deploy(WEB, 1, &w);
    servers::tcp(&a, 8080, "api1");
    servers::tcp(&o, 7070, "other1");
    wait_until(Duration::from_secs(5), "instances everywhere", || {
        c.everywhere(a1.nsip, true) && c.everywhere(o1.nsip, true)
    })
    .unwrap();

    // North-south: n1 runs no api instance, yet its address serves the port.
    let ext = c.outside_host();
    let node1 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 11), 8080));
    let (answer, peer) = servers::tcp_who(ext, node1).expect("exposed port through n1");
    assert_eq!(
        (answer.as_str(), peer),
        ("api1", node1),
        "the reply comes from the address the client used"
    );
    let err =
        servers::tcp_who(ext, SocketAddr::from((Ipv4Addr::new(192, 0, 2, 11), 7070))).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "a port that is not exposed: {err}"
    );

    // East-west needs: web may reach api, not other.
    assert_eq!(
        who(&w, servip(&api, "roundrobin"), 8080, 3),
        BTreeSet::from(["api1".to_string()])
    );
    let other_rr = SocketAddr::from((servip(&other, "roundrobin"), 7070));
    let err = servers::tcp_who(&w, other_rr).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::HostUnreachable,
        "administratively prohibited: {err}"
    );
    let stats = c.agents[0].maps_json("stats").to_string();
    assert!(
        stats.contains("drop_denied:service-"),
        "denials per service in maps stats: {stats}"
    );

    // Updating `needs` takes effect for new flows.
    c.deploy_service(&access(
        "web",
        &[],
        false,
        false,
        &[API, "demo.prod.other.v1"],
    ));
    wait_until(Duration::from_secs(5), "web allowed to reach other", || {
        servers::tcp_who(&w, other_rr).is_ok()
    })
    .unwrap();

    // The cluster's default deny (a store setting): `other` has no `needs`.
    let api_rr = SocketAddr::from((servip(&api, "roundrobin"), 8080));
    assert!(servers::tcp_who(&o, api_rr).is_ok(), "allowed by default");
    c.ctl_ok(&["cluster", "set", "default-deny", "on"]);
    assert!(c.ctl_ok(&["cluster", "show"]).contains("default-deny  on"));
    wait_until(Duration::from_secs(5), "default deny on every node", || {
        servers::tcp_who(&o, api_rr).is_err_and(|e| e.kind() == std::io::ErrorKind::HostUnreachable)
    })
    .unwrap();
    assert!(
        servers::tcp_who(&w, api_rr).is_ok(),
        "web's needs still allow api"
    );
    c.ctl_ok(&["cluster", "set", "default-deny", "off"]);
    wait_until(Duration::from_secs(5), "default deny off again", || {
        servers::tcp_who(&o, api_rr).is_ok()
    })
    .unwrap();
    let bad = c.ctl(&["cluster", "set", "default-deny", "maybe"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("maybe"),
        "{bad:?}"
    );
}

/// A gateway host on the switch tunnels a client behind it to n1's NSP with a
/// userspace TUN forwarder (the tunnel framing: bare IPv4 in UDP); the client
/// reaches an exposed service whose only instance runs on n2, the replies
/// come back through n1 and the gateway; removing the gateway cuts it off.
#[test]
fn gateway_tunnels_external_clients_to_exposed_ports() {
    let mut c = Cluster::new("gw");
    c.deploy_service(&access("api", &[8080], false, true, &[]));
    let a = Netns::new("a1").unwrap();
    let a1 = c.agents[1].deploy(API, 1, &a); // n2
    servers::tcp(&a, 8080, "api1");
    let gw_ip = Ipv4Addr::new(192, 0, 2, 201);
    let gw_name = c.topo.add_host("gw", gw_ip).unwrap().name().to_string();
    let gw = c.topo.hosts().iter().find(|h| h.name() == gw_name).unwrap();
    let client = Netns::new("cli").unwrap();
    let node1 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 11), 8080));
    let nsp = overlay_common::DEFAULT_NSP;
    let tunnel = overlay_testnet::tun::gateway_for(
        gw,
        &client,
        SocketAddrV4::new(gw_ip, nsp),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), nsp),
    )
    .unwrap();
    // A NIC completes the checksums instances leave to offload before a
    // gateway's socket sees them; a veth does not, unless told to.
    c.topo
        .node(1)
        .ns()
        .run("ethtool", ["-K", "eth0", "tx", "off"])
        .unwrap();

    c.ctl_ok(&["gateway", "add", "edge", "--ip", "192.0.2.201"]);
    assert!(c.ctl_ok(&["gateway", "ls"]).contains("edge"));
    let registered = |on: bool| {
        c.agents
            .iter()
            .all(|a| a.maps_json("gateways").to_string().contains("192.0.2.201") == on)
    };
    wait_until(Duration::from_secs(5), "the gateway on every node", || {
        registered(true) && c.everywhere(a1.nsip, true)
    })
    .unwrap();

    let (answer, peer) = servers::tcp_who(&client, node1).expect("through the gateway");
    assert_eq!((answer.as_str(), peer), ("api1", node1));
    let counted = |reason: &str| -> u64 {
        let stats = c.agents[0].maps_json("stats");
        let row = stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == reason);
        row.map_or(0, |r| r["packets"].as_u64().unwrap())
    };
    assert!(counted("gateway_in") >= 3, "SYN, ACK, request...");
    let [to_node, from_node, _] = tunnel.counts();
    assert!(to_node >= 3 && from_node >= 2, "{:?}", tunnel.counts());
    assert!(
        counted("gateway_out") >= 2,
        "replies relayed from n2 to the gateway"
    );
    let ct = c.agents[0].maps_json("conntrack").to_string();
    assert!(ct.contains("\"via\":\"192.0.2.201\""), "{ct}");
    // The port must be exposed: the gateway is no way around that.
    let closed = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 11), 22));
    assert!(servers::tcp_who(&client, closed).is_err());

    // Refusals name the reason.
    let at_node = c.ctl(&["gateway", "add", "x", "--ip", "192.0.2.11"]);
    let why = String::from_utf8_lossy(&at_node.stderr);
    assert!(
        !at_node.status.success() && why.contains("node `n1`'s address"),
        "{why}"
    );
    let nope = c.ctl(&["gateway", "rm", "nope"]);
    assert!(String::from_utf8_lossy(&nope.stderr).contains("no gateway named `nope`"));

    c.ctl_ok(&["gateway", "rm", "edge"]);
    wait_until(
        Duration::from_secs(5),
        "the gateway gone everywhere",
        || registered(false),
    )
    .unwrap();
    let dropped = counted("drop_unknown_gateway");
    assert!(
        servers::tcp_who(&client, node1).is_err(),
        "no longer let in"
    );
    assert!(counted("drop_unknown_gateway") > dropped);
}

/// An agent whose certificate names another node is refused at start, with
/// both names; the node of that name keeps running. A node's certificate
/// also cannot deploy a service through the CLI.
#[test]
fn identities_are_checked() {
    let c = Cluster::new("ident");
    let dir = c.work.dir.join("imposter");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    let text = format!(
        "node_id = \"n2\"\nuplink = \"eth0\"\nstore = \"{}\"\n{}state_dir = \"{d}/state\"\nbpf_pin_dir = \"{pins}\"\napi_socket = \"{d}/api.sock\"\n",
        c.etcd.endpoint(),
        Pki::at(&c.work).agent_toml("n1"),
        d = dir.display(),
        pins = c.work.dir.join("bpf").join("imposter").display(),
    );
    std::fs::write(&config, text).unwrap();
    let out = c
        .topo
        .node(1)
        .ns()
        .cmd(
            common::agents::BIN,
            ["agent", "--config", config.to_str().unwrap()],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the imposter ran: {stderr}");
    assert!(
        stderr.contains("store_cert names `n1` but node_id is `n2`"),
        "{stderr}"
    );
    assert!(c.agents[1].proc.is_some(), "n2 keeps running");
    let path = c.work.dir.join("evil.json");
    std::fs::write(&path, descriptor("evil", &[80], false)).unwrap();
    let out = c.ctl_with("n1", &["service", "deploy", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node deployed a service");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

/// A node that listens on an exposed port itself keeps the port: its own
/// listener answers there, the node reports the conflict, and the other
/// nodes expose the port as usual.
#[test]
fn a_node_listening_on_an_exposed_port_keeps_it() {
    let c = Cluster::new("listen");
    let n1 = c.topo.node(1).ns();
    servers::tcp(n1, 8081, "n1-itself");
    c.deploy_service(&access("api", &[8081], false, true, &[]));
    let a = Netns::new("a1").unwrap();
    c.agents[1].deploy(API, 1, &a);
    servers::tcp(&a, 8081, "api1");
    let ext = c.outside_host();
    let at = |last: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, last), 8081));
    wait_until(Duration::from_secs(5), "api through n2", || {
        servers::tcp_who(ext, at(12)).is_ok_and(|(w, _)| w == "api1")
    })
    .unwrap();
    // Noticed within a measurement period (a second).
    wait_until(Duration::from_secs(5), "the conflict in node ls", || {
        c.ctl_ok(&["node", "ls"])
            .contains("not exposing 8081/tcp demo.prod.api.v1")
    })
    .unwrap();
    let (answer, _) = servers::tcp_who(ext, at(11)).expect("n1's own listener");
    assert_eq!(
        answer, "n1-itself",
        "the node's own service is not taken over"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
    assert_eq!(
        json[0]["exposed_conflicts"],
        serde_json::json!(["8081/tcp demo.prod.api.v1"])
    );
    assert_eq!(json[1]["exposed_conflicts"], serde_json::json!([]));
    // Where each node's probes come from, as its peers see them: its own
    // address and EWP here (no NAT), so no mismatch.
    let seen = std::cell::RefCell::new(serde_json::Value::Null);
    let waited = wait_until(Duration::from_secs(10), "the peers' view of n1", || {
        let json: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["node", "ls", "--json"])).unwrap();
        *seen.borrow_mut() = json.clone();
        json[0]["observed"]
            == serde_json::json!({"n2": "192.0.2.11:50103", "n3": "192.0.2.11:50103"})
            && json[0]["observed_mismatch"] == false
    });
    assert!(waited.is_ok(), "{:#}", seen.borrow());
    assert!(
        c.ctl_ok(&["node", "ls"])
            .contains("seen by its peers as 192.0.2.11:50103")
    );
}
