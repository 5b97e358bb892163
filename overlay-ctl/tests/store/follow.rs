use super::*;

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

/// A TCP relay inside the namespace between the follower and etcd, which
/// the test can cut (closing every relayed connection and refusing new
/// ones) and mend: a network partition between one node and the store
/// while the store itself stays up for everybody else. It counts the bytes
/// it relays from the store, and can cut itself once they reach a mark.
pub(crate) struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    open: AtomicBool,
    done: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Bytes relayed from the store to its clients.
    down: AtomicU64,
    /// Cut once `down` reaches this (0: never).
    trip: AtomicU64,
}

impl Shared {
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Counts `n` bytes from the store; cuts if they reach the mark.
    fn relayed(&self, n: usize) {
        let down = self.down.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let trip = self.trip.load(Ordering::SeqCst);
        if trip > 0
            && down >= trip
            && self
                .trip
                .compare_exchange(trip, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.cut();
        }
    }
}

impl Relay {
    pub(crate) fn start(ns: &Netns, target: SocketAddr) -> Relay {
        let listener = ns
            .enter(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                open: AtomicBool::new(true),
                ..Shared::default()
            }),
        };
        let shared = relay.shared.clone();
        // Threads spawned from a namespace thread stay in the namespace.
        ns.thread(move || {
            while !shared.done.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("relay accept: {e}"),
                };
                if !shared.open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = shared.conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to, down) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        false,
                    ),
                    (server, client, true),
                ] {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if down {
                                shared.relayed(n);
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

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn cut(&self) {
        self.shared.cut();
    }

    pub(crate) fn mend(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes relayed from the store so far.
    pub(crate) fn down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Cuts (once) when `bytes` more have come from the store.
    pub(crate) fn cut_after(&self, bytes: u64) {
        self.shared
            .trip
            .store(self.down() + bytes, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.shared.done.store(true, Ordering::SeqCst);
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

/// An empty store is a state too: the follower announces it at once, so an
/// agent starting against a fresh cluster does not wait for a change.
#[test]
fn follow_announces_an_empty_store() {
    let c = cluster("st-empty");
    let endpoint = c.etcd.endpoint();
    c.ns.enter(move || {
        runtime().block_on(async move {
            let (tx, mut rx) = watch::channel(ClusterState::default());
            let follower = tokio::spawn(async move { store::follow(&endpoint, tx).await });
            let announced = tokio::time::timeout(Duration::from_secs(3), rx.changed()).await;
            assert!(
                matches!(announced, Ok(Ok(()))),
                "the first snapshot is announced"
            );
            follower.abort();
        })
    })
    .unwrap();
}

/// With nothing written, the store still confirms every 2 s that the
/// follower is current (progress requests): its watch lag stays low.
#[test]
fn a_quiet_store_keeps_confirming_the_follower() {
    let c = cluster("st-progress");
    let endpoint = c.etcd.endpoint();
    c.ns.enter(move || {
        runtime().block_on(async move {
            let (tx, _rx) = watch::channel(ClusterState::default());
            let health = std::sync::Arc::new(store::FollowHealth::default());
            let h = health.clone();
            let follower = tokio::spawn(async move {
                store::follow_with_health(&endpoint, store::DEFAULT_PREFIX, tx, h).await
            });
            tokio::time::sleep(Duration::from_secs(7)).await;
            let lag = health.lag().expect("confirmed at least once");
            assert!(lag < Duration::from_secs(3), "lag {lag:?} without writes");
            follower.abort();
        })
    })
    .unwrap();
}
