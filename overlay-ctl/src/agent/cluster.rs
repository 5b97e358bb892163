//! The agent's side of the cluster store: connecting, the subnet lease, the
//! node registration and following the desired state.

use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::sync::watch;

use super::{AgentError, Node, Result};
use crate::config::AgentConfig;
use crate::model::{ClusterState, Subnet};
use crate::probe::{ProbeConfig, Prober};
use crate::store::{self, Registration, Store};

/// The store and this node's registration (its lease keeps the node and its
/// instances in the cluster).
pub struct Link {
    pub store: Store,
    pub registration: Registration,
}

/// Connects, retrying with backoff: the pinned dataplane keeps forwarding
/// meanwhile, so there is no reason to give up.
pub async fn connect(access: &store::Access) -> Store {
    let mut delay = Duration::from_millis(200);
    loop {
        match Store::connect(access).await {
            Ok(s) => return s,
            Err(e) => tracing::warn!("waiting for the store: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// What the agent learnt on joining the store.
pub struct Joined {
    /// The node's subnetwork.
    pub subnet: Subnet,
    /// Agents of the previous release are registered: follow and write the
    /// v1 node keys too.
    pub v1_nodes: bool,
}

/// Checks that the store certificate names this node, moves a v1 store to
/// the v2 schema where this identity may, and finds the node's subnetwork
/// (kept across restarts; leased here only where the store lets a node).
pub async fn join(store: &Store, access: &store::Access, cfg: &AgentConfig) -> Result<Joined> {
    if let Some(name) = access.identity()?
        && name != cfg.node_id
    {
        return Err(AgentError::Unfit(format!(
            "store_cert names `{name}` but node_id is `{}`: the store lets a node write \
             only the keys of the name in its certificate",
            cfg.node_id
        )));
    }
    match store.migrate_v1().await {
        Ok(_) => {}
        Err(store::StoreError::PermissionDenied { .. }) => {}
        Err(e) => tracing::warn!("store: not moving v1 keys to the v2 schema: {e}"),
    }
    let v1_nodes = store.has_v1_nodes().await.unwrap_or(false);
    if v1_nodes {
        tracing::info!(
            "store: agents of the previous release are registered; writing and reading the v1 node keys too"
        );
    }
    if cfg.subnet.is_some() {
        tracing::warn!("`subnet` is ignored with a store: the store leases the node's subnet");
    }
    let subnet = store
        .lease_node_subnet(&cfg.node_id)
        .await
        .map_err(|e| match e {
            store::StoreError::PermissionDenied { .. } => AgentError::Unfit(format!(
                "node `{0}` has no subnetwork and may not lease one: admit it with \
                 `overlay-ctl node add {0}` (root certificate)",
                cfg.node_id
            )),
            e => e.into(),
        })?;
    Ok(Joined { subnet, v1_nodes })
}

/// Follows the store into a watch channel; `true` when the first snapshot
/// arrived within a few seconds (else the maps stay as they are until it
/// does). With `v1_nodes`, the nodes that only the v1 schema has are added.
pub async fn follow(
    access: &store::Access,
    health: std::sync::Arc<store::FollowHealth>,
    v1_nodes: bool,
) -> (watch::Receiver<ClusterState>, bool) {
    let (tx, mut rx) = watch::channel(ClusterState::default());
    let current = spawn_follower(access, store::DEFAULT_PREFIX, health.clone());
    if v1_nodes {
        let legacy = spawn_follower(access, store::V1_PREFIX, Default::default());
        tokio::spawn(merge(current, legacy, tx));
    } else {
        tokio::spawn(forward(current, tx));
    }
    let synced = matches!(
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await,
        Ok(Ok(()))
    );
    (rx, synced)
}

fn spawn_follower(
    access: &store::Access,
    prefix: &'static str,
    health: std::sync::Arc<store::FollowHealth>,
) -> watch::Receiver<ClusterState> {
    let (tx, rx) = watch::channel(ClusterState::default());
    let access = access.clone();
    tokio::spawn(async move { store::follow_with_health(access, prefix, tx, health).await });
    rx
}

/// Passes the follower's states on from its first snapshot.
async fn forward(mut from: watch::Receiver<ClusterState>, to: watch::Sender<ClusterState>) {
    while from.changed().await.is_ok() {
        let state = from.borrow_and_update().clone();
        to.send_replace(state);
    }
}

/// The current schema's state plus the v1-only nodes, once both schemas
/// were read.
async fn merge(
    mut current: watch::Receiver<ClusterState>,
    mut legacy: watch::Receiver<ClusterState>,
    to: watch::Sender<ClusterState>,
) {
    // Both first snapshots before anything: a state without the v1 nodes
    // would end their flows.
    if current.changed().await.is_err() || legacy.changed().await.is_err() {
        return;
    }
    loop {
        let state = store::merge_legacy(
            current.borrow_and_update().clone(),
            &legacy.borrow_and_update(),
        );
        to.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        tokio::select! {
            r = current.changed() => if r.is_err() { return },
            r = legacy.changed() => if r.is_err() { return },
        }
    }
}

/// Starts the RTT probes with the cluster's probe key (unless
/// `probe_interval_ms = 0`). Without probes the node still forwards; its
/// distances then come from the other nodes' measurements or coordinates.
pub async fn prober(store: &Store, node: &Node, cfg: &AgentConfig) -> Result<Option<Prober>> {
    if cfg.probe_interval_ms == 0 {
        return Ok(None);
    }
    let key = store.probe_key(crate::probe::generate_key()).await?;
    let started = Prober::start(ProbeConfig {
        node_id: node.subnet.node_id(),
        bind: SocketAddrV4::new(node.ip, node.ewp),
        key,
        interval: Duration::from_millis(cfg.probe_interval_ms),
        echo_delay: Duration::from_millis(cfg.probe_echo_delay_ms),
    })
    .await;
    match started {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            tracing::warn!("no RTT probes from this node: {e}");
            Ok(None)
        }
    }
}

/// Registers the node under a lease that its keepalive renews.
pub async fn register(
    store: Store,
    node: &Node,
    cfg: &AgentConfig,
    v1_nodes: bool,
) -> Result<Link> {
    let registration = store
        .clone()
        .with_v1_mirror(v1_nodes)
        .register_node(&node.record(), Duration::from_secs(cfg.node_ttl))
        .await?;
    Ok(Link {
        store,
        registration,
    })
}
