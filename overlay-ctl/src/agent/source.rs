//! The desired cluster state from a JSON file (`state_file`), re-read when
//! it changes: the source of an agent without a store. With a store the
//! state comes from etcd instead (`store::follow`), into the same kind of
//! watch channel.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{AgentError, Result};
use crate::config::AgentConfig;
use crate::model::ClusterState;

const POLL: Duration = Duration::from_millis(300);

fn read(path: &PathBuf) -> Result<ClusterState> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::StateFile {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| AgentError::StateFormat {
        path: path.clone(),
        source,
    })
}

/// Starts following the configured source; the receiver holds the latest state.
pub fn spawn(cfg: &AgentConfig) -> Result<watch::Receiver<ClusterState>> {
    let Some(path) = cfg.state_file.clone() else {
        return Err(AgentError::NoSource(
            "neither a store nor a state_file is configured",
        ));
    };
    let (tx, rx) = watch::channel(read(&path)?);
    tokio::spawn(async move {
        let mut seen: Option<SystemTime> = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        loop {
            tokio::time::sleep(POLL).await;
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified == seen {
                continue;
            }
            seen = modified;
            // A bad edit keeps the last good state: the dataplane must not flap.
            match read(&path) {
                Ok(state) => {
                    if tx.send(state).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("keeping the last good state: {e}"),
            }
        }
    });
    Ok(rx)
}
