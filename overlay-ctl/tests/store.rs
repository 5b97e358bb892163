//! The cluster store against a real etcd that runs inside a test network
//! namespace (SPEC section 9). Every store client runs on a current-thread
//! runtime on a thread that joined the namespace, so each socket is opened
//! inside it; the etcd client port (127.0.0.1:2379 of the namespace) is not
//! reachable from anywhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay_ctl::descriptor::Descriptor;
use overlay_ctl::model::{ClusterState, InstanceSpec, Subnet};
use overlay_ctl::store::{
    self, DEFAULT_SERVICE_POOL, DEFAULT_SUBNET_LEN, DEFAULT_SUBNET_POOL, NodeRecord, Store,
    StoreError,
};
use overlay_testnet::{Etcd, Netns, require_root};
use tokio::sync::watch;

/// A namespace with etcd on its loopback. Field order is drop order.
struct Cluster {
    etcd: Etcd,
    ns: Netns,
}

fn cluster(label: &str) -> Cluster {
    require_root().unwrap();
    let ns = Netns::new(label).unwrap();
    let etcd = Etcd::start(&ns, Ipv4Addr::LOCALHOST).unwrap();
    Cluster { etcd, ns }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f(store)` to completion on a fresh thread inside the namespace.
fn run<T, F>(c: &Cluster, f: impl FnOnce(Store) -> F + Send) -> T
where
    T: Send,
    F: Future<Output = T>,
{
    let endpoint = c.etcd.endpoint();
    c.ns.enter(move || {
        runtime().block_on(async move {
            let store = Store::connect(&endpoint).await.unwrap();
            f(store).await
        })
    })
    .unwrap()
}

fn descriptor(service: &str) -> Descriptor {
    Descriptor {
        appname: "shop".into(),
        appns: "prod".into(),
        servicename: service.into(),
        servicens: "v1".into(),
        exposed: false,
        needs: Vec::new(),
        ports: vec![8080],
        stateful: false,
    }
}

fn stateful(service: &str) -> Descriptor {
    Descriptor {
        stateful: true,
        ..descriptor(service)
    }
}

fn pool(s: &str) -> Subnet {
    s.parse().unwrap()
}

fn node(name: &str, subnet: Subnet) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        ip: Ipv4Addr::new(192, 0, 2, 11),
        ewp: 50103,
        nsp: 50104,
        public: None,
        mtu: 1500,
        subnet,
    }
}

fn instance(service: &str, n: u32, node: &NodeRecord) -> InstanceSpec {
    InstanceSpec {
        service: service.into(),
        instance: n,
        node: node.name.clone(),
        nsip: node.subnet.host(n + 1),
        fixed_ip: None,
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the followed state satisfies `pred`.
async fn state_until(
    rx: &mut watch::Receiver<ClusterState>,
    what: &str,
    pred: impl FnMut(&ClusterState) -> bool,
) {
    let timeout = Duration::from_secs(20);
    let result = tokio::time::timeout(timeout, rx.wait_for(pred))
        .await
        .map(|r| r.map(drop));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the follower ended while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {timeout:?} waiting for {what}; state: {:?}",
            *rx.borrow()
        ),
    }
}

#[test]
fn an_unreachable_store_is_a_clear_error() {
    let mut c = cluster("st-connect");
    c.etcd.stop().unwrap();
    let endpoint = c.etcd.endpoint();
    let (err, took) =
        c.ns.enter(|| {
            runtime().block_on(async {
                let start = Instant::now();
                let err = Store::connect(&endpoint).await.unwrap_err();
                (err, start.elapsed())
            })
        })
        .unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot reach etcd at http://127.0.0.1:2379: "),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    c.etcd.restart().unwrap();
    c.ns.enter(|| {
        runtime().block_on(async {
            let err = Store::connect("127.0.0.1:2379").await.unwrap_err();
            assert!(matches!(err, StoreError::Endpoint(_)), "{err}");
            assert!(
                err.to_string().contains("expected http://HOST:PORT"),
                "{err}"
            );
            // The first reachable endpoint of a list is used.
            let store = Store::connect("http://127.0.0.1:2381, http://127.0.0.1:2379")
                .await
                .unwrap();
            assert_eq!(store.endpoint(), "http://127.0.0.1:2379");
            store.revision().await.unwrap();
        })
    })
    .unwrap();
}

#[test]
fn concurrent_deploys_never_share_a_servip_and_repeat_deploys_change_nothing() {
    let c = cluster("st-deploy");
    let endpoint = c.etcd.endpoint();
    // 5 threads x 10 tasks, each task with its own connection.
    let threads: Vec<_> = (0..5)
        .map(|t| {
            let endpoint = endpoint.clone();
            c.ns.thread(move || {
                runtime().block_on(futures::future::join_all((0..10).map(|i| {
                    let endpoint = endpoint.clone();
                    async move {
                        let store = Store::connect(&endpoint).await.unwrap();
                        store
                            .deploy_service(
                                &descriptor(&format!("svc{t}-{i}")),
                                DEFAULT_SERVICE_POOL,
                            )
                            .await
                            .unwrap()
                    }
                })))
            })
            .unwrap()
        })
        .collect();
    let records: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(records.len(), 50);
    let mut ips = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in &records {
        assert_eq!(r.servips.len(), 3, "{r:?}");
        for ip in r.servips.values() {
            assert!(DEFAULT_SERVICE_POOL.contains(*ip), "{ip}");
            assert!(!matches!(ip.octets()[3], 0 | 255), "{ip}");
            assert!(ips.insert(*ip), "{ip} handed out twice");
        }
        assert!(ids.insert(r.id), "service id {} handed out twice", r.id);
    }

    let first = records[0].clone();
    run(&c, |store| async move {
        let claims = store.claims().await.unwrap();
        assert_eq!(claims.len(), 150);
        assert_eq!(store.services().await.unwrap().len(), 50);

        // The same descriptor again: the same record, nothing written.
        let revision = store.revision().await.unwrap();
        let again = store
            .deploy_service(&first.descriptor, DEFAULT_SERVICE_POOL)
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(
            store.revision().await.unwrap(),
            revision,
            "a repeated deploy wrote something"
        );

        // A changed descriptor updates the record, keeping id and ServIPs.
        let changed = Descriptor {
            ports: vec![8080, 9090],
            exposed: true,
            ..first.descriptor.clone()
        };
        let updated = store
            .deploy_service(&changed, DEFAULT_SERVICE_POOL)
            .await
            .unwrap();
        assert_eq!((updated.id, &updated.servips), (first.id, &first.servips));
        assert_eq!(updated.descriptor.ports, [8080, 9090]);
        assert_eq!(store.service(&first.name).await.unwrap(), Some(updated));

        // `stateful` cannot change in place.
        let flipped = Descriptor {
            stateful: true,
            ..changed
        };
        let err = store
            .deploy_service(&flipped, DEFAULT_SERVICE_POOL)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StatefulChange { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("remove it before changing `stateful`"),
            "{err}"
        );

        // A bad descriptor is refused before anything is written.
        let bad = Descriptor {
            appname: "bad name".into(),
            ..descriptor("x")
        };
        let err = store
            .deploy_service(&bad, DEFAULT_SERVICE_POOL)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("appname"), "{err}");
    });
}

#[test]
fn an_exhausted_pool_is_a_clear_error_and_writes_nothing() {
    let c = cluster("st-full");
    let tiny = pool("172.30.0.0/29"); // .1 to .6 usable
    run(&c, |store| async move {
        let db = store.deploy_service(&stateful("db"), tiny).await.unwrap();
        assert!(db.servips.is_empty(), "a stateful service gets no ServIPs");
        let fixed1 = store.allocate_fixed_ip(&db.name, 1, tiny).await.unwrap();
        assert_eq!(fixed1, Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(
            store.allocate_fixed_ip(&db.name, 1, tiny).await.unwrap(),
            fixed1,
            "idempotent"
        );
        let a = store.deploy_service(&descriptor("a"), tiny).await.unwrap();
        let a_ips: Vec<u8> = a.servips.values().map(|ip| ip.octets()[3]).collect();
        assert_eq!(a_ips, [2, 3, 4]);

        let keys = store.keys().await.unwrap();
        let revision = store.revision().await.unwrap();
        let err = store
            .deploy_service(&descriptor("b"), tiny)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::PoolExhausted {
                    needed: 3,
                    free: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "ServIP pool 172.30.0.0/29 is exhausted: 3 needed, 2 free"
        );
        assert_eq!(
            store.keys().await.unwrap(),
            keys,
            "a failed deploy left keys behind"
        );
        assert_eq!(
            store.revision().await.unwrap(),
            revision,
            "a failed deploy wrote something"
        );
        assert_eq!(store.service("shop.prod.b.v1").await.unwrap(), None);

        assert_eq!(
            store.allocate_fixed_ip(&db.name, 2, tiny).await.unwrap(),
            Ipv4Addr::new(172, 30, 0, 5)
        );
        assert_eq!(
            store.allocate_fixed_ip(&db.name, 3, tiny).await.unwrap(),
            Ipv4Addr::new(172, 30, 0, 6)
        );
        let err = store
            .allocate_fixed_ip(&db.name, 4, tiny)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::PoolExhausted {
                    needed: 1,
                    free: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.revision().await.unwrap(), revision + 2);

        let err = store.allocate_fixed_ip(&a.name, 1, tiny).await.unwrap_err();
        assert!(matches!(err, StoreError::NotStateful(_)), "{err}");
        let err = store
            .allocate_fixed_ip("shop.prod.nope.v1", 1, tiny)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service `shop.prod.nope.v1` is not deployed"
        );
        let err = store
            .deploy_service(&descriptor("c"), pool("172.30.0.0/31"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
    });
}

#[test]
fn removed_addresses_wait_out_their_grace_period() {
    let c = cluster("st-grace");
    let tiny = pool("172.30.0.0/29");
    let grace = Duration::from_secs(3);
    run(&c, |store| async move {
        let store = store.with_grace(grace);
        let a = store.deploy_service(&descriptor("a"), tiny).await.unwrap();
        store.deploy_service(&descriptor("b"), tiny).await.unwrap();
        let removed_at = Instant::now();
        assert!(store.remove_service(&a.name).await.unwrap());
        assert!(
            !store.remove_service(&a.name).await.unwrap(),
            "removing twice"
        );
        assert_eq!(store.service(&a.name).await.unwrap(), None);
        let claims = store.claims().await.unwrap();
        assert_eq!(claims.len(), 3);
        assert!(a.servips.values().all(|ip| !claims.contains_key(ip)));
        let keys = store.keys().await.unwrap();
        for ip in a.servips.values() {
            assert!(keys.contains(&format!("released/{ip}")), "{keys:?}");
        }

        // Within the grace period the freed addresses are not handed out.
        let err = store
            .deploy_service(&descriptor("c"), tiny)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PoolExhausted { free: 0, .. }),
            "{err}"
        );
        assert!(
            removed_at.elapsed() < grace,
            "the check came too late to mean anything"
        );

        tokio::time::sleep(
            (grace + Duration::from_millis(100)).saturating_sub(removed_at.elapsed()),
        )
        .await;
        let c_rec = store.deploy_service(&descriptor("c"), tiny).await.unwrap();
        assert_eq!(
            c_rec.servips, a.servips,
            "the freed addresses come back after the grace period"
        );
        let keys = store.keys().await.unwrap();
        assert!(!keys.iter().any(|k| k.starts_with("released/")), "{keys:?}");

        // A stateful service's fixed IPs are freed too.
        let other = pool("172.30.1.0/29");
        let db = store.deploy_service(&stateful("db"), other).await.unwrap();
        let f1 = store.allocate_fixed_ip(&db.name, 1, other).await.unwrap();
        let f2 = store.allocate_fixed_ip(&db.name, 2, other).await.unwrap();
        assert!(
            store.remove_service("SHOP.prod.db.v1").await.unwrap(),
            "names are case-insensitive"
        );
        let claims = store.claims().await.unwrap();
        assert!(!claims.contains_key(&f1) && !claims.contains_key(&f2));
        let keys = store.keys().await.unwrap();
        assert!(
            keys.contains(&format!("released/{f1}")) && keys.contains(&format!("released/{f2}"))
        );
        assert!(!keys.iter().any(|k| k.starts_with("fixed/")), "{keys:?}");
        // Re-deployed, the service gets new fixed IPs while the old ones wait.
        let db = store.deploy_service(&stateful("db"), other).await.unwrap();
        let again = store.allocate_fixed_ip(&db.name, 1, other).await.unwrap();
        assert!(
            again != f1 && again != f2,
            "{again} reused within the grace period"
        );
    });
}

#[test]
fn subnet_leases_are_unique_and_sticky() {
    let c = cluster("st-subnet");
    let leased = run(&c, |store| async move {
        let n1 = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        let n2 = store
            .lease_subnet("n2", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        assert_eq!(n1, pool("10.30.0.0/24"));
        assert_eq!(n2, pool("10.30.1.0/24"));
        let again = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        assert_eq!(again, n1, "a node asking again gets its own subnet");

        let err = store
            .lease_subnet("n3", DEFAULT_SUBNET_POOL, 8)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot lease /8"), "{err}");
        let small = pool("10.31.0.0/23");
        store.lease_subnet("s1", small, 24).await.unwrap();
        store.lease_subnet("s2", small, 24).await.unwrap();
        let err = store.lease_subnet("s3", small, 24).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "node subnet pool 10.31.0.0/23 is exhausted: 1 needed, 0 free"
        );
        vec![n1, n2]
    });

    // 20 nodes at once, from 4 threads with 5 connections each.
    let endpoint = c.etcd.endpoint();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let endpoint = endpoint.clone();
            c.ns.thread(move || {
                runtime().block_on(futures::future::join_all((0..5).map(|i| {
                    let endpoint = endpoint.clone();
                    async move {
                        let store = Store::connect(&endpoint).await.unwrap();
                        let name = format!("m{t}-{i}");
                        let s = store
                            .lease_subnet(&name, DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                            .await
                            .unwrap();
                        (name, s)
                    }
                })))
            })
            .unwrap()
        })
        .collect();
    let many: BTreeMap<String, Subnet> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(many.len(), 20);
    let distinct: BTreeSet<Subnet> = many.values().chain(&leased).copied().collect();
    assert_eq!(distinct.len(), 22, "{many:?}");
    assert!(
        distinct
            .iter()
            .all(|s| s.prefix == 24 && DEFAULT_SUBNET_POOL.contains(s.addr))
    );
    run(&c, |store| async move {
        for (name, subnet) in many {
            let again = store
                .lease_subnet(&name, DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                .await
                .unwrap();
            assert_eq!(again, subnet, "{name}");
        }
    });
}

#[test]
fn a_node_whose_keepalive_stops_vanishes_and_comes_back() {
    let c = cluster("st-lease");
    run(&c, |store| async move {
        let subnet = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        let record = node("n1", subnet);
        let ttl = Duration::from_secs(2);
        let reg = store.register_node(&record, ttl).await.unwrap();
        let (i1, i2) = (
            instance("shop.prod.a.v1", 1, &record),
            instance("shop.prod.a.v1", 2, &record),
        );
        reg.publish_instance(&i1).await.unwrap();
        reg.publish_instance(&i2).await.unwrap();
        let wrong = InstanceSpec {
            node: "n2".into(),
            ..i1.clone()
        };
        let err = reg.publish_instance(&wrong).await.unwrap_err();
        assert!(err.to_string().contains("not on this node `n1`"), "{err}");
        assert_eq!(store.nodes().await.unwrap(), std::slice::from_ref(&record));
        assert_eq!(store.instances().await.unwrap(), [i1.clone(), i2.clone()]);

        // The keepalive holds the registration well past its TTL.
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(
            store.nodes().await.unwrap().len(),
            1,
            "the keepalive did not hold"
        );

        // Keepalive stops (a crashed agent): everything goes when the lease expires.
        let lease = reg.lease_id();
        reg.detach().await;
        assert_eq!(
            store.nodes().await.unwrap().len(),
            1,
            "detaching does not revoke"
        );
        eventually(
            "the node's lease to expire",
            Duration::from_secs(10),
            || async {
                store.nodes().await.unwrap().is_empty()
                    && store.instances().await.unwrap().is_empty()
            },
        )
        .await;
        let (state, _) = store.snapshot().await.unwrap();
        assert!(
            state.nodes.is_empty() && state.instances.is_empty(),
            "{state:?}"
        );

        // Registering again brings the node back, under a new lease.
        let reg = store.register_node(&record, ttl).await.unwrap();
        assert_ne!(reg.lease_id(), lease);
        reg.publish_instance(&i1).await.unwrap();
        reg.publish_instance(&i2).await.unwrap();
        assert_eq!(store.nodes().await.unwrap(), std::slice::from_ref(&record));
        assert_eq!(store.instances().await.unwrap().len(), 2);

        // A lease lost behind the agent's back (here: revoked) is replaced by
        // the keepalive task, which puts the node and its instances back.
        let lost = reg.lease_id();
        store.revoke_lease(lost).await.unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
        eventually(
            "the node to register again",
            Duration::from_secs(10),
            || async {
                store.nodes().await.unwrap().len() == 1
                    && store.instances().await.unwrap().len() == 2
            },
        )
        .await;
        assert_ne!(reg.lease_id(), lost);

        assert!(reg.unpublish_instance("shop.prod.a.v1", 2).await.unwrap());
        assert!(!reg.unpublish_instance("shop.prod.a.v1", 2).await.unwrap());
        assert_eq!(store.instances().await.unwrap(), [i1]);
        // Closing revokes at once.
        reg.close().await.unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
        assert!(store.instances().await.unwrap().is_empty());
    });
}

/// A TCP relay inside the namespace between the follower and etcd, which
/// the test can cut (closing every relayed connection and refusing new
/// ones) and mend: a network partition between one node and the store
/// while the store itself stays up for everybody else.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(ns: &Netns, target: SocketAddr) -> Relay {
        let listener = ns
            .enter(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            done: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
        };
        let (open, done, conns) = (relay.open.clone(), relay.done.clone(), relay.conns.clone());
        // Threads spawned from a namespace thread stay in the namespace.
        ns.thread(move || {
            while !done.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("relay accept: {e}"),
                };
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        })
        .unwrap();
        relay
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Collects the follower's log lines.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn follow_tracks_changes_outages_and_compaction() {
    let Cluster { etcd, ns } = cluster("st-follow");
    let etcd_endpoint = etcd.endpoint();
    let relay = Relay::start(&ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 2379)));

    // The follower: its own thread and runtime inside the namespace, through the relay.
    let (tx, mut rx) = watch::channel(ClusterState::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let log = LogBuf::default();
    let follower = {
        let (endpoint, log) = (relay.endpoint(), log.clone());
        ns.thread(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || log.clone())
                .with_ansi(false)
                .with_env_filter(tracing_subscriber::EnvFilter::new("overlay_ctl=debug"))
                .finish();
            let _guard = tracing::subscriber::set_default(subscriber);
            runtime().block_on(async move {
                tokio::select! {
                    _ = store::follow(&endpoint, tx) => panic!("follow ended while its receiver lives"),
                    _ = stopped => {}
                }
            })
        })
        .unwrap()
    };

    let rx = &mut rx;
    let relay = &relay;
    let etcd = ns
        .enter(move || {
            runtime().block_on(async move {
                let mut etcd = etcd;
                let store = Store::connect(&etcd_endpoint).await.unwrap();
                let subnet = store
                    .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                    .await
                    .unwrap();
                let record = node("n1", subnet);
                let reg = store
                    .register_node(&record, Duration::from_secs(10))
                    .await
                    .unwrap();
                state_until(rx, "node n1", |s| {
                    s.node("n1").is_some_and(|n| n.subnet == subnet)
                })
                .await;

                let a = store
                    .deploy_service(&descriptor("a"), DEFAULT_SERVICE_POOL)
                    .await
                    .unwrap();
                state_until(rx, "service a", |s| s.service(&a.name) == Some(&a.spec())).await;
                let (a1, a2) = (instance(&a.name, 1, &record), instance(&a.name, 2, &record));
                reg.publish_instance(&a1).await.unwrap();
                reg.publish_instance(&a2).await.unwrap();
                state_until(rx, "two instances", |s| {
                    s.instances == [a1.clone(), a2.clone()]
                })
                .await;
                reg.unpublish_instance(&a.name, 2).await.unwrap();
                state_until(rx, "instance 2 gone", |s| s.instances == [a1.clone()]).await;

                // etcd stops: the follower keeps the last state.
                let last = rx.borrow_and_update().clone();
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.stop().unwrap();
                    etcd
                })
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert!(
                    !rx.has_changed().unwrap(),
                    "the state changed while etcd was down"
                );
                assert_eq!(*rx.borrow(), last);

                // etcd is back: new changes show up again.
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.restart().unwrap();
                    etcd
                })
                .await
                .unwrap();
                let b = store
                    .deploy_service(&descriptor("b"), DEFAULT_SERVICE_POOL)
                    .await
                    .unwrap();
                state_until(rx, "service b after the restart", |s| {
                    s.service(&b.name).is_some()
                })
                .await;

                // Cut the follower off; meanwhile the store changes and its
                // history is compacted, and etcd restarts.
                relay.cut();
                let cut = rx.borrow_and_update().clone();
                let c_rec = store
                    .deploy_service(&descriptor("c"), DEFAULT_SERVICE_POOL)
                    .await
                    .unwrap();
                reg.unpublish_instance(&a.name, 1).await.unwrap();
                let revision = store.revision().await.unwrap();
                store.compact(revision).await.unwrap();
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.restart().unwrap();
                    etcd
                })
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(
                    *rx.borrow(),
                    cut,
                    "the state changed while the follower was cut off"
                );

                relay.mend();
                state_until(rx, "service c and no instances after the resync", |s| {
                    s.service(&c_rec.name).is_some() && s.instances.is_empty()
                })
                .await;
                let (expected, _) = store.snapshot().await.unwrap();
                assert_eq!(*rx.borrow(), expected);
                assert_eq!(expected.services.len(), 3);

                // Closing the registration removes the node everywhere.
                reg.close().await.unwrap();
                state_until(rx, "node n1 gone", |s| s.nodes.is_empty()).await;

                // etcd is replaced by an empty one (its revision starts again
                // at 1): the follower notices and reads everything again.
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.wipe().unwrap();
                    etcd
                })
                .await
                .unwrap();
                let store = Store::connect(&etcd_endpoint).await.unwrap();
                let d = store
                    .deploy_service(&descriptor("d"), DEFAULT_SERVICE_POOL)
                    .await
                    .unwrap();
                state_until(rx, "only service d in the new store", |s| {
                    s.services == [d.spec()] && s.nodes.is_empty()
                })
                .await;
                etcd
            })
        })
        .unwrap();

    stop.send(()).unwrap();
    follower.join().unwrap();
    let log = log.text();
    assert!(log.contains("cannot follow the store"), "{log}");
    assert!(
        log.contains("was compacted; reading the full state again"),
        "{log}"
    );
    assert!(log.contains("(a new or restored etcd?)"), "{log}");
    drop(etcd);
}

#[test]
fn an_exposed_port_belongs_to_one_service() {
    let c = cluster("st-expose");
    let p = pool("172.30.0.0/16");
    run(&c, |store| async move {
        let exposed = |svc: &str| Descriptor {
            exposed: true,
            ..descriptor(svc)
        };
        store.deploy_service(&exposed("web"), p).await.unwrap();
        let keys = store.keys().await.unwrap();
        let err = store
            .deploy_service(&exposed("shop"), p)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ports") && err.contains("8080") && err.contains("shop.prod.web.v1"),
            "{err}"
        );
        assert_eq!(store.keys().await.unwrap(), keys, "nothing written");
        // Not exposed: the same port is fine (it is only a ServIP port).
        store.deploy_service(&descriptor("shop"), p).await.unwrap();
        // Removing the owner frees the node port.
        assert!(store.remove_service("shop.prod.web.v1").await.unwrap());
        store.deploy_service(&exposed("api"), p).await.unwrap();
    });
}
