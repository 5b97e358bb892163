//! The agent's life: start-up, the background tasks, and a shutdown that
//! lets in-flight API calls finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{Agent, AgentError, Maps, Result, Shared, State};
use super::{cluster, health, host, instances, metrics, name_service, source};
use crate::config::AgentConfig;
use crate::dataplane::{Dataplane, Tables};
use crate::model::ClusterState;
use crate::reconcile;

/// How long a stopping agent waits for API calls in flight (a deploy may
/// wait on the store for a few of its call timeouts).
const DRAIN: Duration = Duration::from_secs(30);

/// What start-up hands to the running agent's tasks.
struct Started {
    agent: Agent,
    cluster_rx: watch::Receiver<ClusterState>,
    prober: Option<crate::probe::Prober>,
    scan: Arc<Tables>,
}

/// Runs the agent until SIGTERM or SIGINT, then lets the API calls in
/// flight finish (for up to [`DRAIN`]).
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let Started {
        agent,
        cluster_rx,
        prober,
        scan,
    } = start(cfg).await?;
    instances::restore(&agent).await?;
    agent.reconcile()?;
    let shared: Shared = Arc::new(agent);
    let changed = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_server = match shared.cfg.metrics {
        Some(addr) => Some(crate::api::serve_metrics(shared.clone(), addr, stop_rx.clone()).await?),
        None => None,
    };
    let server = crate::api::serve(shared.clone(), changed.clone(), stop_rx).await?;
    let follow = tokio::spawn(follow(shared.clone(), cluster_rx, changed));
    let period = Duration::from_millis(match shared.cfg.probe_interval_ms {
        0 => 1000,
        ms => ms,
    });
    let measure = tokio::spawn(metrics::measure(shared.clone(), prober, scan, period));
    let gc = tokio::spawn(super::conntrack::run(super::conntrack::Gc {
        pin_dir: shared.cfg.bpf_pin_dir.clone(),
        lifetimes: shared.cfg.conntrack_lifetimes,
        every: Duration::from_secs(u64::from(shared.cfg.conntrack_gc_s)),
        node_ip: shared.node.ip,
        snat: shared.node.subnet.host(1),
    }));
    let checks = tokio::spawn(health::watch(shared.clone()));
    host::wait_for_signal().await;
    tracing::info!("stopping; the dataplane keeps forwarding");
    // New clients find no socket; calls already made run to their end.
    let _ = std::fs::remove_file(&shared.cfg.api_socket);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, server).await.is_err() {
        tracing::warn!("API calls still running after {DRAIN:?}; stopping without them");
    }
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    for task in [measure, follow, gc, checks] {
        task.abort();
        let _ = task.await;
    }
    detach(shared).await;
    Ok(())
}

/// Prepares the host, loads the dataplane and joins the cluster.
async fn start(cfg: AgentConfig) -> Result<Started> {
    host::prepare(&cfg)?;
    let access = match &cfg.store {
        Some(endpoints) => Some(cfg.store_access(endpoints)?),
        None => None,
    };
    let store = match &access {
        Some(access) => Some(cluster::connect(access).await),
        None => None,
    };
    let joined = match (&store, &access) {
        (Some(s), Some(access)) => Some(cluster::join(s, access, &cfg).await?),
        _ => None,
    };
    let v1_nodes = joined.as_ref().is_some_and(|j| j.v1_nodes);
    let subnet = match &joined {
        Some(j) => j.subnet,
        None => cfg
            .subnet
            .ok_or_else(|| AgentError::Unfit("no node subnet configured".into()))?,
    };
    host::masquerade(&cfg, subnet)?;
    let node = host::node(&cfg, subnet)?;
    let sizes = crate::dataplane::Sizes {
        conntrack: cfg.conntrack_entries,
    };
    let mut dp = Dataplane::load_sized(Some(&cfg.bpf_pin_dir), sizes)?;
    let xdp = match cfg.uplink_xdp {
        Some(on) => on,
        None => !crate::netns::is_veth(&cfg.uplink).await?,
    };
    dp.attach_uplink_with(&cfg.uplink, xdp)?;
    if let Some(logger) = dp.take_logger() {
        tokio::spawn(forward_logs(logger));
    }
    // A second handle on the same pinned maps, for the conntrack scans:
    // they read while the agent writes, without taking its map lock.
    let scan = Arc::new(Tables::open_pinned(&cfg.bpf_pin_dir)?);
    let applied = reconcile::read(&dp.tables);
    tracing::info!(node = %node.name, ip = %node.ip, subnet = %node.subnet, adopted = applied.servips.len() + applied.endpoints.len(), "dataplane loaded");
    let store_health = Arc::new(crate::store::FollowHealth::default());
    let (mut cluster_rx, synced) = match (&store, &access) {
        (Some(_), Some(access)) => cluster::follow(access, store_health.clone(), v1_nodes).await,
        _ => (source::spawn(&cfg)?, true),
    };
    let cluster = cluster_rx.borrow_and_update().clone();
    let names = match cfg.dns {
        true => {
            Some(name_service::NameService::start(&cfg, node.subnet, cluster_rx.clone()).await?)
        }
        false => None,
    };
    let prober = match &store {
        Some(s) => cluster::prober(s, &node, &cfg).await?,
        None => None,
    };
    let link = match store {
        Some(s) => Some(cluster::register(s, &node, &cfg, v1_nodes).await?),
        None => None,
    };
    let infra = infrastructure(&cfg, &node).await;
    let listening = super::listeners::busy(node.ip);
    let agent = Agent {
        infra,
        cfg,
        node,
        state: Mutex::new(State {
            cluster,
            synced,
            listening,
            ..State::default()
        }),
        maps: Mutex::new(Maps {
            dp,
            applied,
            failures: Default::default(),
            passes: Default::default(),
        }),
        linking: tokio::sync::Mutex::new(()),
        store: link,
        names,
        scan: scan.clone(),
        store_health: access.is_some().then_some(store_health),
    };
    Ok(Started {
        agent,
        cluster_rx,
        prober,
        scan,
    })
}

/// Stops the registration's keepalive without revoking its lease: the node
/// stays registered until the lease runs out, so a quick restart keeps
/// every other node's tables unchanged.
async fn detach(shared: Shared) {
    match Arc::try_unwrap(shared) {
        Ok(agent) => {
            if let Some(link) = agent.store {
                link.registration.detach().await;
            }
        }
        // An API call outlived the drain and still holds the agent. The last
        // drop of the registration would revoke the lease; never dropping it
        // leaves the lease to run out, as detaching does.
        Err(shared) => std::mem::forget(shared),
    }
}

/// Forwards the programs' aya-log records into the agent's log (tracing).
async fn forward_logs(logger: crate::dataplane::ProgramLogger) {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
    let Ok(mut fd) = (unsafe { tokio::io::unix::AsyncFd::register(logger) }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Reconciles whenever the desired state or the local instances change.
async fn follow(agent: Shared, mut rx: watch::Receiver<ClusterState>, changed: Arc<Notify>) {
    loop {
        let from_store = tokio::select! {
            r = rx.changed() => if r.is_err() { return } else { true },
            _ = changed.notified() => false,
        };
        let new = rx.borrow_and_update().clone();
        let quiet = {
            let mut st = agent.state();
            // Other nodes' measurements move weights all the time: not worth a log line.
            let quiet = from_store && st.synced && st.cluster.same_but_measurements(&new);
            st.take_cluster(new, &agent.node.name, std::time::Instant::now());
            st.synced = true;
            quiet
        };
        let result = match quiet {
            true => agent.reconcile_quietly(),
            false => agent.reconcile(),
        };
        if let Err(e) = result {
            tracing::error!("reconcile failed: {e}");
        }
    }
}

/// `overlay-ctl agent --teardown`: removes instance links, pinned links and
/// maps, the masquerade rule and the API socket.
pub async fn teardown(cfg: AgentConfig) -> Result<()> {
    for inst in instances::load(&cfg)? {
        crate::netns::remove(&inst.host_if).await?;
    }
    host::teardown(&cfg)
}

/// What the node's instances may not reach: its own addresses (the gateway
/// only for DNS and pings), the store, and (from the cluster state) every
/// node's tunnel ports. Store endpoints given by name are resolved once; one
/// that does not resolve is left out, with a warning.
async fn infrastructure(cfg: &AgentConfig, node: &super::Node) -> reconcile::guard::Infra {
    use reconcile::guard;
    let mut own = guard::own_addresses();
    own.push(node.ip);
    own.sort();
    own.dedup();
    let (mut store, names) = cfg
        .store
        .as_deref()
        .map(guard::store_endpoints)
        .unwrap_or_default();
    for name in names {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(found) => store.extend(found.filter_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(v4),
                std::net::SocketAddr::V6(_) => None,
            })),
            Err(e) => {
                tracing::warn!(endpoint = %name, "store endpoint not resolved, instances not kept from it: {e}")
            }
        }
    }
    guard::Infra {
        own,
        gateway: Some(cfg.gateway),
        store,
        nsp: node.nsp,
    }
}
