//! The `overlay-ctl` command line.

mod cert;
mod cluster;
mod gateway;
mod monitor;
mod store;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::{agent, api, config::AgentConfig, dataplane::Tables, maps_view};

#[derive(Parser)]
#[command(
    name = "overlay-ctl",
    version,
    about = "EdgeIO overlay agent and operator CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent (loads the dataplane, serves the API, follows the desired state).
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Remove everything the agent created on this node, then exit.
        #[arg(long)]
        teardown: bool,
    },
    /// Deploy or remove instances on this node, through the local agent.
    Instance {
        #[command(subcommand)]
        cmd: InstanceCmd,
        /// The agent's API socket.
        #[arg(
            long,
            env = "OVERLAY_API",
            default_value = "/run/overlay/agent.sock",
            global = true
        )]
        api: PathBuf,
    },
    /// Register, remove and list services in the cluster store.
    Service {
        #[command(subcommand)]
        cmd: cluster::ServiceCmd,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List, admit and remove the cluster's nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show or change the settings every node applies.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Register, remove and list the gateways that may tunnel external traffic to the nodes.
    Gateway {
        #[command(subcommand)]
        cmd: gateway::GatewayCmd,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Resolve `app.appns.svc.svcns.instance.policy.local` from the cluster store.
    Resolve {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Set the store up: access control, the v2 key schema, the probe key.
    Store {
        #[command(subcommand)]
        cmd: store::StoreCmd,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The cluster's certificate authority and certificates (TLS to the store).
    Cert {
        #[command(subcommand)]
        cmd: cert::CertCmd,
    },
    /// Live dataplane events: drops with their reason, new flows with their
    /// backend, denied flows (reads the pinned ring buffers; root).
    Monitor(monitor::MonitorArgs),
    /// Read the pinned dataplane maps directly (works while no agent runs).
    Maps {
        table: maps_view::Table,
        #[arg(long)]
        json: bool,
        /// Take the pin directory from this agent configuration.
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// Pin directory of the node's maps.
        #[arg(long, env = "OVERLAY_PIN_DIR")]
        pin_dir: Option<PathBuf>,
    },
}

/// Where the cluster store is, for every command that talks to it.
#[derive(clap::Args)]
struct StoreArg {
    /// etcd endpoints, comma-separated.
    #[arg(
        long = "store",
        value_name = "STORE",
        env = "OVERLAY_STORE",
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    endpoints: String,
    /// PEM CA of the store's certificate (for https:// endpoints).
    #[arg(long = "store-ca", env = "OVERLAY_STORE_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate for the store (with --store-key).
    #[arg(long = "store-cert", env = "OVERLAY_STORE_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long = "store-key", env = "OVERLAY_STORE_KEY", global = true)]
    key: Option<std::path::PathBuf>,
}

impl StoreArg {
    fn access(&self) -> anyhow::Result<crate::store::Access> {
        Ok(crate::store::Access::new(
            &self.endpoints,
            self.ca.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )?)
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Registered nodes with their addresses and subnets.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Admit a node (root certificate): its etcd user and role, which let it
    /// write only its own keys, and its subnetwork; with --dir, also its
    /// certificate DIR/NAME.crt from the CA in DIR.
    Add {
        name: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Withdraw a stopped node's identity and give its subnetwork back.
    Rm { name: String },
}

#[derive(Subcommand)]
enum InstanceCmd {
    /// Link a network namespace into the overlay as instance N of SERVICE.
    Deploy {
        /// `app.appns.svc.svcns`
        service: String,
        #[arg(long)]
        instance: u32,
        /// The instance's network namespace: NAME, PATH or PID.
        #[arg(long)]
        netns: String,
    },
    /// Remove instance N of SERVICE from this node: no new flows at once,
    /// established ones get the agent's `drain_ms`, then the rest end.
    Rm {
        service: String,
        #[arg(long)]
        instance: u32,
        /// Skip the drain: end the instance's flows at once.
        #[arg(long)]
        now: bool,
    },
    /// List this node's instances.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Agent { config, teardown } => {
            let cfg = AgentConfig::load(&config)?;
            init_logs();
            let rt = tokio::runtime::Runtime::new()?;
            if teardown {
                rt.block_on(agent::teardown(cfg))?;
            } else {
                rt.block_on(agent::run(cfg))?;
            }
        }
        Cmd::Instance { cmd, api } => instance(cmd, &api)?,
        Cmd::Service { cmd, store } => cluster::service(cmd, &store.access()?)?,
        Cmd::Node {
            cmd: NodeCmd::Ls { json },
            store,
        } => cluster::node_ls(&store.access()?, json)?,
        Cmd::Node {
            cmd: NodeCmd::Add { name, dir },
            store: s,
        } => store::node_add(&name, dir.as_ref(), &s.access()?)?,
        Cmd::Node {
            cmd: NodeCmd::Rm { name },
            store: s,
        } => store::node_rm(&name, &s.access()?)?,
        Cmd::Store { cmd, store: s } => store::store_cmd(cmd, &s.access()?)?,
        Cmd::Cluster { cmd, store } => cluster::settings(cmd, &store.access()?)?,
        Cmd::Gateway { cmd, store } => gateway::gateway(cmd, &store.access()?)?,
        Cmd::Cert { cmd } => cert::cert(cmd)?,
        Cmd::Resolve { name, store } => cluster::resolve(&name, &store.access()?)?,
        Cmd::Monitor(args) => monitor::run(args)?,
        Cmd::Maps {
            table,
            json,
            config,
            pin_dir,
        } => {
            let (dir, names) = monitor::pins(config.as_deref(), pin_dir)?;
            let tables = Tables::open_pinned(&dir)
                .with_context(|| format!("reading the maps pinned in {}", dir.display()))?;
            print!(
                "{}",
                maps_view::render(&tables, table, json, names.as_ref())?
            );
        }
    }
    Ok(())
}

fn instance(cmd: InstanceCmd, api: &std::path::Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        InstanceCmd::Deploy {
            service,
            instance,
            netns,
        } => {
            if instance == 0 {
                bail!("--instance: instance numbers start at 1");
            }
            netns.parse::<crate::netns::NetnsRef>()?;
            let body = json!({ "service": service, "instance": instance, "netns": netns });
            let out = rt.block_on(api::call(api, "POST", "/v1/instances", Some(body)))?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        InstanceCmd::Rm {
            service,
            instance,
            now,
        } => {
            let uri = match now {
                true => format!("/v1/instances/{service}/{instance}?now=true"),
                false => format!("/v1/instances/{service}/{instance}"),
            };
            rt.block_on(api::call(api, "DELETE", &uri, None))?;
            println!("removed {service} instance {instance}");
        }
        InstanceCmd::Ls { json } => {
            let out = rt.block_on(api::call(api, "GET", "/v1/instances", None))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<32} {:>8} {:<16} {:<8} {:<9} NETNS",
                    "SERVICE", "INSTANCE", "NSIP", "LINK", "HEALTH"
                );
                for i in out.as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:>8} {:<16} {:<8} {:<9} {}",
                        i["service"].as_str().unwrap_or(""),
                        i["instance"],
                        i["nsip"].as_str().unwrap_or(""),
                        i["host_if"].as_str().unwrap_or(""),
                        i["health"].as_str().unwrap_or(""),
                        i["netns"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (they otherwise
    /// fire only when that subcommand is first used).
    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
