//! The agent's side of the cluster store: connecting, the subnet lease, the
//! node registration and following the desired state.

use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::sync::watch;

use super::{Node, Result};
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

/// This node's /24, leased once and kept across restarts.
pub async fn lease_subnet(store: &Store, cfg: &AgentConfig) -> Result<Subnet> {
    if cfg.subnet.is_some() {
        tracing::warn!("`subnet` is ignored with a store: the store leases the node's subnet");
    }
    Ok(store
        .lease_subnet(
            &cfg.node_id,
            store::DEFAULT_SUBNET_POOL,
            store::DEFAULT_SUBNET_LEN,
        )
        .await?)
}

/// Follows the store into a watch channel; `true` when the first snapshot
/// arrived within a few seconds (else the maps stay as they are until it does).
pub async fn follow(
    access: &store::Access,
    health: std::sync::Arc<store::FollowHealth>,
) -> (watch::Receiver<ClusterState>, bool) {
    let (tx, mut rx) = watch::channel(ClusterState::default());
    let access = access.clone();
    tokio::spawn(async move {
        store::follow_with_health(access, store::DEFAULT_PREFIX, tx, health).await
    });
    let synced = matches!(
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await,
        Ok(Ok(()))
    );
    (rx, synced)
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
pub async fn register(store: Store, node: &Node, cfg: &AgentConfig) -> Result<Link> {
    let registration = store
        .register_node(&node.record(), Duration::from_secs(cfg.node_ttl))
        .await?;
    Ok(Link {
        store,
        registration,
    })
}
