//! Routers with private LANs behind them, for nodes behind NAT.
//!
//! ```text
//!   switch br0 ── r1 eth0 192.0.2.21 (router 1)
//!                  │  bridge `lan` 10.1.0.1/24 ── n2 10.1.0.12, n3 10.1.0.13
//!                  └─ d2 ══ MTU 1400 ══ r2 eth0 192.0.2.22/32 (router 2)
//!                                           bridge `lan` 10.2.0.1/24 ── n4 10.2.0.14
//! ```
//!
//! A router's LAN is a bridge in a namespace of its own (as a hardware
//! switch: frames between two nodes of the LAN never meet the router's
//! rules, even where `br_netfilter` is loaded). A router forwards but
//! translates nothing until the test loads its rules
//! ([`Router::nft`]): which ports it forwards and how it masquerades is what
//! the tests are about. A router behind another ([`Topology::add_router_behind`])
//! keeps a public address of the switch's /24: its upstream answers ARP for
//! it on the switch and routes it over their point-to-point link, so that
//! every host on the switch reaches it without a route of its own, across
//! the link's smaller MTU.

use std::net::Ipv4Addr;

use super::{LINK_TIMEOUT, Node, PREFIX_LEN, Topology, link_shows};
use crate::{Error, Netns, Result, veth, wait_until};

/// A router of a [`Topology`]: its namespace holds its WAN side (`eth0`)
/// and its LAN side (`lan`, 10.<number>.0.1/24), plugged into the LAN's
/// switch, where the nodes behind it are.
#[derive(Debug)]
pub struct Router {
    /// The router's namespace.
    pub ns: Netns,
    /// The LAN's switch (bridge `br0`).
    pub switch: Netns,
    /// Its public address (on the switch's /24).
    pub wan: Ipv4Addr,
    /// Its 1-based number: its LAN is 10.<number>.0.0/24.
    pub number: usize,
}

impl Router {
    /// Its address on its LAN (10.<number>.0.1): the default gateway of the
    /// nodes behind it, and the source a hairpinning NAT writes.
    pub fn lan_ip(&self) -> Ipv4Addr {
        lan_addr(self.number, 1)
    }

    /// Loads nftables `rules` (an `nft -f` script) into the router.
    pub fn nft(&self, rules: &str) -> Result<()> {
        let file = std::env::temp_dir().join(format!("{}.nft", self.ns.name()));
        std::fs::write(&file, rules).map_err(|source| Error::Io {
            what: format!("writing {}", file.display()),
            source,
        })?;
        let loaded = self
            .ns
            .run("nft", ["-f", file.to_str().expect("UTF-8 path")]);
        let _ = std::fs::remove_file(&file);
        loaded.map(|_| ())
    }
}

impl Topology {
    /// Adds a router on the switch at `wan`/24 (checked as
    /// [`Topology::add_host`] checks), forwarding, with an empty LAN; its
    /// switch port is `r<number>`. Returns its number.
    pub fn add_router(&mut self, wan: Ipv4Addr) -> Result<usize> {
        self.check_free(wan)?;
        let number = self.routers.len() + 1;
        let ns = self.attach(&format!("r{number}"), &format!("r{number}"), wan)?;
        self.routers.push(with_lan(ns, wan, number)?);
        Ok(number)
    }

    /// Adds a router whose uplink is a point-to-point link with `mtu` from
    /// router `upstream`, which routes public address `wan` (free on the
    /// switch's /24) to it and answers ARP for it on the switch. Returns its
    /// number.
    pub fn add_router_behind(&mut self, upstream: usize, wan: Ipv4Addr, mtu: u32) -> Result<usize> {
        self.check_free(wan)?;
        let number = self.routers.len() + 1;
        let up = self.router(upstream);
        let ns = Netns::new(&format!("r{number}"))?;
        ns.disable_ipv6()?;
        let down = format!("d{number}");
        veth(&ns, "eth0", &up.ns, &down)?;
        let mtu = mtu.to_string();
        ns.ip(["link", "set", "eth0", "mtu", &mtu])?;
        up.ns.ip(["link", "set", &down, "mtu", &mtu])?;
        let (me, peer) = (format!("{wan}/32"), format!("{}/32", up.wan));
        ns.ip(["addr", "add", &me, "peer", &peer, "dev", "eth0"])?;
        ns.ip(["route", "add", "default", "via", &up.wan.to_string()])?;
        up.ns.ip(["route", "add", &me, "dev", &down])?;
        up.ns
            .ip(["neigh", "add", "proxy", &wan.to_string(), "dev", "eth0"])?;
        wait_until(
            LINK_TIMEOUT,
            &format!("link {down} to have carrier"),
            || link_shows(&up.ns, &down, "LOWER_UP"),
        )?;
        self.routers.push(with_lan(ns, wan, number)?);
        Ok(number)
    }

    /// Router `number` (1-based). Panics if there is no such router.
    pub fn router(&self, number: usize) -> &Router {
        &self.routers[number - 1]
    }

    /// Adds a node behind router `number`: on its LAN at 10.<number>.0.(10 +
    /// index)/24, default route via the router, its uplink `eth0`; it is
    /// named and indexed as the nodes of [`Topology::new`] (`n<index>`,
    /// index after the last node).
    pub fn add_node_behind(&mut self, number: usize) -> Result<&Node> {
        let index = self.nodes.len() + 1;
        let host = u8::try_from(10 + index).map_err(|_| {
            Error::InvalidArgument(format!("too many nodes behind router {number}"))
        })?;
        let router = self.router(number);
        let ns = Netns::new(&format!("n{index}"))?;
        ns.disable_ipv6()?;
        let port = format!("l{index}");
        veth(&ns, "eth0", &router.switch, &port)?;
        router.switch.ip(["link", "set", &port, "master", "br0"])?;
        let ip = lan_addr(number, host);
        ns.ip(["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"])?;
        ns.ip([
            "route",
            "add",
            "default",
            "via",
            &router.lan_ip().to_string(),
        ])?;
        wait_until(LINK_TIMEOUT, &format!("LAN port {port} to forward"), || {
            link_shows(&router.switch, &port, "state forwarding")
        })?;
        self.nodes.push(Node {
            ns,
            ip,
            uplink: "eth0".to_owned(),
            index,
        });
        Ok(self.nodes.last().expect("just pushed"))
    }
}

/// Router `number` in `ns`: forwarding on, its `lan` plugged into a new
/// LAN switch.
fn with_lan(ns: Netns, wan: Ipv4Addr, number: usize) -> Result<Router> {
    ns.set_sysctl("net/ipv4/ip_forward", "1")?;
    let switch = Netns::new(&format!("s{number}"))?;
    switch.disable_ipv6()?;
    switch.ip(["link", "add", "br0", "type", "bridge"])?;
    switch.ip(["link", "set", "br0", "up"])?;
    veth(&ns, "lan", &switch, "router")?;
    switch.ip(["link", "set", "router", "master", "br0"])?;
    let r = Router {
        ns,
        switch,
        wan,
        number,
    };
    let lan = format!("{}/{PREFIX_LEN}", r.lan_ip());
    r.ns.ip(["addr", "add", &lan, "dev", "lan"])?;
    wait_until(LINK_TIMEOUT, "the router's LAN port to forward", || {
        link_shows(&r.switch, "router", "state forwarding")
    })?;
    Ok(r)
}

fn lan_addr(number: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        u8::try_from(number).expect("fewer than 256 routers"),
        0,
        host,
    )
}
