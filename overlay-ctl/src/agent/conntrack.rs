//! The conntrack GC: the programs only refresh a flow's `seen` and `state`;
//! the agent ends the flows idle longer than their lifetime
//! (`[conntrack_lifetimes]`), every `conntrack_gc_s`, through its own
//! handle on the pinned maps (no agent lock taken).

use std::path::PathBuf;
use std::time::Duration;

use overlay_common::maps::ip;

use crate::dataplane::{Lifetimes, Tables};

/// What the GC needs to know of the node.
pub struct Gc {
    pub pin_dir: PathBuf,
    pub lifetimes: Lifetimes,
    pub every: Duration,
    /// The node's own address and its north-south source address: they are
    /// in the keys of north-south flows.
    pub node_ip: std::net::Ipv4Addr,
    pub snat: std::net::Ipv4Addr,
}

/// Runs until aborted.
pub async fn run(gc: Gc) {
    let mut tables = match Tables::open_pinned(&gc.pin_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("conntrack GC off: cannot open the pinned maps: {e}");
            return;
        }
    };
    let (node_ip, snat) = (ip::to_wire(gc.node_ip), ip::to_wire(gc.snat));
    let mut ticker = tokio::time::interval(gc.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let lifetimes = gc.lifetimes;
        let pass = tokio::task::spawn_blocking(move || {
            let ended = tables.expire(&lifetimes, node_ip, snat);
            (tables, ended)
        });
        let Ok((back, ended)) = pass.await else {
            return;
        };
        tables = back;
        match ended {
            Ok(0) => {}
            Ok(n) => tracing::debug!(entries = n, "conntrack: flows past their lifetime ended"),
            Err(e) => tracing::warn!("conntrack GC: {e}"),
        }
    }
}
