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
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use overlay_ctl::dns::{self, DnsOptions, DnsServer, Mdns};
use overlay_ctl::model::{ClusterState, InstanceSpec, Policy, ServiceSpec};
use overlay_testnet::{Netns, require_root, veth};
use tokio::sync::{oneshot, watch};

const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const UPSTREAM: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5300));
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 55);
/// An address of the node's LAN that the client namespace can also send
/// from (`dig -b`): a host that is not an instance.
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// TCP connections the lab's server takes at once.
const MAX_TCP: usize = 8;
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
        Policy::SERVIPS
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
        health: Default::default(),
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
        let servips = Policy::SERVIPS
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
        for to in [CLIENT, LAN_HOST] {
            server
                .ip(["route", "add", &format!("{to}/32"), "dev", "inst0"])
                .unwrap();
        }
        client
            .ip(["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])
            .unwrap();
        // Second, so that it is not the source the client picks.
        client
            .ip(["addr", "add", &format!("{LAN_HOST}/32"), "dev", "eth0"])
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
                    // As the agent sets it: the instances (and the node).
                    let options = DnsOptions {
                        upstream,
                        upstream_timeout: Duration::from_millis(300),
                        allowed: vec![
                            "10.99.0.0/24".parse().unwrap(),
                            "127.0.0.0/8".parse().unwrap(),
                            format!("{GW}/32").parse().unwrap(),
                        ],
                        max_tcp: MAX_TCP,
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

mod mdns;
mod resolv_conf;
mod unicast;
