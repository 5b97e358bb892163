//! What can go wrong in the agent. Each variant keeps the error that caused
//! it (for `{:#}` chains and for callers that match on it), and its message
//! still names the step or file that failed.

use std::io;
use std::path::PathBuf;

use crate::model::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::Error),
    #[error(transparent)]
    Link(#[from] crate::netns::Error),
    /// A step on the host failed; `step` names it (and its path).
    #[error("{step}: {source}")]
    Host { step: String, source: io::Error },
    /// A system call on the host failed; `step` names it.
    #[error("{step}: {source}")]
    Sys {
        step: String,
        source: nix::errno::Errno,
    },
    /// The host is not as the agent needs it; no system error behind it.
    #[error("{0}")]
    Unfit(String),
    /// `nft` ran but refused the masquerade rule; `stderr` is its complaint.
    #[error("nft failed: {stderr}")]
    Nft { stderr: String },
    /// The DNS or mDNS server could not start.
    #[error("name service: {0}")]
    Names(#[from] crate::dns::DnsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("unknown service `{0}` (not in the desired state)")]
    UnknownService(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("node subnet {0} has no free NamespaceIP left")]
    SubnetFull(Subnet),
    /// A file of the state directory (or the desired-state file) could
    /// not be read or written.
    #[error("{}: {source}", path.display())]
    StateFile { path: PathBuf, source: io::Error },
    /// Such a file holds something that is not what the agent wrote.
    #[error("{}: not what the agent wrote: {source}", path.display())]
    StateFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// No source of desired state is configured.
    #[error("no desired state: {0}")]
    NoSource(&'static str),
    /// An undeploy of an instance this node does not run.
    #[error("no instance {1} of `{0}` runs on this node")]
    NoSuchInstance(String, u32),
    /// The agent stopped before the operation could finish.
    #[error("the agent is stopping")]
    Stopping,
}

/// A failed host step (an I/O error): `step` says what was tried, on what.
pub fn host(step: impl Into<String>) -> impl FnOnce(io::Error) -> AgentError {
    let step = step.into();
    move |source| AgentError::Host { step, source }
}

/// A failed system call (nix): `step` says what was tried, on what.
pub fn sys(step: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> AgentError {
    let step = step.into();
    move |source| AgentError::Sys { step, source }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
