use super::*;

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
            // Every endpoint of a list is used once one answers; calls that
            // cannot reach the dead one are taken by the other.
            let store = Store::connect("http://127.0.0.1:2381, http://127.0.0.1:2379")
                .await
                .unwrap();
            assert_eq!(
                store.endpoint(),
                "http://127.0.0.1:2381,http://127.0.0.1:2379"
            );
            for _ in 0..10 {
                store.revision().await.unwrap();
            }
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

/// A port the nodes need for themselves is never exposed: the refusal
/// names the port and why, and writes nothing.
#[test]
fn reserved_ports_are_not_exposed() {
    let c = cluster("st-reserved");
    let p = pool("172.30.0.0/16");
    run(&c, |store| async move {
        let n1 = node("n1", "10.30.1.0/24".parse().unwrap());
        let reg = store
            .register_node(
                &NodeRecord {
                    ewp: 41000,
                    nsp: 41001,
                    ..n1
                },
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let exposing = |port: u16| Descriptor {
            exposed: true,
            ports: vec![8080, port],
            ..descriptor("web")
        };
        let keys = store.keys().await.unwrap();
        for (port, why) in [
            (53, "DNS"),
            (overlay_common::DEFAULT_EWP, "default East-West port"),
            (overlay_common::DEFAULT_NSP, "default North-South port"),
            (41000, "node n1's East-West port"),
            (41001, "node n1's North-South port"),
            (2379, "store's client port"),
            (40000, "ephemeral range 32768-60999"),
        ] {
            let err = store
                .deploy_service(&exposing(port), p)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("port {port} may not be exposed")) && err.contains(why),
                "{port}: {err}"
            );
            assert_eq!(store.keys().await.unwrap(), keys, "{port}: nothing written");
        }
        // The cluster may narrow what can be exposed, and move the ephemeral range.
        let settings = ClusterSettings {
            exposed_ports: Some("8000-9000".parse().unwrap()),
            ephemeral_ports: Some("50000-60000".parse().unwrap()),
            ..Default::default()
        };
        store.set_settings(&settings).await.unwrap();
        let err = store
            .deploy_service(&exposing(22), p)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside the cluster's exposed-port range 8000-9000"),
            "{err}"
        );
        let mut ok = exposing(8443);
        store.deploy_service(&ok, p).await.unwrap();
        ok.ports.push(50001);
        let err = store.deploy_service(&ok, p).await.unwrap_err().to_string();
        assert!(err.contains("ephemeral range 50000-60000"), "{err}");
        reg.close().await.unwrap();
    });
}
