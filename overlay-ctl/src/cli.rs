//! The `overlay-ctl` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::dataplane;

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
    /// Read the pinned dataplane maps directly (works while no agent runs).
    Maps {
        table: Table,
        #[arg(long)]
        json: bool,
        /// Pin directory of the node's maps.
        #[arg(long, env = "OVERLAY_PIN_DIR", default_value = "/sys/fs/bpf/overlay")]
        pin_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Table {
    Stats,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Maps {
            table: Table::Stats,
            json,
            pin_dir,
        } => {
            let stats = dataplane::Tables::open_pinned(&pin_dir)
                .and_then(|t| t.stats())
                .with_context(|| format!("reading stats from {}", pin_dir.display()))?;
            if json {
                let rows: Vec<_> = stats
                    .iter()
                    .map(|(r, c)| serde_json::json!({"reason": r.label(), "packets": c.packets, "bytes": c.bytes}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<20} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
                for (r, c) in stats {
                    println!("{:<20} {:>12} {:>14}", r.label(), c.packets, c.bytes);
                }
            }
        }
    }
    Ok(())
}
