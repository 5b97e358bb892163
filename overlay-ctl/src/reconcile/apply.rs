//! Moving the maps from what they hold to what they should hold, table by
//! table, in one ordered list ([`ORDER`]): additions front to back, then
//! removals back to front, so no packet ever meets a ServIP whose slots,
//! backends, ports or node are not there yet (after Cilium).
//!
//! An entry that fails is skipped alone, with everything that depends on it:
//! a ServIP whose backend could not be written keeps its old table, and the
//! old table's backends are then not removed. Every failure is reported with
//! its table and key; the rest of the difference is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::Ipv4Addr;

use overlay_common::maps::Endpoint;
use overlay_common::registry::{MapDef, def};

use super::MapSet;
use crate::dataplane::{Result, Tables};

/// What an entry is to the entries that need it in place first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dep {
    Node(u32),
    Backend(u32),
    /// A service's ports.
    Ports(u32),
    ServIp(Ipv4Addr),
    /// A service's allowances (`needs`).
    Needs(u32),
}

/// An entry that could not be written or removed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Failure {
    pub table: &'static str,
    pub key: String,
    pub error: String,
}

/// What one [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub written: usize,
    pub removed: usize,
    /// Conntrack entries of removed backends, ended.
    pub flows_ended: usize,
    /// Entries left as they were, each with why.
    pub failed: Vec<Failure>,
}

/// A keyed collection of a [`MapSet`]: a map, or a set (unit values).
trait Entries {
    type K: Ord + Clone + Debug;
    type V: PartialEq + Clone;
    fn value(&self, k: &Self::K) -> Option<&Self::V>;
    fn pairs(&self) -> Vec<(&Self::K, &Self::V)>;
    fn set(&mut self, k: Self::K, v: Self::V);
    fn unset(&mut self, k: &Self::K);
}

impl<K: Ord + Clone + Debug, V: PartialEq + Clone> Entries for BTreeMap<K, V> {
    type K = K;
    type V = V;
    fn value(&self, k: &K) -> Option<&V> {
        self.get(k)
    }
    fn pairs(&self) -> Vec<(&K, &V)> {
        self.iter().collect()
    }
    fn set(&mut self, k: K, v: V) {
        self.insert(k, v);
    }
    fn unset(&mut self, k: &K) {
        self.remove(k);
    }
}

impl<K: Ord + Clone + Debug> Entries for BTreeSet<K> {
    type K = K;
    type V = ();
    fn value(&self, k: &K) -> Option<&()> {
        self.contains(k).then_some(&())
    }
    fn pairs(&self) -> Vec<(&K, &())> {
        self.iter().map(|k| (k, &())).collect()
    }
    fn set(&mut self, k: K, _: ()) {
        self.insert(k);
    }
    fn unset(&mut self, k: &K) {
        self.remove(k);
    }
}

impl<V: PartialEq + Clone> Entries for Option<V> {
    type K = ();
    type V = V;
    fn value(&self, _: &()) -> Option<&V> {
        self.as_ref()
    }
    fn pairs(&self) -> Vec<(&(), &V)> {
        self.iter().map(|v| (&(), v)).collect()
    }
    fn set(&mut self, _: (), v: V) {
        *self = Some(v);
    }
    fn unset(&mut self, _: &()) {
        *self = None;
    }
}

/// One table of the list: where its entries are in a [`MapSet`], how to
/// write and remove one, and how its entries depend on others.
struct Table<C: Entries> {
    name: &'static str,
    /// The registry's maps this table writes (checked against the registry
    /// by a test; nothing else needs it).
    #[cfg_attr(not(test), allow(dead_code))]
    maps: &'static [MapDef],
    of: fn(&MapSet) -> &C,
    of_mut: fn(&mut MapSet) -> &mut C,
    put: fn(&mut Tables, &C::K, &C::V) -> Result<()>,
    del: fn(&mut Tables, &C::K) -> Result<()>,
    /// What this entry is to others.
    is: fn(&C::K, &C::V) -> Option<Dep>,
    /// What must be in place before this entry.
    needs: fn(&C::K, &C::V) -> Vec<Dep>,
}

/// The progress of one pass.
struct Pass<'a> {
    have: &'a MapSet,
    want: &'a MapSet,
    /// What the maps hold now: `have`, with every success applied.
    now: MapSet,
    changes: Changes,
    /// Entries that are not (or no longer) what `want` says.
    broken: BTreeSet<Dep>,
    /// Entries that something still in the maps needs: not to be removed.
    kept: BTreeSet<Dep>,
}

/// The two phases of a table, with its types erased for the list.
trait Step: Sync {
    #[cfg_attr(not(test), allow(dead_code))]
    fn maps(&self) -> &'static [MapDef];
    fn add(&self, t: &mut Tables, p: &mut Pass);
    fn remove(&self, t: &mut Tables, p: &mut Pass);
}

impl<C: Entries> Step for Table<C> {
    fn maps(&self) -> &'static [MapDef] {
        self.maps
    }

    fn add(&self, t: &mut Tables, p: &mut Pass) {
        let (have, want) = ((self.of)(p.have), (self.of)(p.want));
        for (k, v) in want.pairs() {
            let old = have.value(k);
            if old == Some(v) {
                continue;
            }
            let blocked = (self.needs)(k, v)
                .into_iter()
                .find(|d| p.broken.contains(d));
            let result = match blocked {
                Some(dep) => Err(format!("waits for {dep:?}, which failed")),
                None => (self.put)(t, k, v).map_err(|e| error_chain(&e)),
            };
            match result {
                Ok(()) => {
                    (self.of_mut)(&mut p.now).set(k.clone(), v.clone());
                    p.changes.written += 1;
                }
                Err(error) => {
                    p.broken.extend((self.is)(k, v));
                    // The old entry stays, and with it what it needs.
                    if let Some(old) = old {
                        p.kept.extend((self.needs)(k, old));
                    }
                    p.fail(self.name, k, error);
                }
            }
        }
    }

    fn remove(&self, t: &mut Tables, p: &mut Pass) {
        let (have, want) = ((self.of)(p.have), (self.of)(p.want));
        for (k, v) in have.pairs() {
            if want.value(k).is_some() {
                continue;
            }
            let still_needed = (self.is)(k, v).filter(|d| p.kept.contains(d));
            let result = match still_needed {
                Some(dep) => Err(format!("kept: {dep:?} is still in use")),
                None => (self.del)(t, k).map_err(|e| error_chain(&e)),
            };
            match result {
                Ok(()) => {
                    (self.of_mut)(&mut p.now).unset(k);
                    p.changes.removed += 1;
                }
                Err(error) => {
                    p.kept.extend((self.needs)(k, v));
                    p.fail(self.name, k, error);
                }
            }
        }
    }
}

impl Pass<'_> {
    fn fail(&mut self, table: &'static str, key: &dyn Debug, error: String) {
        self.changes.failed.push(Failure {
            table,
            key: format!("{key:?}"),
            error,
        });
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

fn none<K, V>(_: &K, _: &V) -> Vec<Dep> {
    Vec::new()
}

fn nothing<K, V>(_: &K, _: &V) -> Option<Dep> {
    None
}

type Slots = (u32, overlay_common::policy::Policy, Vec<u32>);

/// Every table, in the order additions are made (removals go backwards):
/// what a packet reaches through an entry is written before the entry.
static ORDER: [&dyn Step; 14] = [
    &Table::<Option<overlay_common::maps::Config>> {
        name: "config",
        maps: &[def::CONFIG],
        of: |m| &m.config,
        of_mut: |m| &mut m.config,
        put: |t, _, c| t.set_config(c),
        // The node's settings stay until the next ones replace them.
        del: |_, _| Ok(()),
        is: nothing,
        needs: none,
    },
    &Table::<BTreeMap<u32, (Ipv4Addr, u16, u16)>> {
        name: "nodes",
        maps: &[def::NODES, def::PEERS],
        of: |m| &m.nodes,
        of_mut: |m| &mut m.nodes,
        put: |t, id, (addr, ewp, mtu)| t.put_node(*id, *addr, *ewp, *mtu),
        del: |t, id| t.remove_node(*id),
        is: |id, _| Some(Dep::Node(*id)),
        needs: none,
    },
    &Table::<BTreeMap<(Ipv4Addr, u32), u32>> {
        name: "routes",
        maps: &[def::ROUTES],
        of: |m| &m.routes,
        of_mut: |m| &mut m.routes,
        put: |t, (net, prefix), node| t.put_route(*net, *prefix, *node),
        del: |t, (net, prefix)| t.remove_route(*net, *prefix),
        is: nothing,
        needs: |_, node| vec![Dep::Node(*node)],
    },
    &Table::<BTreeMap<u32, (Ipv4Addr, u32)>> {
        name: "backends",
        maps: &[def::BACKENDS],
        of: |m| &m.backends,
        of_mut: |m| &mut m.backends,
        put: |t, id, (nsip, node)| t.put_backend(*id, *nsip, *node),
        del: |t, id| t.remove_backend(*id),
        is: |id, _| Some(Dep::Backend(*id)),
        needs: |_, (_, node)| vec![Dep::Node(*node)],
    },
    &Table::<BTreeSet<(u32, u16, u8)>> {
        name: "ports",
        maps: &[def::SVC_PORTS],
        of: |m| &m.ports,
        of_mut: |m| &mut m.ports,
        put: |t, (svc, port, proto), _| t.put_port(*svc, *port, *proto),
        del: |t, (svc, port, proto)| t.remove_port(*svc, *port, *proto),
        is: |(svc, _, _), _| Some(Dep::Ports(*svc)),
        needs: none,
    },
    &Table::<BTreeMap<Ipv4Addr, Endpoint>> {
        name: "endpoints",
        maps: &[def::ENDPOINTS],
        of: |m| &m.endpoints,
        of_mut: |m| &mut m.endpoints,
        put: |t, nsip, ep| t.put_endpoint(*nsip, ep),
        del: |t, nsip| t.remove_endpoint(*nsip),
        is: nothing,
        needs: none,
    },
    &Table::<BTreeMap<Ipv4Addr, Slots>> {
        name: "servips",
        maps: &[def::SERVIPS, def::SLOTS, def::TURNS],
        of: |m| &m.servips,
        of_mut: |m| &mut m.servips,
        put: |t, vip, (svc, pol, slots)| t.put_servip(*vip, *svc, *pol, slots),
        del: |t, vip| t.remove_servip(*vip),
        is: |vip, _| Some(Dep::ServIp(*vip)),
        needs: |_, (svc, _, slots)| {
            let backends: BTreeSet<u32> = slots.iter().copied().collect();
            let mut deps = vec![Dep::Ports(*svc)];
            deps.extend(backends.into_iter().map(Dep::Backend));
            deps
        },
    },
    // Allowances before the restriction that needs them.
    &Table::<BTreeSet<(u32, u32)>> {
        name: "needs",
        maps: &[def::NEEDS],
        of: |m| &m.needs,
        of_mut: |m| &mut m.needs,
        put: |t, (src, dst), _| t.put_need(*src, *dst),
        del: |t, (src, dst)| t.remove_need(*src, *dst),
        is: |(src, _), _| Some(Dep::Needs(*src)),
        needs: none,
    },
    &Table::<BTreeSet<u32>> {
        name: "restricted",
        maps: &[def::RESTRICTED],
        of: |m| &m.restricted,
        of_mut: |m| &mut m.restricted,
        put: |t, svc, _| t.put_restricted(*svc),
        del: |t, svc| t.remove_restricted(*svc),
        is: nothing,
        needs: |svc, _| vec![Dep::Needs(*svc)],
    },
    &Table::<BTreeMap<(u16, u8), (Ipv4Addr, Ipv4Addr)>> {
        name: "exposed",
        maps: &[def::EXPOSED],
        of: |m| &m.exposed,
        of_mut: |m| &mut m.exposed,
        put: |t, (port, proto), (vip, snat)| t.put_exposed(*port, *proto, *vip, *snat),
        del: |t, (port, proto)| t.remove_exposed(*port, *proto),
        is: nothing,
        needs: |_, (vip, _)| vec![Dep::ServIp(*vip)],
    },
    &Table::<BTreeMap<Ipv4Addr, u16>> {
        name: "gateways",
        maps: &[def::GATEWAYS],
        of: |m| &m.gateways,
        of_mut: |m| &mut m.gateways,
        put: |t, addr, port| t.put_gateway(*addr, *port),
        del: |t, addr| t.remove_gateway(*addr),
        is: nothing,
        needs: none,
    },
    &Table::<BTreeMap<Ipv4Addr, u32>> {
        name: "nsip_services",
        maps: &[def::NSIP_SERVICES],
        of: |m| &m.nsip_services,
        of_mut: |m| &mut m.nsip_services,
        put: |t, nsip, svc| t.put_nsip_service(*nsip, *svc),
        del: |t, nsip| t.remove_nsip_service(*nsip),
        is: nothing,
        needs: none,
    },
    &Table::<BTreeMap<(Ipv4Addr, u16, u8), u32>> {
        name: "infra",
        maps: &[def::INFRA],
        of: |m| &m.infra,
        of_mut: |m| &mut m.infra,
        put: |t, (addr, port, proto), allow| t.put_infra(*addr, *port, *proto, *allow),
        del: |t, (addr, port, proto)| t.remove_infra(*addr, *port, *proto),
        is: nothing,
        needs: none,
    },
    &Table::<BTreeSet<(Ipv4Addr, u32)>> {
        name: "overlay_nets",
        maps: &[def::OVERLAY_NETS],
        of: |m| &m.overlay_nets,
        of_mut: |m| &mut m.overlay_nets,
        put: |t, (net, prefix), _| t.put_overlay_net(*net, *prefix),
        del: |t, (net, prefix)| t.remove_overlay_net(*net, *prefix),
        is: nothing,
        needs: none,
    },
];

/// Moves the maps from `have` to `want`, touching only what differs; gives
/// what it did and the contents the maps now hold (`want`, except where an
/// entry failed).
pub fn apply(t: &mut Tables, have: &MapSet, want: &MapSet) -> (Changes, MapSet) {
    let mut p = Pass {
        have,
        want,
        now: have.clone(),
        changes: Changes {
            failed: want.refused.clone(),
            ..Default::default()
        },
        broken: BTreeSet::new(),
        kept: BTreeSet::new(),
    };
    for step in ORDER.iter() {
        step.add(t, &mut p);
    }
    for step in ORDER.iter().rev() {
        step.remove(t, &mut p);
    }
    end_flows(t, &mut p);
    p.now.refused = want.refused.clone();
    (p.changes, p.now)
}

#[cfg(test)]
mod tests {
    use overlay_common::registry::{self, def};

    /// Every map of the registry that the agent fills is written by exactly
    /// one table of the list: a map added to the registry without its place
    /// in the reconcile order fails here.
    #[test]
    fn every_agent_map_has_its_place_in_the_order() {
        // Written by the programs, at load, or by `overlay-ctl monitor`.
        let elsewhere = [
            def::STATS,
            def::CONNTRACK,
            def::CT_NEW,
            def::UDP_PEERS,
            def::PATH_MTU,
            def::DENIED,
            def::FLOWS_NEW,
            def::LAYOUT,
            def::EPOCH,
            def::MONITOR,
            def::LIMITER,
            def::EVENTS_0,
            def::EVENTS_1,
            def::EVENTS_2,
            def::EVENTS_3,
        ];
        for d in registry::PINNED.iter().filter(|d| !elsewhere.contains(d)) {
            let n = super::ORDER.iter().filter(|t| t.maps().contains(d)).count();
            assert_eq!(n, 1, "{} is written by {n} tables of the order", d.name);
        }
    }
}

/// Ends the flows of the backends this pass removed (their instance left).
fn end_flows(t: &mut Tables, p: &mut Pass) {
    let gone: BTreeSet<Ipv4Addr> = p
        .have
        .backends
        .iter()
        .filter(|(id, _)| !p.now.backends.contains_key(id))
        .map(|(_, (nsip, _))| *nsip)
        .collect();
    match t.end_flows_of(&gone) {
        Ok(n) => p.changes.flows_ended += n,
        Err(e) => {
            let key = format!("{gone:?}");
            p.fail("conntrack", &key, error_chain(&e));
        }
    }
}

/// How many reconcile passes ran, and how long they took (`/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Passes {
    pub count: u64,
    /// Time spent in them, summed.
    pub seconds: f64,
}

/// The entries failing over successive passes: each failure is logged when
/// it starts and when it clears, not with every pass, and counted.
#[derive(Debug, Default)]
pub struct Failures {
    /// (table, key) → the error of the last pass.
    outstanding: BTreeMap<(&'static str, String), String>,
    /// Failures started since the agent started.
    pub total: u64,
}

impl Failures {
    /// Takes the failures of the latest pass.
    pub fn update(&mut self, failed: &[Failure]) {
        let now: BTreeMap<(&'static str, String), String> = failed
            .iter()
            .map(|f| ((f.table, f.key.clone()), f.error.clone()))
            .collect();
        for ((table, key), error) in &now {
            if self.outstanding.get(&(*table, key.clone())) != Some(error) {
                self.total += 1;
                tracing::warn!(table, key, error, "map entry not applied");
            }
        }
        for (table, key) in self.outstanding.keys() {
            if !now.contains_key(&(*table, key.clone())) {
                tracing::info!(table, key, "map entry applied after earlier failures");
            }
        }
        self.outstanding = now;
    }

    /// The entries failing now.
    pub fn outstanding(&self) -> Vec<Failure> {
        self.outstanding
            .iter()
            .map(|((table, key), error)| Failure {
                table,
                key: key.clone(),
                error: error.clone(),
            })
            .collect()
    }
}
