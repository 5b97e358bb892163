//! The node's side of things: bpffs, forwarding, masquerade, own addresses.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::error::{host, sys};
use super::{AgentError, Node, Result};
use crate::config::AgentConfig;
use crate::model::Subnet;

/// bpffs under the pin directory, the directories, forwarding, masquerade.
pub fn prepare(cfg: &AgentConfig) -> Result<()> {
    ensure_bpffs(&cfg.bpf_pin_dir)?;
    for dir in [&cfg.bpf_pin_dir, &cfg.state_dir] {
        std::fs::create_dir_all(dir).map_err(host(format!("creating {}", dir.display())))?;
    }
    if let Some(parent) = cfg.api_socket.parent() {
        std::fs::create_dir_all(parent).map_err(host(format!("creating {}", parent.display())))?;
    }
    // Instances route through the node; the tunnel's FIB lookup needs it too.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(host("enabling IPv4 forwarding"))?;
    Ok(())
}

/// Instances' traffic to the outside leaves with the node's address.
pub fn masquerade(cfg: &AgentConfig, subnet: Subnet) -> Result<()> {
    if cfg.masquerade {
        nft(&format!(
            "table ip {t}\nflush table ip {t}\ntable ip {t} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {subnet} oifname \"{u}\" masquerade\n  }}\n}}\n",
            t = table(cfg),
            u = cfg.uplink
        ))?;
    }
    Ok(())
}

fn table(cfg: &AgentConfig) -> String {
    format!("overlay_{}", cfg.node_id.replace('-', "_"))
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(host(
            "running nft (install nftables, or set masquerade = false)",
        ))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(host("nft"))?;
    if !out.status.success() {
        return Err(AgentError::Nft {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Mounts a bpffs at `dir` unless `dir` (or its nearest existing parent) is on one.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs = statfs(existing)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false);
    if on_bpffs {
        return Ok(());
    }
    let mountpoint = Path::new("/sys/fs/bpf");
    if !dir.starts_with(mountpoint) {
        return Err(AgentError::Unfit(format!(
            "{} is not on a bpf filesystem: mount one (mount -t bpf bpf DIR) or use /sys/fs/bpf",
            dir.display()
        )));
    }
    // A bpffs mounted in a private mount namespace (`ip netns exec` makes
    // one) dies with the agent's process, and its pins with it: a restart
    // would find nothing to adopt, and `--teardown` nothing to remove.
    if private_mount_namespace() {
        return Err(AgentError::Unfit(format!(
            "{} is not on a bpf filesystem, and this agent runs in a private mount namespace \
             (as under `ip netns exec`), where a bpffs it mounts dies with it and takes the \
             pinned dataplane along: mount one in the host's mount namespace first (mount -t \
             bpf bpf /sys/fs/bpf), or run the agent there (ip netns exec remounts /sys; use \
             nsenter --net=/run/netns/NAME instead)",
            dir.display()
        )));
    }
    nix::mount::mount(
        Some("bpf"),
        mountpoint,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(sys("mounting bpffs on /sys/fs/bpf"))
}

/// Whether this process runs in a mount namespace of its own: another than
/// its parent's (`ip netns exec` and `unshare -m` make one for the program
/// they start), or than pid 1's where the parent's cannot be read.
fn private_mount_namespace() -> bool {
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(own) = ns("self".into()) else {
        return false;
    };
    let parent = nix::unistd::getppid().as_raw();
    [parent.to_string(), "1".into()]
        .into_iter()
        .filter(|pid| pid != "0")
        .find_map(ns)
        .is_some_and(|other| other != own)
}

/// This node's identity and addresses.
pub fn node(cfg: &AgentConfig, subnet: Subnet) -> Result<Node> {
    let ifindex = nix::net::if_::if_nametoindex(cfg.uplink.as_str())
        .map_err(sys(format!("uplink `{}`", cfg.uplink)))?;
    let ip = match cfg.node_ip {
        Some(ip) => ip,
        None => uplink_addr(&cfg.uplink)?,
    };
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => uplink_mtu(&cfg.uplink)?,
    };
    Ok(Node {
        name: cfg.node_id.clone(),
        ip,
        ewp: cfg.ewp,
        nsp: cfg.nsp,
        public: cfg.public,
        subnet,
        uplink_ifindex: ifindex,
        uplink_mtu: mtu,
        mtu: mtu - overlay_common::ENCAP_OVERHEAD,
        location: cfg.location,
    })
}

fn uplink_addr(uplink: &str) -> Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(sys("listing addresses"))?;
    addrs
        .filter(|a| a.interface_name == uplink)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .ok_or_else(|| {
            AgentError::Unfit(format!(
                "uplink `{uplink}` has no IPv4 address: set node_ip"
            ))
        })
}

fn uplink_mtu(uplink: &str) -> Result<u16> {
    let path = format!("/proc/sys/net/ipv4/conf/{uplink}/mtu");
    let sys = format!("/sys/class/net/{uplink}/mtu");
    std::fs::read_to_string(&sys)
        .or_else(|_| std::fs::read_to_string(&path))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| AgentError::Unfit(format!("cannot read the MTU of `{uplink}`: set mtu")))
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Removes pinned links (detaching the programs), pinned maps, the
/// masquerade table and the API socket.
pub fn teardown(cfg: &AgentConfig) -> Result<()> {
    let rm = |p: &Path| match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(host(format!("removing {}", p.display()))(e))
        }
        _ => Ok(()),
    };
    rm(&cfg.bpf_pin_dir)?;
    let _ = std::fs::remove_file(&cfg.api_socket);
    let _ = std::fs::remove_file(cfg.state_dir.join(super::instances::FILE));
    if cfg.masquerade {
        let _ = nft(&format!("delete table ip {}\n", table(cfg)));
    }
    Ok(())
}
