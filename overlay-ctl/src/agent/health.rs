//! The node's side of instance health (`docs/health.md`): every
//! [`PERIOD`] the agent tries a TCP connection from the node to each local
//! instance's check ports, turns the results into a health
//! ([`Tracker`]) and publishes every change with the instance, so that every
//! node's slot tables follow; and `instance rm` drains first.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Agent, Result, Shared, instances};
use crate::health::{Health, Tracker, check_ports};

/// How often every local instance is checked.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long one connection attempt may take: a local instance answers in
/// well under a millisecond, or refuses at once when nothing listens.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A local instance: (service in lower case, instance number).
type Key = (String, u32);

/// One local instance to check.
struct Target {
    key: Key,
    nsip: Ipv4Addr,
    health: Health,
    /// Empty: no check, ready at once.
    ports: Vec<u16>,
}

/// Checks the local instances every [`PERIOD`] until the task is aborted.
pub async fn watch(agent: Shared) {
    let mut trackers: BTreeMap<Key, Tracker> = BTreeMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets = targets(&agent);
        trackers.retain(|k, _| targets.iter().any(|t| t.key == *k));
        let mut changes = Vec::new();
        for (target, passed) in check_all(targets).await {
            let tracker = trackers
                .entry(target.key.clone())
                .or_insert(Tracker::new(target.health));
            // A deploy or a drain set another health meanwhile: start over.
            if tracker.health != target.health {
                *tracker = Tracker::new(target.health);
            }
            if let Some(health) = tracker.record(passed) {
                changes.push((target.key, health));
            }
        }
        if !changes.is_empty()
            && let Err(e) = set_health(&agent, &changes).await
        {
            tracing::error!("applying health changes: {e}");
        }
    }
}

/// The local instances to check (draining ones are not: they are leaving),
/// each with its service's check ports; none before the service is known.
fn targets(agent: &Agent) -> Vec<Target> {
    let st = agent.state();
    st.instances
        .iter()
        .filter(|(_, i)| i.health != Health::Draining)
        .filter_map(|(key, i)| {
            let svc = st.cluster.service(&i.service)?;
            Some(Target {
                key: key.clone(),
                nsip: i.nsip,
                health: i.health,
                ports: check_ports(&svc.ports, svc.readiness),
            })
        })
        .collect()
}

/// Checks every target at once; each passes when one of its ports accepts.
async fn check_all(targets: Vec<Target>) -> Vec<(Target, bool)> {
    let mut set = JoinSet::new();
    for t in targets {
        set.spawn(async move {
            let passed = accepts(t.nsip, &t.ports).await;
            (t, passed)
        });
    }
    set.join_all().await
}

/// Whether a TCP connection to one of `ports` of `nsip` succeeds (the
/// connection is closed at once); no ports: yes.
async fn accepts(nsip: Ipv4Addr, ports: &[u16]) -> bool {
    if ports.is_empty() {
        return true;
    }
    let mut set = JoinSet::new();
    for &port in ports {
        let addr = SocketAddrV4::new(nsip, port);
        set.spawn(tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(addr),
        ));
    }
    while let Some(done) = set.join_next().await {
        if matches!(done, Ok(Ok(Ok(_)))) {
            return true;
        }
    }
    false
}

/// Records, publishes and applies new healths. Under the deploy lock, so
/// that an instance removed meanwhile is not published again.
async fn set_health(agent: &Agent, changes: &[(Key, Health)]) -> Result<()> {
    let _linking = agent.linking.lock().await;
    let mut changed = Vec::new();
    {
        let mut st = agent.state();
        for (key, health) in changes {
            // Gone, or being removed meanwhile: its own call decides.
            let Some(inst) = st.instances.get_mut(key) else {
                continue;
            };
            if inst.health == Health::Draining {
                continue;
            }
            tracing::info!(service = %inst.service, instance = inst.instance, from = inst.health.label(), to = health.label(), "instance health");
            inst.health = *health;
            changed.push(inst.clone());
        }
    }
    for inst in &changed {
        instances::publish_logged(agent, inst).await;
    }
    // The maps first: an unwritable state file must not hold them back.
    agent.reconcile()?;
    instances::save(agent)
}

/// First step of `instance rm`: the instance gets no new flows on any node
/// (published as draining) while its established flows go on. `false`:
/// there is no such instance.
pub async fn start_drain(agent: &Agent, service: &str, instance: u32) -> Result<bool> {
    let _linking = agent.linking.lock().await;
    let inst = {
        let mut st = agent.state();
        let Some(inst) = st
            .instances
            .get_mut(&(service.to_ascii_lowercase(), instance))
        else {
            return Ok(false);
        };
        inst.health = Health::Draining;
        inst.clone()
    };
    tracing::info!(service = %inst.service, instance, drain_ms = agent.cfg.drain_ms, "draining instance");
    instances::publish_logged(agent, &inst).await;
    agent.reconcile()?;
    instances::save(agent)?;
    Ok(true)
}
