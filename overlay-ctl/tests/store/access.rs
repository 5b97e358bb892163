//! Access control: after `store setup`, etcd takes each client
//! certificate's name as its user, and a node may write only its own keys.

use std::path::{Path, PathBuf};

use overlay_ctl::model::GatewaySpec;
use overlay_testnet::EtcdTls;
use store::{Access, Issued};

use super::*;

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(names: &[&str]) -> Pki {
        let dir = std::env::temp_dir().join(format!("ovt{}-rbac", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, i: &Issued| {
            std::fs::write(dir.join(format!("{name}.crt")), &i.cert).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), &i.key).unwrap();
        };
        let ca = store::new_ca("test CA").unwrap();
        write("ca", &ca);
        let etcd = store::issue(&ca, "etcd", &["127.0.0.1".parse().unwrap()], &[]).unwrap();
        write("etcd", &etcd);
        for name in names {
            write(name, &store::issue(&ca, name, &[], &[]).unwrap());
        }
        Pki { dir }
    }

    fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    fn access(&self, endpoint: &str, who: Option<&str>) -> Access {
        let cert = who.map(|w| self.file(w, "crt"));
        let key = who.map(|w| self.file(w, "key"));
        Access::new(
            endpoint,
            Some(Path::new(&self.file("ca", "crt"))),
            cert.as_deref(),
            key.as_deref(),
        )
        .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::PermissionDenied { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn each_identity_writes_only_its_own_keys() {
    require_root().unwrap();
    let pki = Pki::new(&["root", "orchestrator", "n1", "n2", "intruder"]);
    let ns = Netns::new("st-rbac").unwrap();
    let tls = EtcdTls {
        ca: pki.file("ca", "crt"),
        cert: pki.file("etcd", "crt"),
        key: pki.file("etcd", "key"),
    };
    let etcd = Etcd::start_tls(&ns, Ipv4Addr::LOCALHOST, tls).unwrap();
    let ep = etcd.endpoint();
    let [root, orch, n1, intruder, anonymous] = [
        Some("root"),
        Some("orchestrator"),
        Some("n1"),
        Some("intruder"),
        None,
    ]
    .map(|who| pki.access(&ep, who));
    ns.enter(move || {
        runtime().block_on(async move {
            let root = Store::connect(&root).await.unwrap();
            root.setup_access("orchestrator", [7; 32]).await.unwrap();
            // Repeating the setup changes nothing and fails nothing.
            root.setup_access("orchestrator", [8; 32]).await.unwrap();
            let s1 = root
                .add_node("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                .await
                .unwrap();
            root.add_node("n2", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                .await
                .unwrap();

            let orch = Store::connect(&orch).await.unwrap();
            let web = orch
                .deploy_service(&descriptor("web"), DEFAULT_SERVICE_POOL)
                .await
                .unwrap();
            let db = orch
                .deploy_service(&stateful("db"), DEFAULT_SERVICE_POOL)
                .await
                .unwrap();
            let gw = GatewaySpec {
                name: "gw1".into(),
                ip: Ipv4Addr::new(198, 51, 100, 1),
                port: 50104,
            };
            orch.add_gateway(&gw).await.unwrap();

            let n1 = Store::connect(&n1).await.unwrap();
            // Its own keys: registration and instances, and it reads the rest.
            let me = node("n1", s1);
            let reg = n1
                .register_node(&me, Duration::from_secs(10))
                .await
                .unwrap();
            reg.publish_instance(&instance(&web.name, 1, &me))
                .await
                .unwrap();
            assert_eq!(n1.probe_key([0; 32]).await.unwrap(), [7; 32]);
            assert_eq!(
                n1.lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                    .await
                    .unwrap(),
                s1
            );
            let (state, _) = n1.snapshot().await.unwrap();
            assert_eq!(state.instances.len(), 1);
            // Nothing of anybody else's.
            let other = node("n2", "10.30.9.0/24".parse().unwrap());
            denied(
                "n1 registering as n2",
                n1.register_node(&other, Duration::from_secs(10)).await,
            );
            denied(
                "n1 deploying a service",
                n1.deploy_service(&descriptor("evil"), DEFAULT_SERVICE_POOL)
                    .await,
            );
            denied("n1 removing a service", n1.remove_service(&web.name).await);
            denied(
                "n1 adding a gateway",
                n1.add_gateway(&GatewaySpec {
                    name: "gw2".into(),
                    ip: Ipv4Addr::new(198, 51, 100, 2),
                    ..gw.clone()
                })
                .await,
            );
            denied(
                "n1 changing settings",
                n1.set_settings(&ClusterSettings::default()).await,
            );
            denied(
                "n1 rotating the probe key",
                n1.begin_probe_key_rotation([9; 32]).await,
            );
            denied(
                "n1 taking a subnet",
                n1.lease_subnet("n3", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                    .await,
            );
            denied(
                "n1 taking a fixed IP",
                n1.allocate_fixed_ip(&db.name, 1, DEFAULT_SERVICE_POOL)
                    .await,
            );
            denied(
                "n1 creating users",
                n1.add_node("n1x", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                    .await,
            );
            // A certificate of the CA that names no admitted identity gets nothing.
            let intruder = Store::connect(&intruder).await.unwrap();
            denied(
                "an unknown identity reading the probe key",
                intruder.probe_keys().await,
            );
            denied("an unknown identity reading", intruder.snapshot().await);
            // No certificate: no connection at all.
            let refused = match Store::connect(&anonymous).await {
                Ok(s) => s.revision().await.is_err(),
                Err(_) => true,
            };
            assert!(refused, "a client without a certificate is refused");
            // The orchestrator could, and still can; a node reads what it allocated.
            let ip = orch
                .allocate_fixed_ip(&db.name, 1, DEFAULT_SERVICE_POOL)
                .await
                .unwrap();
            assert_eq!(
                n1.allocate_fixed_ip(&db.name, 1, DEFAULT_SERVICE_POOL)
                    .await
                    .unwrap(),
                ip
            );
            orch.deploy_service(&descriptor("evil"), DEFAULT_SERVICE_POOL)
                .await
                .unwrap();
            reg.close().await.unwrap();
        })
    })
    .unwrap();
    drop(etcd);
}

/// `store setup` moves a v1 store's services, addresses and counter, so
/// that nothing is handed out twice, and does it once.
#[test]
fn a_v1_store_moves_to_the_v2_schema() {
    let c = cluster("st-migrate");
    run(&c, |store| async move {
        let v1 = store.clone().with_prefix(store::V1_PREFIX);
        let old = v1
            .deploy_service(&descriptor("old"), DEFAULT_SERVICE_POOL)
            .await
            .unwrap();
        assert!(
            store.migrate_v1().await.unwrap() >= 4,
            "service, counter, 3 claims"
        );
        assert_eq!(store.service(&old.name).await.unwrap(), Some(old.clone()));
        let new = store
            .deploy_service(&descriptor("new"), DEFAULT_SERVICE_POOL)
            .await
            .unwrap();
        assert!(new.id > old.id, "the id counter moved along");
        let taken: BTreeSet<_> = old.servips.values().collect();
        assert!(
            new.servips.values().all(|ip| !taken.contains(ip)),
            "no address twice"
        );
        // Once moved, never again: a later v1 write is not copied over.
        v1.deploy_service(&descriptor("late"), DEFAULT_SERVICE_POOL)
            .await
            .unwrap();
        assert_eq!(store.migrate_v1().await.unwrap(), 0);
        assert!(store.service("shop.prod.late.v1").await.unwrap().is_none());
    });
}
