//! A switched test LAN: one bridge namespace and N node namespaces.
//!
//! ```text
//!   n1 eth0 192.0.2.11 ──veth── p1 ┐
//!   n2 eth0 192.0.2.12 ──veth── p2 ├─ br0   (namespace "sw")
//!   ...                            │
//!   host eth0 (add_host) ─veth── h1 ┘
//! ```

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::{Error, Netns, Result, veth, wait_until};

mod nat;

pub use nat::Router;

/// The test LAN: 192.0.2.0/24 (TEST-NET-1, never routed anywhere).
const LAN: [u8; 3] = [192, 0, 2];
const PREFIX_LEN: u8 = 24;
/// Node `i` gets 192.0.2.(NODE_BASE + i).
const NODE_BASE: usize = 10;
/// How long links may take to come up.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of a [`Topology`]: a namespace whose `eth0` is plugged into the
/// switch.
#[derive(Debug)]
pub struct Node {
    /// The node's namespace.
    pub ns: Netns,
    /// Its address on the LAN: 192.0.2.(10 + index).
    pub ip: Ipv4Addr,
    /// Its uplink interface inside `ns`: `"eth0"`.
    pub uplink: String,
    /// 1-based position in the topology (`n1` has index 1).
    pub index: usize,
}

impl Node {
    /// The node's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its LAN address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// A bridge namespace (`sw`, bridge `br0`) with N node namespaces
/// (`n1`..`nN`) attached, node `i` at 192.0.2.(10+i)/24 on its `eth0`.
/// IPv6 is disabled everywhere. Dropping it deletes the hosts and nodes,
/// then the switch.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: hosts and nodes go before the routers, the
    // routers before the switch.
    hosts: Vec<Netns>,
    host_ips: Vec<Ipv4Addr>,
    nodes: Vec<Node>,
    routers: Vec<Router>,
    switch: Netns,
}

impl Topology {
    /// Builds the switch and `nodes` nodes, and waits until every link is up
    /// and every bridge port forwards. On error, everything created so far
    /// is deleted again.
    pub fn new(nodes: usize) -> Result<Topology> {
        if NODE_BASE + nodes > 254 {
            return Err(Error::InvalidArgument(format!(
                "{nodes} nodes do not fit in 192.0.2.0/24 starting at .{}",
                NODE_BASE + 1
            )));
        }
        let switch = Netns::new("sw")?;
        switch.disable_ipv6()?;
        switch.ip(["link", "add", "br0", "type", "bridge"])?;
        switch.ip(["link", "set", "br0", "up"])?;
        let mut topology = Topology {
            hosts: Vec::new(),
            host_ips: Vec::new(),
            nodes: Vec::with_capacity(nodes),
            routers: Vec::new(),
            switch,
        };
        for index in 1..=nodes {
            let ip = lan_addr(NODE_BASE + index);
            let ns = topology.attach(&format!("n{index}"), &format!("p{index}"), ip)?;
            topology.nodes.push(Node {
                ns,
                ip,
                uplink: "eth0".to_owned(),
                index,
            });
        }
        Ok(topology)
    }

    /// All nodes, `n1` first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, 1-based (`node(1)` is `n1`). Panics if there is no such node.
    pub fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "node index {i} out of range 1..={}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    /// The switch namespace, holding bridge `br0` and ports `p1`.., `h1`...
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Extra hosts added with [`Topology::add_host`], in order.
    pub fn hosts(&self) -> &[Netns] {
        &self.hosts
    }

    /// Names of every namespace in the topology: switch, nodes, hosts, routers.
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(&self.switch)
            .chain(self.nodes.iter().map(|n| &n.ns))
            .chain(&self.hosts)
            .chain(self.routers.iter().flat_map(|r| [&r.ns, &r.switch]))
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// Adds a namespace that is not a node (e.g. an external client) on the
    /// bridge, with `ip`/24 on its `eth0`; its switch port is `h<k>`. `ip`
    /// must be a free host address in 192.0.2.0/24.
    pub fn add_host(&mut self, label: &str, ip: Ipv4Addr) -> Result<&Netns> {
        self.check_free(ip)?;
        let port = format!("h{}", self.hosts.len() + 1);
        let ns = self.attach(label, &port, ip)?;
        self.hosts.push(ns);
        self.host_ips.push(ip);
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// An error unless `ip` is a host address of the LAN that no node, host
    /// or router of this topology holds.
    fn check_free(&self, ip: Ipv4Addr) -> Result<()> {
        let [a, b, c, d] = ip.octets();
        if [a, b, c] != LAN || d == 0 || d == 255 {
            return Err(Error::InvalidArgument(format!(
                "host address {ip} is not a host address in 192.0.2.0/24"
            )));
        }
        if self.nodes.iter().any(|n| n.ip == ip)
            || self.host_ips.contains(&ip)
            || self.routers.iter().any(|r| r.wan == ip)
        {
            return Err(Error::InvalidArgument(format!(
                "host address {ip} is already used in this topology"
            )));
        }
        Ok(())
    }

    /// Creates namespace `label`, plugs its `eth0` into `br0` via switch
    /// port `port`, gives it `ip`/24 and waits for the link.
    fn attach(&self, label: &str, port: &str, ip: Ipv4Addr) -> Result<Netns> {
        let ns = Netns::new(label)?;
        ns.disable_ipv6()?;
        veth(&ns, "eth0", &self.switch, port)?;
        self.switch.ip(["link", "set", port, "master", "br0"])?;
        ns.ip(["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"])?;
        wait_until(
            LINK_TIMEOUT,
            &format!("eth0 in {} to have carrier", ns.name()),
            || link_shows(&ns, "eth0", "LOWER_UP"),
        )?;
        wait_until(
            LINK_TIMEOUT,
            &format!("bridge port {port} to forward"),
            || link_shows(&self.switch, port, "state forwarding"),
        )?;
        Ok(ns)
    }
}

fn lan_addr(host: usize) -> Ipv4Addr {
    let host = u8::try_from(host).expect("host part checked by caller");
    Ipv4Addr::new(LAN[0], LAN[1], LAN[2], host)
}

/// Whether `ip -d link show dev IF` in `ns` mentions `needle`.
fn link_shows(ns: &Netns, ifname: &str, needle: &str) -> bool {
    ns.ip(["-d", "link", "show", "dev", ifname])
        .is_ok_and(|out| out.contains(needle))
}
