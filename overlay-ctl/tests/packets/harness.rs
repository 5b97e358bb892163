//! Shared pieces of the packet tests: a node's tables, a `BPF_PROG_TEST_RUN`
//! wrapper, counter deltas and conntrack entries; packet builders and
//! parsers that verify every checksum they meet are in [`frames`].

mod frames;

use std::net::Ipv4Addr;
use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};
use overlay_common::maps::{Config, CtEntry, CtKey, Endpoint, ct, ip};
use overlay_common::policy::Policy;
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::{Dataplane, programs};
use overlay_testnet::Netns;

pub use frames::*;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// Node ids as the agent derives them: the subnet's /24 number (10.30.1/24).
pub const NODE_ID: u32 = 0x0a_1e_01;
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const PEER_ID: u32 = 0x0a_1e_02;
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
pub const PEER_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 0);
pub const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const EWP: u16 = 50103;
pub const NSP: u16 = 50104;
/// Overlay MTU: a 1500-byte uplink minus the tunnel.
pub const MTU: u16 = 1472;

/// Loopback: the one interface every namespace has, so the one a test run
/// can claim a packet came in on.
pub const LO: u32 = 1;

pub const SERVICE: u32 = 42;
pub const VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
pub const HTTP: u16 = 80;
pub const DNS: u16 = 53;
pub const CLIENT_PORT: u16 = 40000;

/// An instance: its NamespaceIP, MACs and host-side interface.
#[derive(Clone, Copy, Debug)]
pub struct Inst {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub ifindex: u32,
}

const fn inst(last: u8, ifindex: u32) -> Inst {
    Inst {
        ip: Ipv4Addr::new(10, 30, 1, last),
        mac: [0x02, 0xaa, 0, 0, 1, last],
        host_mac: [0x02, 0xbb, 0, 0, 1, last],
        ifindex,
    }
}

/// The client, and two local instances of the service.
pub const CLIENT: Inst = inst(2, LO);
pub const BACKEND: Inst = inst(3, LO);
pub const BACKEND2: Inst = inst(4, LO);
/// A local instance behind another interface than the one the tests use.
pub const ELSEWHERE: Inst = inst(9, 1000);
/// An instance of the service on the peer node (no endpoint here).
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 5);

pub const B1: u32 = 1;
pub const B2: u32 = 2;
pub const B_REMOTE: u32 = 3;

pub fn wire(a: Ipv4Addr) -> u32 {
    ip::to_wire(a)
}

pub fn port(p: u16) -> u16 {
    ip::port_to_wire(p)
}

/// A node's dataplane with fresh maps: config, the local instances, the peer
/// node and its subnet, and the service's ports (TCP 80, UDP 53, echo). No
/// ServIP yet (see [`servip`]).
pub fn node(uplink_ifindex: u32) -> Dataplane {
    node_sized(uplink_ifindex, overlay_ctl::dataplane::Sizes::default())
}

/// [`node`] with a conntrack table of the given size.
pub fn node_sized(uplink_ifindex: u32, sizes: overlay_ctl::dataplane::Sizes) -> Dataplane {
    overlay_testnet::require_root().expect("root");
    let mut dp = Dataplane::load_sized(None, sizes).expect("load dataplane");
    let t = &mut dp.tables;
    t.set_config(&Config {
        node_id: NODE_ID,
        node_ip: wire(NODE_IP),
        uplink_ifindex,
        ewp: port(EWP),
        mtu: MTU,
        nsp: port(NSP),
        _pad: 0,
    })
    .unwrap();
    for (i, x) in [CLIENT, BACKEND, BACKEND2, ELSEWHERE].iter().enumerate() {
        let ep = Endpoint {
            ifindex: x.ifindex,
            service: if i == 0 { 7 } else { SERVICE },
            instance: i as u32,
            mac: x.mac,
            host_mac: x.host_mac,
        };
        t.put_endpoint(x.ip, &ep).unwrap();
    }
    t.put_node(PEER_ID, PEER_IP, EWP, 0).unwrap();
    t.put_route(PEER_SUBNET, 24, PEER_ID).unwrap();
    t.put_port(SERVICE, HTTP, TCP).unwrap();
    t.put_port(SERVICE, DNS, UDP).unwrap();
    t.put_port(SERVICE, 0, ICMP).unwrap();
    t.put_backend(B1, BACKEND.ip, NODE_ID).unwrap();
    t.put_backend(B2, BACKEND2.ip, NODE_ID).unwrap();
    t.put_backend(B_REMOTE, REMOTE, PEER_ID).unwrap();
    dp
}

/// Publishes [`VIP`] with these backend ids as its slot table (a
/// hash-balanced policy, so tests can predict the slot of a flow).
pub fn servip(dp: &mut Dataplane, slots: &[u32]) {
    servip_with(dp, Policy::Fastest, slots);
}

pub fn servip_with(dp: &mut Dataplane, pol: Policy, slots: &[u32]) {
    dp.tables.put_servip(VIP, SERVICE, pol, slots).unwrap();
}

/// A namespace standing in for the node: uplink `up0` (a veth) with
/// [`NODE_IP`]/24 and MAC [`UPLINK_MAC`], forwarding on, and (with `neigh`)
/// a permanent neighbour entry for the peer. Programs test-run inside it
/// (see [`Netns::enter`]) see its FIB.
pub struct Uplink {
    pub ns: Netns,
    pub ifindex: u32,
}

pub fn uplink(neigh: bool) -> Uplink {
    let ns = Netns::new("pkt").expect("netns");
    let mac = fmt_mac(UPLINK_MAC);
    ns.ip([
        "link", "add", "up0", "address", &mac, "type", "veth", "peer", "name", "up0p",
    ])
    .unwrap();
    ns.ip(["addr", "add", "192.0.2.11/24", "dev", "up0"])
        .unwrap();
    ns.ip(["link", "set", "up0", "up"]).unwrap();
    ns.ip(["link", "set", "up0p", "up"]).unwrap();
    if neigh {
        let peer = fmt_mac(PEER_MAC);
        let args = [
            "neigh",
            "add",
            "192.0.2.12",
            "lladdr",
            &peer,
            "dev",
            "up0",
            "nud",
            "permanent",
        ];
        ns.ip(args).unwrap();
    }
    ns.set_sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
    let ifindex = ns.run("cat", ["/sys/class/net/up0/ifindex"]).unwrap();
    Uplink {
        ifindex: ifindex.trim().parse().unwrap(),
        ns,
    }
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

// ---------------------------------------------------------------- running

/// `sizeof(struct __sk_buff)` on this kernel and the offset of `ifindex`
/// (`offsetof` in <linux/bpf.h>). The kernel takes `ifindex` only if that
/// interface exists in the caller's namespace.
const SK_BUFF_LEN: usize = 192;
const SK_BUFF_IFINDEX: usize = 40;

fn sk_buff(ifindex: u32) -> [u8; SK_BUFF_LEN] {
    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// What one `BPF_PROG_TEST_RUN` returned.
pub struct Ran {
    /// The verdict of the (last) run.
    pub ret: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// The kernel's mean time per run.
    pub time: Duration,
}

fn test_run<P>(prog: &P, frame: &[u8], ctx: Option<&[u8]>, repeat: u32) -> Result<Ran, ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut data = vec![0u8; frame.len() + 512];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut data),
        ctx_in: ctx,
        repeat,
        ..Default::default()
    })?;
    data.truncate(r.data_size_out as usize);
    Ok(Ran {
        ret: r.return_value,
        data,
        time: r.duration,
    })
}

/// A TC program run `repeat` times on `frame`, which came in on `ifindex`.
/// The kernel reruns the program on the same skb: runs after the first see
/// what the previous one left.
pub fn tc(
    dp: &mut Dataplane,
    name: &'static str,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<Ran, ProgramError> {
    let ctx = sk_buff(ifindex);
    test_run(dp.classifier(name).unwrap(), frame, Some(&ctx), repeat)
}

/// The from-instance program, as if `frame` came in on `ifindex`: its
/// verdict and the packet it left.
pub fn from_instance(dp: &mut Dataplane, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let r = tc(dp, programs::FROM_INSTANCE, frame, ifindex, 1).expect("BPF_PROG_TEST_RUN");
    (r.ret, r.data)
}

/// The uplink TC program.
pub fn uplink_tc(dp: &mut Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = tc(dp, programs::UPLINK, frame, LO, 1).expect("BPF_PROG_TEST_RUN");
    (r.ret, r.data)
}

/// The uplink XDP program.
pub fn uplink_xdp(dp: &mut Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog = dp.xdp(programs::UPLINK_XDP).unwrap();
    let r = test_run(prog, frame, None, 1).expect("BPF_PROG_TEST_RUN");
    (r.ret, r.data)
}

// --------------------------------------------------------------- counters

pub struct Snapshot(Vec<(Reason, u64)>);

pub fn snapshot(dp: &Dataplane) -> Snapshot {
    Snapshot(
        dp.tables
            .stats()
            .unwrap()
            .into_iter()
            .map(|(r, c)| (r, c.packets))
            .collect(),
    )
}

impl Snapshot {
    /// The counters that moved since the snapshot, by how much.
    pub fn delta(&self, dp: &Dataplane) -> Vec<(Reason, u64)> {
        let now = snapshot(dp);
        now.0
            .iter()
            .zip(&self.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| (a.0, a.1 - b.1))
            .collect()
    }
}

// -------------------------------------------------------------- conntrack

pub fn ct_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: wire(src),
        daddr: wire(dst),
        sport: port(sport),
        dport: port(dport),
        proto,
        _pad: [0; 3],
    }
}

/// The two entries a new flow client:sport -> VIP:dport to `backend` on
/// `node` must leave (ICMP echo: the id as both ports).
pub fn ct_pair(
    sport: u16,
    dport: u16,
    proto: u8,
    backend: Ipv4Addr,
    node: u32,
) -> Vec<(CtKey, CtEntry)> {
    let fwd = CtEntry {
        nat_addr: wire(backend),
        via: node,
        service: SERVICE,
        dir: ct::FORWARD,
        state: ct::OPEN,
        nat_port: 0,
        seen: 0,
    };
    let rev = CtEntry {
        nat_addr: wire(VIP),
        via: NODE_ID,
        service: SERVICE,
        dir: ct::REVERSE,
        state: ct::OPEN,
        nat_port: 0,
        seen: 0,
    };
    let mut v = vec![
        (ct_key(CLIENT.ip, VIP, sport, dport, proto), fwd),
        (ct_key(backend, CLIENT.ip, dport, sport, proto), rev),
    ];
    sort(&mut v);
    v
}

/// The conntrack entries, with `seen` checked to be the current tick and
/// then zeroed so that tests can compare whole entries.
pub fn conntrack(dp: &Dataplane) -> Vec<(CtKey, CtEntry)> {
    let now = overlay_ctl::dataplane::tick_now();
    let mut v = dp.tables.conntrack();
    for (k, e) in &mut v {
        assert!(
            now.wrapping_sub(e.seen) <= 2,
            "{k:?}: seen {} not near now {now}",
            e.seen
        );
        e.seen = 0;
    }
    sort(&mut v);
    v
}

fn sort(v: &mut [(CtKey, CtEntry)]) {
    v.sort_by_key(|(k, _)| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
}
