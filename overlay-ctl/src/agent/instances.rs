//! Local instances: deploy and undeploy for the node engine, persisted in the
//! state directory so a restarted agent re-adopts them.

use std::net::Ipv4Addr;

use overlay_common::maps::Endpoint;
use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, Result, State};
use crate::config::AgentConfig;
use crate::health::check_ports;
use crate::model::{Health, InstanceSpec, ServiceSpec};
use crate::netns::{self, LinkSpec, NetnsRef};

pub const FILE: &str = "instances.json";

/// An instance this node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInstance {
    pub service: String,
    pub instance: u32,
    pub netns: String,
    pub nsip: Ipv4Addr,
    pub host_if: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<Ipv4Addr>,
    /// Whether it takes new flows (`docs/health.md`); kept across restarts
    /// so that a restarted agent does not take a ready instance out.
    #[serde(default)]
    pub health: Health,
}

/// `POST /v1/instances`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub service: String,
    pub instance: u32,
    /// Network namespace: a name, a path, or a PID.
    pub netns: String,
}

pub fn load(cfg: &AgentConfig) -> Result<Vec<LocalInstance>> {
    let path = cfg.state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| AgentError::StateFormat { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(AgentError::StateFile { path, source }),
    }
}

/// Writes the instance records; callers hold `linking`, so writes do not
/// interleave.
pub(super) fn save(agent: &Agent) -> Result<()> {
    let path = agent.cfg.state_dir.join(FILE);
    let tmp = path.with_extension("tmp");
    let list: Vec<LocalInstance> = agent.state().instances.values().cloned().collect();
    let bytes = serde_json::to_vec_pretty(&list).map_err(|source| AgentError::StateFormat {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| AgentError::StateFile { path, source })
}

/// Re-links (idempotently) and re-attaches every recorded instance.
pub async fn restore(agent: &Agent) -> Result<()> {
    let _linking = agent.linking.lock().await;
    for inst in load(&agent.cfg)? {
        let ep = match link(agent, &inst).await {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!(service = %inst.service, instance = inst.instance, "cannot restore instance: {e}");
                continue;
            }
        };
        if let Err(e) = publish(agent, &inst).await {
            tracing::warn!(service = %inst.service, instance = inst.instance, "cannot publish instance: {e}");
        }
        adopt(agent, inst, ep);
    }
    Ok(())
}

/// Records a linked instance and its endpoint together, so that a
/// reconcile sees both or neither.
fn adopt(agent: &Agent, inst: LocalInstance, ep: Endpoint) {
    let mut st = agent.state();
    st.endpoints.insert(inst.nsip, ep);
    st.instances
        .insert((inst.service.to_ascii_lowercase(), inst.instance), inst);
}

fn spec(agent: &Agent, inst: &LocalInstance) -> InstanceSpec {
    InstanceSpec {
        service: inst.service.clone(),
        instance: inst.instance,
        node: agent.node.name.clone(),
        nsip: inst.nsip,
        fixed_ip: inst.fixed_ip,
        health: inst.health,
    }
}

async fn publish(agent: &Agent, inst: &LocalInstance) -> Result<()> {
    if let Some(link) = &agent.store {
        link.registration
            .publish_instance(&spec(agent, inst))
            .await?;
    }
    Ok(())
}

/// Publishes a change of an instance already published; if the store does
/// not answer, the registration writes it once it does.
pub(super) async fn publish_logged(agent: &Agent, inst: &LocalInstance) {
    if let Err(e) = publish(agent, inst).await {
        tracing::warn!(service = %inst.service, instance = inst.instance, "publishing instance: {e}");
    }
}

/// The fixed IP of a stateful service's instance: from the store, or from
/// the desired-state file.
async fn fixed_ip(agent: &Agent, service: &ServiceSpec, instance: u32) -> Result<Option<Ipv4Addr>> {
    match &agent.store {
        Some(link) if service.stateful => link
            .store
            .allocate_fixed_ip(&service.name, instance, crate::store::DEFAULT_SERVICE_POOL)
            .await
            .map(Some)
            .map_err(|e| match e {
                // Only the orchestrator allocates where the store controls access.
                crate::store::StoreError::PermissionDenied { .. } => {
                    AgentError::BadRequest(format!(
                        "instance {instance} of {} has no fixed IP yet, and nodes may not allocate \
                     one: run `overlay-ctl service deploy DESCRIPTOR --instances {instance}` \
                     as the orchestrator",
                        service.name
                    ))
                }
                e => e.into(),
            }),
        // Fail before touching the node when the store is not answering.
        Some(link) => link
            .store
            .revision()
            .await
            .map(|_| None)
            .map_err(Into::into),
        None => Ok(agent
            .state()
            .cluster
            .instances
            .iter()
            .find(|i| i.service.eq_ignore_ascii_case(&service.name) && i.instance == instance)
            .and_then(|i| i.fixed_ip)),
    }
}

/// Creates the link and attaches the program; returns the endpoint that
/// the maps are to hold for it.
async fn link(agent: &Agent, inst: &LocalInstance) -> Result<Endpoint> {
    let service = agent
        .state()
        .cluster
        .service(&inst.service)
        .map(|s| s.id)
        .unwrap_or(0);
    let spec = LinkSpec {
        netns: inst.netns.parse::<NetnsRef>()?,
        host_if: inst.host_if.clone(),
        nsip: inst.nsip,
        mtu: agent.node.mtu,
        gateway: agent.cfg.gateway,
    };
    let l = netns::create(&spec).await?;
    agent.maps().dp.attach_instance(&inst.host_if)?;
    if let Some(names) = &agent.names {
        names.add(&inst.host_if, &inst.netns);
    }
    Ok(Endpoint {
        ifindex: l.host_ifindex,
        service,
        instance: inst.instance,
        mac: l.inst_mac,
        host_mac: l.host_mac,
    })
}

/// How long a deploy waits for its service to reach this node: a service
/// deployed a moment ago may still be on its way from the store (the
/// follower gathers changes for a few milliseconds before applying them).
const SERVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The service `name` of the desired state, once it is there (within
/// [`SERVICE_WAIT`]).
async fn known_service(agent: &Agent, name: &str) -> Result<crate::model::ServiceSpec> {
    let give_up = tokio::time::Instant::now() + SERVICE_WAIT;
    loop {
        if let Some(svc) = agent.state().cluster.service(name).cloned() {
            return Ok(svc);
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(AgentError::UnknownService(name.to_owned()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Deploys an instance: idempotent for the same request.
pub async fn deploy(agent: &Agent, req: DeployRequest) -> Result<LocalInstance> {
    if req.instance == 0 {
        return Err(AgentError::BadRequest("instance numbers start at 1".into()));
    }
    req.netns.parse::<NetnsRef>()?;
    // Waited for outside the lock: other deploys go on meanwhile.
    let svc = known_service(agent, &req.service).await?;
    let _linking = agent.linking.lock().await;
    let fixed_ip = fixed_ip(agent, &svc, req.instance).await?;
    let inst = planned(agent, &agent.state(), &svc, &req, fixed_ip)?;
    let ep = link(agent, &inst).await?;
    if let Err(e) = publish(agent, &inst).await {
        // Nothing half-made: the cluster does not know it, so neither does the node.
        let _ = agent.maps().dp.detach_instance(&inst.host_if);
        let _ = netns::remove(&inst.host_if).await;
        return Err(e);
    }
    adopt(agent, inst.clone(), ep);
    save(agent)?;
    agent.reconcile()?;
    Ok(inst)
}

/// The record a deploy request makes: the existing one (moved to the
/// requested namespace), or a new one on the lowest free NamespaceIP.
fn planned(
    agent: &Agent,
    st: &State,
    svc: &ServiceSpec,
    req: &DeployRequest,
    fixed_ip: Option<Ipv4Addr>,
) -> Result<LocalInstance> {
    let key = (svc.name.to_ascii_lowercase(), req.instance);
    // Until its check passes, a new instance gets no new flows.
    let starting = match check_ports(&svc.ports, svc.readiness).is_empty() {
        true => Health::Ready,
        false => Health::Starting,
    };
    Ok(match st.instances.get(&key) {
        Some(old) if old.netns == req.netns && old.health != Health::Draining => old.clone(),
        Some(old) => LocalInstance {
            netns: req.netns.clone(),
            health: starting,
            ..old.clone()
        },
        None => {
            let nsip = free_nsip(st, agent.node.subnet)?;
            let host_if = format!("ov{}", u32::from(nsip) - u32::from(agent.node.subnet.addr));
            LocalInstance {
                service: svc.name.clone(),
                instance: req.instance,
                netns: req.netns.clone(),
                nsip,
                host_if,
                fixed_ip,
                health: starting,
            }
        }
    })
}

/// Undeploys an instance; `false` when there was none. Unless `now` (or
/// `drain_ms` is 0), it drains first: no new flows on any node, then
/// `drain_ms` for the established ones, then it is removed and what is left
/// of its flows ended. Deploys and undeploys of other instances go on
/// meanwhile.
pub async fn undeploy(agent: &Agent, service: &str, instance: u32, now: bool) -> Result<bool> {
    let drain = std::time::Duration::from_millis(agent.cfg.drain_ms);
    if !now && !drain.is_zero() {
        if !super::health::start_drain(agent, service, instance).await? {
            return Ok(false);
        }
        tokio::time::sleep(drain).await;
    }
    remove(agent, service, instance).await
}

/// Removes an instance at once: every node ends its flows.
async fn remove(agent: &Agent, service: &str, instance: u32) -> Result<bool> {
    let _linking = agent.linking.lock().await;
    let removed = {
        let mut st = agent.state();
        let inst = st
            .instances
            .remove(&(service.to_ascii_lowercase(), instance));
        if let Some(inst) = &inst {
            st.endpoints.remove(&inst.nsip);
            st.freed.retain(|_, t| t.elapsed() < QUARANTINE);
            st.freed.insert(inst.nsip, std::time::Instant::now());
        }
        inst
    };
    let Some(inst) = removed else {
        return Ok(false);
    };
    if let Some(link) = &agent.store {
        // Queued by the registration if the store is unreachable right now.
        if let Err(e) = link
            .registration
            .unpublish_instance(service, instance)
            .await
        {
            tracing::warn!("unpublishing {service} instance {instance}: {e}");
        }
    }
    agent.reconcile()?;
    agent.maps().dp.detach_instance(&inst.host_if)?;
    if let Some(names) = &agent.names {
        names.remove(&inst.host_if, &inst.netns);
    }
    netns::remove(&inst.host_if).await?;
    save(agent)?;
    Ok(true)
}

/// How long a removed instance's NamespaceIP stays out of circulation:
/// every node ends its flows when it sees the instance go (well within a
/// second), and packets already on their way arrive meanwhile.
const QUARANTINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The lowest free host address of the node subnet (.0, .1 and the last are
/// kept), other than the ones freed within [`QUARANTINE`]: a new instance
/// must not receive an old flow that still seems to come from a ServIP.
fn free_nsip(st: &State, subnet: crate::model::Subnet) -> Result<Ipv4Addr> {
    let now = std::time::Instant::now();
    let resting = |ip: &Ipv4Addr| {
        st.freed
            .get(ip)
            .is_some_and(|t| now.duration_since(*t) < QUARANTINE)
    };
    (2..subnet.size().saturating_sub(1))
        .map(|n| subnet.host(n))
        .find(|ip| st.instances.values().all(|i| i.nsip != *ip) && !resting(ip))
        .ok_or(AgentError::SubnetFull(subnet))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::path::Path;

    use super::*;

    fn config(state_dir: &Path) -> AgentConfig {
        let text = format!(
            "node_id = \"n1\"\nuplink = \"eth0\"\nstate_file = \"/nonexistent.json\"\nsubnet = \"10.30.1.0/24\"\nstate_dir = \"{}\"\nbpf_pin_dir = \"/nonexistent\"\napi_socket = \"/nonexistent.sock\"\n",
            state_dir.display()
        );
        AgentConfig::parse(&text, Path::new("agent.toml")).unwrap()
    }

    #[test]
    fn bad_records_name_their_file_and_keep_the_cause() {
        let dir = std::env::temp_dir().join(format!("ovt-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = config(&dir);
        assert_eq!(load(&cfg).unwrap(), Vec::new(), "no file: no instances");

        std::fs::write(dir.join(FILE), b"[{").unwrap();
        let err = load(&cfg).unwrap_err();
        assert!(matches!(err, AgentError::StateFormat { .. }), "{err:?}");
        assert!(err.to_string().contains(FILE), "{err}");
        let cause = err.source().expect("the JSON error is kept");
        assert!(cause.downcast_ref::<serde_json::Error>().is_some());

        std::fs::remove_file(dir.join(FILE)).unwrap();
        std::fs::create_dir(dir.join(FILE)).unwrap();
        let err = load(&cfg).unwrap_err();
        let AgentError::StateFile { path, source } = &err else {
            panic!("a directory in place of the file: {err:?}");
        };
        assert_eq!(path, &dir.join(FILE));
        assert_eq!(source.raw_os_error(), Some(libc::EISDIR));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A NamespaceIP freed a moment ago is not handed out again; later it is.
    #[test]
    fn a_freed_namespace_ip_rests_before_reuse() {
        let subnet: crate::model::Subnet = "10.30.1.0/24".parse().unwrap();
        let mut st = State::default();
        let first = subnet.host(2);
        assert_eq!(free_nsip(&st, subnet).unwrap(), first);
        st.freed.insert(first, std::time::Instant::now());
        assert_eq!(free_nsip(&st, subnet).unwrap(), subnet.host(3));
        let long_ago = std::time::Instant::now() - QUARANTINE - std::time::Duration::from_secs(1);
        st.freed.insert(first, long_ago);
        assert_eq!(free_nsip(&st, subnet).unwrap(), first);
    }
}
