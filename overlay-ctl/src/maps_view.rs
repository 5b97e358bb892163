//! `overlay-ctl maps ...`: human tables and stable JSON of the pinned maps.

use std::fmt::Write;

use clap::ValueEnum;
use std::collections::BTreeMap;

use overlay_common::maps::{Backend, ct, ip};
use serde_json::{Value, json};

use crate::dataplane::{Lifetimes, Result, Tables, Tracked};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Table {
    Services,
    Backends,
    Endpoints,
    Nodes,
    /// The accepted tunnel sources: each registered node address, with its
    /// node, or `shared` for an address several nodes share (NAT).
    Peers,
    /// What underlay routers reported about the paths to node addresses.
    PathMtu,
    Gateways,
    /// What instances may not reach: nodes' tunnel ports, the store, the
    /// node's own addresses (with what stays allowed there).
    Infra,
    /// The overlay's address space: the pools and the node subnets.
    OverlayNets,
    Conntrack,
    Stats,
    /// Every pinned map of the registry: kind, sizes, capacity, and the
    /// layout version recorded in the pins beside this build's.
    Layout,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn policy(code: u8) -> &'static str {
    overlay_common::policy::Policy::from_code(code).map_or("?", |p| p.as_str())
}

fn direction(d: u8) -> &'static str {
    match d {
        ct::FORWARD => "forward",
        ct::REVERSE => "reverse",
        ct::NS_FORWARD => "ns-forward",
        ct::NS_REVERSE => "ns-reverse",
        _ => "?",
    }
}

fn proto(p: u8) -> &'static str {
    match p {
        overlay_common::IPPROTO_TCP => "tcp",
        overlay_common::IPPROTO_UDP => "udp",
        overlay_common::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Rows of one table as JSON objects (the `--json` output, stable for scripts).
pub fn rows(t: &Tables, table: Table) -> Result<Vec<Value>> {
    rows_with(t, table, &Lifetimes::default())
}

/// [`rows`], with the conntrack lifetimes the node's agent uses.
pub fn rows_with(t: &Tables, table: Table, lifetimes: &Lifetimes) -> Result<Vec<Value>> {
    Ok(match table {
        Table::Services => {
            let backends: BTreeMap<u32, _> = t.backends().into_iter().collect();
            t.servips()
                .into_iter()
                .map(|(vip, sv)| {
                    let ports: Vec<String> = t
                        .ports()
                        .into_iter()
                        .filter(|k| k.service == sv.service)
                        .map(|k| format!("{}/{}", ip::port_from_wire(k.port), proto(k.proto)))
                        .collect();
                    // Its backends as NamespaceIPs (the id when unknown); their
                    // weights are in `maps backends`.
                    let slots = t.slots(vip);
                    let mut ids = slots.clone();
                    ids.sort_unstable();
                    ids.dedup();
                    let names: Vec<String> = ids
                        .iter()
                        .map(|id| backends.get(id).map_or(format!("#{id}"), |b| ip::from_wire(b.nsip).to_string()))
                        .collect();
                    json!({"servip": vip, "service": sv.service, "policy": policy(sv.policy), "slots": slots.len(), "backends": names, "ports": ports})
                })
                .collect()
        }
        Table::Backends => weights(t),
        Table::Endpoints => t
            .endpoints()
            .into_iter()
            .map(|(nsip, e)| json!({"nsip": nsip, "ifindex": e.ifindex, "service": e.service, "instance": e.instance, "mac": mac(&e.mac), "host_mac": mac(&e.host_mac)}))
            .collect(),
        Table::Nodes => t.nodes().into_iter().map(|(id, n)| json!({"node": id, "ip": ip::from_wire(n.ip), "ewp": ip::port_from_wire(n.port), "mtu": n.mtu})).collect(),
        Table::PathMtu => {
            let now = crate::dataplane::tick_now();
            t.path_mtu().into_iter().map(|(addr, r)| {
                let age = now.wrapping_sub(r.tick) as u64 * overlay_common::maps::ct::TICK_NS / 1_000_000_000;
                json!({"addr": addr, "mtu": r.mtu, "age_s": age, "in_force": overlay_common::pmtu::in_force(&r, now)})
            }).collect()
        }
        Table::Peers => t.peers().into_iter().map(|(addr, node)| {
            let node = if node == overlay_common::maps::SHARED_PEER { json!("shared") } else { json!(node) };
            json!({"addr": addr, "node": node})
        }).collect(),
        Table::Gateways => t.gateways().into_iter().map(|(addr, port)| json!({"gateway": addr, "port": port})).collect(),
        Table::Infra => infra(t),
        Table::OverlayNets => t.overlay_nets().into_iter().map(|(net, len)| json!({"prefix": format!("{net}/{len}")})).collect(),
        Table::Conntrack => conntrack(t, lifetimes),
        Table::Layout => {
            let recorded = t.layout();
            overlay_common::registry::PINNED
                .iter()
                .map(|d| {
                    json!({"map": d.name, "kind": format!("{:?}", d.kind), "key": d.key_size,
                           "value": d.value_size, "capacity": d.max_entries,
                           "version": d.version, "pinned_version": recorded.get(d.name)})
                })
                .collect()
        }
        Table::Stats => {
            let mut rows: Vec<Value> = t
                .stats()?
                .into_iter()
                .map(|(r, c)| json!({"reason": r.label(), "packets": c.packets, "bytes": c.bytes}))
                .collect();
            // Denied new flows per sending service (`needs`).
            rows.extend(t.denied().into_iter().map(|(svc, n)| {
                json!({"reason": format!("drop_denied:service-{svc}"), "packets": n, "bytes": 0})
            }));
            rows
        }
    })
}

/// One row per refused address (or address and port): a whole address
/// shows what instances may still send there.
fn infra(t: &Tables) -> Vec<Value> {
    use overlay_common::maps::infra::{ALLOW_DNS, ALLOW_ECHO, INSTANCES_ONLY};
    let mut entries = t.infra();
    entries.sort();
    entries
        .into_iter()
        .map(|((addr, port, p), allow)| {
            let flags = [
                (ALLOW_DNS, "dns"),
                (ALLOW_ECHO, "ping"),
                (INSTANCES_ONLY, "instances-only"),
            ];
            let allowed: Vec<&str> = flags
                .into_iter()
                .filter(|(flag, _)| allow & flag != 0)
                .map(|(_, name)| name)
                .collect();
            let what = if p == 0 {
                "any".to_string()
            } else {
                format!("{port}/{}", proto(p))
            };
            json!({"address": addr, "refused": what, "allowed": allowed.join(",")})
        })
        .collect()
}

/// One row per conntrack entry: its flow's state (`new` until a reply
/// confirmed it), seconds since its last packet and until its lifetime
/// runs out (the GC judges a flow by its more recent direction).
fn conntrack(t: &Tables, lifetimes: &Lifetimes) -> Vec<Value> {
    let now = crate::dataplane::tick_now();
    let secs = |ticks: u32| ticks as u64 * ct::TICK_NS / 1_000_000_000;
    t.tracked()
        .into_iter()
        .map(
            |Tracked {
                 key: k,
                 entry: e,
                 confirmed,
             }| {
                // North-south replies: the gateway the client came through.
                let via = e.dir == ct::NS_REVERSE;
                let closing = e.state & ct::CLOSING != 0;
                let state = match (confirmed, closing) {
                    (_, true) => "closing",
                    (true, false) => "established",
                    (false, false) => "new",
                };
                let idle = now.wrapping_sub(e.seen);
                let life =
                    crate::dataplane::tables_ticks(lifetimes.of(k.proto, confirmed, closing));
                json!({
                    "src": format!("{}:{}", ip::from_wire(k.saddr), ip::port_from_wire(k.sport)),
                    "dst": format!("{}:{}", ip::from_wire(k.daddr), ip::port_from_wire(k.dport)),
                    "proto": proto(k.proto),
                    "dir": direction(e.dir),
                    "state": state,
                    "nat": ip::from_wire(e.nat_addr), "service": e.service,
                    "node": (!via).then_some(e.via),
                    "via": (via && e.via != 0).then(|| ip::from_wire(e.via)),
                    "idle_s": secs(idle),
                    "expires_s": secs(life.saturating_sub(idle)),
                })
            },
        )
        .collect()
}

/// One row per ServIP and backend in its slot table: the backend's share
/// of the slots is its weight (the fraction of new flows it gets). A ServIP
/// without backends (its connections fail fast) gets one row without.
fn weights(t: &Tables) -> Vec<Value> {
    let backends: BTreeMap<u32, Backend> = t.backends().into_iter().collect();
    let mut servips = t.servips();
    servips.sort_by_key(|(vip, _)| *vip);
    let mut rows = Vec::new();
    for (vip, sv) in servips {
        let slots = t.slots(vip);
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for id in &slots {
            *counts.entry(*id).or_default() += 1;
        }
        let row = |backend: Value, node: Value, n: usize| {
            let weight = match slots.len() {
                0 => 0.0,
                len => (n as f64 / len as f64 * 1000.0).round() / 1000.0,
            };
            json!({"servip": vip, "policy": policy(sv.policy), "service": sv.service,
                   "backend": backend, "node": node, "slots": n, "weight": weight})
        };
        if counts.is_empty() {
            rows.push(row(Value::Null, Value::Null, 0));
        }
        for (id, n) in counts {
            let (nsip, node) = backends
                .get(&id)
                .map_or((json!(format!("#{id}")), Value::Null), |b| {
                    (json!(ip::from_wire(b.nsip)), json!(b.node))
                });
            rows.push(row(nsip, node, n));
        }
    }
    rows
}

/// Names of service and node ids, left by the agent in its state directory
/// (`names.json`) for the operator's tables.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NameIndex {
    pub services: BTreeMap<u32, String>,
    pub nodes: BTreeMap<u32, String>,
    /// The agent's conntrack lifetimes, for `expires_s`.
    #[serde(default)]
    pub lifetimes: Lifetimes,
    /// Instances that are not ready, by NamespaceIP: their health.
    #[serde(default)]
    pub health: BTreeMap<std::net::Ipv4Addr, String>,
}

impl NameIndex {
    pub const FILE: &'static str = "names.json";

    pub fn load(state_dir: &std::path::Path) -> Option<NameIndex> {
        serde_json::from_slice(&std::fs::read(state_dir.join(Self::FILE)).ok()?).ok()
    }

    /// Adds a `health` column to `maps backends` rows (one with a backend),
    /// and a row of weight 0 per ServIP (fixed IPs aside) and instance of its
    /// service that is out of the table for not being ready.
    fn add_health(&self, t: &Tables, rows: &mut Vec<Value>) {
        let backends: BTreeMap<u32, Backend> = t.backends().into_iter().collect();
        let service_of: BTreeMap<std::net::Ipv4Addr, u32> = t.nsip_services().into_iter().collect();
        let mut servips = t.servips();
        servips.sort_by_key(|(vip, _)| *vip);
        for (vip, sv) in servips {
            if sv.policy == overlay_common::policy::Policy::Fixed.code() {
                continue;
            }
            for nsip in self.health.keys() {
                let listed = rows
                    .iter()
                    .any(|r| r["servip"] == vip.to_string() && r["backend"] == nsip.to_string());
                if service_of.get(nsip) != Some(&sv.service) || listed {
                    continue;
                }
                let node = backends
                    .get(&u32::from(*nsip))
                    .map_or(Value::Null, |b| json!(b.node));
                rows.push(
                    json!({"servip": vip, "policy": policy(sv.policy), "service": sv.service,
                                 "backend": nsip, "node": node, "slots": 0, "weight": 0.0}),
                );
            }
        }
        // Stable: each ServIP's rows stay in their order, the new ones last.
        rows.sort_by_key(|r| {
            r["servip"]
                .as_str()
                .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
        });
        for row in rows.iter_mut() {
            let nsip = row["backend"].as_str().and_then(|b| b.parse().ok());
            row["health"] = match nsip {
                Some(ip) => json!(self.health.get(&ip).map_or("ready", String::as_str)),
                None => Value::Null,
            };
        }
    }

    /// Replaces the ids in the `service` and `node` columns with `name (id)`.
    fn annotate(&self, rows: &mut [Value]) {
        for row in rows.iter_mut() {
            for (key, names) in [("service", &self.services), ("node", &self.nodes)] {
                let id = row.get(key).and_then(Value::as_u64).map(|id| id as u32);
                if let Some(name) = id.and_then(|id| names.get(&id).map(|n| format!("{n} ({id})")))
                {
                    row[key] = Value::String(name);
                }
            }
        }
    }
}

/// The table as text: pretty JSON (ids only: stable for scripts), or aligned
/// columns named after the JSON keys, with names where `names` knows them.
pub fn render(
    t: &Tables,
    table: Table,
    as_json: bool,
    names: Option<&NameIndex>,
) -> Result<String> {
    let lifetimes = names.map(|n| n.lifetimes).unwrap_or_default();
    let mut rows = rows_with(t, table, &lifetimes)?;
    if let (Some(ix), Table::Backends) = (names, table) {
        ix.add_health(t, &mut rows);
    }
    if as_json {
        return Ok(serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n");
    }
    if let Some(ix) = names {
        ix.annotate(&mut rows);
    }
    let Some(first) = rows.first().and_then(Value::as_object) else {
        return Ok("(empty)\n".into());
    };
    let cols: Vec<&String> = first.keys().collect();
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(&r[c.as_str()]).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let mut out = String::new();
    for (c, w) in cols.iter().zip(&widths) {
        let _ = write!(out, "{:<w$}  ", c.to_uppercase(), w = w);
    }
    out = out.trim_end().to_string() + "\n";
    for r in &rows {
        let mut line = String::new();
        for (c, w) in cols.iter().zip(&widths) {
            let _ = write!(line, "{:<w$}  ", cell(&r[c.as_str()]), w = w);
        }
        out += line.trim_end();
        out.push('\n');
    }
    Ok(out)
}
