//! `overlay-ctl agent`: the node daemon.
//!
//! Start-up: prepare the host (bpffs, forwarding, masquerade), load the
//! dataplane with pinned maps and adopt or create its pinned links, re-link
//! the local instances recorded in the state directory, resync the maps
//! against the desired state, then serve the API and follow the desired
//! state. SIGTERM and SIGINT stop the agent: it takes no new API calls, lets
//! those in flight finish, and leaves the dataplane forwarding on its last
//! state; `--teardown` removes everything.

mod cluster;
mod conntrack;
mod error;
mod health;
mod host;
mod instances;
pub(crate) mod listeners;
mod metrics;
pub use metrics::Metrics;
pub(crate) use metrics::window_ticks;
mod name_service;
mod path_mtu;
mod probe_keys;
mod run;
mod source;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, MutexGuard, PoisonError};

use overlay_common::maps::{Config, Endpoint, ip};

use crate::config::AgentConfig;
use crate::dataplane::Dataplane;
use crate::model::{ClusterState, InstanceSpec, NodeSpec, Subnet};
use crate::reconcile::{self, LocalNode, MapSet};

pub(crate) use error::host;
pub use error::{AgentError, Result};
pub use instances::{DeployRequest, LocalInstance};
pub use run::{run, teardown};

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

/// The agent, shared by the API, the store follower and the measurements.
///
/// Its state is split by concern so that none of them waits on another's
/// slow I/O: `state` and `maps` are std mutexes held for in-memory work or
/// map writes only (never across an `.await`), and the one lock held across
/// netlink and the store, `linking`, is taken by deploy and undeploy alone.
pub struct Agent {
    pub cfg: AgentConfig,
    pub node: Node,
    /// What the node should look like. A std mutex, as every holder only
    /// reads or updates memory and lets go (no `.await`, no syscalls):
    /// API reads, store events and measurement ticks never queue behind I/O.
    state: std::sync::Mutex<State>,
    /// The maps and program links, with what was last written. A std mutex
    /// held for map writes and program attach/detach only (syscalls, never an
    /// `.await`). A reconcile reads `state` while holding it, so reconciles
    /// run one at a time, each from the newest state: an older snapshot can
    /// never be applied over a newer one.
    maps: std::sync::Mutex<Maps>,
    /// Serializes deploy and undeploy, which span netlink and the store (so
    /// a tokio mutex, held across `.await`): two of them must not pick the
    /// same NamespaceIP or race on one instance. Nothing else takes it.
    linking: tokio::sync::Mutex<()>,
    /// The cluster store and this node's registration (absent: state file).
    /// Both are safe to share; the store client queues its own calls.
    store: Option<cluster::Link>,
    /// DNS and mDNS for the instances (unless `dns = false`).
    names: Option<name_service::NameService>,
    /// A read-only handle of its own on the pinned maps, for whole-map
    /// reads (conntrack scans, `/metrics`) that take no lock of the writers.
    pub scan: Arc<crate::dataplane::Tables>,
    /// How the store follower is doing (with a store).
    pub store_health: Option<Arc<crate::store::FollowHealth>>,
    /// The infrastructure the node's instances may not reach.
    infra: reconcile::guard::Infra,
}

/// The agent's in-memory view: desired state, own instances, measurements.
#[derive(Default)]
pub struct State {
    pub cluster: ClusterState,
    pub instances: BTreeMap<(String, u32), LocalInstance>,
    /// Linked and published instances' endpoints, by NamespaceIP.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// Whether `cluster` holds the real desired state yet; until then the
    /// maps keep what they had (a restart during a store outage changes nothing).
    pub synced: bool,
    /// This node's RTTs and loads as the policies use them.
    pub metrics: metrics::Metrics,
    /// Nodes whose registration lapsed while they still answer probes.
    pub lapsed: BTreeMap<String, Lapsed>,
    /// NamespaceIPs of instances removed lately: not handed out again while
    /// packets of their flows may still be on their way.
    pub freed: BTreeMap<Ipv4Addr, std::time::Instant>,
    /// Ports the node itself listens on: never exposed here (`listeners`).
    pub listening: std::collections::BTreeSet<(u16, u8)>,
}

/// A node that left the store while its probe echoes kept coming: kept,
/// with its instances, for `node_grace`, since a node cut off from the
/// store is not dead for the nodes that still reach it.
#[derive(Clone, Debug)]
pub struct Lapsed {
    pub node: crate::model::NodeSpec,
    pub instances: Vec<InstanceSpec>,
    pub since: std::time::Instant,
}

impl State {
    /// Takes the store's new state; a node that left it while this node
    /// still measures an RTT to it (its echoes come) is kept as lapsed.
    pub fn take_cluster(&mut self, new: ClusterState, me: &str, now: std::time::Instant) {
        for n in &self.cluster.nodes {
            let left = n.name != me && new.node(&n.name).is_none();
            if left && self.metrics.rtt.contains_key(&n.name) && !self.lapsed.contains_key(&n.name)
            {
                tracing::warn!(node = %n.name, "registration lapsed while the node answers probes: kept for the grace");
                let instances = self.cluster.instances.iter().filter(|i| i.node == n.name);
                let lapsed = Lapsed {
                    node: n.clone(),
                    instances: instances.cloned().collect(),
                    since: now,
                };
                self.lapsed.insert(n.name.clone(), lapsed);
            }
        }
        self.lapsed.retain(|name, _| new.node(name).is_none());
        self.cluster = new;
    }

    /// Lets go of lapsed nodes past `grace` or no longer answering; gives
    /// whether any left.
    pub fn prune_lapsed(&mut self, grace: std::time::Duration, now: std::time::Instant) -> bool {
        let before = self.lapsed.len();
        let rtt = &self.metrics.rtt;
        self.lapsed.retain(|name, l| {
            let keep = now.duration_since(l.since) < grace && rtt.contains_key(name);
            if !keep {
                tracing::warn!(node = %name, "lapsed node left: grace over or no more echoes");
            }
            keep
        });
        self.lapsed.len() != before
    }

    /// The store's state with the lapsed nodes and their instances in it.
    pub fn cluster_with_lapsed(&self) -> ClusterState {
        let mut s = self.cluster.clone();
        for l in self.lapsed.values() {
            s.nodes.push(l.node.clone());
            s.instances.extend(l.instances.iter().cloned());
        }
        s
    }
}

/// The dataplane and what `reconcile::apply` last wrote to it.
struct Maps {
    dp: Dataplane,
    applied: MapSet,
    /// Map entries the reconciler could not apply (the agent's status shows them).
    failures: reconcile::Failures,
    passes: reconcile::Passes,
}

pub type Shared = Arc<Agent>;

/// The local endpoints with their service ids from the desired state: an
/// instance linked before the state arrived (restored at start while the
/// store was late) was linked without knowing its service's id.
fn endpoints_with_ids(st: &State) -> BTreeMap<Ipv4Addr, Endpoint> {
    let service_of: BTreeMap<Ipv4Addr, &str> = st
        .instances
        .values()
        .map(|i| (i.nsip, i.service.as_str()))
        .collect();
    st.endpoints
        .iter()
        .map(|(nsip, ep)| {
            let id = service_of
                .get(nsip)
                .and_then(|name| st.cluster.service(name))
                .map_or(ep.service, |s| s.id);
            (*nsip, Endpoint { service: id, ..*ep })
        })
        .collect()
}

impl Agent {
    /// The in-memory state. Nothing is meant to panic while holding it; if
    /// something did, at worst one update is missing, so a poisoned lock is
    /// taken over rather than taking the agent down with it.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The dataplane: for map writes and program attach/detach only.
    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cluster state plus this node and its own instances.
    fn merged_state(&self, st: &State) -> ClusterState {
        let mut s = st.cluster_with_lapsed();
        if s.node(&self.node.name).is_none() {
            s.nodes.push(self.node.spec());
        }
        s.instances.retain(|i| i.node != self.node.name);
        s.instances
            .extend(st.instances.values().map(|l| InstanceSpec {
                service: l.service.clone(),
                instance: l.instance,
                node: self.node.name.clone(),
                nsip: l.nsip,
                fixed_ip: l.fixed_ip,
                health: l.health,
            }));
        // Our own measurements are fresher here than in the store.
        s.rtt.insert(self.node.name.clone(), st.metrics.rtt.clone());
        s.load
            .insert(self.node.name.clone(), st.metrics.load.clone());
        s
    }

    /// Brings the maps to the desired state, writing only differences.
    pub fn reconcile(&self) -> Result<reconcile::Changes> {
        let changes = self.reconcile_quietly()?;
        if changes != reconcile::Changes::default() {
            tracing::info!(
                written = changes.written,
                removed = changes.removed,
                flows_ended = changes.flows_ended,
                "maps reconciled"
            );
        }
        Ok(changes)
    }

    /// [`Agent::reconcile`] without the log line: for the periodic
    /// measurements, whose table updates would otherwise flood the log.
    pub fn reconcile_quietly(&self) -> Result<reconcile::Changes> {
        // Taken first, so that the state read below is the newest any
        // reconcile has seen (see the `maps` field).
        let mut maps = self.maps();
        let Some((state, want)) = self.desired() else {
            return Ok(reconcile::Changes::default());
        };
        let maps = &mut *maps;
        let started = std::time::Instant::now();
        let (changes, now) = reconcile::apply(&mut maps.dp.tables, &maps.applied, &want);
        maps.passes.count += 1;
        maps.passes.seconds += started.elapsed().as_secs_f64();
        maps.applied = now;
        maps.failures.update(&changes.failed);
        if changes != reconcile::Changes::default() {
            self.write_names(&state);
        }
        Ok(changes)
    }

    /// DNS replies of this node's name service by result (none without it).
    pub fn dns_counts(&self) -> Vec<(String, u64)> {
        self.names
            .as_ref()
            .map(|n| n.counts().snapshot())
            .unwrap_or_default()
    }

    /// The reconcile passes so far.
    pub fn passes(&self) -> reconcile::Passes {
        self.maps().passes
    }

    /// The map entries the last reconcile could not apply, and how many
    /// failures started since the agent did.
    pub fn failures(&self) -> (Vec<reconcile::Failure>, u64) {
        let maps = self.maps();
        (maps.failures.outstanding(), maps.failures.total)
    }

    /// The merged state and the maps it calls for; `None` until synced.
    fn desired(&self) -> Option<(ClusterState, MapSet)> {
        let st = self.state();
        if !st.synced {
            return None;
        }
        let endpoints = endpoints_with_ids(&st);
        let local = LocalNode {
            name: &self.node.name,
            config: self.node.dataplane_config(),
            endpoints: &endpoints,
            snat: self.node.subnet.host(1),
            default_deny: st
                .cluster
                .settings
                .default_deny
                .unwrap_or(self.cfg.default_deny),
            expose_where_running: self.cfg.expose_where_running,
            balance: self.cfg.balance,
        };
        let state = self.merged_state(&st);
        let mut want = reconcile::desired(&state, &local);
        reconcile::guard::infrastructure(&mut want, &self.infra);
        reconcile::guard::local_listeners(&mut want, &st.listening);
        Some((state, want))
    }

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
            lifetimes: self.cfg.conntrack_lifetimes,
            health: state
                .instances
                .iter()
                .filter(|i| !i.health.is_ready())
                .map(|i| (i.nsip, i.health.label().to_string()))
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

/// API entry: deploys an instance (serialized with other deploys and undeploys).
pub async fn instances_deploy(shared: &Shared, req: DeployRequest) -> Result<LocalInstance> {
    instances::deploy(shared, req).await
}

/// API entry: undeploys an instance, draining it first unless `now`.
pub async fn instances_undeploy(
    shared: &Shared,
    service: &str,
    instance: u32,
    now: bool,
) -> Result<bool> {
    instances::undeploy(shared, service, instance, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceSpec;

    fn node(name: &str, o: u8) -> crate::model::NodeSpec {
        crate::model::NodeSpec {
            name: name.into(),
            ip: Ipv4Addr::new(192, 0, 2, o),
            ewp: 50103,
            subnet: format!("10.30.{o}.0/24").parse().unwrap(),
            location: None,
            own: None,
            mtu: 0,
        }
    }

    /// A node that leaves the store while it answers probes stays, with its
    /// instances, until the grace is over or its echoes stop; one that
    /// answers no probes leaves at once.
    #[test]
    fn a_lapsed_node_that_answers_probes_stays_for_the_grace() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut st = State::default();
        let inst = InstanceSpec {
            service: "a.b.c.d".into(),
            instance: 1,
            node: "n2".into(),
            nsip: Ipv4Addr::new(10, 30, 2, 2),
            fixed_ip: None,
            health: Default::default(),
        };
        let full = ClusterState {
            nodes: vec![node("n1", 1), node("n2", 2), node("n3", 3)],
            instances: vec![inst.clone()],
            ..Default::default()
        };
        st.take_cluster(full, "n1", t0);
        st.metrics.rtt.insert("n2".into(), 300);
        let without = ClusterState {
            nodes: vec![node("n1", 1)],
            ..Default::default()
        };
        st.take_cluster(without.clone(), "n1", t0);
        let merged = st.cluster_with_lapsed();
        assert!(merged.node("n2").is_some() && merged.node("n3").is_none());
        assert_eq!(merged.instances, vec![inst]);
        let grace = Duration::from_secs(60);
        assert!(!st.prune_lapsed(grace, t0 + Duration::from_secs(59)));
        assert!(st.prune_lapsed(grace, t0 + grace), "the grace is over");
        // Lapsed again, then the echoes stop.
        st.take_cluster(
            ClusterState {
                nodes: vec![node("n2", 2)],
                ..without.clone()
            },
            "n1",
            t0,
        );
        st.take_cluster(without, "n1", t0);
        assert_eq!(st.lapsed.len(), 1);
        st.metrics.rtt.clear();
        assert!(st.prune_lapsed(grace, t0), "no echoes, no grace");
    }

    /// An instance restored before the desired state arrived (service id 0)
    /// gets its service's id once the state is there.
    #[test]
    fn endpoints_take_their_service_id_from_the_state() {
        let nsip = Ipv4Addr::new(10, 30, 1, 2);
        let mut st = State::default();
        st.instances.insert(
            ("a.b.c.d".into(), 1),
            LocalInstance {
                service: "a.b.c.d".into(),
                instance: 1,
                netns: "x".into(),
                nsip,
                host_if: "ov2".into(),
                fixed_ip: None,
                health: Default::default(),
            },
        );
        st.endpoints.insert(nsip, Endpoint::default());
        assert_eq!(endpoints_with_ids(&st)[&nsip].service, 0, "not known yet");
        st.cluster.services.push(ServiceSpec {
            name: "A.b.c.d".into(),
            id: 7,
            ports: vec![],
            stateful: false,
            servips: Default::default(),
            exposed: false,
            needs: vec![],
            readiness: None,
        });
        assert_eq!(endpoints_with_ids(&st)[&nsip].service, 7);
    }
}
