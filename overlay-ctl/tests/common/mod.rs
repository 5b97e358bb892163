//! Shared end-to-end helper: nodes in namespaces, each with a loaded
//! dataplane, and instance namespaces linked in the way the agent does it
//! (a veth whose host side carries the from-instance program, the instance's
//! NamespaceIP/32 and a default route via a link-local gateway).
#![allow(dead_code)] // each test binary uses a different part

pub mod agents;
pub mod store_cluster;

use std::net::Ipv4Addr;

use overlay_common::maps::{Config, Endpoint, ip};
use overlay_ctl::dataplane::Dataplane;
use overlay_testnet::{Netns, Topology, veth};

pub const EWP: u16 = 50103;
pub const GATEWAY: &str = "169.254.1.1";
pub const UPLINK_MTU: u16 = 1500;
pub const MTU: u16 = UPLINK_MTU - overlay_common::ENCAP_OVERHEAD;

/// A node namespace with its dataplane loaded and attached to its uplink.
pub struct NodeDp {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub dp: Dataplane,
    pub ns_index: usize,
}

/// An instance namespace linked into a node.
pub struct Instance {
    pub ns: Netns,
    pub nsip: Ipv4Addr,
    pub node: u32,
}

/// A node's instance subnet: 10.30.<id>.0/24.
pub fn subnet(node: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, node as u8, 0)
}

pub struct Cluster {
    pub topo: Topology,
    pub nodes: Vec<NodeDp>,
    pub instances: Vec<Instance>,
}

impl Cluster {
    /// `n` nodes on one bridge, each with a dataplane that knows every node.
    pub fn new(n: usize) -> Cluster {
        overlay_testnet::require_root().expect("root");
        let topo = Topology::new(n).expect("topology");
        let mut nodes = Vec::new();
        for node in topo.nodes() {
            let id = node.index as u32;
            let ifindex = ifindex(node.ns(), &node.uplink);
            // The FIB lookup for tunnel packets needs forwarding on the uplink.
            node.ns()
                .set_sysctl("net.ipv4.ip_forward", "1")
                .expect("forwarding");
            let mut dp = node
                .ns()
                .enter(|| -> Dataplane {
                    let mut dp = Dataplane::load(None).expect("load dataplane");
                    dp.attach_uplink(&node.uplink).expect("attach uplink");
                    dp
                })
                .expect("enter node");
            let cfg = Config {
                node_id: id,
                node_ip: ip::to_wire(node.ip),
                uplink_ifindex: ifindex,
                ewp: ip::port_to_wire(EWP),
                mtu: MTU,
                nsp: ip::port_to_wire(overlay_common::DEFAULT_NSP),
                _pad: 0,
            };
            dp.tables.set_config(&cfg).expect("config");
            nodes.push(NodeDp {
                id,
                ip: node.ip,
                dp,
                ns_index: node.index,
            });
        }
        for n in &mut nodes {
            for peer in topo.nodes() {
                let pid = peer.index as u32;
                let t = &mut n.dp.tables;
                t.put_node(pid, peer.ip, EWP, 0).expect("node");
                t.put_route(subnet(pid), 24, pid).expect("route");
            }
        }
        Cluster {
            topo,
            nodes,
            instances: Vec::new(),
        }
    }

    pub fn node_ns(&self, id: u32) -> &Netns {
        self.topo.node(id as usize).ns()
    }

    pub fn dp(&mut self, id: u32) -> &mut Dataplane {
        &mut self.nodes[id as usize - 1].dp
    }

    /// Creates instance number `host` on `node` (NamespaceIP 10.30.<node>.<host>)
    /// belonging to `service`, linked and registered as a local endpoint.
    pub fn add_instance(&mut self, node: u32, host: u8, service: u32) -> usize {
        let nsip = Ipv4Addr::new(10, 30, node as u8, host);
        let ns = Netns::new(&format!("i{node}-{host}")).expect("instance ns");
        ns.disable_ipv6().expect("ipv6 off");
        let host_if = format!("vh{node}x{host}");
        let node_ns = self.node_ns(node);
        veth(node_ns, &host_if, &ns, "eth0").expect("veth");
        let host_mac = mac(node_ns, &host_if);
        let mtu = MTU.to_string();
        ns.ip(["link", "set", "eth0", "mtu", &mtu]).expect("mtu");
        ns.ip(["addr", "add", &format!("{nsip}/32"), "dev", "eth0"])
            .expect("addr");
        ns.ip(["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])
            .expect("gw route");
        ns.ip(["route", "add", "default", "via", GATEWAY, "dev", "eth0"])
            .expect("default");
        let lladdr = fmt_mac(&host_mac);
        ns.ip([
            "neigh",
            "add",
            GATEWAY,
            "lladdr",
            &lladdr,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("gw neigh");
        let ep = Endpoint {
            ifindex: ifindex(node_ns, &host_if),
            service,
            instance: host as u32,
            mac: mac(&ns, "eth0"),
            host_mac,
        };
        let node_ns_ref = self.topo.node(node as usize).ns();
        let dp = &mut self.nodes[node as usize - 1].dp;
        node_ns_ref
            .enter(|| dp.attach_instance(&host_if))
            .expect("enter")
            .expect("attach");
        dp.tables.put_endpoint(nsip, &ep).expect("endpoint");
        self.instances.push(Instance { ns, nsip, node });
        self.instances.len() - 1
    }

    /// Non-zero counters of every node, for failure messages.
    pub fn stats_dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for (r, c) in n.dp.tables.stats().unwrap_or_default() {
                if c.packets > 0 {
                    out += &format!("n{} {:<18} {}\n", n.id, r.label(), c.packets);
                }
            }
        }
        out
    }

    pub fn instance(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    /// Writes the same service table to every node: `ports` as (port, proto),
    /// backends as (id, instance index), slots as instance indexes.
    pub fn put_service(
        &mut self,
        vip: Ipv4Addr,
        service: u32,
        ports: &[(u16, u8)],
        backends: &[usize],
    ) {
        let list: Vec<(u32, Ipv4Addr, u32)> = backends
            .iter()
            .map(|&i| (i as u32 + 1, self.instances[i].nsip, self.instances[i].node))
            .collect();
        for n in &mut self.nodes {
            for &(port, proto) in ports {
                n.dp.tables.put_port(service, port, proto).expect("port");
            }
            for &(id, nsip, node) in &list {
                n.dp.tables.put_backend(id, nsip, node).expect("backend");
            }
            let slots: Vec<u32> = list.iter().map(|b| b.0).collect();
            n.dp.tables
                .put_servip(
                    vip,
                    service,
                    overlay_common::policy::Policy::Roundrobin,
                    &slots,
                )
                .expect("servip");
        }
    }
}

pub fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    let out = ns
        .run("cat", [format!("/sys/class/net/{ifname}/ifindex")])
        .expect("ifindex");
    out.trim().parse().expect("ifindex number")
}

pub fn mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns
        .run("cat", [format!("/sys/class/net/{ifname}/address")])
        .expect("mac");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(out.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
