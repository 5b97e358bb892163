//! The desired maps for small cluster states.

use super::*;
use crate::model::{NodeSpec, ServiceSpec};

pub(super) fn node(name: &str, o: u8) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        ip: Ipv4Addr::new(192, 0, 2, 10 + o),
        ewp: 50103,
        subnet: format!("10.30.{o}.0/24").parse().unwrap(),
        location: None,
        own: None,
        mtu: 0,
    }
}

fn inst(n: u32, node: &str, o: u8) -> InstanceSpec {
    InstanceSpec {
        service: "a.b.c.d".into(),
        instance: n,
        node: node.into(),
        nsip: Ipv4Addr::new(10, 30, o, 2),
        fixed_ip: None,
        health: Default::default(),
    }
}

fn state() -> ClusterState {
    ClusterState {
        nodes: vec![node("n1", 1), node("n2", 2)],
        services: vec![ServiceSpec {
            name: "a.b.c.d".into(),
            id: 7,
            ports: vec![80],
            stateful: false,
            servips: Policy::SERVIPS
                .iter()
                .zip(1..)
                .map(|(p, i)| (*p, Ipv4Addr::new(172, 30, 0, i)))
                .collect(),
            exposed: false,
            needs: Vec::new(),
            readiness: None,
        }],
        instances: vec![inst(1, "n1", 1), inst(2, "n2", 2)],
        ..Default::default()
    }
}

fn local<'a>(eps: &'a BTreeMap<Ipv4Addr, Endpoint>) -> LocalNode<'a> {
    let config = Config {
        node_id: "10.30.1.0/24"
            .parse::<crate::model::Subnet>()
            .unwrap()
            .node_id(),
        ..Default::default()
    };
    LocalNode {
        name: "n1",
        config,
        endpoints: eps,
        snat: Ipv4Addr::new(10, 30, 1, 1),
        default_deny: false,
        expose_where_running: false,
        balance: Params::default(),
    }
}

#[test]
fn policies_pick_their_slots() {
    let eps = BTreeMap::new();
    let m = desired(&state(), &local(&eps));
    let n1 = u32::from(Ipv4Addr::new(10, 30, 1, 2));
    let n2 = u32::from(Ipv4Addr::new(10, 30, 2, 2));
    assert_eq!(
        m.servips[&Ipv4Addr::new(172, 30, 0, 1)].2,
        vec![n1],
        "closest keeps the local instance"
    );
    assert_eq!(m.servips[&Ipv4Addr::new(172, 30, 0, 2)].2, vec![n1, n2]);
    assert_eq!(m.ports.len(), 3, "tcp, udp and icmp echo");
    assert_eq!(m.nodes.len(), 2);
}

/// n1 (this node) runs nothing; n2 is 30 ms away, n3 0.4 ms.
#[test]
fn distances_and_loads_shape_the_tables() {
    let mut s = state();
    s.instances.remove(0);
    s.nodes.push(node("n3", 3));
    s.instances.push(inst(3, "n3", 3));
    s.rtt.insert(
        "n1".into(),
        [("n2".into(), 30_000), ("n3".into(), 400)].into(),
    );
    let eps = BTreeMap::new();
    let (n2, n3) = (Ipv4Addr::new(10, 30, 2, 2), Ipv4Addr::new(10, 30, 3, 2));
    let table = |m: &MapSet, last: u8| m.servips[&Ipv4Addr::new(172, 30, 0, last)].2.clone();
    let share = |t: &[u32], ip: Ipv4Addr| t.iter().filter(|&&id| id == u32::from(ip)).count();
    let m = desired(&s, &local(&eps));
    assert_eq!(table(&m, 1), [u32::from(n3)], "closest: the near node");
    assert_eq!(table(&m, 2).len(), 2, "roundrobin: both");
    let fast = table(&m, 3);
    assert_eq!((share(&fast, n2), share(&fast, n3)), (1, 31), "{fast:?}");
    // n3's instance gets busy (flows from n2): fastest shifts toward n2.
    s.load.insert("n2".into(), [(n3, 300)].into());
    let fast = table(&desired(&s, &local(&eps)), 3);
    assert!(share(&fast, n2) > share(&fast, n3), "{fast:?}");
    // Without a measurement the reverse direction or coordinates count.
    s.rtt.clear();
    s.rtt.insert("n2".into(), [("n1".into(), 200)].into());
    assert_eq!(table(&desired(&s, &local(&eps)), 1), [u32::from(n2)]);
    s.rtt.clear();
    let at = |lat| Some(crate::balance::Location { lat, lon: 11.0 });
    (
        s.nodes[0].location,
        s.nodes[1].location,
        s.nodes[2].location,
    ) = (at(48.0), at(48.1), at(52.0));
    assert_eq!(table(&desired(&s, &local(&eps)), 1), [u32::from(n2)]);
}

/// A claimed fixed IP without its instance stays, without backends.
#[test]
fn fixed_ip_of_a_missing_instance_fails_fast() {
    let mut s = state();
    s.services[0].servips.clear();
    s.services[0].stateful = true;
    let ip = Ipv4Addr::new(172, 30, 1, 9);
    s.fixed.push(FixedIp {
        service: "A.b.c.d".into(),
        instance: 2,
        ip,
    });
    let eps = BTreeMap::new();
    let want = |m: MapSet| m.servips[&ip].clone();
    let n2 = u32::from(Ipv4Addr::new(10, 30, 2, 2));
    assert_eq!(
        want(desired(&s, &local(&eps))),
        (7, Policy::Fixed, vec![n2])
    );
    s.instances.pop();
    assert_eq!(want(desired(&s, &local(&eps))), (7, Policy::Fixed, vec![]));
}

/// An instance that is not ready leaves every slot table (closest falls
/// back to the next closest) but keeps its backend entry, so that its
/// established flows are not ended.
#[test]
fn instances_that_are_not_ready_get_no_new_flows() {
    use crate::model::Health;
    let eps = BTreeMap::new();
    let (n1, n2) = (Ipv4Addr::new(10, 30, 1, 2), Ipv4Addr::new(10, 30, 2, 2));
    for health in [Health::Starting, Health::Failing, Health::Draining] {
        let mut s = state();
        s.instances[0].health = health;
        let m = desired(&s, &local(&eps));
        for (vip, (_, pol, slots)) in &m.servips {
            assert!(!slots.contains(&u32::from(n1)), "{health:?} {pol:?} {vip}");
        }
        let closest = &m.servips[&Ipv4Addr::new(172, 30, 0, 1)].2;
        assert_eq!(
            closest,
            &vec![u32::from(n2)],
            "{health:?}: the next closest"
        );
        assert_eq!(
            m.backends[&u32::from(n1)],
            (n1, s.nodes[0].subnet.node_id())
        );
        assert!(m.nsip_services.contains_key(&n1));
    }
    let mut s = state();
    s.services[0].servips.clear();
    s.services[0].stateful = true;
    s.instances[1].fixed_ip = Some(Ipv4Addr::new(172, 30, 1, 2));
    s.instances[1].health = Health::Starting;
    let m = desired(&s, &local(&eps));
    let fixed = &m.servips[&Ipv4Addr::new(172, 30, 1, 2)];
    assert_eq!(
        fixed,
        &(7, Policy::Fixed, vec![]),
        "fails fast while not ready"
    );
}

#[test]
fn fixed_ips_for_stateful_instances() {
    let mut s = state();
    s.services[0].servips.clear();
    s.services[0].stateful = true;
    s.instances[1].fixed_ip = Some(Ipv4Addr::new(172, 30, 1, 2));
    let eps = BTreeMap::new();
    let m = desired(&s, &local(&eps));
    assert_eq!(m.servips.len(), 1);
    let (_, pol, slots) = &m.servips[&Ipv4Addr::new(172, 30, 1, 2)];
    assert_eq!(
        (*pol, slots.clone()),
        (Policy::Fixed, vec![u32::from(Ipv4Addr::new(10, 30, 2, 2))])
    );
}

#[test]
fn needs_and_exposure() {
    let mut s = state();
    s.services[0].exposed = true;
    s.services.push(ServiceSpec {
        name: "a.b.web.d".into(),
        id: 8,
        ports: vec![],
        stateful: false,
        servips: BTreeMap::new(),
        exposed: false,
        needs: vec!["A.B.C.D".into(), "not.deployed.yet.x".into()],
        readiness: None,
    });
    let eps = BTreeMap::new();
    let m = desired(&s, &local(&eps));
    assert_eq!(m.restricted, BTreeSet::from([8]));
    assert_eq!(m.needs, BTreeSet::from([(8, 7)]));
    let closest = Ipv4Addr::new(172, 30, 0, 1);
    let snat = Ipv4Addr::new(10, 30, 1, 1);
    assert_eq!(m.exposed.get(&(80, IPPROTO_TCP)), Some(&(closest, snat)));
    assert_eq!(m.exposed.len(), 2, "tcp and udp");

    // Only where an instance runs: n1 runs instance 1, so it still serves.
    let mut l = local(&eps);
    l.expose_where_running = true;
    assert_eq!(desired(&s, &l).exposed.len(), 2);
    s.instances.retain(|i| i.node != "n1");
    assert!(
        desired(&s, &l).exposed.is_empty(),
        "no local instance: not exposed here"
    );
    // Gateways are accepted on every node, exposing or not.
    s.gateways.push(crate::model::GatewaySpec {
        name: "edge".into(),
        ip: Ipv4Addr::new(198, 51, 100, 1),
        port: 40000,
    });
    let m = desired(&s, &l);
    assert_eq!(
        m.gateways,
        BTreeMap::from([(Ipv4Addr::new(198, 51, 100, 1), 40000)])
    );
}

/// A map set with one node, `backends` on it and one ServIP per
/// (service, slots) pair, 172.30.0.1 onwards.
fn maps_with(backends: &[u32], servips: &[(u32, Vec<u32>)]) -> MapSet {
    let mut m = MapSet::default();
    m.nodes
        .insert(1, (Ipv4Addr::new(192, 0, 2, 1), 50103, 1472));
    for &id in backends {
        m.backends.insert(id, (Ipv4Addr::from(id), 1));
    }
    for (i, (svc, slots)) in servips.iter().enumerate() {
        m.ports.insert((*svc, 80, IPPROTO_TCP));
        let vip = Ipv4Addr::new(172, 30, 0, 1 + i as u8);
        m.servips
            .insert(vip, (*svc, Policy::Closest, slots.clone()));
    }
    m
}

fn tables() -> crate::dataplane::Dataplane {
    crate::dataplane::Dataplane::load(None).expect("the dataplane loads (as root)")
}

const VIP1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const VIP2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

/// One entry that cannot be written (a slot table larger than a ServIP may
/// have) fails alone, with what depends on it; the rest is applied, and
/// what `apply` says the maps hold is what they hold.
#[test]
fn a_failing_entry_fails_alone() {
    let mut dp = tables();
    let mut want = maps_with(&[10, 11], &[(1, vec![10]), (2, vec![11; 70_000])]);
    want.exposed
        .insert((80, IPPROTO_TCP), (VIP2, Ipv4Addr::new(10, 30, 1, 1)));
    want.exposed
        .insert((81, IPPROTO_TCP), (VIP1, Ipv4Addr::new(10, 30, 1, 1)));
    let (c, now) = apply(&mut dp.tables, &MapSet::default(), &want);
    let failed: Vec<(&str, &str)> = c.failed.iter().map(|f| (f.table, f.key.as_str())).collect();
    assert_eq!(failed, [("servips", "172.30.0.2"), ("exposed", "(80, 6)")]);
    assert!(
        c.failed[1].error.contains("ServIp(172.30.0.2)"),
        "{:?}",
        c.failed
    );
    let held = read(&dp.tables);
    assert_eq!(held, now);
    assert!(held.servips.contains_key(&VIP1) && !held.servips.contains_key(&VIP2));
    assert_eq!(held.exposed.len(), 1);
}

/// A ServIP whose new table cannot be written keeps its old one, and the
/// old table's backend stays although the desired state dropped it: no
/// packet meets a slot without its backend.
#[test]
fn a_failed_update_keeps_what_the_old_entry_needs() {
    let mut dp = tables();
    let first = maps_with(&[10, 11], &[(1, vec![10]), (2, vec![11])]);
    let (c, have) = apply(&mut dp.tables, &MapSet::default(), &first);
    assert!(c.failed.is_empty(), "{:?}", c.failed);
    let want = maps_with(&[10, 12], &[(1, vec![10]), (2, vec![12; 70_000])]);
    let (c, now) = apply(&mut dp.tables, &have, &want);
    let tables: Vec<&str> = c.failed.iter().map(|f| f.table).collect();
    assert_eq!(tables, ["servips", "backends"], "{:?}", c.failed);
    let held = read(&dp.tables);
    assert_eq!(held, now);
    assert_eq!(held.servips[&VIP2].2, vec![11], "the old table is live");
    assert!(held.backends.contains_key(&11) && held.backends.contains_key(&12));
}

/// A full map refuses the entries past its capacity; every other change of
/// the pass, removals included, is still made.
#[test]
fn a_full_map_stops_nothing_else() {
    let mut dp = tables();
    let first = maps_with(&[10], &[(1, vec![10])]);
    let (_, have) = apply(&mut dp.tables, &MapSet::default(), &first);
    let mut want = maps_with(&[], &[]);
    let cap = overlay_common::registry::capacity::GATEWAYS;
    for i in 0..cap + 20 {
        want.gateways.insert(Ipv4Addr::from(0xc633_0000 + i), 40000);
    }
    let (c, now) = apply(&mut dp.tables, &have, &want);
    assert_eq!(c.failed.len(), 20, "{:?}", &c.failed[..1]);
    assert!(c.failed.iter().all(|f| f.table == "gateways"));
    assert_eq!(c.removed, 3, "the ServIP, its port and its backend");
    assert_eq!(read(&dp.tables), now);
}

/// A record over a limit (here 300 ports) is left out alone, reported.
#[test]
fn a_service_over_a_limit_is_refused_alone() {
    let mut s = state();
    let mut big = s.services[0].clone();
    big.name = "a.b.big.d".into();
    big.id = 8;
    big.ports = (1..=300).collect();
    s.services.push(big);
    let eps = BTreeMap::new();
    let m = desired(&s, &local(&eps));
    assert_eq!(m.refused.len(), 1);
    assert_eq!(m.refused[0].key, "a.b.big.d");
    assert!(
        m.refused[0].error.contains("300 ports"),
        "{}",
        m.refused[0].error
    );
    assert!(m.servips.values().all(|(svc, _, _)| *svc == 7));
}

/// The failure log: a failure counts once while it lasts.
#[test]
fn failures_are_counted_once_while_they_last() {
    let f = Failure {
        table: "gateways",
        key: "1.2.3.4".into(),
        error: "full".into(),
    };
    let mut all = Failures::default();
    all.update(std::slice::from_ref(&f));
    all.update(std::slice::from_ref(&f));
    assert_eq!((all.total, all.outstanding().len()), (1, 1));
    all.update(&[]);
    assert_eq!((all.total, all.outstanding().len()), (1, 0));
    all.update(&[f]);
    assert_eq!(all.total, 2);
}

/// A node record claiming every address (subnet 0.0.0.0/0) and a service
/// claiming 8.8.8.8 reach no map; the rest of the cluster does.
#[test]
fn corrupt_records_reach_no_map() {
    let mut s = state();
    let mut all = node("x", 9);
    all.subnet = "0.0.0.0/0".parse().unwrap();
    s.nodes.push(all);
    let mut google = s.services[0].clone();
    google.name = "a.b.g.d".into();
    google.id = 9;
    google.servips = [(Policy::Closest, Ipv4Addr::new(8, 8, 8, 8))].into();
    s.services.push(google);
    let eps = BTreeMap::new();
    let m = desired(&s, &local(&eps));
    assert!(
        !m.routes.keys().any(|(_, prefix)| *prefix == 0),
        "{:?}",
        m.routes
    );
    assert!(
        !m.nodes
            .values()
            .any(|(ip, _, _)| *ip == Ipv4Addr::new(192, 0, 2, 19))
    );
    assert!(!m.servips.contains_key(&Ipv4Addr::new(8, 8, 8, 8)));
    assert_eq!(m.refused.len(), 2, "{:?}", m.refused);
    assert_eq!(m.servips.len(), 3, "the good service keeps its ServIPs");
}

/// Nodes behind one public address reach each other at their own
/// addresses (no hairpinning through the router); everyone else reaches
/// them at the public mapping, and they reach the others there too.
#[test]
fn nodes_behind_one_nat_talk_over_their_own_addresses() {
    let public = Ipv4Addr::new(198, 51, 100, 7);
    let natted = |name: &str, o: u8, port: u16| NodeSpec {
        ip: public,
        ewp: port,
        own: Some(std::net::SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 0, o),
            50103,
        )),
        ..node(name, o)
    };
    let mut s = state();
    s.nodes = vec![
        natted("n1", 1, 40001),
        natted("n2", 2, 40002),
        node("n3", 3),
    ];
    let eps = BTreeMap::new();
    let id = |name: &str| s.node(name).unwrap().subnet.node_id();
    let m = desired(&s, &local(&eps));
    let at = |m: &MapSet, n: &str| {
        let (ip, port, _) = m.nodes[&id(n)];
        (ip, port)
    };
    assert_eq!(
        at(&m, "n2"),
        (Ipv4Addr::new(10, 0, 0, 2), 50103),
        "same site"
    );
    assert_eq!(at(&m, "n3"), (Ipv4Addr::new(192, 0, 2, 13), 50103));
    // From n3, outside the NAT: both at their public mappings.
    let mut l = local(&eps);
    l.name = "n3";
    let m = desired(&s, &l);
    assert_eq!(at(&m, "n1"), (public, 40001));
    assert_eq!(at(&m, "n2"), (public, 40002));
}

/// The overlay MTU toward a node: the smaller uplink of both, minus the
/// tunnel; a node that publishes none counts as this node's size.
#[test]
fn the_smaller_uplink_sets_the_mtu_toward_a_node() {
    let mut s = state();
    s.nodes.push(node("n3", 3));
    s.nodes[1].mtu = 1400;
    s.nodes[2].mtu = 9000;
    let eps = BTreeMap::new();
    let mut l = local(&eps);
    l.config.mtu = 1472;
    let m = desired(&s, &l);
    let mtu = |i: usize| m.nodes[&s.nodes[i].subnet.node_id()].2;
    assert_eq!((mtu(0), mtu(1), mtu(2)), (1472, 1372, 1472));
}
