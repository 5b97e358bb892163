//! The error type of [`super`]: every variant names the operation and the
//! interface and/or namespace it concerned.

use std::io;

/// Result type of the instance plumbing.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while linking an instance namespace into the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--netns` value or [`super::NetnsRef`] that cannot name a namespace.
    #[error("invalid network namespace `{value}`: {reason}")]
    InvalidNetns {
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An interface name the kernel would reject (or that is not ours).
    #[error("invalid interface name `{name}`: {reason}")]
    InvalidIfName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A [`super::LinkSpec`] field out of range.
    #[error("invalid link for {host_if}: {reason}")]
    InvalidSpec {
        /// The host-side interface of the spec.
        host_if: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace file could not be opened (missing name, dead pid, ...).
    #[error("cannot open network namespace {netns} ({path}): {source}")]
    OpenNetns {
        /// The namespace as the caller named it.
        netns: String,
        /// The file that was opened.
        path: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The file opened is not a network namespace, or is the node's own.
    #[error("network namespace {netns}: {reason}")]
    BadNetns {
        /// The namespace as the caller named it.
        netns: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A netlink request was refused or failed.
    #[error("{op} {target}: {}", describe(source))]
    Netlink {
        /// The operation, e.g. "adding address".
        op: &'static str,
        /// Interface and namespace, e.g. "10.30.1.2/32 on eth0 in netns i1".
        target: String,
        /// The underlying error.
        source: rtnetlink::Error,
    },
    /// A system call or runtime set-up failed.
    #[error("{op} {target}: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// What it concerned.
        target: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The host-side name is taken by an interface this module did not make
    /// (not a veth carrying [`super::LINK_ALIAS`]): never reused or deleted.
    #[error(
        "{host_if} exists in the node namespace but was not made by overlay-ctl (not a veth with alias \"{alias}\"); refusing to touch it",
        alias = super::LINK_ALIAS
    )]
    NotOurs {
        /// The interface.
        host_if: String,
    },
    /// The instance namespace already has an `eth0` that is not the peer of
    /// the host-side interface.
    #[error("network namespace {netns} already has an eth0 that is not the peer of {host_if}")]
    Eth0Taken {
        /// The instance namespace.
        netns: String,
        /// The host-side interface being created.
        host_if: String,
    },
    /// An interface that was just created or looked up is not there.
    #[error("interface {ifname} not found {place}")]
    Missing {
        /// The interface.
        ifname: String,
        /// Where it was looked for.
        place: String,
    },
    /// The helper thread for the instance namespace died.
    #[error("helper thread for network namespace {netns} panicked")]
    Helper {
        /// The instance namespace.
        netns: String,
    },
}

impl Error {
    /// The errno of a refused netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno(source),
            _ => None,
        }
    }
}

/// The (positive) errno of a netlink error answer.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// A netlink error as its errno text ("File exists (os error 17)") rather
/// than rtnetlink's debug-heavy wording.
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    }
}
