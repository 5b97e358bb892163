//! `overlay-ctl agent`: the node daemon.
//!
//! Start-up: prepare the host (bpffs, forwarding, masquerade), load the
//! dataplane with pinned maps and adopt or create its pinned links, re-link
//! the local instances recorded in the state directory, resync the maps
//! against the desired state, then serve the API and follow the desired
//! state. SIGTERM and SIGINT stop the agent and leave the dataplane
//! forwarding on its last state; `--teardown` removes everything.

mod cluster;
mod host;
mod instances;
mod metrics;
mod names;
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
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
    /// The uplink's own address: the tunnel's outer source.
    pub ip: Ipv4Addr,
    pub ewp: u16,
    pub nsp: u16,
    /// NAT-mapped address other nodes must use, if any.
    pub public: Option<std::net::SocketAddrV4>,
    pub subnet: Subnet,
    pub uplink_ifindex: u32,
    pub uplink_mtu: u16,
    /// MTU of the instance links (uplink MTU minus the tunnel overhead).
    pub mtu: u16,
    pub location: Option<crate::balance::Location>,
}

impl Node {
    /// How the cluster knows this node.
    pub fn record(&self) -> crate::store::NodeRecord {
        crate::store::NodeRecord {
            name: self.name.clone(),
            ip: self.ip,
            ewp: self.ewp,
            nsp: self.nsp,
            public: self.public,
            mtu: self.uplink_mtu,
            subnet: self.subnet,
            location: self.location,
        }
    }

    fn spec(&self) -> NodeSpec {
        self.record().spec()
    }

    fn dataplane_config(&self) -> Config {
        Config {
            node_id: self.subnet.node_id(),
            node_ip: ip::to_wire(self.ip),
            uplink_ifindex: self.uplink_ifindex,
            ewp: ip::port_to_wire(self.ewp),
            mtu: self.mtu,
            nsp: ip::port_to_wire(self.nsp),
            _pad: 0,
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
    /// The cluster store and this node's registration (absent: state file).
    pub store: Option<cluster::Link>,
    /// DNS and mDNS for the instances (unless `dns = false`).
    pub names: Option<names::NameService>,
    /// Whether `cluster` holds the real desired state yet; until then the
    /// maps keep what they had (a restart during a store outage changes nothing).
    pub synced: bool,
    /// This node's RTTs and loads as the policies use them.
    pub metrics: metrics::Metrics,
    applied: MapSet,
    /// Map entries the reconciler could not apply (the agent's status shows them).
    pub failures: reconcile::Failures,
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
        // Our own measurements are fresher here than in the store.
        s.rtt
            .insert(self.node.name.clone(), self.metrics.rtt.clone());
        s.load
            .insert(self.node.name.clone(), self.metrics.load.clone());
        s
    }

    /// Brings the maps to the desired state, writing only differences.
    pub fn reconcile(&mut self) -> Result<reconcile::Changes> {
        let changes = self.reconcile_quietly()?;
        if changes != reconcile::Changes::default() {
            tracing::info!(
                written = changes.written,
                removed = changes.removed,
                "maps reconciled"
            );
        }
        Ok(changes)
    }

    /// [`Agent::reconcile`] without the log line: for the periodic
    /// measurements, whose table updates would otherwise flood the log.
    pub fn reconcile_quietly(&mut self) -> Result<reconcile::Changes> {
        if !self.synced {
            return Ok(reconcile::Changes::default());
        }
        let local = LocalNode {
            name: &self.node.name,
            config: self.node.dataplane_config(),
            endpoints: &self.endpoints,
            snat: self.node.subnet.host(1),
            default_deny: self
                .cluster
                .settings
                .default_deny
                .unwrap_or(self.cfg.default_deny),
            expose_where_running: self.cfg.expose_where_running,
            balance: self.cfg.balance,
        };
        let state = self.merged_state();
        let want = reconcile::desired(&state, &local);
        let (changes, now) = reconcile::apply(&mut self.dp.tables, &self.applied, &want);
        self.applied = now;
        self.failures.update(&changes.failed);
        if changes != reconcile::Changes::default() {
            self.write_names(&state);
        }
        Ok(changes)
    }
}

impl Agent {
    /// Leaves the names of service and node ids for `overlay-ctl maps`.
    fn write_names(&self, state: &ClusterState) {
        let ix = crate::maps_view::NameIndex {
            services: state
                .services
                .iter()
                .map(|s| (s.id, s.name.clone()))
                .collect(),
            nodes: state
                .nodes
                .iter()
                .map(|n| (n.subnet.node_id(), n.name.clone()))
                .collect(),
        };
        let path = self.cfg.state_dir.join(crate::maps_view::NameIndex::FILE);
        if let Err(e) = serde_json::to_vec(&ix)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
        {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    host::prepare(&cfg)?;
    let store = match &cfg.store {
        Some(endpoints) => Some(cluster::connect(endpoints).await),
        None => None,
    };
    let subnet = match &store {
        Some(s) => cluster::lease_subnet(s, &cfg).await?,
        None => cfg
            .subnet
            .ok_or_else(|| AgentError::Host("no node subnet configured".into()))?,
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
    let applied = reconcile::read(&dp.tables);
    tracing::info!(node = %node.name, ip = %node.ip, subnet = %node.subnet, adopted = applied.servips.len() + applied.endpoints.len(), "dataplane loaded");
    let (mut cluster_rx, synced) = match (&store, &cfg.store) {
        (Some(_), Some(endpoints)) => cluster::follow(endpoints).await,
        _ => (source::spawn(&cfg)?, true),
    };
    let cluster = cluster_rx.borrow_and_update().clone();
    let names = match cfg.dns {
        true => Some(names::NameService::start(&cfg, cluster_rx.clone()).await?),
        false => None,
    };
    let prober = match &store {
        Some(s) => cluster::prober(s, &node, &cfg).await?,
        None => None,
    };
    let link = match store {
        Some(s) => Some(cluster::register(s, &node, &cfg).await?),
        None => None,
    };
    let mut agent = Agent {
        cfg,
        node,
        dp,
        cluster,
        instances: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        store: link,
        names,
        synced,
        metrics: metrics::Metrics::default(),
        applied,
        failures: Default::default(),
    };
    instances::restore(&mut agent).await?;
    agent.reconcile()?;
    let shared: Shared = Arc::new(Mutex::new(agent));
    let changed = Arc::new(Notify::new());
    let server = crate::api::serve(shared.clone(), changed.clone()).await?;
    let follow = tokio::spawn(follow(shared.clone(), cluster_rx, changed));
    let period =
        std::time::Duration::from_millis(match shared.lock().await.cfg.probe_interval_ms {
            0 => 1000,
            ms => ms,
        });
    let measure = tokio::spawn(metrics::measure(shared.clone(), prober, period));
    host::wait_for_signal().await;
    tracing::info!("stopping; the dataplane keeps forwarding");
    measure.abort();
    follow.abort();
    server.abort();
    let mut agent = shared.lock().await;
    let _ = std::fs::remove_file(&agent.cfg.api_socket);
    if let Some(link) = agent.store.take() {
        // The node stays registered until its lease runs out: a quick
        // restart keeps every other node's tables unchanged.
        link.registration.detach().await;
    }
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
        let from_store = tokio::select! {
            r = rx.changed() => if r.is_err() { return } else { true },
            _ = changed.notified() => false,
        };
        let mut agent = shared.lock().await;
        let new = rx.borrow_and_update().clone();
        // Other nodes' measurements move weights all the time: not worth a log line.
        let quiet = from_store && agent.synced && agent.cluster.same_but_measurements(&new);
        agent.cluster = new;
        agent.synced = true;
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
