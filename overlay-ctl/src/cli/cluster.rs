//! Orchestrator-side commands: `service deploy|rm|ls`, `node ls`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::descriptor::Descriptor;
use crate::model::{NodeSubnets, PortRange};
use crate::store::{self, Access, Store};
use overlay_common::registry::limits;

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Register a service from its descriptor (JSON or YAML) and print its ServIPs.
    Deploy {
        descriptor: std::path::PathBuf,
        #[arg(long)]
        json: bool,
        /// For a stateful service: allocate the fixed IPs of instances 1..=N
        /// (nodes may not allocate them themselves).
        #[arg(long, value_name = "N")]
        instances: Option<u32>,
    },
    /// Remove a service; its addresses return to the pool after a grace period.
    Rm {
        /// `app.appns.svc.svcns`
        name: String,
    },
    /// List services with their ServIPs and instances.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

/// How many fixed IPs one `service deploy --instances` allocates at most.
const MAX_INSTANCES: u32 = 1024;

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn service(cmd: ServiceCmd, access: &Access) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        ServiceCmd::Deploy {
            descriptor,
            json,
            instances,
        } => {
            // Validate before contacting anything.
            let d = read_descriptor(&descriptor)?;
            if instances.is_some() && !d.stateful {
                anyhow::bail!("--instances: only a stateful service has fixed instance IPs");
            }
            if instances.is_some_and(|n| n > MAX_INSTANCES) {
                anyhow::bail!("--instances: at most {MAX_INSTANCES} fixed IPs at once");
            }
            let rec = rt.block_on(async {
                let store = Store::connect(access).await?;
                let rec = store
                    .deploy_service(&d, store::DEFAULT_SERVICE_POOL)
                    .await?;
                for n in 1..=instances.unwrap_or(0) {
                    let ip = store
                        .allocate_fixed_ip(&rec.name, n, store::DEFAULT_SERVICE_POOL)
                        .await?;
                    if !json {
                        println!("instance {n}: fixed IP {ip}");
                    }
                }
                Ok::<_, store::StoreError>(rec)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                println!("{} (id {})", rec.name, rec.id);
                for (policy, ip) in &rec.servips {
                    println!("  {:<11} {ip}", format!("{policy:?}").to_lowercase());
                }
                if rec.descriptor.stateful {
                    println!("  stateful: each instance gets a fixed IP when it deploys");
                }
            }
        }
        ServiceCmd::Rm { name } => {
            let found =
                rt.block_on(async { Store::connect(access).await?.remove_service(&name).await })?;
            anyhow::ensure!(found, "no service named {name}");
            println!("removed {name}");
        }
        ServiceCmd::Ls { json } => {
            let rows = rt.block_on(service_rows(access))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<32} {:<16} {:<16} {:<16} INSTANCES",
                    "NAME", "CLOSEST", "ROUNDROBIN", "FASTEST"
                );
                for r in &rows {
                    let ip = |p: &str| r["servips"][p].as_str().unwrap_or("-").to_string();
                    let insts: Vec<String> = r["instances"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| {
                            // Only instances that are not ready say so.
                            let health = match i["health"].as_str() {
                                Some("ready") | None => String::new(),
                                Some(h) => format!("({h})"),
                            };
                            format!(
                                "{}@{}={}{health}",
                                i["instance"],
                                i["node"].as_str().unwrap_or(""),
                                i["fixed_ip"].as_str().or(i["nsip"].as_str()).unwrap_or("")
                            )
                        })
                        .collect();
                    println!(
                        "{:<32} {:<16} {:<16} {:<16} {}",
                        r["name"].as_str().unwrap_or(""),
                        ip("closest"),
                        ip("roundrobin"),
                        ip("fastest"),
                        insts.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}

fn read_descriptor(path: &Path) -> anyhow::Result<Descriptor> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Descriptor::parse(&text)
        .with_context(|| format!("{} is not a valid descriptor", path.display()))
}

/// `service ls --json` rows: the descriptor fields, `servips`, `instances`.
async fn service_rows(access: &Access) -> anyhow::Result<Vec<Value>> {
    let store = Store::connect(access).await?;
    let (services, instances) = (store.services().await?, store.instances().await?);
    Ok(services
        .into_iter()
        .map(|rec| {
            let mut row = serde_json::to_value(&rec).unwrap_or(Value::Null);
            let insts: Vec<Value> = instances
                .iter()
                .filter(|i| i.service.eq_ignore_ascii_case(&rec.name))
                .map(|i| json!({"instance": i.instance, "node": i.node, "nsip": i.nsip, "fixed_ip": i.fixed_ip, "health": i.health}))
                .collect();
            row["instances"] = Value::Array(insts);
            row
        })
        .collect())
}

/// The address and port other nodes send a node's tunnel packets to: its
/// public mapping if configured, else its own.
fn expected(n: &crate::store::NodeRecord) -> String {
    n.public
        .map_or_else(|| format!("{}:{}", n.ip, n.ewp), |p| p.to_string())
}

/// Where node `n`'s probes came from as each peer saw them (peer →
/// address:port), and whether any differs from where that peer sends to
/// it (its own address for a peer behind the same public address).
fn seen_as(
    n: &crate::store::NodeRecord,
    nodes: &[crate::store::NodeRecord],
    observed: &BTreeMap<String, BTreeMap<String, String>>,
) -> (BTreeMap<String, String>, bool) {
    let seen: BTreeMap<String, String> = observed
        .iter()
        .filter_map(|(peer, m)| Some((peer.clone(), m.get(&n.name)?.clone())))
        .collect();
    let me = n.spec();
    let mismatch = seen.iter().any(|(peer, addr)| {
        let peer = nodes.iter().find(|p| p.name == *peer).map(|p| p.spec());
        *addr != me.reached_from(peer.as_ref()).to_string()
    });
    (seen, mismatch)
}

/// The overlay MTU toward each other node as `n` applies it: what `n`
/// published where underlay routers lowered it (`lowered`), else the smaller
/// uplink of both minus the tunnel.
fn path_mtus(
    n: &crate::store::NodeRecord,
    nodes: &[crate::store::NodeRecord],
    lowered: &BTreeMap<String, BTreeMap<String, u16>>,
) -> BTreeMap<String, u16> {
    let lowered = lowered.get(&n.name);
    let peers = nodes.iter().filter(|p| p.name != n.name);
    peers
        .map(|p| {
            let reported = lowered.and_then(|l| l.get(&p.name)).copied();
            let mtu = reported.unwrap_or_else(|| overlay_common::pmtu::between(n.mtu, p.mtu));
            (p.name.clone(), mtu)
        })
        .collect()
}

pub fn node_ls(access: &Access, json: bool) -> anyhow::Result<()> {
    let (nodes, state, conflicts, observed, lowered) = runtime()?.block_on(async {
        let store = Store::connect(access).await?;
        let nodes = store.nodes().await?;
        let conflicts = store.node_status::<Vec<String>>("conflicts").await?;
        let observed = store
            .node_status::<BTreeMap<String, String>>("observed")
            .await?;
        let lowered = store
            .node_status::<BTreeMap<String, u16>>("path_mtu")
            .await?;
        let state = store.snapshot().await?.0;
        Ok::<_, crate::store::StoreError>((nodes, state, conflicts, observed, lowered))
    })?;
    let none = Default::default();
    let rtt = |n: &str| state.rtt.get(n).unwrap_or(&none);
    if json {
        // Each record with the RTTs (µs) the node measured to the others.
        let rows: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["rtt_us"] = serde_json::json!(rtt(&n.name));
                v["exposed_conflicts"] =
                    serde_json::json!(conflicts.get(&n.name).cloned().unwrap_or_default());
                let (seen, mismatch) = seen_as(n, &nodes, &observed);
                v["observed"] = serde_json::json!(seen);
                v["observed_mismatch"] = serde_json::json!(mismatch);
                v["path_mtu"] = serde_json::json!(path_mtus(n, &nodes, &lowered));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<16} {:<6} {:<6} {:<18} {:<6} {:<22} RTT",
        "NODE", "IP", "EWP", "NSP", "SUBNET", "MTU", "PUBLIC"
    );
    for n in &nodes {
        let public = n
            .public
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let rtts: Vec<String> = rtt(&n.name)
            .iter()
            .map(|(peer, us)| format!("{peer} {:.1}ms", *us as f64 / 1000.0))
            .collect();
        println!(
            "{:<12} {:<16} {:<6} {:<6} {:<18} {:<6} {public:<22} {}",
            n.name,
            n.ip,
            n.ewp,
            n.nsp,
            n.subnet.to_string(),
            n.mtu,
            rtts.join(", ")
        );
        let (seen, mismatch) = seen_as(n, &nodes, &observed);
        let mut addrs: Vec<&String> = seen.values().collect();
        addrs.sort();
        addrs.dedup();
        if !addrs.is_empty() {
            let list: Vec<&str> = addrs.iter().map(|a| a.as_str()).collect();
            let flag = if mismatch {
                format!("  MISMATCH: other nodes should see {}", expected(n))
            } else {
                String::new()
            };
            println!("{:<12} seen by its peers as {}{flag}", "", list.join(", "));
        }
        let own = n.mtu.saturating_sub(overlay_common::ENCAP_OVERHEAD);
        let small: Vec<String> = path_mtus(n, &nodes, &lowered)
            .into_iter()
            .filter(|(_, mtu)| *mtu < own)
            .map(|(peer, mtu)| format!("{peer} {mtu}"))
            .collect();
        if !small.is_empty() {
            println!("{:<12} path MTU below {own}: {}", "", small.join(", "));
        }
        // What the node will not expose (it listens there itself).
        for c in conflicts.get(&n.name).into_iter().flatten() {
            println!(
                "{:<12} conflict: not exposing {c}: the node listens on it itself",
                ""
            );
        }
    }
    Ok(())
}

/// `overlay-ctl resolve NAME`: the answer the agents' DNS gives, from the store.
pub fn resolve(name: &str, access: &Access) -> anyhow::Result<()> {
    use crate::dns::Answer;
    // A malformed name is refused before anything is contacted.
    if let Err(e) = overlay_common::names::parse(name) {
        anyhow::bail!("`{name}` is not a service name: {}", e.reason());
    }
    let (state, _) =
        runtime()?.block_on(async { Store::connect(access).await?.snapshot().await })?;
    match crate::dns::resolve(&state, name) {
        Answer::Address(ip) => println!("{ip}"),
        Answer::NxDomain => anyhow::bail!("{name}: no such service, instance or policy (NXDOMAIN)"),
        Answer::Malformed(why) => anyhow::bail!("`{name}` is not a service name: {why}"),
        Answer::NotLocal => anyhow::bail!("`{name}` is not under .local"),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The cluster's settings.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change a setting; every agent applies it at once.
    Set {
        #[command(subcommand)]
        setting: Setting,
    },
    /// Replace the key that authenticates RTT probes, without losing probes:
    /// publishes the next key, waits until every agent accepts it, then
    /// makes it current (about 15 s).
    RotateProbeKey,
}

#[derive(Subcommand)]
pub enum Setting {
    /// Services without `needs` may open no new flows (`on`), or any (`off`).
    DefaultDeny {
        #[arg(action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        value: bool,
    },
    /// Services may expose only ports in FIRST-LAST (`any`: every port that
    /// is not reserved).
    ExposedPorts { range: String },
    /// The nodes' local ephemeral port range, never exposed (`default`:
    /// Linux's 32768-60999).
    EphemeralPorts { range: String },
    /// Where node subnets come from and their length, e.g. `10.30.0.0/16
    /// 26` (`default`: 10.30.0.0/16 in /24s). While nodes hold subnets,
    /// only a pool that still holds them all, at the same length.
    NodeSubnets {
        /// The pool, ADDRESS/PREFIX, or `default`.
        pool: String,
        /// Each node's prefix length (`26` or `/26`).
        per_node: Option<String>,
    },
}

/// `POOL LEN`, or `default` for none.
fn node_subnets(pool: &str, per_node: Option<&str>) -> anyhow::Result<Option<NodeSubnets>> {
    if pool == "default" && per_node.is_none() {
        return Ok(None);
    }
    let pool = pool
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{e}, or `default`"))?;
    let per_node = per_node.ok_or_else(|| anyhow::anyhow!("give each node's prefix length"))?;
    let per_node = per_node
        .trim_start_matches('/')
        .parse()
        .map_err(|_| anyhow::anyhow!("`{per_node}` is not a prefix length"))?;
    Ok(Some(NodeSubnets { pool, per_node }))
}

/// What the node subnets allow, for `cluster show`.
fn subnet_limits(s: &NodeSubnets) -> String {
    let check = if s.fast_sender_check() {
        ""
    } else {
        "; narrower than /24: a route lookup per received tunnel packet"
    };
    format!(
        "{} nodes, {} instances per node{check}",
        s.max_nodes(),
        s.max_instances()
    )
}

/// `FIRST-LAST`, or `word` for none.
fn range_or(value: &str, word: &str) -> anyhow::Result<Option<PortRange>> {
    if value == word {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: String| anyhow::anyhow!("{e}, or `{word}`"))
}

/// `overlay-ctl cluster show|set`.
pub fn settings(cmd: ClusterCmd, access: &Access) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = rt.block_on(Store::connect(access))?;
    let mut settings = rt.block_on(store.settings())?;
    match cmd {
        ClusterCmd::Show { json: true } => println!("{}", serde_json::to_string_pretty(&settings)?),
        ClusterCmd::Show { json: false } => {
            let deny = settings
                .default_deny
                .map_or("(each agent's own default_deny)", |d| {
                    if d { "on" } else { "off" }
                });
            println!("default-deny  {deny}");
            let exposed = settings
                .exposed_ports
                .map_or("any port that is not reserved".to_owned(), |r| {
                    r.to_string()
                });
            println!("exposed-ports  {exposed}");
            let ephemeral = settings
                .ephemeral_ports
                .map_or(format!("{} (default)", PortRange::LINUX_EPHEMERAL), |r| {
                    r.to_string()
                });
            println!("ephemeral-ports  {ephemeral}");
            let subnets = settings.node_subnets();
            let default = if settings.node_subnets.is_none() {
                " (default)"
            } else {
                ""
            };
            println!(
                "node-subnets  {subnets}{default}: {}",
                subnet_limits(&subnets)
            );
            println!(
                "limits  {} exposed ports, {} ports and {} needs per service, {} nodes",
                limits::EXPOSED_PORTS,
                limits::PORTS_PER_SERVICE,
                limits::NEEDS_PER_SERVICE,
                limits::NODES
            );
        }
        ClusterCmd::Set {
            setting: Setting::DefaultDeny { value },
        } => {
            settings.default_deny = Some(value);
            rt.block_on(store.set_settings(&settings))?;
            println!("default-deny  {}", if value { "on" } else { "off" });
        }
        ClusterCmd::Set {
            setting: Setting::ExposedPorts { range },
        } => {
            settings.exposed_ports = range_or(&range, "any")?;
            rt.block_on(store.set_settings(&settings))?;
            println!("exposed-ports  {range}");
        }
        ClusterCmd::Set {
            setting: Setting::EphemeralPorts { range },
        } => {
            settings.ephemeral_ports = range_or(&range, "default")?;
            rt.block_on(store.set_settings(&settings))?;
            println!("ephemeral-ports  {range}");
        }
        ClusterCmd::Set {
            setting: Setting::NodeSubnets { pool, per_node },
        } => {
            let want = node_subnets(&pool, per_node.as_deref())?;
            rt.block_on(store.set_node_subnets(want))?;
            let now = want.unwrap_or(NodeSubnets::DEFAULT);
            println!("node-subnets  {now}: {}", subnet_limits(&now));
        }
        ClusterCmd::RotateProbeKey => {
            rt.block_on(store.begin_probe_key_rotation(crate::probe::generate_key()))?;
            // Two reads of every agent: each accepts the next key by then.
            let wait = crate::probe::KEY_REFRESH * 3;
            println!("probe key: next key published; every agent accepts it within {wait:?}");
            std::thread::sleep(wait);
            rt.block_on(store.finish_probe_key_rotation())?;
            println!("probe key: rotated (agents sign with the new key from their next read)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: serde_json::Value) -> crate::store::NodeRecord {
        serde_json::from_value(v).unwrap()
    }

    /// A NATed node's configured `public` against what its peers saw.
    #[test]
    fn a_mapping_other_than_the_configured_one_is_flagged() {
        let mut n = record(serde_json::json!({
            "name": "n2", "ip": "10.0.0.2", "ewp": 50103, "nsp": 50104, "mtu": 1500,
            "subnet": "10.30.2.0/24", "public": "198.51.100.7:40002"
        }));
        let n1 = record(serde_json::json!({
            "name": "n1", "ip": "192.0.2.11", "ewp": 50103, "nsp": 50104, "mtu": 1500,
            "subnet": "10.30.1.0/24"
        }));
        let nodes = [n1, n.clone()];
        let observed = |addr: &str| {
            BTreeMap::from([(
                "n1".to_string(),
                BTreeMap::from([("n2".to_string(), addr.to_string())]),
            )])
        };
        let (seen, mismatch) = seen_as(&n, &nodes, &observed("198.51.100.7:40002"));
        assert_eq!(
            (seen["n1"].as_str(), mismatch),
            ("198.51.100.7:40002", false)
        );
        assert!(
            seen_as(&n, &nodes, &observed("198.51.100.7:61000")).1,
            "another port"
        );
        n.public = None;
        assert!(!seen_as(&n, &nodes, &observed("10.0.0.2:50103")).1);
        assert!(seen_as(&n, &nodes, &BTreeMap::new()).0.is_empty());
    }

    /// A peer behind the same public address sees the node's own address:
    /// that is where it sends, no mismatch.
    #[test]
    fn a_same_site_peer_sees_the_own_address() {
        let natted = |name: &str, ip: &str, port: u16| {
            record(serde_json::json!({
                "name": name, "ip": ip, "ewp": 50103, "nsp": 50104, "mtu": 1500,
                "subnet": "10.30.2.0/24", "public": format!("198.51.100.7:{port}")
            }))
        };
        let (n2, n3) = (
            natted("n2", "10.0.0.2", 40002),
            natted("n3", "10.0.0.3", 40003),
        );
        let nodes = [n2.clone(), n3];
        let observed = BTreeMap::from([(
            "n3".to_string(),
            BTreeMap::from([("n2".to_string(), "10.0.0.2:50103".to_string())]),
        )]);
        assert!(!seen_as(&n2, &nodes, &observed).1);
    }
}
