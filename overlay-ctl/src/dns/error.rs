//! The error type of [`super`]: every variant names what it concerned (the
//! address, file, interface or upstream) and includes the underlying error
//! in its text, since the agent logs only the top-level message.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Result type of the name service.
pub type Result<T, E = DnsError> = std::result::Result<T, E>;

/// What went wrong while serving names or writing a `resolv.conf`.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name that cannot be a directory of its own under `/etc/netns`.
    #[error("`{0}` is not a network namespace name")]
    InvalidNetns(String),
    /// A file or directory under `/etc/netns` could not be changed.
    #[error("{op} {}: {source}", path.display())]
    File {
        /// "creating", "writing" or "removing".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The unicast server could not bind its address.
    #[error("binding the DNS server's {proto} socket to {addr}: {source}")]
    Bind {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// A bound socket of the unicast server could not be set up.
    #[error("setting up the DNS server's {proto} socket on {addr}: {source}")]
    Socket {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// A socket could not be handed to Tokio.
    #[error("{what} must run inside a Tokio runtime: {source}")]
    Runtime {
        /// The function that was called, e.g. "DnsServer::start".
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The unicast server did not stop cleanly.
    #[error("stopping the DNS server on {addr}: {source}")]
    Shutdown {
        /// The address it served.
        addr: SocketAddr,
        /// Why it failed.
        source: hickory_server::net::NetError,
    },
    /// A query for a name outside `.local` could not be relayed.
    #[error("forwarding to {upstream}: {source}")]
    Forward {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// The upstream resolver did not answer in time.
    #[error("forwarding to {upstream}: no answer within {after:?}")]
    UpstreamTimeout {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// How long it was given.
        after: Duration,
    },
    /// The mDNS responder could not open its socket.
    #[error("opening the mDNS socket on 0.0.0.0:5353: {source}")]
    MdnsSocket {
        /// Why it failed.
        source: io::Error,
    },
    /// mDNS was asked to answer on an interface that does not exist.
    #[error("mDNS: no interface `{ifname}`: {source}")]
    NoInterface {
        /// The interface.
        ifname: String,
        /// Why the lookup failed.
        source: nix::errno::Errno,
    },
    /// The mDNS socket could not join the group on an interface.
    #[error("mDNS: joining 224.0.0.251 on {ifname}: {source}")]
    Join {
        /// The interface.
        ifname: String,
        /// Why it failed.
        source: io::Error,
    },
    /// mDNS was asked to stop on an interface it does not answer on.
    #[error("mDNS: not answering on `{ifname}`")]
    NotAnswering {
        /// The interface.
        ifname: String,
    },
}
