//! The name service end to end, with real clients: `dig` (UDP and TCP),
//! glibc (`getent hosts` through the `resolv.conf` that
//! `write_resolv_conf` writes) and mDNS queries built with hickory-proto.
//!
//! Each test builds a server namespace (the node: the gateway 169.254.1.1 on
//! its loopback, DNS and mDNS served from there) and a client namespace
//! (the instance: 10.99.0.2 on `eth0`, a veth to the node's `inst0`, routes
//! to the gateway and to 224.0.0.0/4 over it). The servers run on a
//! current-thread runtime on a thread inside the node namespace. Needs root
//! and `dig` (Debian package dnsutils); nothing is skipped.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use overlay_ctl::dns::{self, DnsOptions, DnsServer, Mdns};
use overlay_ctl::model::{ClusterState, InstanceSpec, Policy, ServiceSpec};
use overlay_testnet::{Netns, require_root, veth};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::sync::{oneshot, watch};

const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const UPSTREAM: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5300));
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 55);
/// Anything slower than this is a hang as far as these tests go.
const QUICK: Duration = Duration::from_secs(1);

const CART: &str = "shop.prod.cart.team1";
const DB: &str = "shop.prod.db.team1";

fn ip(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, c, d)
}

/// Every name with an address in [`state`], and that address.
fn expected() -> Vec<(String, Ipv4Addr)> {
    let mut names = vec![
        (format!("{CART}.any.closest.local"), ip(0, 1)),
        (format!("{CART}.any.roundrobin.local"), ip(0, 2)),
        (format!("{CART}.any.fastest.local"), ip(0, 3)),
        (format!("{CART}.1.fixed.local"), ip(0, 11)),
        (format!("{DB}.1.fixed.local"), ip(0, 21)),
        (format!("{DB}.2.fixed.local"), ip(0, 22)),
        (format!("{DB}.3.fixed.local"), ip(0, 23)),
    ];
    for i in 0..100u8 {
        for (k, p) in ["closest", "roundrobin", "fastest"].iter().enumerate() {
            names.push((
                format!("app{i}.ns.svc{i}.team.any.{p}.local"),
                ip(100 + k as u8, i),
            ));
        }
    }
    names
}

fn state() -> ClusterState {
    let servips = |c: u8, d: [u8; 3]| -> BTreeMap<Policy, Ipv4Addr> {
        Policy::ALL
            .into_iter()
            .zip(d)
            .map(|(p, d)| (p, ip(c, d)))
            .collect()
    };
    let service = |name: String, stateful, servips| service_spec(&name, stateful, servips);
    let instance = |service: &str, n: u32, fixed: Option<Ipv4Addr>| InstanceSpec {
        service: service.into(),
        instance: n,
        node: "n1".into(),
        nsip: Ipv4Addr::new(10, 30, 1, n as u8 + 10),
        fixed_ip: fixed,
    };
    let mut s = ClusterState {
        nodes: vec![],
        services: vec![
            service(CART.into(), false, servips(0, [1, 2, 3])),
            service(DB.into(), true, BTreeMap::new()),
            service(
                "shop.prod.lonely.team1".into(),
                false,
                [(Policy::Closest, ip(0, 9))].into(),
            ),
        ],
        instances: vec![
            instance(CART, 1, Some(ip(0, 11))),
            instance(CART, 2, None),
            instance(DB, 1, Some(ip(0, 21))),
            instance(DB, 2, Some(ip(0, 22))),
            instance(DB, 3, Some(ip(0, 23))),
        ],
        ..Default::default()
    };
    for i in 0..100u8 {
        let name = format!("app{i}.ns.svc{i}.team");
        let servips = Policy::ALL
            .into_iter()
            .enumerate()
            .map(|(k, p)| (p, ip(100 + k as u8, i)))
            .collect();
        s.services.push(service(name, false, servips));
    }
    s
}

/// A service through serde, so that fields added to `ServiceSpec` with a
/// default do not break these tests.
fn service_spec(name: &str, stateful: bool, servips: BTreeMap<Policy, Ipv4Addr>) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "id": 1,
        "ports": [80],
        "stateful": stateful,
        "servips": servips,
    }))
    .expect("a valid service")
}

/// A node namespace serving DNS and mDNS, and an instance namespace.
struct Lab {
    tx: watch::Sender<ClusterState>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    client: Netns,
    _server: Netns,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_upstream(None)
    }

    /// With `upstream`, names outside `.local` go to a fake resolver on
    /// the node that answers every name with [`UPSTREAM_IP`] except
    /// `dead.example.`, which it never answers.
    fn with_upstream(upstream: Option<SocketAddr>) -> Lab {
        require_root().unwrap();
        let server = Netns::new("dns-node").unwrap();
        let client = Netns::new("dns-inst").unwrap();
        server.disable_ipv6().unwrap();
        client.disable_ipv6().unwrap();
        veth(&server, "inst0", &client, "eth0").unwrap();
        server
            .ip(["addr", "add", &format!("{GW}/32"), "dev", "lo"])
            .unwrap();
        server
            .ip(["route", "add", &format!("{CLIENT}/32"), "dev", "inst0"])
            .unwrap();
        client
            .ip(["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])
            .unwrap();
        client
            .ip(["route", "add", &format!("{GW}/32"), "dev", "eth0"])
            .unwrap();
        client
            .ip(["route", "add", "224.0.0.0/4", "dev", "eth0"])
            .unwrap();

        let (tx, rx) = watch::channel(state());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = server
            .thread(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if upstream.is_some() {
                        tokio::spawn(fake_upstream());
                    }
                    let options = DnsOptions {
                        upstream,
                        upstream_timeout: Duration::from_millis(300),
                        ..DnsOptions::default()
                    };
                    let dns = DnsServer::start_with((GW, 53).into(), rx.clone(), options);
                    let mdns = Mdns::start(vec![("inst0".into(), GW)], rx, dns::DEFAULT_TTL);
                    match (dns, mdns) {
                        (Ok(dns), Ok(mdns)) => {
                            ready_tx.send(Ok(())).unwrap();
                            let _ = stopped.await;
                            drop(mdns);
                            dns.shutdown().await.unwrap();
                        }
                        (dns, mdns) => {
                            let why = format!("{:?} / {:?}", dns.err(), mdns.err());
                            ready_tx.send(Err(why)).unwrap();
                        }
                    }
                })
            })
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        Lab {
            tx,
            stop: Some(stop),
            thread: Some(thread),
            client,
            _server: server,
        }
    }

    fn dig(&self, args: &[&str]) -> (String, Duration) {
        let start = Instant::now();
        let gw = format!("@{GW}");
        let mut all = vec![gw.as_str(), "+tries=1", "+time=3"];
        all.extend_from_slice(args);
        let out = self.client.run("dig", &all).unwrap();
        (out, start.elapsed())
    }

    /// `dig NAME TYPE` (plus `extra`): the status and the answer count.
    fn status(&self, name: &str, qtype: &str, extra: &[&str]) -> (String, u32) {
        let mut args = vec![name, qtype];
        args.extend_from_slice(extra);
        let (out, took) = self.dig(&args);
        assert!(took < QUICK, "{name} {qtype} took {took:?}");
        let status = out
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_else(|| panic!("no status in {out}"));
        let answers = out
            .split("ANSWER: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer count in {out}"));
        (status.to_owned(), answers)
    }

    fn getent(&self, name: &str) -> (Output, Duration) {
        let start = Instant::now();
        let out = self.client.cmd("getent", ["hosts", name]).output().unwrap();
        (out, start.elapsed())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers every query with [`UPSTREAM_IP`], except `dead.example.`.
async fn fake_upstream() {
    let socket = tokio::net::UdpSocket::bind(UPSTREAM).await.unwrap();
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await.unwrap();
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let q = query.queries[0].clone();
        if q.name().to_ascii() == "dead.example." {
            continue;
        }
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.recursion_available = true;
        reply.add_query(q.clone());
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(UPSTREAM_IP)),
        ));
        socket
            .send_to(&reply.to_vec().unwrap(), from)
            .await
            .unwrap();
    }
}

#[test]
fn dig_resolves_every_policy_over_udp_and_tcp() {
    let lab = Lab::new();
    for (name, want) in expected().iter().take(7) {
        for transport in ["+notcp", "+tcp"] {
            let (out, took) = lab.dig(&[name, "A", "+short", transport]);
            assert_eq!(out.trim(), want.to_string(), "{name} {transport}");
            assert!(took < QUICK, "{name} took {took:?}");
        }
        // Any case, trailing dot.
        let upper = format!("{}.", name.to_uppercase());
        let (out, _) = lab.dig(&[&upper, "A", "+short"]);
        assert_eq!(out.trim(), want.to_string(), "{upper}");
    }
    // Authoritative answer with the 5 s TTL.
    let (out, _) = lab.dig(&[&format!("{CART}.any.closest.local"), "A"]);
    assert!(out.contains(" aa"), "{out}");
    let want = format!("{CART}.any.closest.local. 5 IN A 172.30.0.1");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
        "{out}"
    );
}

#[test]
fn dig_gets_the_documented_rcodes_quickly() {
    let lab = Lab::new();
    let closest = format!("{CART}.any.closest.local");
    for (name, qtype, want, answers) in [
        (closest.as_str(), "AAAA", "NOERROR", 0),
        (closest.as_str(), "MX", "NOERROR", 0),
        (closest.as_str(), "ANY", "NOERROR", 1),
        ("shop.prod.nope.team1.any.closest.local", "A", "NXDOMAIN", 0),
        (
            "shop.prod.nope.team1.any.closest.local",
            "AAAA",
            "NXDOMAIN",
            0,
        ),
        ("shop.prod.db.team1.any.closest.local", "A", "NXDOMAIN", 0),
        ("shop.prod.db.team1.9.fixed.local", "A", "NXDOMAIN", 0),
        ("shop.prod.cart.team1.2.fixed.local", "A", "NXDOMAIN", 0),
        (
            "shop.prod.lonely.team1.any.roundrobin.local",
            "A",
            "NXDOMAIN",
            0,
        ),
        ("cart.local", "A", "FORMERR", 0),
        ("local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.any.fixed.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.1.closest.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.0.fixed.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.any.nearest.local", "A", "FORMERR", 0),
        (
            "shop_x.prod.cart.team1.any.closest.local",
            "A",
            "FORMERR",
            0,
        ),
        ("a.b.c.d.e.any.closest.local", "A", "FORMERR", 0),
        ("example.com", "A", "REFUSED", 0),
        (".", "NS", "REFUSED", 0),
    ] {
        for transport in ["+notcp", "+tcp"] {
            let got = lab.status(name, qtype, &[transport]);
            assert_eq!(
                got,
                (want.to_owned(), answers),
                "{name} {qtype} {transport}"
            );
        }
    }
    // Negative answers carry the SOA for caching.
    let (out, _) = lab.dig(&["shop.prod.nope.team1.any.closest.local", "A"]);
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    assert!(out.contains("SOA"), "{out}");
}

#[test]
fn dig_resolves_all_extra_services_in_one_run() {
    let lab = Lab::new();
    let names = expected();
    let mut args: Vec<&str> = vec!["+noall", "+answer"];
    for (name, _) in &names {
        args.push(name);
        args.push("A");
    }
    let (out, took) = lab.dig(&args);
    assert!(
        took < Duration::from_secs(5),
        "{} names took {took:?}",
        names.len()
    );
    let got: BTreeMap<String, Ipv4Addr> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A")
                .then(|| (f[0].trim_end_matches('.').to_owned(), f[4].parse().unwrap()))
        })
        .collect();
    assert_eq!(got.len(), names.len(), "{out}");
    for (name, want) in &names {
        assert_eq!(got.get(name), Some(want), "{name}");
    }
}

#[test]
fn getent_resolves_through_the_written_resolv_conf() {
    let lab = Lab::new();
    let netns = lab.client.name().to_owned();
    dns::write_resolv_conf(&netns, GW).unwrap();
    let path = dns::resolv_conf_path(&netns).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("nameserver {GW}\n")), "{text}");
    assert!(
        text.contains("options ndots:1 timeout:1 attempts:2\n"),
        "{text}"
    );

    for (name, want) in expected().iter().step_by(5) {
        let (out, took) = lab.getent(name);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {out:?}");
        let mut fields = stdout.split_whitespace();
        assert_eq!(fields.next(), Some(want.to_string().as_str()), "{stdout}");
        assert_eq!(fields.next(), Some(name.as_str()), "{stdout}");
        assert!(took < QUICK, "{name} took {took:?}");
    }
    for bad in [
        "shop.prod.nope.team1.any.closest.local",
        "shop.prod.db.team1.any.closest.local",
        "shop.prod.cart.team1.any.fixed.local",
        "cart.local",
    ] {
        let (out, took) = lab.getent(bad);
        // getent's exit code 2: not found.
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(took < Duration::from_secs(2), "{bad} took {took:?}");
    }

    dns::remove_resolv_conf(&netns).unwrap();
    assert!(!path.exists());
    assert!(!path.parent().unwrap().exists());
    dns::remove_resolv_conf(&netns).unwrap();
}

#[test]
fn state_updates_take_effect_at_once() {
    let lab = Lab::new();
    let closest = format!("{CART}.any.closest.local");
    assert_eq!(lab.status(&closest, "A", &[]), ("NOERROR".into(), 1));
    lab.tx
        .send_modify(|s| s.services.retain(|s| s.name != CART));
    assert_eq!(lab.status(&closest, "A", &[]), ("NXDOMAIN".into(), 0));
    assert_eq!(
        lab.status(&format!("{CART}.1.fixed.local"), "A", &[]).0,
        "NXDOMAIN"
    );
    assert!(mdns_one_shot(&lab, &closest, RecordType::A).is_none());
    // Another service still answers; a new one appears.
    let (out, _) = lab.dig(&[&format!("{DB}.2.fixed.local"), "+short"]);
    assert_eq!(out.trim(), "172.30.0.22");
    lab.tx.send_modify(|s| {
        s.services.push(service_spec(
            "new.ns.svc.team",
            false,
            [(Policy::Fastest, ip(7, 7))].into(),
        ))
    });
    let (out, _) = lab.dig(&["new.ns.svc.team.any.fastest.local", "+short"]);
    assert_eq!(out.trim(), "172.30.7.7");
}

#[test]
fn non_local_names_are_forwarded_when_configured() {
    let lab = Lab::with_upstream(Some(UPSTREAM));
    let (out, _) = lab.dig(&["www.example.com", "A", "+short"]);
    assert_eq!(out.trim(), UPSTREAM_IP.to_string());
    let (out, _) = lab.dig(&["www.example.com", "A", "+short", "+tcp"]);
    assert_eq!(out.trim(), UPSTREAM_IP.to_string());
    // .local names are still ours, never forwarded.
    let (out, _) = lab.dig(&[&format!("{CART}.any.fastest.local"), "+short"]);
    assert_eq!(out.trim(), "172.30.0.3");
    assert_eq!(
        lab.status("shop.prod.nope.team1.any.closest.local", "A", &[]),
        ("NXDOMAIN".into(), 0)
    );
    // An upstream that does not answer: SERVFAIL after its timeout.
    assert_eq!(lab.status("dead.example", "A", &[]), ("SERVFAIL".into(), 0));
}

/// An mDNS query for `name` of type `qtype`, with `id` and the QU bit.
fn mdns_query(name: &str, qtype: RecordType, id: u16, qu: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_mdns_unicast_response(qu);
    m.add_query(q);
    m.to_vec().unwrap()
}

/// A one-shot query from an ephemeral port: the reply and its source.
fn mdns_one_shot(lab: &Lab, name: &str, qtype: RecordType) -> Option<(Message, SocketAddr)> {
    lab.client
        .enter(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            socket
                .send_to(
                    &mdns_query(name, qtype, 0x4242, false),
                    (dns::MDNS_ADDR, dns::MDNS_PORT),
                )
                .unwrap();
            let mut buf = [0u8; 1500];
            let (len, from) = socket.recv_from(&mut buf).ok()?;
            Some((Message::from_vec(&buf[..len]).unwrap(), from))
        })
        .unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect()
}

#[test]
fn mdns_one_shot_queries_get_unicast_replies() {
    let lab = Lab::new();
    for (name, want) in expected().iter().step_by(3) {
        let fqdn = format!("{name}.");
        let start = Instant::now();
        let (reply, from) = mdns_one_shot(&lab, &fqdn, RecordType::A)
            .unwrap_or_else(|| panic!("no mDNS reply for {name}"));
        assert!(start.elapsed() < QUICK);
        // From the gateway's address, to our port, ID and question echoed.
        assert_eq!(from, SocketAddr::from((GW, dns::MDNS_PORT)));
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(reply.queries[0].name().to_ascii(), fqdn);
        assert_eq!(a_records(&reply), [*want], "{name}");
        assert!(
            reply
                .answers
                .iter()
                .all(|r| !r.mdns_cache_flush && r.ttl <= 10)
        );
    }
    // A known name without that type: NSEC, not silence.
    let closest = format!("{CART}.any.closest.local.");
    let (reply, _) = mdns_one_shot(&lab, &closest, RecordType::AAAA).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::NSEC);
    // Names it does not own: no reply at all.
    for name in [
        "shop.prod.nope.team1.any.closest.local.",
        "shop.prod.db.team1.any.closest.local.",
        "printer.local.",
        "shop.prod.cart.team1.any.fixed.local.",
    ] {
        assert!(mdns_one_shot(&lab, name, RecordType::A).is_none(), "{name}");
    }
}

/// A socket on port 5353 in the group on `eth0`, receiving with packet
/// info so that multicast and unicast replies can be told apart.
fn mdns_port_socket() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dns::MDNS_PORT).into())
        .unwrap();
    let index = nix::net::if_::if_nametoindex("eth0").unwrap();
    s.join_multicast_v4_n(&dns::MDNS_ADDR, &InterfaceIndexOrAddress::Index(index))
        .unwrap();
    s.set_multicast_loop_v4(false).unwrap();
    s.set_multicast_ttl_v4(255).unwrap();
    setsockopt(&s, sockopt::Ipv4PacketInfo, &true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// The next datagram: message, source, and the IP header's destination.
fn recv_with_dst(s: &Socket) -> Option<(Message, SocketAddrV4, Ipv4Addr)> {
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg =
        recvmsg::<SockaddrIn>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let dst = msg.cmsgs().unwrap().find_map(|c| match c {
        ControlMessageOwned::Ipv4PacketInfo(i) => {
            Some(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)))
        }
        _ => None,
    })?;
    let (len, from) = (msg.bytes, SocketAddrV4::from(msg.address?));
    Some((Message::from_vec(&buf[..len]).unwrap(), from, dst))
}

#[test]
fn mdns_continuous_queries_get_multicast_or_qu_unicast() {
    let lab = Lab::new();
    lab.client
        .enter(|| {
            let s = mdns_port_socket();
            let group = SocketAddrV4::new(dns::MDNS_ADDR, dns::MDNS_PORT);
            for (name, want) in expected().iter().take(7) {
                let fqdn = format!("{name}.");
                for (qu, want_dst) in [(false, dns::MDNS_ADDR), (true, CLIENT)] {
                    s.send_to(&mdns_query(&fqdn, RecordType::A, 7, qu), &group.into())
                        .unwrap();
                    let (reply, from, dst) = recv_with_dst(&s)
                        .unwrap_or_else(|| panic!("no reply for {name} (QU {qu})"));
                    assert_eq!(from, SocketAddrV4::new(GW, dns::MDNS_PORT));
                    assert_eq!(dst, want_dst, "{name} QU {qu}");
                    // Responses to port 5353: ID 0, no question, cache flush.
                    assert_eq!(reply.metadata.id, 0);
                    assert!(reply.queries.is_empty());
                    assert_eq!(a_records(&reply), [*want], "{name}");
                    assert!(reply.answers[0].mdns_cache_flush);
                    assert_eq!(reply.answers[0].ttl, dns::DEFAULT_TTL);
                }
            }
            // Unknown names stay silent on the group too.
            s.send_to(
                &mdns_query("x.y.z.w.any.closest.local.", RecordType::A, 0, false),
                &group.into(),
            )
            .unwrap();
            assert!(recv_with_dst(&s).is_none());
        })
        .unwrap();
}
