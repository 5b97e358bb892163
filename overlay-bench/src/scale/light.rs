//! A light simulated node: the real store client, subnet lease,
//! registration (lease and keepalive), instance publishing, measurement
//! publishing (`set_status` through the agent's change thresholds), and the
//! follower's read and watch, counted instead of kept ([`Store::tally`]).
//! What it leaves out: probes on the wire (RTTs are synthetic), the
//! dataplane, and the desired-state computation (the full agents run it).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay_ctl::agent::Metrics;
use overlay_ctl::store::{Change, Cursor, NodeRecord, Seen, Store, StoreError};

use super::synth::{Loads, Rng, Rtts};
use super::{Run, fixture, node_name};

/// What one light node has seen, for the coordinator to read.
#[derive(Debug, Default)]
pub struct Counts {
    /// Key and value bytes the read and the watch delivered.
    pub bytes: AtomicU64,
    pub nodes: AtomicI64,
    pub instances: AtomicI64,
    pub services: AtomicI64,
    /// Registered and every instance published.
    pub published: AtomicBool,
    /// Store calls that failed and were tried again (an overloaded store
    /// answering late), as a supervised agent would be restarted.
    pub retries: AtomicU64,
    /// The last error tried again, for the progress report.
    pub last_error: Mutex<Option<String>>,
    /// When each measured deploy's service key arrived.
    pub deploys: Mutex<Vec<(String, Instant)>>,
    pub error: Mutex<Option<String>>,
}

impl Counts {
    /// Counts a failure to be tried again.
    fn retry(&self, what: &str, e: &StoreError) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(format!("{what}: {e}"));
    }

    fn fail(&self, what: &str, e: StoreError) {
        let mut err = self.error.lock().unwrap_or_else(|e| e.into_inner());
        err.get_or_insert_with(|| format!("{what}: {e}"));
    }

    /// Counts one key; deploys measured are those whose service name
    /// starts with `deploy`.
    pub fn see(&self, s: &Seen<'_>) {
        self.bytes.fetch_add(s.bytes as u64, Ordering::Relaxed);
        let delta = match s.change {
            Change::Created => 1,
            Change::Updated => 0,
            Change::Deleted => -1,
        };
        let counter = if s.key.starts_with("services/") {
            if s.change == Change::Created && s.key.starts_with("services/deploy") {
                let mut d = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
                d.push((s.key["services/".len()..].to_owned(), Instant::now()));
            }
            &self.services
        } else if s.key.ends_with("/record") {
            &self.nodes
        } else if s.key.contains("/instances/") {
            &self.instances
        } else {
            return;
        };
        counter.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Runs `op` until it succeeds, up to 300 times, 1-5 s apart (the agent's
/// supervisor restarts it likewise); node `me`'s pauses are its own, so
/// that nodes failing together do not try again together.
async fn retry<T, F: std::future::Future<Output = Result<T, StoreError>>>(
    counts: &Counts,
    me: usize,
    mut op: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let mut rng = Rng::new(0x5eed ^ me as u64);
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 300 => return Err(e),
            Err(e) => {
                attempt += 1;
                counts.retry("setup", &e);
                pause(&mut rng).await;
            }
        }
    }
}

/// 1-5 s, at random.
async fn pause(rng: &mut Rng) {
    let secs = 1.0 + 4.0 * rng.unit();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// Starts node `me` on the current runtime; it runs until the runtime ends.
/// `delay`: when it starts (nodes started over a ramp).
pub fn spawn(run: Arc<Run>, me: usize, counts: Arc<Counts>, delay: Duration) {
    let c = counts.clone();
    let r = run.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let store = match retry(&c, me, || Store::connect(r.endpoint.as_str())).await {
            Ok(s) => s,
            Err(e) => return c.fail("connect", e),
        };
        tokio::spawn(follow(r.clone(), me, c.clone()));
        if let Err(e) = node(&r, me, &store, &c).await {
            c.fail("node", e);
        }
    });
}

/// The follower's read and watch, counted: on a connection of its own (as
/// the agent's follower has), made again after a failure. A failed read
/// continues from its last page, a failed watch where it stopped; only a
/// compacted revision starts over (counted again from scratch), as the
/// follower does.
async fn follow(run: Arc<Run>, me: usize, counts: Arc<Counts>) {
    let mut at = Cursor::default();
    let mut rng = Rng::new(0x7a11 ^ me as u64);
    let mut result = Ok(());
    for _ in 0..300 {
        if at.is_new() {
            reset(&counts);
        }
        result = match Store::connect(run.endpoint.as_str()).await {
            Ok(store) => {
                store
                    .tally(&mut at, |s| {
                        counts.see(&s);
                        true
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => break,
            Err(e) if at.read_done() => counts.retry("watch", e),
            Err(e) => counts.retry("read", e),
        }
        pause(&mut rng).await;
    }
    if let Err(e) = result {
        counts.fail("watch", e);
    }
}

/// Registers, publishes the instances, then measures and publishes forever.
async fn node(run: &Run, me: usize, store: &Store, counts: &Counts) -> Result<(), StoreError> {
    let name = node_name(me);
    let subnet = retry(counts, me, || store.lease_node_subnet(&name)).await?;
    let record = NodeRecord {
        name: name.clone(),
        ip: std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + me as u32),
        ewp: overlay_common::DEFAULT_EWP,
        nsp: overlay_common::DEFAULT_NSP,
        public: None,
        mtu: 1500,
        subnet,
        location: None,
    };
    let ttl = Duration::from_secs(10);
    let reg = retry(counts, me, || store.register_node(&record, ttl)).await?;
    run.plan.publishing.apply(&reg, run.plan.nodes);
    let plan = &run.plan;
    let specs = fixture::instances_of(me, plan.nodes, plan.instances, subnet);
    // A failed publish is written by the registration once the store
    // answers again (as in the agent).
    if let Err(e) = reg.publish_instances(&specs).await {
        counts.retry("publish", &e);
    }
    counts.published.store(true, Ordering::Relaxed);
    let period = plan.period;
    let mut rtts = Rtts::new(me, plan.nodes);
    let mut loads = Loads::new(me, &run.targets, plan.flows_per_node);
    let mut metrics = Metrics::default();
    // Nodes do not probe in step.
    tokio::time::sleep(period.mul_f64(Rng::new(me as u64).unit())).await;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let secs = period.as_secs_f64();
        if metrics.take_rtt(rtts.round(secs)) {
            reg.set_status("rtt", &plan.publishing.rtt(&metrics.rtt));
        }
        if metrics.take_load(loads.round(&run.targets, secs)) {
            reg.set_status("load", &metrics.load);
        }
    }
}

/// Forgets what a failed read and watch counted.
fn reset(c: &Counts) {
    for n in [&c.nodes, &c.instances, &c.services] {
        n.store(0, Ordering::Relaxed);
    }
}
