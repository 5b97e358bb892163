use super::*;

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

/// The probe key is created once (concurrent agents agree on it); a node's
/// measurements live under its lease and come back with a re-registration.
#[test]
fn probe_key_and_measurements() {
    let c = cluster("st-measure");
    run(&c, |store| async move {
        let keys = futures::future::join_all((0..8u8).map(|i| {
            let store = store.clone();
            async move { store.probe_key([i; 32]).await.unwrap() }
        }))
        .await;
        assert!(keys.iter().all(|k| *k == keys[0]), "one key for everyone");
        assert_eq!(store.probe_key([99; 32]).await.unwrap(), keys[0]);

        let subnet = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        let ttl = Duration::from_secs(2);
        let reg = store.register_node(&node("n1", subnet), ttl).await.unwrap();
        reg.set_status("rtt", &BTreeMap::from([("n2", 812u32)]));
        let ip = Ipv4Addr::new(10, 30, 1, 5);
        reg.set_status("load", &BTreeMap::from([(ip, 12u32)]));
        let published = || async {
            let (state, _) = store.snapshot().await.unwrap();
            state.rtt.get("n1").and_then(|m| m.get("n2")) == Some(&812) && state.load_of(ip) == 12
        };
        eventually(
            "the measurements in the store",
            Duration::from_secs(5),
            published,
        )
        .await;
        // Lost lease: the measurements went with it and come back with the node.
        store.revoke_lease(reg.lease_id()).await.unwrap();
        let (state, _) = store.snapshot().await.unwrap();
        assert!(state.rtt.is_empty() && state.load.is_empty(), "{state:?}");
        eventually("the measurements back", Duration::from_secs(10), published).await;
        reg.close().await.unwrap();
        let (state, _) = store.snapshot().await.unwrap();
        assert!(state.rtt.is_empty() && state.load.is_empty(), "{state:?}");
    });
}

/// Cluster settings: defaults until set, then in every snapshot.
#[test]
fn cluster_settings() {
    let c = cluster("st-settings");
    run(&c, |store| async move {
        assert_eq!(store.settings().await.unwrap(), ClusterSettings::default());
        let on = ClusterSettings {
            default_deny: Some(true),
            ..Default::default()
        };
        store.set_settings(&on).await.unwrap();
        assert_eq!(store.settings().await.unwrap(), on);
        assert_eq!(store.snapshot().await.unwrap().0.settings, on);
    });
}

/// A second agent with a running node's name, from another address, is
/// refused and changes nothing; the same node starting again (same address)
/// takes its name over.
#[test]
fn a_duplicate_node_id_is_refused() {
    let c = cluster("st-dup");
    run(&c, |store| async move {
        let subnet = pool("10.30.0.0/24");
        let ttl = Duration::from_secs(10);
        let first = store.register_node(&node("n1", subnet), ttl).await.unwrap();
        let mut other = node("n1", subnet);
        other.ip = Ipv4Addr::new(192, 0, 2, 99);
        let Err(err) = store.register_node(&other, ttl).await else {
            panic!("a second agent named n1 is refused");
        };
        let text = err.to_string();
        assert!(
            text.contains("node_id `n1`") && text.contains("192.0.2.11:50103"),
            "{text}"
        );
        let (state, _) = store.snapshot().await.unwrap();
        assert_eq!(state.nodes.len(), 1);
        assert_eq!(
            state.nodes[0].ip,
            Ipv4Addr::new(192, 0, 2, 11),
            "the first stays"
        );
        // `first` still holds its lease: this is the restart case.
        let again = store.register_node(&node("n1", subnet), ttl).await;
        assert!(again.is_ok(), "a restart on the same address takes over");
        drop(first);
    });
}

/// While agents of the previous release run, an instance's health is
/// published in the v2 record only: the v1 copy (which the previous
/// release parses strictly) is the record without it.
#[test]
fn the_v1_copy_of_an_instance_has_no_health() {
    use overlay_ctl::model::Health;
    let c = cluster("st-v1health");
    run(&c, |store| async move {
        let subnet = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        let record = node("n1", subnet);
        let mirrored = store.clone().with_v1_mirror(true);
        let reg = mirrored
            .register_node(&record, Duration::from_secs(5))
            .await
            .unwrap();
        let starting = InstanceSpec {
            health: Health::Starting,
            ..instance("shop.prod.a.v1", 1, &record)
        };
        reg.publish_instance(&starting).await.unwrap();
        assert_eq!(
            store.instances().await.unwrap(),
            std::slice::from_ref(&starting)
        );
        let (v1, _) = store
            .clone()
            .with_prefix(store::V1_PREFIX)
            .snapshot()
            .await
            .unwrap();
        let ready = InstanceSpec {
            health: Health::Ready,
            ..starting
        };
        assert_eq!(v1.instances, std::slice::from_ref(&ready));
        let json = serde_json::to_value(&ready).unwrap();
        assert!(json.get("health").is_none(), "{json}");
        reg.close().await.unwrap();
    });
}
