//! Per-packet cost of every program path under `BPF_PROG_TEST_RUN`.
//!
//! `repeat = N` reruns a program N times on the *same* skb, so from the
//! second run on a program that rewrites its packet measures what it does
//! with its own output (see `overlay-ctl/tests/packets/cost.rs`). Instead,
//! each path is timed over many **single runs on fresh packets**: the kernel
//! times one run with `ktime_get_ns()` around it, which adds a constant (the
//! clock reads, `local_bh_disable/enable`, the run context), so a trivial
//! program (`r0 = verdict; exit`, loaded here with `bpf(2)`) is measured the
//! same way, interleaved with the real ones, and its median is subtracted
//! from theirs. New flows get a new source port every run; their conntrack
//! entries are deleted between chunks so the LRU never fills.
//!
//! The runs happen on a thread inside a namespace of their own whose `up0`
//! veth stands in for the uplink (the encapsulation's FIB lookup needs one).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail, ensure};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use aya::programs::ProgramFd;
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use overlay_common::maps::{Config, CtEntry, CtKey, Endpoint, ip, names, policy};
use overlay_common::stats::Reason;
use overlay_common::{DEFAULT_EWP, IPPROTO_TCP};
use overlay_ctl::dataplane::{Dataplane, programs};
use overlay_testnet::Netns;

use crate::rawbpf::{self, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP};
use crate::report::CostRow;
use crate::stats::percentile_sorted;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const NODE_ID: u32 = 1;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const PEER_ID: u32 = 2;
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const MTU: u16 = 1472;
/// Loopback: every namespace has it, so a test run may claim a packet came in on it.
const LO: u32 = 1;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 1, 2];
const CLIENT_HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 1, 2];
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 5);
const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const SERVICE_REMOTE: u32 = 42;
const SERVICE_LOCAL: u32 = 43;
const PORT: u16 = 80;
/// Source port of the established flows; new flows use others.
const CLIENT_PORT: u16 = 40000;
const NEW_FLOW_PORTS: std::ops::Range<u16> = 1024..39_000;
/// Fresh runs per chunk: every path runs a chunk in turn (baselines
/// included), so slow drifts of the machine hit all of them alike.
const CHUNK: usize = 25_000;
/// Payload of the measured TCP segments.
const PAYLOAD: [u8; 64] = [0x5a; 64];
/// The profile rows (which explain the paths' costs) run a fifth of the runs.
const PROFILE_SHARE: usize = 5;
/// An address outside the overlay.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

/// `sizeof(struct __sk_buff)` and the offset of `ifindex` in it.
const SK_BUFF_LEN: usize = 192;
const SK_BUFF_IFINDEX: usize = 40;

fn wire(a: Ipv4Addr) -> u32 {
    ip::to_wire(a)
}

fn eth(src: [u8; 6], dst: [u8; 6], ip_packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip_packet.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

/// An IPv4 header as Linux writes it (DF, TTL 64).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, 64, IpNumber(proto), src.octets(), dst.octets())
        .expect("a valid header");
    h.identification = 0x1234;
    h
}

/// A TCP ACK with 64 bytes of data.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        ipv4(src, dst, IPPROTO_TCP),
        Default::default(),
    ))
    .tcp(sport, dport, 1000, 64240)
    .ack(1)
    .write(&mut out, &PAYLOAD)
    .expect("a buildable packet");
    out
}

/// `frame` (Ethernet + IPv4 + TCP) with another source port, the TCP
/// checksum updated incrementally (RFC 1624).
fn with_sport(frame: &mut [u8], sport: u16) {
    const SPORT: usize = 14 + 20;
    const CSUM: usize = SPORT + 16;
    let old = u16::from_be_bytes([frame[SPORT], frame[SPORT + 1]]);
    let csum = u16::from_be_bytes([frame[CSUM], frame[CSUM + 1]]);
    let mut sum = (!csum as u32) + (!old as u32) + sport as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[SPORT..SPORT + 2].copy_from_slice(&sport.to_be_bytes());
    frame[CSUM..CSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A tunnel packet from `from` to this node's EWP carrying `inner` (no UDP checksum).
fn tunnel(from: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        ipv4(from, NODE_IP, overlay_common::IPPROTO_UDP),
        Default::default(),
    ))
    .udp(49999, DEFAULT_EWP)
    .write(&mut out, inner)
    .expect("a buildable packet");
    out[26..28].copy_from_slice(&[0, 0]);
    eth(PEER_MAC, UPLINK_MAC, &out)
}

/// The namespace standing in for the node: `up0` with the node address and
/// a permanent neighbour entry for the peer, forwarding on.
fn uplink_ns() -> anyhow::Result<(Netns, u32)> {
    let ns = Netns::new("cost")?;
    ns.disable_ipv6()?;
    let mac = crate::topo::fmt_mac(&UPLINK_MAC);
    ns.ip([
        "link", "add", "up0", "address", &mac, "type", "veth", "peer", "name", "up0p",
    ])?;
    ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"])?;
    ns.ip(["link", "set", "up0", "up"])?;
    ns.ip(["link", "set", "up0p", "up"])?;
    let peer = crate::topo::fmt_mac(&PEER_MAC);
    ns.ip([
        "neigh",
        "add",
        &PEER_IP.to_string(),
        "lladdr",
        &peer,
        "dev",
        "up0",
        "nud",
        "permanent",
    ])?;
    ns.set_sysctl("net.ipv4.conf.all.forwarding", "1")?;
    let (ifindex, _) = crate::topo::link(&ns, "up0")?;
    Ok((ns, ifindex))
}

/// The node's tables: a client, a local backend, a remote backend on the
/// peer node, and one ServIP for each backend (TCP 80).
fn configure(dp: &mut Dataplane, uplink_ifindex: u32) -> anyhow::Result<()> {
    let t = &mut dp.tables;
    t.set_config(&Config {
        node_id: NODE_ID,
        node_ip: wire(NODE_IP),
        uplink_ifindex,
        ewp: ip::port_to_wire(DEFAULT_EWP),
        mtu: MTU,
    })?;
    let endpoint = |service, last: u8| Endpoint {
        ifindex: LO,
        service,
        instance: last as u32,
        mac: [0x02, 0xaa, 0, 0, 1, last],
        host_mac: [0x02, 0xbb, 0, 0, 1, last],
    };
    t.put_endpoint(CLIENT, &endpoint(7, 2))?;
    t.put_endpoint(LOCAL, &endpoint(SERVICE_LOCAL, 3))?;
    t.put_node(PEER_ID, PEER_IP, DEFAULT_EWP)?;
    t.put_route(Ipv4Addr::new(10, 30, 2, 0), 24, PEER_ID)?;
    for (vip, service, backend, node) in [
        (VIP_REMOTE, SERVICE_REMOTE, REMOTE, PEER_ID),
        (VIP_LOCAL, SERVICE_LOCAL, LOCAL, NODE_ID),
    ] {
        let id = u32::from(backend);
        t.put_port(service, PORT, IPPROTO_TCP)?;
        t.put_backend(id, backend, node)?;
        t.put_servip(vip, service, policy::ROUNDROBIN, &[id])?;
    }
    Ok(())
}

/// A program and what to feed it.
struct Case {
    key: &'static str,
    description: &'static str,
    program: &'static str,
    fd: OwnedFdOrProgram,
    frame: Vec<u8>,
    /// The ingress interface of the `__sk_buff` (TC only).
    tc: bool,
    verdict: u32,
    /// Counter that must rise by one per run (besides `new_flow`).
    counted: Option<Reason>,
    /// A new source port every run.
    new_flows: bool,
    baseline: &'static str,
    /// The program leaves the packet as it found it: `repeat` is valid too.
    idempotent: bool,
    /// Runs `1/share` of the runs (the profile rows, which only explain the others).
    share: usize,
    samples: Vec<u32>,
    verified_insns: Option<u32>,
    xlated_insns: Option<u32>,
}

enum OwnedFdOrProgram {
    Raw(OwnedFd),
    Prog(ProgramFd),
}

impl OwnedFdOrProgram {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            OwnedFdOrProgram::Raw(f) => f.as_fd(),
            OwnedFdOrProgram::Prog(p) => p.as_fd(),
        }
    }
}

fn verdict_name(tc: bool, v: u32) -> String {
    match (tc, v) {
        (true, TC_ACT_OK) => "TC_ACT_OK".into(),
        (true, 2) => "TC_ACT_SHOT".into(),
        (true, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT".into(),
        (false, XDP_DROP) => "XDP_DROP".into(),
        (false, XDP_PASS) => "XDP_PASS".into(),
        (_, v) => v.to_string(),
    }
}

/// The conntrack map of `dp`, opened by id (the `Tables` API does not delete
/// entries).
fn conntrack_map(dp: &mut Dataplane) -> anyhow::Result<BpfHashMap<MapData, CtKey, CtEntry>> {
    let info = dp.classifier(programs::FROM_INSTANCE)?.info()?;
    for id in info.map_ids()?.unwrap_or_default() {
        let m = MapInfo::from_id(id)?;
        if m.name_as_str() == Some(names::CONNTRACK) {
            let map = Map::from_map_data(MapData::from_id(id)?)?;
            return Ok(BpfHashMap::try_from(map)?);
        }
    }
    bail!("the from_instance program uses no CONNTRACK map")
}

/// Times every path `runs` times; returns one row per path, baselines
/// first, and what `bpf_stats` reports for the trivial TC program.
/// `only`, when not empty, keeps just those paths (and the baselines): for
/// profiling one path with `perf record -e cpu-clock`.
pub fn run(
    runs: usize,
    only: &[String],
    stop: &AtomicBool,
) -> anyhow::Result<(Vec<CostRow>, Option<f64>)> {
    let (ns, uplink) = uplink_ns()?;
    ns.enter(|| measure(runs, only, uplink, stop))?
}

fn measure(
    runs: usize,
    only: &[String],
    uplink: u32,
    stop: &AtomicBool,
) -> anyhow::Result<(Vec<CostRow>, Option<f64>)> {
    let mut dp = Dataplane::load(None).context("loading the dataplane")?;
    configure(&mut dp, uplink)?;
    let mut ct = conntrack_map(&mut dp)?;

    let request_remote = eth(
        CLIENT_MAC,
        CLIENT_HOST_MAC,
        &tcp(CLIENT, CLIENT_PORT, VIP_REMOTE, PORT),
    );
    let request_local = eth(
        CLIENT_MAC,
        CLIENT_HOST_MAC,
        &tcp(CLIENT, CLIENT_PORT, VIP_LOCAL, PORT),
    );
    let reply = tunnel(PEER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT));
    let mut new_flow = request_remote.clone();
    with_sport(&mut new_flow, NEW_FLOW_PORTS.start);
    let node_traffic = eth(PEER_MAC, UPLINK_MAC, &tcp(PEER_IP, 45000, NODE_IP, 22));
    let stranger = tunnel(STRANGER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT));
    let from_client = |dst| {
        eth(
            CLIENT_MAC,
            CLIENT_HOST_MAC,
            &tcp(CLIENT, CLIENT_PORT, dst, PORT),
        )
    };
    let ipv6 = {
        let mut f = eth(CLIENT_MAC, CLIENT_HOST_MAC, &[0x60; 104]);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f
    };
    let outside = from_client(OUTSIDE);
    let direct_local = from_client(LOCAL);
    let direct_remote = from_client(REMOTE);
    // A tunnel packet of a flow this node did not translate: no reverse NAT.
    let untranslated = tunnel(PEER_IP, &tcp(REMOTE, PORT, CLIENT, CLIENT_PORT + 1));

    let mut prog =
        |name: &'static str| -> anyhow::Result<(OwnedFdOrProgram, Option<u32>, Option<u32>)> {
            let (fd, info) = if name == programs::UPLINK_XDP {
                let p = dp.xdp(name)?;
                (p.fd()?.try_clone()?, p.info()?)
            } else {
                let p = dp.classifier(name)?;
                (p.fd()?.try_clone()?, p.info()?)
            };
            Ok((
                OwnedFdOrProgram::Prog(fd),
                info.verified_instruction_count(),
                info.size_translated().map(|b| b / 8),
            ))
        };
    let trivial_tc = rawbpf::load_trivial(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK as i32, "bench_tc")
        .context("loading the trivial TC program")?;
    let trivial_xdp = rawbpf::load_trivial(BPF_PROG_TYPE_XDP, XDP_PASS as i32, "bench_xdp")
        .context("loading the trivial XDP program")?;

    let case =
        |key: &'static str,
         description,
         program,
         (fd, verified_insns, xlated_insns): (OwnedFdOrProgram, Option<u32>, Option<u32>),
         frame: &Vec<u8>,
         tc,
         verdict,
         counted,
         baseline,
         idempotent| Case {
            share: if key.starts_with("profile_") {
                PROFILE_SHARE
            } else {
                1
            },
            key,
            description,
            program,
            fd,
            frame: frame.clone(),
            tc,
            verdict,
            counted,
            new_flows: key == "encap_new",
            baseline,
            idempotent,
            samples: Vec::with_capacity(runs),
            verified_insns,
            xlated_insns,
        };
    let mut cases = vec![
        case(
            "trivial_tc",
            "baseline: trivial TC program (r0 = TC_ACT_OK)",
            "bench_tc",
            (OwnedFdOrProgram::Raw(trivial_tc), Some(2), Some(2)),
            &request_remote,
            true,
            TC_ACT_OK,
            None,
            "",
            true,
        ),
        case(
            "encap_new",
            "from_instance: translate + encapsulate, new flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &new_flow,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "encap_established",
            "from_instance: translate + encapsulate, established flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &request_remote,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "local_delivery",
            "from_instance: translate + local delivery, established flow",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &request_local,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::DeliverLocal),
            "trivial_tc",
            false,
        ),
        case(
            "decap_reverse",
            "uplink: decapsulate + reverse NAT + delivery",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &reply,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Decap),
            "trivial_tc",
            false,
        ),
        case(
            "uplink_pass",
            "uplink: node traffic passes (not a tunnel packet)",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &node_traffic,
            true,
            TC_ACT_OK,
            None,
            "trivial_tc",
            true,
        ),
        case(
            "trivial_xdp",
            "baseline: trivial XDP program (r0 = XDP_PASS)",
            "bench_xdp",
            (OwnedFdOrProgram::Raw(trivial_xdp), Some(2), Some(2)),
            &stranger,
            false,
            XDP_PASS,
            None,
            "",
            true,
        ),
        case(
            "xdp_drop",
            "uplink_xdp: drop a tunnel packet from an unknown node",
            programs::UPLINK_XDP,
            prog(programs::UPLINK_XDP)?,
            &stranger,
            false,
            XDP_DROP,
            Some(Reason::DropUnknownPeer),
            "trivial_xdp",
            true,
        ),
        case(
            "profile_ipv6",
            "profile: from_instance passes an IPv6 frame (entry, ethertype)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &ipv6,
            true,
            TC_ACT_OK,
            Some(Reason::Pass),
            "trivial_tc",
            true,
        ),
        case(
            "profile_outside",
            "profile: from_instance passes IPv4 to outside the overlay (4 lookups)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &outside,
            true,
            TC_ACT_OK,
            Some(Reason::Pass),
            "trivial_tc",
            true,
        ),
        case(
            "profile_direct_local",
            "profile: from_instance to a local NamespaceIP (no ServIP, no NAT)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &direct_local,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::DeliverLocal),
            "trivial_tc",
            false,
        ),
        case(
            "profile_direct_remote",
            "profile: from_instance to a remote NamespaceIP (encapsulate + FIB, no NAT)",
            programs::FROM_INSTANCE,
            prog(programs::FROM_INSTANCE)?,
            &direct_remote,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Encap),
            "trivial_tc",
            false,
        ),
        case(
            "profile_decap_direct",
            "profile: uplink decapsulates an untranslated flow (no reverse NAT)",
            programs::UPLINK,
            prog(programs::UPLINK)?,
            &untranslated,
            true,
            TC_ACT_REDIRECT,
            Some(Reason::Decap),
            "trivial_tc",
            false,
        ),
    ];

    cases.retain(|c| {
        only.is_empty() || c.key.starts_with("trivial_") || only.iter().any(|k| k == c.key)
    });

    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&LO.to_ne_bytes());
    let mut out = vec![0u8; 4096];

    // Establish the two flows the established paths use, and check every
    // case once with its output copied out.
    let (fi, _, _) = prog(programs::FROM_INSTANCE)?;
    let fi = fi.as_fd();
    for f in [&request_remote, &request_local] {
        let r = rawbpf::test_run(fi, f, Some(&mut out), Some(&ctx), 1)?;
        ensure!(
            r.ret == TC_ACT_REDIRECT,
            "establishing a flow: verdict {}",
            r.ret
        );
    }
    for c in &cases {
        let r = rawbpf::test_run(
            c.fd.as_fd(),
            &c.frame,
            Some(&mut out),
            c.tc.then_some(&ctx[..]),
            1,
        )
        .with_context(|| format!("test run of {}", c.key))?;
        ensure!(
            r.ret == c.verdict,
            "{}: verdict {} instead of {}",
            c.key,
            verdict_name(c.tc, r.ret),
            verdict_name(c.tc, c.verdict)
        );
    }
    clear_new_flows(&mut ct, NEW_FLOW_PORTS.start..NEW_FLOW_PORTS.start + 1);

    let counts_before: Vec<u64> = cases
        .iter()
        .map(|c| c.counted.map_or(Ok(0), |r| dp.tables.count(r)))
        .collect::<Result<_, _>>()?;
    let new_before = dp.tables.count(Reason::NewFlow)?;

    let mut done = 0;
    let ports = NEW_FLOW_PORTS.len();
    let chunk = CHUNK.min(ports);
    while done < runs {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let n = chunk.min(runs - done);
        for c in &mut cases {
            let fd = c.fd.as_fd();
            let ctx = c.tc.then_some(&ctx[..]);
            for i in 0..n.div_ceil(c.share) {
                if c.new_flows {
                    with_sport(&mut c.frame, NEW_FLOW_PORTS.start + i as u16);
                }
                let r = rawbpf::test_run(fd, &c.frame, None, ctx, 1)?;
                if r.ret != c.verdict {
                    bail!(
                        "{}: run {} returned {} instead of {}",
                        c.key,
                        done + i,
                        verdict_name(c.tc, r.ret),
                        verdict_name(c.tc, c.verdict)
                    );
                }
                c.samples.push(r.ns);
            }
        }
        clear_new_flows(
            &mut ct,
            NEW_FLOW_PORTS.start..NEW_FLOW_PORTS.start + n as u16,
        );
        done += n;
    }

    for (c, before) in cases.iter().zip(&counts_before) {
        if let Some(reason) = c.counted {
            let moved = dp.tables.count(reason)? - before;
            let expected: u64 = cases
                .iter()
                .filter(|o| o.counted == Some(reason))
                .map(|o| o.samples.len() as u64)
                .sum();
            ensure!(
                moved == expected,
                "{}: counter {} moved by {moved}, expected {expected}",
                c.key,
                reason.label(),
            );
        }
    }
    let new_flows = dp.tables.count(Reason::NewFlow)? - new_before;
    let expected: u64 = cases
        .iter()
        .filter(|c| c.new_flows)
        .map(|c| c.samples.len() as u64)
        .sum();
    ensure!(
        new_flows == expected,
        "new_flow moved by {new_flows}, expected {expected}"
    );

    // The kernel's own mean over `repeat` runs, where the packet does not change.
    let mut repeat = Vec::new();
    for c in &cases {
        let r = if c.idempotent {
            let reps = runs.min(u32::MAX as usize) as u32;
            let ctx = c.tc.then_some(&ctx[..]);
            Some(rawbpf::test_run(c.fd.as_fd(), &c.frame, None, ctx, reps)?.ns as f64)
        } else {
            None
        };
        repeat.push(r);
    }

    let overhead = cases
        .iter()
        .find(|c| c.key == "trivial_tc")
        .and_then(|c| stats_overhead(c.fd.as_fd(), &c.frame, &ctx, runs).ok());

    let mut rows: Vec<CostRow> = Vec::new();
    for (c, repeat_ns) in cases.iter_mut().zip(repeat) {
        c.samples.sort_unstable();
        let median = percentile_sorted(&c.samples, 50.0).unwrap_or(0) as f64;
        let p99 = percentile_sorted(&c.samples, 99.0).unwrap_or(0) as f64;
        let mean = c.samples.iter().map(|&x| x as f64).sum::<f64>() / c.samples.len().max(1) as f64;
        rows.push(CostRow {
            key: c.key.to_owned(),
            description: c.description.to_owned(),
            program: c.program.to_owned(),
            runs: c.samples.len() as u64,
            verdict: verdict_name(c.tc, c.verdict),
            median_ns: median,
            mean_ns: mean,
            p99_ns: p99,
            baseline: c.baseline.to_owned(),
            net_ns: None,
            repeat_ns,
            verified_insns: c.verified_insns,
            xlated_insns: c.xlated_insns,
        });
    }
    let base: Vec<(String, f64)> = rows.iter().map(|r| (r.key.clone(), r.median_ns)).collect();
    for r in &mut rows {
        if let Some((_, b)) = base.iter().find(|(k, _)| *k == r.baseline) {
            r.net_ns = Some(r.median_ns - b);
        }
    }
    Ok((rows, overhead))
}

/// With `bpf_stats` on, the mean run time the kernel records for the trivial
/// program: the cost of the statistics themselves.
fn stats_overhead(
    trivial: std::os::fd::BorrowedFd,
    frame: &[u8],
    ctx: &[u8],
    runs: usize,
) -> anyhow::Result<f64> {
    let info = |fd| -> anyhow::Result<(u64, u64)> {
        let prog = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("bench_tc"))
            .filter(|p| p.fd().is_ok_and(|f| same_program(f.as_fd(), fd)))
            .last()
            .context("the trivial program is not listed")?;
        Ok((prog.run_time().as_nanos() as u64, prog.run_count()))
    };
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let (t0, n0) = info(trivial)?;
    rawbpf::test_run(
        trivial,
        frame,
        None,
        Some(ctx),
        runs.min(u32::MAX as usize) as u32,
    )?;
    let (t1, n1) = info(trivial)?;
    ensure!(n1 > n0, "bpf_stats counted no runs");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

/// Whether two program fds refer to the same program (same id).
fn same_program(a: std::os::fd::BorrowedFd, b: std::os::fd::BorrowedFd) -> bool {
    match (rawbpf::prog_id(a), rawbpf::prog_id(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Deletes the conntrack entries of the new flows with these source ports
/// (both directions, as `from_instance` writes them).
fn clear_new_flows(ct: &mut BpfHashMap<MapData, CtKey, CtEntry>, sports: std::ops::Range<u16>) {
    let port = |p: u16| ip::port_to_wire(p);
    for sport in sports {
        let fwd = CtKey {
            saddr: wire(CLIENT),
            daddr: wire(VIP_REMOTE),
            sport: port(sport),
            dport: port(PORT),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let rev = CtKey {
            saddr: wire(REMOTE),
            daddr: wire(CLIENT),
            sport: port(PORT),
            dport: port(sport),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let _ = ct.remove(&fwd);
        let _ = ct.remove(&rev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_sport_update_keeps_the_checksum_valid() {
        let mut f = eth(
            CLIENT_MAC,
            CLIENT_HOST_MAC,
            &tcp(CLIENT, 40000, VIP_REMOTE, 80),
        );
        for p in [1024, 65535, 0, 40001] {
            with_sport(&mut f, p);
            let want = eth(CLIENT_MAC, CLIENT_HOST_MAC, &tcp(CLIENT, p, VIP_REMOTE, 80));
            assert_eq!(f, want, "sport {p}");
        }
    }
}
