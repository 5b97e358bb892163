//! The instance side: work done inside the instance's namespace, on a helper
//! thread that `setns`es into it and runs its own rtnetlink connection on
//! its own current-thread runtime. The calling thread never changes
//! namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::{CloneFlags, setns};

use super::error::{Error, Result};
use super::nl::{Link, Netlink};

/// The name of the instance-side interface.
pub const INSTANCE_IF: &str = "eth0";

/// Runs `f` with a netlink connection inside the namespace of `ns` and
/// returns its result, without blocking the caller's runtime.
pub(crate) async fn run<T, F>(ns: &OwnedFd, label: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: AsyncFnOnce(&Netlink) -> Result<T> + Send + 'static,
{
    let fd = ns.try_clone().map_err(|source| Error::Sys {
        op: "duplicating the namespace fd of",
        target: label.to_owned(),
        source,
    })?;
    let place = format!("in netns {label}");
    let target = label.to_owned();
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("overlay-netns".into())
        .spawn(move || {
            let _ = tx.send(in_thread(fd, place, target, f));
        })
        .map_err(|source| Error::Sys {
            op: "starting the helper thread for",
            target: label.to_owned(),
            source,
        })?;
    rx.await.map_err(|_| Error::Helper {
        netns: label.to_owned(),
    })?
}

fn in_thread<T, F>(fd: OwnedFd, place: String, label: String, f: F) -> Result<T>
where
    F: AsyncFnOnce(&Netlink) -> Result<T>,
{
    let sys = |op: &'static str| {
        let target = label.clone();
        move |source: std::io::Error| Error::Sys { op, target, source }
    };
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| sys("entering network namespace")(std::io::Error::from(e)))?;
    drop(fd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(sys("starting a runtime in"))?;
    rt.block_on(async move {
        let nl = Netlink::open(place)?;
        f(&nl).await
    })
}

/// The instance's `eth0`, as far as deciding whether to reuse it goes.
#[derive(Debug, Clone)]
pub(crate) struct Eth0 {
    pub link: Link,
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// Looks at `eth0` of the namespace `nl` is in.
pub(crate) async fn inspect(nl: &Netlink) -> Result<Option<Eth0>> {
    let Some(link) = nl.link_by_name(INSTANCE_IF).await? else {
        return Ok(None);
    };
    let addrs = nl.ipv4_addrs(&link).await?;
    Ok(Some(Eth0 { link, addrs }))
}

/// What to set up inside the instance namespace.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The temporary name of a freshly moved peer, renamed to `eth0`; `None`
    /// to (re)check an existing `eth0`.
    pub temp_name: Option<String>,
    pub nsip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub host_mac: [u8; 6],
}

/// Renames the moved peer to `eth0` (if new), sets MTU, brings it and `lo`
/// up, adds `nsip/32`, a link-scope route to the gateway, the default route
/// via the gateway and the gateway's permanent neighbour entry; each step
/// only if it is not in place. Returns eth0's MAC.
pub(crate) async fn configure(nl: &Netlink, plan: Plan) -> Result<[u8; 6]> {
    let mut link = match &plan.temp_name {
        Some(temp) => {
            let link = nl.require_link(temp).await?;
            nl.rename(&link, INSTANCE_IF).await?;
            nl.require_link(INSTANCE_IF).await?
        }
        None => nl.require_link(INSTANCE_IF).await?,
    };
    if let Some(lo) = nl.link_by_name("lo").await? {
        nl.ensure_up(&lo, None).await?;
    }
    nl.ensure_up(&link, Some(plan.mtu)).await?;
    link.up = true;
    nl.ensure_addr(&link, plan.nsip, 32).await?;
    nl.ensure_route(&link, plan.gateway, 32, None).await?;
    nl.ensure_route(&link, Ipv4Addr::UNSPECIFIED, 0, Some(plan.gateway))
        .await?;
    nl.ensure_neigh(&link, plan.gateway, plan.host_mac).await?;
    Ok(link.mac)
}
