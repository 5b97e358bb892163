//! The control plane: how long the reconciler takes to write a cluster's
//! services into the maps, a full resync, and the maps' memory.
//!
//! The dataplanes here are loaded but attached to nothing: only their maps
//! are written.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Context;
use aya::maps::MapInfo;
use overlay_common::DEFAULT_EWP;
use overlay_common::maps::{Config, Endpoint, ip};
use overlay_ctl::dataplane::{Dataplane, programs};
use overlay_ctl::model::{ClusterState, InstanceSpec, NodeSpec, Policy, ServiceSpec, Subnet};
use overlay_ctl::reconcile::{self, LocalNode, MapSet};

use crate::report::{Converge, MapMem, Resync};

/// Instances per service.
pub const INSTANCES: usize = 3;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Node `i` (0-based): n<i+1> at 192.0.2.(11+i), subnet 10.30.(16·i).0/20
/// (room for 4,094 instances).
fn node(i: usize) -> NodeSpec {
    NodeSpec {
        name: format!("n{}", i + 1),
        ip: Ipv4Addr::new(192, 0, 2, 11 + i as u8),
        ewp: DEFAULT_EWP,
        subnet: Subnet {
            addr: Ipv4Addr::new(10, 30, (16 * i) as u8, 0),
            prefix: 20,
        },
        location: None,
        own: None,
        mtu: 0,
    }
}

/// `services` services with one ServIP per policy and [`INSTANCES`]
/// instances each on distinct nodes, round-robin over `nodes` nodes.
pub fn cluster(services: usize, nodes: usize) -> ClusterState {
    assert!((INSTANCES..=15).contains(&nodes), "3..=15 nodes of /20");
    let node_specs: Vec<NodeSpec> = (0..nodes).map(node).collect();
    let mut next_host = vec![2u32; nodes];
    let mut svcs = Vec::with_capacity(services);
    let mut insts = Vec::with_capacity(services * INSTANCES);
    for s in 0..services {
        let name = format!("app{s}.bench.svc{s}.bench");
        let servips = Policy::SERVIPS
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let n = (s * Policy::SERVIPS.len() + k + 1) as u32;
                (
                    p,
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + n),
                )
            })
            .collect();
        svcs.push(ServiceSpec {
            name: name.clone(),
            id: s as u32 + 1,
            ports: vec![80],
            stateful: false,
            servips,
            exposed: false,
            needs: Vec::new(),
            readiness: None,
        });
        for j in 0..INSTANCES {
            let n = (s + j) % nodes;
            let nsip = node_specs[n].subnet.host(next_host[n]);
            next_host[n] += 1;
            insts.push(InstanceSpec {
                service: name.clone(),
                instance: j as u32 + 1,
                node: node_specs[n].name.clone(),
                nsip,
                fixed_ip: None,
                health: Default::default(),
            });
        }
    }
    ClusterState {
        nodes: node_specs,
        services: svcs,
        instances: insts,
        ..Default::default()
    }
}

/// What node `name` adds to the cluster state: its config and an endpoint
/// per local instance (fake interface indexes: nothing is attached).
fn local_endpoints(
    state: &ClusterState,
    name: &str,
) -> (Config, Ipv4Addr, BTreeMap<Ipv4Addr, Endpoint>) {
    let spec = state.node(name).expect("node in the state");
    let config = Config {
        node_id: spec.subnet.node_id(),
        node_ip: ip::to_wire(spec.ip),
        uplink_ifindex: 2,
        ewp: ip::port_to_wire(spec.ewp),
        mtu: 1472,
        nsp: ip::port_to_wire(overlay_common::DEFAULT_NSP),
        _pad: 0,
    };
    let svc_ids: BTreeMap<&str, u32> = state
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.id))
        .collect();
    let eps = state
        .instances
        .iter()
        .filter(|i| i.node == name)
        .enumerate()
        .map(|(k, i)| {
            let o = i.nsip.octets();
            let ep = Endpoint {
                ifindex: 100 + k as u32,
                service: svc_ids.get(i.service.as_str()).copied().unwrap_or(0),
                instance: i.instance,
                mac: [0x02, 0xaa, o[0], o[1], o[2], o[3]],
                host_mac: [0x02, 0xbb, o[0], o[1], o[2], o[3]],
            };
            (i.nsip, ep)
        })
        .collect();
    (config, spec.subnet.host(1), eps)
}

/// `services` services × 3 instances over 3 nodes: every node computes its
/// desired maps and applies them to fresh maps, all nodes at once.
pub fn converge(services: usize) -> anyhow::Result<Converge> {
    let nodes = 3;
    let state = cluster(services, nodes);
    let mut dps = (0..nodes)
        .map(|_| Dataplane::load(None).context("loading a dataplane"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let locals: Vec<_> = state
        .nodes
        .iter()
        .map(|n| local_endpoints(&state, &n.name))
        .collect();
    let start = Instant::now();
    let results: Vec<anyhow::Result<(f64, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = dps
            .iter_mut()
            .zip(&state.nodes)
            .zip(&locals)
            .map(|((dp, n), (config, snat, eps))| {
                let state = &state;
                s.spawn(move || {
                    let t = Instant::now();
                    let local = LocalNode {
                        name: &n.name,
                        config: *config,
                        endpoints: eps,
                        snat: *snat,
                        default_deny: false,
                        expose_where_running: false,
                        balance: Default::default(),
                    };
                    let want = reconcile::desired(state, &local);
                    let have = reconcile::read(&dp.tables);
                    let c = apply(&mut dp.tables, &have, &want)?;
                    Ok((ms(t), c.written))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a node's thread panicked")))
            })
            .collect()
    });
    let wall_ms = ms(start);
    let mut per_node_ms = Vec::new();
    let mut written = Vec::new();
    for r in results {
        let (t, n) = r?;
        per_node_ms.push(t);
        written.push(n);
    }
    Ok(Converge {
        services,
        instances: state.instances.len(),
        nodes,
        per_node_ms,
        written,
        wall_ms,
    })
}

/// A full resync of one node of a `services`-service cluster against empty
/// maps, then once more with nothing to change. Returns the dataplane too,
/// full, for [`map_memory`].
pub fn resync(services: usize, nodes: usize) -> anyhow::Result<(Resync, Dataplane)> {
    let state = cluster(services, nodes);
    let mut dp = Dataplane::load(None).context("loading a dataplane")?;
    let (config, snat, eps) = local_endpoints(&state, "n1");
    let local = LocalNode {
        name: "n1",
        config,
        endpoints: &eps,
        snat,
        default_deny: false,
        expose_where_running: false,
        balance: Default::default(),
    };
    let start = Instant::now();
    let have = reconcile::read(&dp.tables);
    let read_ms = ms(start);
    let t = Instant::now();
    let want = reconcile::desired(&state, &local);
    let desired_ms = ms(t);
    let t = Instant::now();
    let c = apply(&mut dp.tables, &have, &want)?;
    let apply_ms = ms(t);
    let total_ms = ms(start);

    let t = Instant::now();
    let have: MapSet = reconcile::read(&dp.tables);
    let want = reconcile::desired(&state, &local);
    let again = apply(&mut dp.tables, &have, &want)?;
    let noop_ms = ms(t);
    Ok((
        Resync {
            services,
            instances: state.instances.len(),
            nodes,
            local_instances: eps.len(),
            read_ms,
            desired_ms,
            apply_ms,
            total_ms,
            written: c.written,
            noop_ms,
            noop_written: again.written + again.removed,
        },
        dp,
    ))
}

/// Every map the dataplane's programs use, with the kernel's `memlock`
/// figure from `/proc/self/fdinfo`.
pub fn map_memory(dp: &mut Dataplane) -> anyhow::Result<Vec<MapMem>> {
    let mut ids = Vec::new();
    for name in [programs::FROM_INSTANCE, programs::UPLINK] {
        ids.extend(dp.classifier(name)?.info()?.map_ids()?.unwrap_or_default());
    }
    ids.extend(
        dp.xdp(programs::UPLINK_XDP)?
            .info()?
            .map_ids()?
            .unwrap_or_default(),
    );
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let info = MapInfo::from_id(id)?;
        let fd = info.fd()?;
        use std::os::fd::{AsFd, AsRawFd};
        let raw = fd.as_fd().as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
            .with_context(|| format!("reading fdinfo of map {id}"))?;
        out.push(MapMem {
            name: info.name_as_str().unwrap_or("?").to_owned(),
            map_type: info
                .map_type()
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|_| "?".into()),
            max_entries: info.max_entries(),
            bytes: memlock(&fdinfo).unwrap_or(0),
        });
    }
    Ok(out)
}

/// The `memlock:` value of an fdinfo file.
pub fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// [`reconcile::apply`], where a single entry that fails spoils the measurement.
fn apply(
    t: &mut overlay_ctl::dataplane::Tables,
    have: &MapSet,
    want: &MapSet,
) -> anyhow::Result<reconcile::Changes> {
    let (c, _) = reconcile::apply(t, have, want);
    anyhow::ensure!(c.failed.is_empty(), "entries not applied: {:?}", c.failed);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_spreads_instances_over_distinct_nodes() {
        let s = cluster(10, 3);
        assert_eq!(s.services.len(), 10);
        assert_eq!(s.instances.len(), 30);
        for svc in &s.services {
            let mut nodes: Vec<&str> = s
                .instances
                .iter()
                .filter(|i| i.service == svc.name)
                .map(|i| i.node.as_str())
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            assert_eq!(nodes.len(), 3);
            assert_eq!(svc.servips.len(), 3);
        }
        let mut ips: Vec<Ipv4Addr> = s.instances.iter().map(|i| i.nsip).collect();
        ips.sort_unstable();
        ips.dedup();
        assert_eq!(ips.len(), 30, "NamespaceIPs are unique");
        let (_, snat, eps) = local_endpoints(&s, "n1");
        assert_eq!(snat, Ipv4Addr::new(10, 30, 0, 1));
        assert_eq!(eps.len(), 10);
        assert_eq!(memlock("pos:\t0\nmemlock:\t4096\nmap_id:\t7\n"), Some(4096));
    }
}
