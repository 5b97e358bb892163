//! Instance plumbing (`overlay_ctl::netns`) against real namespaces.
//!
//! Every test builds its own node and instance namespaces with
//! overlay-testnet and runs `create`/`remove` on a thread inside the node
//! namespace; the state is then read back with `ip -n NS -j ...`. Needs root;
//! nothing is created in the root namespace.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use overlay_ctl::netns::{
    self, DEFAULT_GATEWAY, Error, InstanceLink, LINK_ALIAS, LinkSpec, NetnsRef,
};
use overlay_testnet::{Netns, Topology, require_root, wait_until};
use serde_json::Value;

const MTU: u16 = 1450;

/// Runs `f`'s future to completion on a current-thread runtime on a thread
/// inside `node`.
fn in_node<T: Send>(node: &Netns, f: impl AsyncFnOnce() -> T + Send) -> T {
    node.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f())
    })
    .expect("enter node namespace")
}

fn create(node: &Netns, spec: &LinkSpec) -> netns::Result<InstanceLink> {
    in_node(node, async || netns::create(spec).await)
}

fn remove(node: &Netns, host_if: &str) -> netns::Result<()> {
    in_node(node, async || netns::remove(host_if).await)
}

/// `ip -n NS -j ARGS...`, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let out = ns
        .ip(std::iter::once("-j").chain(args.iter().copied()))
        .expect("ip -j");
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
}

/// The interface `name` of `ns` (`ip -d link`), if there is one.
fn link(ns: &Netns, name: &str) -> Option<Value> {
    ip_json(ns, &["-d", "link", "show"])
        .into_iter()
        .find(|l| l["ifname"] == name)
}

/// The interface names of `ns`, sorted.
fn link_names(ns: &Netns) -> Vec<String> {
    let mut names: Vec<String> = ip_json(ns, &["link", "show"])
        .iter()
        .map(|l| l["ifname"].as_str().expect("ifname").to_owned())
        .collect();
    names.sort();
    names
}

fn routes(ns: &Netns) -> Vec<Value> {
    ip_json(ns, &["-4", "route", "show", "table", "main"])
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn spec(netns: NetnsRef, host_if: &str, nsip: Ipv4Addr) -> LinkSpec {
    LinkSpec::new(netns, host_if, nsip, MTU)
}

/// Checks both ends, the addresses, routes and the gateway neighbour
/// against `spec` and what `create` returned.
fn check_state(node: &Netns, inst: &Netns, spec: &LinkSpec, got: &InstanceLink) {
    let gw = spec.gateway.to_string();
    let nsip = spec.nsip.to_string();
    assert_eq!(got.host_if, spec.host_if);

    let host = link(node, &spec.host_if).expect("host side exists");
    assert_eq!(host["ifindex"], got.host_ifindex, "{host}");
    assert_eq!(host["address"], mac(&got.host_mac), "{host}");
    assert_eq!(host["mtu"], MTU, "{host}");
    assert_eq!(host["linkinfo"]["info_kind"], "veth", "{host}");
    assert_eq!(host["ifalias"], LINK_ALIAS, "{host}");
    assert!(
        host["flags"].as_array().unwrap().contains(&"UP".into()),
        "{host}"
    );
    let node_route = routes(node)
        .into_iter()
        .find(|r| r["dst"] == nsip.as_str())
        .expect("node route to the NamespaceIP");
    assert_eq!(node_route["dev"], spec.host_if, "{node_route}");
    assert_eq!(node_route["scope"], "link", "{node_route}");
    assert!(node_route.get("gateway").is_none(), "{node_route}");

    let eth0 = link(inst, "eth0").expect("instance eth0");
    assert_eq!(eth0["address"], mac(&got.inst_mac), "{eth0}");
    assert_eq!(eth0["mtu"], MTU, "{eth0}");
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth", "{eth0}");
    assert!(
        eth0["flags"].as_array().unwrap().contains(&"UP".into()),
        "{eth0}"
    );
    assert!(
        eth0["flags"]
            .as_array()
            .unwrap()
            .contains(&"LOWER_UP".into()),
        "{eth0}"
    );
    // Each end names the other: eth0's peer is the host side's ifindex.
    assert_eq!(eth0["link_index"], got.host_ifindex, "{eth0}");
    assert_eq!(host["link_index"], eth0["ifindex"], "{host}");

    let addrs = ip_json(inst, &["-4", "addr", "show", "dev", "eth0"]);
    let info = addrs[0]["addr_info"].as_array().expect("addr_info");
    assert_eq!(info.len(), 1, "exactly one IPv4 address: {info:?}");
    assert_eq!(info[0]["local"], nsip.as_str());
    assert_eq!(info[0]["prefixlen"], 32);

    let inst_routes = routes(inst);
    assert_eq!(inst_routes.len(), 2, "{inst_routes:?}");
    let gw_route = inst_routes.iter().find(|r| r["dst"] == gw.as_str());
    let gw_route = gw_route.expect("link route to the gateway");
    assert_eq!(gw_route["dev"], "eth0");
    assert_eq!(gw_route["scope"], "link");
    let default = inst_routes.iter().find(|r| r["dst"] == "default");
    let default = default.expect("default route");
    assert_eq!(default["gateway"], gw.as_str(), "{default}");
    assert_eq!(default["dev"], "eth0", "{default}");

    let neigh = ip_json(inst, &["-4", "neigh", "show", "dev", "eth0"]);
    let entry = neigh
        .iter()
        .find(|n| n["dst"] == gw.as_str())
        .expect("gateway neighbour");
    assert_eq!(entry["lladdr"], mac(&got.host_mac), "{entry}");
    assert!(
        entry["state"]
            .as_array()
            .unwrap()
            .contains(&"PERMANENT".into()),
        "{entry}"
    );
}

/// Pings node -> instance (via the node's /32 route; the node answers ARP
/// itself) and instance -> node (via the default route through the
/// gateway's permanent neighbour entry: nobody owns 169.254.1.1).
fn check_pings(node: &Netns, node_ip: Ipv4Addr, inst: &Netns, nsip: Ipv4Addr) {
    node.run("ping", ["-c1", "-W2", &nsip.to_string()])
        .expect("node pings the instance");
    inst.run("ping", ["-c1", "-W2", &node_ip.to_string()])
        .expect("instance pings the node through the gateway");
}

fn instance_ns(label: &str) -> Netns {
    let ns = Netns::new(label).expect("instance namespace");
    ns.disable_ipv6().expect("ipv6 off");
    ns
}

#[test]
fn links_instances_given_by_name_path_and_pid() {
    require_root().expect("root");
    let topo = Topology::new(1).expect("topology");
    let node = topo.node(1);
    let node_ns = node.ns();

    let by_name = instance_ns("i-name");
    let by_path = instance_ns("i-path");
    let by_pid = instance_ns("i-pid");
    let sleeper = by_pid.spawn("sleep", ["30"]).expect("sleep in namespace");
    let pid = sleeper.id();
    // `ip netns exec` joins the namespace just after the fork: wait until
    // the pid is really inside, never hand out the root namespace.
    let ino = std::fs::metadata(by_pid.path()).expect("stat netns").ino();
    wait_until(Duration::from_secs(5), "sleep inside its namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == format!("net:[{ino}]"))
    })
    .expect("pid in namespace");

    let cases = [
        (&by_name, NetnsRef::Name(by_name.name().into()), "vh1x2", 2),
        (&by_path, NetnsRef::Path(by_path.path().into()), "vh1x3", 3),
        (&by_pid, NetnsRef::Pid(pid), "vh1x4", 4),
    ];
    let mut made = Vec::new();
    for (inst, netns, host_if, host) in cases {
        let spec = spec(netns, host_if, Ipv4Addr::new(10, 30, 1, host));
        let got = create(node_ns, &spec).unwrap_or_else(|e| panic!("create {host_if}: {e}"));
        made.push((inst, spec, got));
    }
    for (inst, spec, got) in &made {
        check_state(node_ns, inst, spec, got);
        check_pings(node_ns, node.ip(), inst, spec.nsip);
    }
    let macs: Vec<_> = made.iter().map(|(_, _, g)| g.host_mac).collect();
    assert!(macs[0] != macs[1] && macs[1] != macs[2] && macs[0] != macs[2]);
    assert_eq!(
        link_names(node_ns),
        ["eth0", "lo", "vh1x2", "vh1x3", "vh1x4"],
        "nothing else in the node namespace (no temporary peers left)"
    );
    drop(sleeper);
}

#[test]
fn create_again_keeps_the_link_and_replaces_a_changed_one() {
    require_root().expect("root");
    let node = Netns::new("node").expect("node namespace");
    let inst = instance_ns("inst");
    let first = spec(
        NetnsRef::Name(inst.name().into()),
        "vh1x5",
        Ipv4Addr::new(10, 30, 1, 5),
    );
    let made = create(&node, &first).expect("first create");
    check_state(&node, &inst, &first, &made);

    let again = create(&node, &first).expect("second create");
    assert_eq!(again, made, "same link, same data");
    check_state(&node, &inst, &first, &again);
    assert_eq!(link_names(&node), ["lo", "vh1x5"]);
    assert_eq!(link_names(&inst), ["eth0", "lo"]);

    // Something around the link went missing: a create restores it and
    // keeps the link itself.
    inst.ip(["route", "del", "default"])
        .expect("drop default route");
    node.ip(["route", "del", "10.30.1.5/32"])
        .expect("drop node route");
    let repaired = create(&node, &first).expect("repairing create");
    assert_eq!(repaired, made);
    check_state(&node, &inst, &first, &repaired);

    // Another NamespaceIP for the same host_if and namespace: replaced.
    let moved = LinkSpec {
        nsip: Ipv4Addr::new(10, 30, 1, 6),
        ..first.clone()
    };
    let replaced = create(&node, &moved).expect("create with another nsip");
    check_state(&node, &inst, &moved, &replaced);
    assert!(
        !routes(&node).iter().any(|r| r["dst"] == "10.30.1.5"),
        "old node route gone"
    );
    assert_eq!(link_names(&node), ["lo", "vh1x5"]);
    assert_eq!(link_names(&inst), ["eth0", "lo"]);

    // The same host_if for another namespace: the old link goes, the
    // other namespace gets a new one.
    let other = instance_ns("other");
    let elsewhere = LinkSpec {
        netns: NetnsRef::Name(other.name().into()),
        ..moved.clone()
    };
    let relinked = create(&node, &elsewhere).expect("create for another namespace");
    check_state(&node, &other, &elsewhere, &relinked);
    assert_eq!(link_names(&node), ["lo", "vh1x5"]);
    assert_eq!(
        link_names(&inst),
        ["lo"],
        "the old peer went with the old link"
    );
}

#[test]
fn remove_deletes_both_ends_and_the_route() {
    require_root().expect("root");
    let node = Netns::new("node").expect("node namespace");
    let inst = instance_ns("inst");
    let s = spec(
        NetnsRef::Path(inst.path().into()),
        "vh1x7",
        Ipv4Addr::new(10, 30, 1, 7),
    );
    let made = create(&node, &s).expect("create");
    check_state(&node, &inst, &s, &made);

    remove(&node, "vh1x7").expect("remove");
    assert_eq!(link_names(&node), ["lo"]);
    assert_eq!(link_names(&inst), ["lo"], "the peer went with it");
    assert!(routes(&node).is_empty(), "{:?}", routes(&node));
    assert!(routes(&inst).is_empty(), "{:?}", routes(&inst));

    remove(&node, "vh1x7").expect("removing again is Ok");
    remove(&node, "never-made").expect("removing what never was is Ok");

    // And it can be made again afterwards.
    let again = create(&node, &s).expect("create after remove");
    check_state(&node, &inst, &s, &again);
}

/// Every failure names what it is about and leaves the node as it was.
#[test]
fn unusable_namespaces_and_names_are_clear_errors_that_change_nothing() {
    require_root().expect("root");
    let node = Netns::new("node").expect("node namespace");
    let inst = instance_ns("inst");
    let nsip = Ipv4Addr::new(10, 30, 1, 8);
    let expect_err = |netns: NetnsRef, host_if: &str, needle: &str| -> Error {
        let err = create(&node, &spec(netns.clone(), host_if, nsip))
            .expect_err(&format!("create into {netns:?} as {host_if}"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "`{msg}` should name `{needle}`");
        assert_eq!(link_names(&node), ["lo"], "after: {msg}");
        assert!(routes(&node).is_empty(), "after: {msg}");
        err
    };

    let missing = format!("{}-gone", inst.name());
    let err = expect_err(NetnsRef::Name(missing.clone()), "vh1x8", &missing);
    assert!(matches!(err, Error::OpenNetns { .. }), "{err}");
    expect_err(
        NetnsRef::Path("/run/netns/ovl-nope".into()),
        "vh1x8",
        "/run/netns/ovl-nope",
    );
    expect_err(
        NetnsRef::Pid(999_999_999),
        "vh1x8",
        "/proc/999999999/ns/net",
    );
    let err = expect_err(
        NetnsRef::Path("/proc/self/ns/uts".into()),
        "vh1x8",
        "/proc/self/ns/uts",
    );
    assert!(matches!(err, Error::BadNetns { .. }), "{err}");
    let err = expect_err(NetnsRef::Name(node.name().into()), "vh1x8", node.name());
    assert!(matches!(err, Error::BadNetns { .. }), "{err}");
    let err = expect_err(NetnsRef::Name("a/b".into()), "vh1x8", "a/b");
    assert!(matches!(err, Error::InvalidNetns { .. }), "{err}");
    let err = expect_err(
        NetnsRef::Name(inst.name().into()),
        "much-too-long-if",
        "much-too-long-if",
    );
    assert!(matches!(err, Error::InvalidIfName { .. }), "{err}");

    // The instance already has an eth0 that is not ours: refused, untouched.
    inst.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])
    .expect("foreign eth0");
    let err = expect_err(NetnsRef::Name(inst.name().into()), "vh1x8", inst.name());
    assert!(matches!(err, Error::Eth0Taken { .. }), "{err}");
    assert_eq!(link_names(&inst), ["eth0", "lo", "other0"]);
    assert_eq!(link(&inst, "eth0").unwrap()["mtu"], 1500);
    inst.ip(["link", "del", "eth0"]).expect("drop foreign eth0");

    // A host-side name taken by an interface we did not make (no alias):
    // neither reused, replaced nor removed.
    node.ip([
        "link", "add", "vh1x8", "type", "veth", "peer", "name", "vh1x8p",
    ])
    .expect("foreign vh1x8");
    let s = spec(NetnsRef::Name(inst.name().into()), "vh1x8", nsip);
    let err = create(&node, &s).expect_err("foreign host_if");
    assert!(matches!(err, Error::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("vh1x8"), "{err}");
    let err = remove(&node, "vh1x8").expect_err("remove refuses a foreign interface");
    assert!(matches!(err, Error::NotOurs { .. }), "{err}");
    assert_eq!(link_names(&node), ["lo", "vh1x8", "vh1x8p"]);
    assert_eq!(link_names(&inst), ["lo"]);
    node.ip(["link", "del", "vh1x8"])
        .expect("drop foreign vh1x8");

    // After all that, the real thing still works.
    let s = spec(NetnsRef::Name(inst.name().into()), "vh1x8", nsip);
    let made = create(&node, &s).expect("create");
    check_state(&node, &inst, &s, &made);
    assert_eq!(DEFAULT_GATEWAY, s.gateway);
}
