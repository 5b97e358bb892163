//! A full simulated agent: the real follower (`store::follow_with_health`)
//! and the desired-state computation (`reconcile::desired`) on every state
//! it publishes, on a thread and runtime of its own so that its CPU time is
//! its own. It follows as node `n<k>` (a light node's name) would; the maps
//! are computed, not written (no dataplane).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay_common::maps::{Config, ip};
use overlay_ctl::model::{ClusterState, Policy};
use overlay_ctl::reconcile::{self, LocalNode, MapSet};
use overlay_ctl::store::{self, FollowHealth};
use tokio::sync::watch;

use super::{Run, node_name};

#[derive(Debug, Default)]
pub struct FullStats {
    /// The thread's CPU time so far, ns.
    pub cpu_ns: AtomicU64,
    /// States computed (one per state the follower published).
    pub passes: AtomicU64,
    /// When its maps held every node, service and instance.
    pub converged: Mutex<Option<Instant>>,
    /// When each measured deploy's closest ServIP reached its maps.
    pub deploys: Mutex<Vec<(String, Instant)>>,
    pub slowest_pass_ms: Mutex<f64>,
}

/// This thread's CPU time, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the agent of node `me` on a thread of its own until `stop`.
pub fn spawn(
    run: Arc<Run>,
    me: usize,
    stats: Arc<FullStats>,
    stop: Arc<AtomicBool>,
    expect: (usize, usize),
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(follow(&run, me, &stats, &stop, expect));
    })
}

/// `expect`: the nodes and instances the light nodes saw at most.
async fn follow(
    run: &Run,
    me: usize,
    stats: &FullStats,
    stop: &AtomicBool,
    expect: (usize, usize),
) {
    let (tx, mut rx) = watch::channel(ClusterState::default());
    let health = Arc::new(FollowHealth::default());
    let access = store::Access::from(run.endpoint.as_str());
    tokio::spawn(store::follow_with_health(
        access,
        store::DEFAULT_PREFIX,
        tx,
        health,
    ));
    let name = node_name(me);
    let no_endpoints = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => continue,
        }
        let state = rx.borrow_and_update().clone();
        let t = Instant::now();
        let config = state.node(&name).map_or(Config::default(), |n| Config {
            node_id: n.subnet.node_id(),
            node_ip: ip::to_wire(n.ip),
            ..Config::default()
        });
        let local = LocalNode {
            name: &name,
            config,
            endpoints: &no_endpoints,
            snat: state.node(&name).map_or(config_ip(), |n| n.subnet.host(1)),
            default_deny: false,
            expose_where_running: false,
            balance: Default::default(),
        };
        let maps = reconcile::desired(&state, &local);
        note(run, &state, &maps, stats, expect);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut slowest = stats
            .slowest_pass_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *slowest = slowest.max(ms);
        drop(slowest);
        stats.passes.fetch_add(1, Ordering::Relaxed);
        stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
    }
}

fn config_ip() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::UNSPECIFIED
}

/// Records convergence and the deploys whose ServIP the maps now hold.
fn note(run: &Run, state: &ClusterState, maps: &MapSet, stats: &FullStats, expect: (usize, usize)) {
    let plan = &run.plan;
    let whole = maps.nodes.len() >= expect.0
        && state.instances.len() >= expect.1
        && state.services.len() >= plan.services;
    if whole {
        let mut c = stats.converged.lock().unwrap_or_else(|e| e.into_inner());
        c.get_or_insert_with(Instant::now);
    }
    let mut seen = stats.deploys.lock().unwrap_or_else(|e| e.into_inner());
    for s in state
        .services
        .iter()
        .filter(|s| s.name.starts_with("deploy"))
    {
        let Some(ip) = s.servips.get(&Policy::Closest) else {
            continue;
        };
        if maps.servips.contains_key(ip) && !seen.iter().any(|(n, _)| *n == s.name) {
            seen.push((s.name.clone(), Instant::now()));
        }
    }
}
