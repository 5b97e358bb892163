//! Probers on real sockets, each in a node namespace of a test topology.
//! Timing assertions stay loose (the machine is shared), except where the
//! echo delay guarantees a bound.

use std::net::SocketAddrV4;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use overlay_testnet::{Node, Topology, require_root, wait_until};
use tokio::sync::oneshot;

use super::*;

const EWP: u16 = overlay_common::DEFAULT_EWP;
const INTERVAL: Duration = Duration::from_millis(100);
/// Generous: a loaded machine may stall the probers for a while.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A prober on its own thread and runtime inside a node's namespace.
struct Running {
    prober: Arc<Prober>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(node: &Node, cfg: ProbeConfig) -> Running {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = node
            .ns
            .thread(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime");
                rt.block_on(async move {
                    let started = Prober::start(cfg).await.map(Arc::new);
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started);
                    if ok {
                        let _ = stopped.await;
                    }
                });
            })
            .unwrap();
        let prober = ready_rx.recv().unwrap().unwrap();
        Running {
            prober,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn config(node: &Node, key: [u8; 32]) -> ProbeConfig {
    ProbeConfig {
        node_id: node_id(node),
        bind: SocketAddrV4::new(node.ip, EWP),
        key,
        interval: INTERVAL,
        echo_delay: Duration::ZERO,
    }
}

fn node_id(node: &Node) -> u32 {
    u32::try_from(node.index).unwrap()
}

fn peer(node: &Node) -> Peer {
    Peer {
        name: format!("n{}", node.index),
        node_id: node_id(node),
        addr: SocketAddrV4::new(node.ip, EWP),
    }
}

fn samples(r: &Running, name: &str) -> u32 {
    r.prober.rtts().get(name).map_or(0, |rtt| rtt.samples)
}

fn names(r: &Running) -> Vec<String> {
    r.prober.rtts().into_keys().collect()
}

#[test]
fn prober_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Prober>();
}

#[test]
fn two_nodes_measure_each_other() {
    require_root().unwrap();
    let topo = Topology::new(2).unwrap();
    let (n1, n2) = (topo.node(1), topo.node(2));
    let key = generate_key();
    let a = Running::start(n1, config(n1, key));
    let b = Running::start(n2, config(n2, key));
    assert_eq!(a.prober.local_addr(), SocketAddrV4::new(n1.ip, EWP));
    // Listing the node itself is harmless: it is left out.
    a.prober.set_peers(vec![peer(n1), peer(n2)]);
    b.prober.set_peers(vec![peer(n1)]);
    wait_until(TIMEOUT, "n1 and n2 to measure each other", || {
        samples(&a, "n2") >= 3 && samples(&b, "n1") >= 3
    })
    .unwrap();
    assert_eq!(names(&a), ["n2"]);
    assert!(a.prober.rtts()["n2"].srtt_us < 1_000_000);
    // Each saw where the other's probes come from.
    assert_eq!(
        a.prober.observed()[&node_id(n2)],
        SocketAddrV4::new(n2.ip, EWP)
    );
    assert_eq!(
        b.prober.observed()[&node_id(n1)],
        SocketAddrV4::new(n1.ip, EWP)
    );
    assert_eq!((a.prober.dropped(), b.prober.dropped()), (0, 0));
}

#[test]
fn echo_delay_makes_a_node_look_farther() {
    require_root().unwrap();
    let topo = Topology::new(2).unwrap();
    let (n1, n2) = (topo.node(1), topo.node(2));
    let key = generate_key();
    let a = Running::start(n1, config(n1, key));
    let slow = ProbeConfig {
        echo_delay: Duration::from_millis(30),
        ..config(n2, key)
    };
    let b = Running::start(n2, slow);
    a.prober.set_peers(vec![peer(n2)]);
    b.prober.set_peers(vec![peer(n1)]);
    wait_until(TIMEOUT, "five samples each way", || {
        samples(&a, "n2") >= 5 && samples(&b, "n1") >= 5
    })
    .unwrap();
    let a_to_b = a.prober.rtts()["n2"].srtt_us;
    let b_to_a = b.prober.rtts()["n1"].srtt_us;
    assert!(a_to_b >= 30_000, "n1 -> n2: {a_to_b} us");
    assert!(b_to_a < 20_000, "n2 -> n1: {b_to_a} us");
}

#[test]
fn another_key_gets_no_rtt() {
    require_root().unwrap();
    let topo = Topology::new(2).unwrap();
    let (n1, n2) = (topo.node(1), topo.node(2));
    let a = Running::start(n1, config(n1, generate_key()));
    let b = Running::start(n2, config(n2, generate_key()));
    a.prober.set_peers(vec![peer(n2)]);
    b.prober.set_peers(vec![peer(n1)]);
    wait_until(TIMEOUT, "each side to drop the other's probes", || {
        a.prober.dropped() >= 5 && b.prober.dropped() >= 5
    })
    .unwrap();
    assert!(a.prober.rtts().is_empty());
    assert!(b.prober.rtts().is_empty());
}

#[test]
fn a_removed_peer_disappears() {
    require_root().unwrap();
    let topo = Topology::new(3).unwrap();
    let key = generate_key();
    let [a, b, c] = [1, 2, 3].map(|i| Running::start(topo.node(i), config(topo.node(i), key)));
    let everyone: Vec<Peer> = topo.nodes().iter().map(peer).collect();
    for r in [&a, &b, &c] {
        r.prober.set_peers(everyone.clone());
    }
    wait_until(TIMEOUT, "n1 to measure n2 and n3", || {
        names(&a) == ["n2", "n3"]
    })
    .unwrap();

    a.prober.set_peers(vec![peer(topo.node(3))]);
    assert_eq!(names(&a), ["n3"]);
    // Echoes to probes sent before the removal change nothing.
    std::thread::sleep(3 * INTERVAL);
    assert_eq!(names(&a), ["n3"]);

    a.prober.set_peers(everyone);
    wait_until(TIMEOUT, "n1 to measure n2 again", || samples(&a, "n2") >= 1).unwrap();
    drop((b, c));
}
