//! The store over TLS with client certificates: etcd with
//! `--client-cert-auth` takes a client whose certificate the cluster's CA
//! signed, and nobody else.

use std::path::Path;

use overlay_testnet::EtcdTls;
use store::{Access, Issued};

use super::*;

fn write(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.crt")), &issued.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key).unwrap();
}

fn access(endpoint: &str, dir: &Path, ca: &str, client: Option<&str>) -> Access {
    let file = |name: &str, ext: &str| dir.join(format!("{name}.{ext}"));
    let cert = client.map(|c| file(c, "crt"));
    let key = client.map(|c| file(c, "key"));
    Access::new(
        endpoint,
        Some(&file(ca, "crt")),
        cert.as_deref(),
        key.as_deref(),
    )
    .unwrap()
}

#[test]
fn only_clients_with_a_certificate_of_the_cluster_ca_get_in() {
    require_root().unwrap();
    let dir = std::env::temp_dir().join(format!("ovt{}-tls", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = store::new_ca("test CA").unwrap();
    write(&dir, "ca", &ca);
    let server = store::issue(&ca, "etcd", &["127.0.0.1".parse().unwrap()], &[]).unwrap();
    write(&dir, "etcd", &server);
    write(&dir, "n1", &store::issue(&ca, "n1", &[], &[]).unwrap());
    let other = store::new_ca("another CA").unwrap();
    write(&dir, "other", &other);
    write(
        &dir,
        "stranger",
        &store::issue(&other, "n1", &[], &[]).unwrap(),
    );

    let ns = Netns::new("st-tls").unwrap();
    let tls = EtcdTls {
        ca: dir.join("ca.crt"),
        cert: dir.join("etcd.crt"),
        key: dir.join("etcd.key"),
    };
    let etcd = Etcd::start_tls(&ns, Ipv4Addr::LOCALHOST, tls).unwrap();
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let (good, no_cert, foreign, wrong_ca) = (
        access(&endpoint, &dir, "ca", Some("n1")),
        access(&endpoint, &dir, "ca", None),
        access(&endpoint, &dir, "ca", Some("stranger")),
        access(&endpoint, &dir, "other", Some("n1")),
    );
    let plain = endpoint.replacen("https://", "http://", 1);
    ns.enter(move || {
        runtime().block_on(async move {
            let store = Store::connect(&good).await.expect("the node's certificate");
            store
                .deploy_service(&descriptor("a"), DEFAULT_SERVICE_POOL)
                .await
                .expect("a write over TLS");
            for (what, access) in [
                ("no client certificate", no_cert),
                ("a certificate of another CA", foreign),
                ("a server the client's CA did not sign", wrong_ca),
            ] {
                let refused = match Store::connect(&access).await {
                    Ok(s) => s.revision().await.is_err(),
                    Err(_) => true,
                };
                assert!(refused, "{what} is refused");
            }
            let err = match Store::connect(plain.as_str()).await {
                Ok(s) => s.revision().await.err(),
                Err(e) => Some(e),
            };
            assert!(err.is_some(), "plain HTTP to a TLS store fails");
        })
    })
    .unwrap();
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
