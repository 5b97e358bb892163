//! `overlay-ctl agent`: the node daemon.
//!
//! Start-up: prepare the host (bpffs, forwarding, masquerade), load the
//! dataplane with pinned maps and adopt or create its pinned links, re-link
//! the local instances recorded in the state directory, resync the maps
//! against the desired state, then serve the API and follow the desired
//! state. SIGTERM and SIGINT stop the agent and leave the dataplane
//! forwarding on its last state; `--teardown` removes everything.

mod host;
mod instances;
mod source;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use overlay_common::maps::{Config, Endpoint, ip};
use tokio::sync::{Mutex, Notify, watch};

use crate::config::AgentConfig;
use crate::dataplane::Dataplane;
use crate::model::{ClusterState, InstanceSpec, NodeSpec, Subnet};
use crate::reconcile::{self, LocalNode, MapSet};

pub use instances::{DeployRequest, LocalInstance};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::Error),
    #[error(transparent)]
    Link(#[from] crate::netns::Error),
    #[error("{0}")]
    Host(String),
    #[error("unknown service `{0}` (not in the desired state)")]
    UnknownService(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("node subnet {0} has no free NamespaceIP left")]
    SubnetFull(Subnet),
    #[error("state directory: {0}")]
    State(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// What the agent knows about its own node.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ewp: u16,
    pub subnet: Subnet,
    pub uplink_ifindex: u32,
    /// MTU of the instance links (uplink MTU minus the tunnel overhead).
    pub mtu: u16,
}

impl Node {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            name: self.name.clone(),
            ip: self.ip,
            ewp: self.ewp,
            subnet: self.subnet,
        }
    }

    fn dataplane_config(&self) -> Config {
        Config {
            node_id: self.subnet.node_id(),
            node_ip: ip::to_wire(self.ip),
            uplink_ifindex: self.uplink_ifindex,
            ewp: ip::port_to_wire(self.ewp),
            mtu: self.mtu,
        }
    }
}

/// The agent's mutable state, shared by the API and the reconciler.
pub struct Agent {
    pub cfg: AgentConfig,
    pub node: Node,
    pub dp: Dataplane,
    pub cluster: ClusterState,
    pub instances: BTreeMap<(String, u32), LocalInstance>,
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    applied: MapSet,
}

pub type Shared = Arc<Mutex<Agent>>;

impl Agent {
    /// The cluster state plus this node and its own instances.
    pub fn merged_state(&self) -> ClusterState {
        let mut s = self.cluster.clone();
        if s.node(&self.node.name).is_none() {
            s.nodes.push(self.node.spec());
        }
        s.instances.retain(|i| i.node != self.node.name);
        s.instances
            .extend(self.instances.values().map(|l| InstanceSpec {
                service: l.service.clone(),
                instance: l.instance,
                node: self.node.name.clone(),
                nsip: l.nsip,
                fixed_ip: l.fixed_ip,
            }));
        s
    }

    /// Brings the maps to the desired state, writing only differences.
    pub fn reconcile(&mut self) -> Result<reconcile::Changes> {
        let local = LocalNode {
            name: &self.node.name,
            config: self.node.dataplane_config(),
            endpoints: &self.endpoints,
        };
        let want = reconcile::desired(&self.merged_state(), &local);
        let changes = reconcile::apply(&mut self.dp.tables, &self.applied, &want)?;
        self.applied = want;
        if changes != reconcile::Changes::default() {
            tracing::info!(
                written = changes.written,
                removed = changes.removed,
                "maps reconciled"
            );
        }
        Ok(changes)
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    host::prepare(&cfg)?;
    let node = host::node(&cfg)?;
    let mut dp = Dataplane::load(Some(&cfg.bpf_pin_dir))?;
    dp.attach_uplink(&cfg.uplink)?;
    if let Some(logger) = dp.take_logger() {
        tokio::spawn(forward_logs(logger));
    }
    let applied = reconcile::read(&dp.tables);
    tracing::info!(node = %node.name, ip = %node.ip, subnet = %node.subnet, adopted = applied.servips.len() + applied.endpoints.len(), "dataplane loaded");
    let mut cluster_rx = source::spawn(&cfg)?;
    let cluster = cluster_rx.borrow_and_update().clone();
    let mut agent = Agent {
        cfg,
        node,
        dp,
        cluster,
        instances: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        applied,
    };
    instances::restore(&mut agent).await?;
    agent.reconcile()?;
    let shared: Shared = Arc::new(Mutex::new(agent));
    let changed = Arc::new(Notify::new());
    let server = crate::api::serve(shared.clone(), changed.clone()).await?;
    let follow = tokio::spawn(follow(shared.clone(), cluster_rx, changed));
    host::wait_for_signal().await;
    tracing::info!("stopping; the dataplane keeps forwarding");
    follow.abort();
    server.abort();
    let _ = std::fs::remove_file(&shared.lock().await.cfg.api_socket);
    Ok(())
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
async fn follow(shared: Shared, mut rx: watch::Receiver<ClusterState>, changed: Arc<Notify>) {
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = changed.notified() => {}
        }
        let mut agent = shared.lock().await;
        agent.cluster = rx.borrow_and_update().clone();
        if let Err(e) = agent.reconcile() {
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

/// API entry: deploy under the lock.
pub async fn instances_deploy(shared: &Shared, req: DeployRequest) -> Result<LocalInstance> {
    let mut agent = shared.lock().await;
    instances::deploy(&mut agent, req).await
}

/// API entry: undeploy under the lock.
pub async fn instances_undeploy(shared: &Shared, service: &str, instance: u32) -> Result<bool> {
    let mut agent = shared.lock().await;
    instances::undeploy(&mut agent, service, instance).await
}
