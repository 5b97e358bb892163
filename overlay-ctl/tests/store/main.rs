//! The cluster store against a real etcd that runs inside a test network
//! namespace, as every networked test does. Every store client runs on a
//! current-thread runtime on a thread that joined the namespace, so each
//! socket is opened inside it; the etcd client port (127.0.0.1:2379 of the namespace) is not
//! reachable from anywhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay_ctl::descriptor::Descriptor;
use overlay_ctl::model::{ClusterSettings, ClusterState, InstanceSpec, Subnet};
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
        readiness: None,
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
        location: None,
    }
}

fn instance(service: &str, n: u32, node: &NodeRecord) -> InstanceSpec {
    InstanceSpec {
        service: service.into(),
        instance: n,
        node: node.name.clone(),
        nsip: node.subnet.host(n + 1),
        fixed_ip: None,
        health: Default::default(),
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

mod access;
mod follow;
mod gateways;
mod members;
mod nodes;
mod resume;
mod services;
mod subnets;
mod tls;
