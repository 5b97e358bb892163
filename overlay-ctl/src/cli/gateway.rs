//! `overlay-ctl gateway`: the north-south gateways every node accepts
//! tunnelled external traffic from (on its NSP).

use std::net::Ipv4Addr;

use clap::Subcommand;

use super::cluster::runtime;
use crate::model::GatewaySpec;
use crate::store::{Access, Store};

#[derive(Subcommand)]
pub enum GatewayCmd {
    /// Register a gateway (or change the address or port of one).
    Add {
        name: String,
        /// The address it tunnels from, and where its replies go.
        #[arg(long)]
        ip: Ipv4Addr,
        /// The UDP port it receives replies on.
        #[arg(long, default_value_t = overlay_common::DEFAULT_NSP)]
        port: u16,
    },
    /// Remove a gateway: every node drops its packets at once.
    Rm { name: String },
    /// Registered gateways.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn gateway(cmd: GatewayCmd, access: &Access) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = rt.block_on(Store::connect(access))?;
    match cmd {
        GatewayCmd::Add { name, ip, port } => {
            let g = GatewaySpec { name, ip, port };
            rt.block_on(store.add_gateway(&g))?;
            println!("gateway {} at {}:{}", g.name, g.ip, g.port);
        }
        GatewayCmd::Rm { name } => {
            if !rt.block_on(store.remove_gateway(&name))? {
                anyhow::bail!("no gateway named `{name}`");
            }
            println!("removed gateway {name}");
        }
        GatewayCmd::Ls { json } => {
            let all = rt.block_on(store.gateways())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!("{:<16} {:<16} PORT", "GATEWAY", "IP");
            for g in all {
                println!("{:<16} {:<16} {}", g.name, g.ip, g.port);
            }
        }
    }
    Ok(())
}
