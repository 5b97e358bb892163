//! Administration of the store with etcd's `root` identity: `store setup`
//! (access control, the v2 schema, the probe key) and admitting nodes
//! (`node add|rm`).

use std::path::PathBuf;

use clap::Subcommand;

use super::cluster::runtime;
use crate::store::{self, Access, Store};

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Move a v1 store to the v2 schema, create the probe key, the root and
    /// orchestrator users and roles, and turn access control on. Run with the
    /// root certificate; repeating it changes nothing.
    Setup {
        /// The orchestrator's identity (its certificate's name).
        #[arg(long, default_value = store::DEFAULT_ORCHESTRATOR)]
        orchestrator: String,
    },
}

pub fn store_cmd(cmd: StoreCmd, access: &Access) -> anyhow::Result<()> {
    let StoreCmd::Setup { orchestrator } = cmd;
    if !crate::model::is_plain_name(&orchestrator) {
        anyhow::bail!("orchestrator `{orchestrator}`: must be 1-63 letters, digits, '-' or '_'");
    }
    let moved = runtime()?.block_on(async {
        let store = Store::connect(access).await?;
        let moved = store.migrate_v1().await?;
        store
            .setup_access(&orchestrator, crate::probe::generate_key())
            .await?;
        Ok::<_, store::StoreError>(moved)
    })?;
    if moved > 0 {
        println!("moved {moved} key(s) of the v1 schema");
    }
    println!(
        "access control on: root administers, `{orchestrator}` orchestrates; admit nodes with `overlay-ctl node add`"
    );
    Ok(())
}

/// `node add NAME [--dir PKI]`: the node's identity and subnetwork.
pub fn node_add(name: &str, dir: Option<&PathBuf>, access: &Access) -> anyhow::Result<()> {
    crate::descriptor::check_label(name)
        .map_err(|why| anyhow::anyhow!("node name `{name}`: {why}"))?;
    if let Some(dir) = dir
        && super::cert::ensure(dir, name)?
    {
        println!("{}", dir.join(format!("{name}.crt")).display());
    }
    let subnet =
        runtime()?.block_on(async { Store::connect(access).await?.admit_node(name).await })?;
    println!(
        "node {name} admitted: subnet {subnet}, role {}",
        store::node_role(name)
    );
    Ok(())
}

/// `node rm NAME`: withdraws the identity, gives the subnetwork back.
pub fn node_rm(name: &str, access: &Access) -> anyhow::Result<()> {
    let subnet =
        runtime()?.block_on(async { Store::connect(access).await?.remove_node(name).await })?;
    match subnet {
        Some(s) => println!("node {name} removed; subnet {s} returned to the pool"),
        None => println!("node {name} removed (it had no subnet)"),
    }
    Ok(())
}
