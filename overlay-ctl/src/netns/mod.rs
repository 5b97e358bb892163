//! Instance plumbing: links an instance's network namespace into the node,
//! the way the agent does it for `instance deploy --netns NAME|PATH`.
//!
//! ```text
//!   node namespace                       instance namespace
//!   host_if (veth, MAC = host_mac) ───── eth0 (MAC = inst_mac)
//!   route nsip/32 dev host_if            nsip/32
//!                                        169.254.1.1 dev eth0 scope link
//!                                        default via 169.254.1.1 dev eth0
//!                                        neigh 169.254.1.1 lladdr host_mac PERMANENT
//! ```
//!
//! Everything goes through rtnetlink (no `ip` commands). [`create`] and
//! [`remove`] work on the namespace of the calling thread (the node's): its
//! netlink socket is opened there, so call them from a thread in the node
//! namespace, inside a tokio runtime (e.g. a current-thread runtime on that
//! thread; the connection task is `tokio::spawn`ed). Work
//! inside the instance namespace runs on a helper thread that `setns`es into
//! it; the calling thread never changes namespace.
//!
//! The host side carries the alias [`LINK_ALIAS`]: an existing interface is
//! only ever reused, replaced or deleted if it is a veth with that alias.

mod addrs;
mod error;
mod instance;
mod nl;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

pub use error::{Error, Result};
pub use instance::INSTANCE_IF;

use instance::Plan;
use nl::{Link, Netlink};

/// The gateway address every instance routes through (link-local; it exists
/// only as a permanent neighbour entry pointing at the host side).
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Longest namespace name accepted.
pub const MAX_NETNS_NAME: usize = 64;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// The alias on every host-side interface this module creates.
pub const LINK_ALIAS: &str = "overlay-ctl instance link";

/// A network namespace as the CLI names it (`--netns NAME|PATH|PID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetnsRef {
    /// `/run/netns/NAME` (`ip netns` style).
    Name(String),
    /// Any namespace file (a bind mount, `/proc/PID/ns/net`, ...).
    Path(PathBuf),
    /// The namespace of a process: `/proc/PID/ns/net`.
    Pid(u32),
}

impl FromStr for NetnsRef {
    type Err = Error;

    /// `/...` is a path, all digits a pid, anything else a name.
    fn from_str(s: &str) -> Result<NetnsRef> {
        let bad = |reason| Error::InvalidNetns {
            value: s.to_owned(),
            reason,
        };
        let r = if s.starts_with('/') {
            NetnsRef::Path(PathBuf::from(s))
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            NetnsRef::Pid(s.parse().map_err(|_| bad("pid out of range"))?)
        } else {
            NetnsRef::Name(s.to_owned())
        };
        match r.path() {
            Err(Error::InvalidNetns { reason, .. }) => Err(bad(reason)),
            other => other.map(|_| r),
        }
    }
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsRef::Name(n) => f.write_str(n),
            NetnsRef::Path(p) => write!(f, "{}", p.display()),
            NetnsRef::Pid(p) => write!(f, "of pid {p}"),
        }
    }
}

impl NetnsRef {
    /// The namespace file, after validating the reference.
    pub fn path(&self) -> Result<PathBuf> {
        let value = match self {
            NetnsRef::Pid(pid) => pid.to_string(),
            other => other.to_string(),
        };
        let bad = |reason| Error::InvalidNetns { value, reason };
        match self {
            NetnsRef::Name(n) => {
                if n.is_empty() {
                    return Err(bad("empty name"));
                }
                if n.len() > MAX_NETNS_NAME {
                    return Err(bad("name longer than 64 characters"));
                }
                if n.contains('/') || n.contains('\0') {
                    return Err(bad("a name cannot contain '/' (give a path instead)"));
                }
                if n == "." || n == ".." {
                    return Err(bad("not a namespace name"));
                }
                Ok(Path::new(NETNS_DIR).join(n))
            }
            NetnsRef::Path(p) if p.is_absolute() => Ok(p.clone()),
            NetnsRef::Path(_) => Err(bad("a path must be absolute")),
            NetnsRef::Pid(0) => Err(bad("pid 0 is not a process")),
            NetnsRef::Pid(pid) => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        }
    }

    /// Opens the namespace and checks that it is a network namespace.
    pub fn open(&self) -> Result<OwnedFd> {
        let path = self.path()?;
        let file = File::open(&path).map_err(|source| Error::OpenNetns {
            netns: self.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        // NS_GET_NSTYPE = _IO(0xb7, 0x3): which kind of namespace an nsfs fd is.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: an argument-less ioctl on a file descriptor we own.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::BadNetns {
                netns: self.to_string(),
                reason: format!("{} is not a network namespace", path.display()),
            });
        }
        Ok(file.into())
    }
}

/// Checks an interface name the kernel would accept (and `ip` could show).
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidIfName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':', whitespace or a control character");
    }
    Ok(())
}

/// What [`create`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The instance's namespace.
    pub netns: NetnsRef,
    /// The host-side veth in the node namespace (at most 15 bytes).
    pub host_if: String,
    /// The instance's NamespaceIP, on its `eth0` as `/32`.
    pub nsip: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u16,
    /// The link-local gateway the instance routes through.
    pub gateway: Ipv4Addr,
}

impl LinkSpec {
    /// A spec with the [`DEFAULT_GATEWAY`].
    pub fn new(netns: NetnsRef, host_if: impl Into<String>, nsip: Ipv4Addr, mtu: u16) -> Self {
        LinkSpec {
            netns,
            host_if: host_if.into(),
            nsip,
            mtu,
            gateway: DEFAULT_GATEWAY,
        }
    }

    /// Checks every field without touching anything.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.host_if)?;
        self.netns.path()?;
        let bad = |reason: String| {
            Err(Error::InvalidSpec {
                host_if: self.host_if.clone(),
                reason,
            })
        };
        let ip = self.nsip;
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_link_local()
        {
            return bad(format!("{ip} cannot be a NamespaceIP"));
        }
        if !self.gateway.is_link_local() {
            return bad(format!(
                "gateway {} is not link-local (169.254.0.0/16)",
                self.gateway
            ));
        }
        if self.mtu < 68 {
            return bad(format!("MTU {} is below the IPv4 minimum of 68", self.mtu));
        }
        Ok(())
    }
}

/// What [`create`] built (or found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLink {
    /// The host-side interface.
    pub host_if: String,
    /// Its ifindex in the node namespace.
    pub host_ifindex: u32,
    /// Its MAC: the gateway's MAC as the instance sees it.
    pub host_mac: [u8; 6],
    /// The MAC of the instance's `eth0`.
    pub inst_mac: [u8; 6],
}

/// Links the instance namespace of `spec` into the node namespace (the
/// calling thread's). Idempotent: an existing link of ours to the same
/// namespace with the same NamespaceIP is kept (anything missing around it,
/// such as a route, is restored; nothing else changes); one that differs is
/// replaced. On error, a link created by this call is deleted again.
pub async fn create(spec: &LinkSpec) -> Result<InstanceLink> {
    spec.validate()?;
    let label = spec.netns.to_string();
    let ns = spec.netns.open()?;
    not_current_namespace(&ns, &label)?;

    let node = Netlink::open("in the node namespace")?;
    let existing = node.link_by_name(&spec.host_if).await?;
    if let Some(host) = &existing
        && !(host.veth && host.alias.as_deref() == Some(LINK_ALIAS))
    {
        return Err(Error::NotOurs {
            host_if: spec.host_if.clone(),
        });
    }
    let eth0 = instance::run(&ns, &label, async |nl| instance::inspect(nl).await).await?;
    let mut peers = false;
    if let (Some(host), Some(eth0)) = (&existing, &eth0) {
        let nsid = node.nsid_of(ns.as_fd(), &label).await?;
        peers = host.peer == Some(eth0.link.index)
            && eth0.link.peer == Some(host.index)
            && host.peer_nsid.is_some()
            && host.peer_nsid == nsid;
    }
    if eth0.is_some() && !peers {
        return Err(Error::Eth0Taken {
            netns: label,
            host_if: spec.host_if.clone(),
        });
    }
    let plan = |temp_name, host_mac| Plan {
        temp_name,
        nsip: spec.nsip,
        gateway: spec.gateway,
        mtu: spec.mtu.into(),
        host_mac,
    };
    if let Some(host) = &existing {
        // `peers` means eth0 is there; only its address is left to compare.
        if peers && eth0.is_some_and(|e| e.addrs == [(spec.nsip, 32)]) {
            node_side(&node, host, spec).await?;
            let plan = plan(None, host.mac);
            let inst_mac =
                instance::run(&ns, &label, async |nl| instance::configure(nl, plan).await).await?;
            return Ok(InstanceLink {
                host_if: spec.host_if.clone(),
                host_ifindex: host.index,
                host_mac: host.mac,
                inst_mac,
            });
        }
        // Ours, but for another NamespaceIP or namespace: start afresh.
        node.delete_link(host).await?;
    }

    let temp = temp_name();
    node.add_veth(&spec.host_if, &temp, spec.mtu.into()).await?;
    let host = node.require_link(&spec.host_if).await?;
    let built = async {
        node.set_alias(&host, LINK_ALIAS).await?;
        let peer = node.require_link(&temp).await?;
        node.move_link(&peer, ns.as_fd(), &format!("netns {label}"))
            .await?;
        node_side(&node, &host, spec).await?;
        let plan = plan(Some(temp), host.mac);
        instance::run(&ns, &label, async |nl| instance::configure(nl, plan).await).await
    };
    match built.await {
        Ok(inst_mac) => Ok(InstanceLink {
            host_if: spec.host_if.clone(),
            host_ifindex: host.index,
            host_mac: host.mac,
            inst_mac,
        }),
        Err(e) => {
            // Best effort: the first error is the one worth reporting.
            let _ = node.delete_link(&host).await;
            Err(e)
        }
    }
}

/// Host side: MTU, up, and the route `nsip/32 dev host_if`.
async fn node_side(node: &Netlink, host: &Link, spec: &LinkSpec) -> Result<()> {
    node.ensure_up(host, Some(spec.mtu.into())).await?;
    let mut host = host.clone();
    host.up = true;
    node.ensure_route(&host, spec.nsip, 32, None).await
}

/// Deletes the host-side veth `host_if` (its peer goes with it) and the
/// node's routes through it. Removing what does not exist is Ok; an
/// interface of that name that this module did not create is an error.
pub async fn remove(host_if: &str) -> Result<()> {
    validate_ifname(host_if)?;
    let node = Netlink::open("in the node namespace")?;
    let Some(host) = node.link_by_name(host_if).await? else {
        return Ok(());
    };
    if !(host.veth && host.alias.as_deref() == Some(LINK_ALIAS)) {
        return Err(Error::NotOurs {
            host_if: host_if.to_owned(),
        });
    }
    node.delete_routes_via(&host).await?;
    node.delete_link(&host).await
}

/// Refuses the namespace the calling thread is in: linking the node to
/// itself would rename an interface of the node to `eth0`.
fn not_current_namespace(ns: &OwnedFd, label: &str) -> Result<()> {
    let sys = |source| Error::Sys {
        op: "inspecting network namespace",
        target: label.to_owned(),
        source,
    };
    let target = File::from(ns.try_clone().map_err(sys)?)
        .metadata()
        .map_err(sys)?;
    let current = std::fs::metadata("/proc/thread-self/ns/net").map_err(sys)?;
    if (target.dev(), target.ino()) == (current.dev(), current.ino()) {
        return Err(Error::BadNetns {
            netns: label.to_owned(),
            reason: "it is the node's own namespace (the caller's)".to_owned(),
        });
    }
    Ok(())
}

/// A name for a new peer, unique within this process and between agents:
/// `ovl<pid hex>t<n>`, at most 15 bytes.
fn temp_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 100_000;
    format!("ovl{:x}t{n}", std::process::id())
}

/// Puts `ip/32` on the node's interface `ifname` (the agent's name service
/// listens on the instances' gateway address this way). Idempotent.
pub async fn ensure_local_addr(ifname: &str, ip: Ipv4Addr) -> Result<()> {
    let node = Netlink::open("in the node namespace")?;
    let link = node
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| Error::InvalidSpec {
            host_if: ifname.to_owned(),
            reason: "no such interface in the node namespace".into(),
        })?;
    node.ensure_up(&link, None).await?;
    node.ensure_addr(&link, ip, 32).await
}

/// Whether the node's interface `ifname` is a veth (as uplinks of
/// container-hosted nodes and test networks are).
pub async fn is_veth(ifname: &str) -> Result<bool> {
    let node = Netlink::open("in the node namespace")?;
    Ok(node.link_by_name(ifname).await?.is_some_and(|l| l.veth))
}
