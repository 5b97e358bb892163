//! The five test networks, all in network namespaces made with
//! `overlay-testnet` and deleted on drop.
//!
//! Every network has a client instance on node `n1` (10.30.1.2) and a server
//! instance; instances are linked the way the agent links them: a veth whose
//! host side sits in the node, the NamespaceIP as a /32 and a default route
//! via a link-local gateway whose MAC is the host side's.
//!
//! ```text
//!   (a) plain:  cli ─veth─ [n1 routes] ─br0─ [n2 routes] ─veth─ srv
//!   (b)/(c):    cli ─veth─ [n1 TC from_instance ... uplink TC] ─br0─ [n2 ...] ─veth─ srv
//!               (c): srv on n1 too
//!   (d) vxlan:  as (a), n1 and n2 route the instance subnets over vx0 (VNI 42, MTU 1450)
//!   (e) tun:    as (a), n1 and n2 route them into tun0, read by a forwarder thread
//!               that sends bare IPv4 in UDP to the other node's port 50103
//! ```

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use overlay_common::maps::{Config, Endpoint, ip};
use overlay_common::policy::Policy;
use overlay_common::{DEFAULT_EWP, ENCAP_OVERHEAD, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use overlay_ctl::dataplane::Dataplane;
use overlay_testnet::tun::Forwarder;
use overlay_testnet::{Netns, NsChild, Topology, veth, wait_until};

use crate::plan::PathId;
use crate::traffic::EchoServer;
use crate::tunfwd;

pub const GATEWAY: &str = "169.254.1.1";
pub const IPERF_PORT: u16 = 5201;
pub const ECHO_PORT: u16 = 7007;
pub const UPLINK_MTU: u16 = 1500;
/// Instance MTU of the overlay: the uplink's minus the 28-byte tunnel.
pub const OVERLAY_MTU: u16 = UPLINK_MTU - ENCAP_OVERHEAD;
/// Instance MTU of the VXLAN and TUN paths (what Oakestra uses everywhere).
pub const VXLAN_MTU: u16 = 1450;
pub const VNI: &str = "42";

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 2);
pub const LOCAL_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 3);
pub const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

/// An instance namespace linked into a node.
pub struct Inst {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Host-side interface name (in the node).
    pub host_if: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mac: [u8; 6],
}

/// A server instance: the namespace plus the iperf3 server and the echo
/// server running in it (stopped before the namespace goes).
pub struct Server {
    pub iperf: NsChild,
    pub echo: EchoServer,
    pub inst: Inst,
}

/// What a measurement needs of a path: where the client runs and the
/// address it sends to.
pub struct Env<'a> {
    pub client: &'a Netns,
    pub target: Ipv4Addr,
}

/// (a), (d) and (e): two node namespaces routing the instance subnets.
pub struct Routed {
    // Field order is drop order: the forwarder threads and the servers stop
    // first, then the instances go, then the nodes and the switch.
    pub forwarders: Vec<Forwarder>,
    pub server: Server,
    pub client: Inst,
    pub topo: Topology,
}

/// (b) and (c): two nodes with the dataplane loaded in each.
pub struct Overlay {
    pub remote: Server,
    pub local: Server,
    pub client: Inst,
    /// Node 1's and node 2's dataplane; dropping them detaches the programs.
    pub dps: Vec<Dataplane>,
    pub topo: Topology,
}

/// All five paths, built once and measured in turns.
pub struct Testbed {
    /// Wire mode: the pass-through XDP program's links on the uplinks of
    /// (a), (d) and (e) (see [`Testbed::build`]).
    _pass: Vec<std::os::fd::OwnedFd>,
    pub plain: Routed,
    pub overlay: Overlay,
    pub vxlan: Routed,
    pub tun: Routed,
}

impl Testbed {
    /// The five networks; in wire mode (`wire`) every switch port segments
    /// what it sends to the MTU (TSO and GSO off, as a wire carries frames)
    /// and every node's uplink receives with GRO (veth NAPI), as a NIC does;
    /// the overlay's uplinks get the XDP program, as the agent gives it to
    /// every uplink but a veth's. The uplinks of the other paths get an XDP
    /// program that passes everything: on a veth, any XDP program makes the
    /// receiver copy each frame into pages of its own before running it
    /// (a NIC's driver runs XDP in its receive pages, without that copy), so
    /// every path pays that copy alike and the ratios compare the paths, not
    /// the copy.
    pub fn build(wire: bool) -> anyhow::Result<Testbed> {
        let mut bed = Testbed {
            _pass: Vec::new(),
            plain: routed(Underlay::Plain).context("building (a) plain routing")?,
            overlay: overlay(wire).context("building (b)/(c) the overlay")?,
            vxlan: routed(Underlay::Vxlan).context("building (d) VXLAN")?,
            tun: routed(Underlay::Tun).context("building (e) the TUN forwarder")?,
        };
        if wire {
            for topo in [
                &bed.plain.topo,
                &bed.overlay.topo,
                &bed.vxlan.topo,
                &bed.tun.topo,
            ] {
                wire_mode(topo).context("switching to wire mode")?;
            }
            bed._pass = pass_through(&[&bed.plain.topo, &bed.vxlan.topo, &bed.tun.topo])
                .context("attaching the pass-through XDP program")?;
        }
        Ok(bed)
    }

    pub fn env(&self, p: PathId) -> Env<'_> {
        match p {
            PathId::Plain => self.plain.env(),
            PathId::Vxlan => self.vxlan.env(),
            PathId::Tun => self.tun.env(),
            PathId::OverlayRemote => Env {
                client: &self.overlay.client.ns,
                target: VIP_REMOTE,
            },
            PathId::OverlayLocal => Env {
                client: &self.overlay.client.ns,
                target: VIP_LOCAL,
            },
        }
    }

    /// The client's node (its `eth0` is the uplink), for paths that leave it.
    pub fn client_node(&self, p: PathId) -> Option<&Netns> {
        let topo = match p {
            PathId::Plain => &self.plain.topo,
            PathId::OverlayRemote => &self.overlay.topo,
            PathId::OverlayLocal => return None,
            PathId::Vxlan => &self.vxlan.topo,
            PathId::Tun => &self.tun.topo,
        };
        Some(topo.node(1).ns())
    }

    /// Non-zero dataplane counters of both nodes, for error messages.
    pub fn overlay_stats(&self) -> String {
        let mut out = Vec::new();
        for (i, dp) in self.overlay.dps.iter().enumerate() {
            for (r, c) in dp.tables.stats().unwrap_or_default() {
                if c.packets > 0 {
                    out.push(format!("n{} {}={}", i + 1, r.label(), c.packets));
                }
            }
        }
        out.join(" ")
    }
}

/// Wire mode on `topo`: its switch ports send MTU-sized frames only, its
/// nodes' uplinks coalesce what they receive with GRO.
fn wire_mode(topo: &Topology) -> anyhow::Result<()> {
    for node in topo.nodes() {
        let port = format!("p{}", node.index);
        let sw = topo.switch();
        sw.run("ethtool", ["-K", &port, "tso", "off", "gso", "off"])?;
        // Not every kernel lets these change on a veth; TSO and GSO off is what counts.
        for f in ["tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation"] {
            let _ = sw.run("ethtool", ["-K", &port, f, "off"]);
        }
        node.ns()
            .run("ethtool", ["-K", &node.uplink, "gro", "on"])?;
    }
    Ok(())
}

/// Attaches a program that passes every frame (`XDP_PASS`) to the uplink
/// of every node of `topos`; detached when the returned links close.
fn pass_through(topos: &[&Topology]) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
    use std::os::fd::AsFd;
    const XDP_PASS: i32 = 2;
    let prog =
        crate::rawbpf::load_trivial(crate::rawbpf::BPF_PROG_TYPE_XDP, XDP_PASS, "wire_pass")?;
    let mut links = Vec::new();
    for topo in topos {
        for node in topo.nodes() {
            let (ifindex, _) = link(node.ns(), &node.uplink)?;
            let l = node
                .ns()
                .enter(|| crate::rawbpf::attach_xdp(prog.as_fd(), ifindex))?
                .with_context(|| format!("XDP on {} of {}", node.uplink, node.ns().name()))?;
            links.push(l);
        }
    }
    Ok(links)
}

impl Overlay {
    /// `(node, program, run time ns, runs)` of every program of both
    /// dataplanes, as `bpf_stats` counts them (while enabled).
    pub fn prog_stats(&mut self) -> anyhow::Result<Vec<(String, &'static str, u64, u64)>> {
        use overlay_ctl::dataplane::programs::{FROM_INSTANCE, UPLINK, UPLINK_XDP};
        let mut out = Vec::new();
        for (i, dp) in self.dps.iter_mut().enumerate() {
            let node = format!("n{}", i + 1);
            for name in [FROM_INSTANCE, UPLINK] {
                let info = dp.classifier(name)?.info()?;
                out.push((
                    node.clone(),
                    name,
                    info.run_time().as_nanos() as u64,
                    info.run_count(),
                ));
            }
            let info = dp.xdp(UPLINK_XDP)?.info()?;
            out.push((
                node,
                UPLINK_XDP,
                info.run_time().as_nanos() as u64,
                info.run_count(),
            ));
        }
        Ok(out)
    }
}

impl Routed {
    fn env(&self) -> Env<'_> {
        Env {
            client: &self.client.ns,
            target: self.server.inst.ip,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Underlay {
    Plain,
    Vxlan,
    Tun,
}

/// Interface index and MAC address of `dev` in `ns`.
pub fn link(ns: &Netns, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let out = ns.ip(["-o", "link", "show", "dev", dev])?;
    let index = out.split(':').next().and_then(|i| i.trim().parse().ok());
    let mac: Option<Vec<u8>> = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(|m| {
            m.split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect()
        });
    match (index, mac.and_then(|m| <[u8; 6]>::try_from(m).ok())) {
        (Some(index), Some(mac)) => Ok((index, mac)),
        _ => bail!("cannot read the index and MAC of {dev} from: {out}"),
    }
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A new instance namespace `label` with `nsip`/32 on its `eth0` (MTU
/// `mtu`), linked to `node` by a veth whose node side is `host_if`.
fn instance(
    node: &Netns,
    host_if: &str,
    label: &str,
    nsip: Ipv4Addr,
    mtu: u16,
) -> anyhow::Result<Inst> {
    let ns = Netns::new(label)?;
    ns.disable_ipv6()?;
    veth(node, host_if, &ns, "eth0")?;
    let (host_ifindex, host_mac) = link(node, host_if)?;
    let (_, mac) = link(&ns, "eth0")?;
    ns.ip(["link", "set", "eth0", "mtu", &mtu.to_string()])?;
    ns.ip(["addr", "add", &format!("{nsip}/32"), "dev", "eth0"])?;
    ns.ip(["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
    ns.ip(["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
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
    ])?;
    Ok(Inst {
        ns,
        ip: nsip,
        host_if: host_if.to_owned(),
        host_ifindex,
        host_mac,
        mac,
    })
}

/// Makes `node` route to `inst` through its host-side veth (no eBPF).
fn route_to_instance(node: &Netns, inst: &Inst) -> anyhow::Result<()> {
    let ip = inst.ip.to_string();
    node.ip(["route", "add", &format!("{ip}/32"), "dev", &inst.host_if])?;
    let mac = fmt_mac(&inst.mac);
    node.ip([
        "neigh",
        "add",
        &ip,
        "lladdr",
        &mac,
        "dev",
        &inst.host_if,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Starts the iperf3 and echo servers in `inst` and waits until iperf3 listens.
fn serve(inst: Inst) -> anyhow::Result<Server> {
    let port = IPERF_PORT.to_string();
    let mut cmd = inst.ns.cmd("iperf3", ["-s", "-p", &port]);
    let iperf = NsChild::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::null()))?;
    let echo = EchoServer::start(&inst.ns, ECHO_PORT)?;
    let filter = format!("sport = :{IPERF_PORT}");
    wait_until(Duration::from_secs(10), "iperf3 to listen", || {
        inst.ns
            .run("ss", ["-Htln", &filter])
            .is_ok_and(|o| !o.trim().is_empty())
    })?;
    Ok(Server { iperf, echo, inst })
}

fn routed(kind: Underlay) -> anyhow::Result<Routed> {
    let topo = Topology::new(2)?;
    let (n1, n2) = (topo.node(1), topo.node(2));
    for n in [n1, n2] {
        n.ns().set_sysctl("net.ipv4.ip_forward", "1")?;
    }
    let (tag, mtu) = match kind {
        Underlay::Plain => ("a", UPLINK_MTU),
        Underlay::Vxlan => ("d", VXLAN_MTU),
        Underlay::Tun => ("e", VXLAN_MTU),
    };
    let client = instance(n1.ns(), "vcli", &format!("{tag}-cli"), CLIENT_IP, mtu)?;
    let server = instance(n2.ns(), "vsrv", &format!("{tag}-srv"), SERVER_IP, mtu)?;
    route_to_instance(n1.ns(), &client)?;
    route_to_instance(n2.ns(), &server)?;
    let mut forwarders = Vec::new();
    // Node i (1-based) holds 10.30.i.0/24.
    let nodes = [(n1, n2, 2u8), (n2, n1, 1u8)];
    for (me, peer, peer_subnet) in nodes {
        let subnet = format!("10.30.{peer_subnet}.0/24");
        match kind {
            Underlay::Plain => {
                me.ns()
                    .ip(["route", "add", &subnet, "via", &peer.ip().to_string()])?;
            }
            Underlay::Vxlan => {
                let (mine, theirs) = (me.index, peer.index);
                let ns = me.ns();
                ns.ip([
                    "link",
                    "add",
                    "vx0",
                    "type",
                    "vxlan",
                    "id",
                    VNI,
                    "local",
                    &me.ip().to_string(),
                    "remote",
                    &peer.ip().to_string(),
                    "dstport",
                    "4789",
                    "dev",
                    &me.uplink,
                ])?;
                ns.ip(["link", "set", "vx0", "mtu", &VXLAN_MTU.to_string(), "up"])?;
                ns.ip(["addr", "add", &format!("10.31.0.{mine}/24"), "dev", "vx0"])?;
                ns.ip([
                    "route",
                    "add",
                    &subnet,
                    "via",
                    &format!("10.31.0.{theirs}"),
                    "dev",
                    "vx0",
                ])?;
            }
            Underlay::Tun => {
                let peers = vec![(Ipv4Addr::new(10, 30, peer_subnet, 0), peer.ip())];
                let fwd = tunfwd::start(me.ns(), me.ip(), peers)?;
                let ns = me.ns();
                ns.ip([
                    "link",
                    "set",
                    tunfwd::TUN_NAME,
                    "mtu",
                    &VXLAN_MTU.to_string(),
                    "up",
                ])?;
                ns.ip(["route", "add", &subnet, "dev", tunfwd::TUN_NAME])?;
                forwarders.push(fwd);
            }
        }
    }
    let server = serve(server)?;
    Ok(Routed {
        forwarders,
        server,
        client,
        topo,
    })
}

/// Node `id`'s instance subnet: 10.30.<id>.0/24.
fn subnet(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, id as u8, 0)
}

/// The overlay as `overlay-ctl/tests/common` builds it: a dataplane per node
/// (TC on the uplink, XDP only in wire mode; TC on each instance's veth),
/// maps written through `Tables`.
fn overlay(wire: bool) -> anyhow::Result<Overlay> {
    let topo = Topology::new(2)?;
    let mut dps = Vec::new();
    for node in topo.nodes() {
        let id = node.index as u32;
        // The FIB lookup for tunnel packets needs forwarding on the uplink.
        node.ns().set_sysctl("net.ipv4.ip_forward", "1")?;
        let (uplink_ifindex, _) = link(node.ns(), &node.uplink)?;
        let mut dp = node.ns().enter(|| -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load(None).context("loading the dataplane")?;
            // As the agent does on a veth uplink: TC only, no XDP (XDP on a
            // veth turns TSO off on its peer, the bridge port); in wire mode as
            // on a NIC: XDP too, which decapsulates before GRO.
            dp.attach_uplink_with(&node.uplink, wire)
                .context("attaching to the uplink")?;
            Ok(dp)
        })??;
        dp.tables.set_config(&Config {
            node_id: id,
            node_ip: ip::to_wire(node.ip()),
            uplink_ifindex,
            ewp: ip::port_to_wire(DEFAULT_EWP),
            mtu: OVERLAY_MTU,
            nsp: ip::port_to_wire(overlay_common::DEFAULT_NSP),
            _pad: 0,
        })?;
        for peer in topo.nodes() {
            let pid = peer.index as u32;
            dp.tables.put_node(pid, peer.ip(), DEFAULT_EWP, 0)?;
            dp.tables.put_route(subnet(pid), 24, pid)?;
        }
        dps.push(dp);
    }
    let mut link_in = |node: u32, host_if: &str, label: &str, nsip: Ipv4Addr, service: u32| {
        let node_ns = topo.node(node as usize).ns();
        let inst = instance(node_ns, host_if, label, nsip, OVERLAY_MTU)?;
        let dp = &mut dps[node as usize - 1];
        node_ns
            .enter(|| dp.attach_instance(host_if))?
            .with_context(|| format!("attaching to {host_if}"))?;
        let ep = Endpoint {
            ifindex: inst.host_ifindex,
            service,
            instance: u32::from(nsip.octets()[3]),
            mac: inst.mac,
            host_mac: inst.host_mac,
        };
        dp.tables.put_endpoint(nsip, &ep)?;
        anyhow::Ok(inst)
    };
    let client = link_in(1, "vcli", "bc-cli", CLIENT_IP, 1)?;
    let remote = link_in(2, "vsrv", "b-srv", SERVER_IP, 2)?;
    let local = link_in(1, "vloc", "c-srv", LOCAL_SERVER_IP, 3)?;
    let ports = [
        (IPERF_PORT, IPPROTO_TCP),
        (IPERF_PORT, IPPROTO_UDP),
        (ECHO_PORT, IPPROTO_UDP),
        (0, IPPROTO_ICMP),
    ];
    for (vip, service, backend, node) in [
        (VIP_REMOTE, 2, SERVER_IP, 2),
        (VIP_LOCAL, 3, LOCAL_SERVER_IP, 1),
    ] {
        let id = u32::from(backend);
        for dp in &mut dps {
            for &(port, proto) in &ports {
                dp.tables.put_port(service, port, proto)?;
            }
            dp.tables.put_backend(id, backend, node)?;
            dp.tables
                .put_servip(vip, service, Policy::Roundrobin, &[id])?;
        }
    }
    let remote = serve(remote)?;
    let local = serve(local)?;
    Ok(Overlay {
        remote,
        local,
        client,
        dps,
        topo,
    })
}
