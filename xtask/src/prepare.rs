//! Machine preparation for tests and the demo: root, Debian packages, bpffs,
//! and namespaces left behind by killed test runs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Commands the tests and the demo run, and the Debian package that brings
/// each; a test that needs another command adds it here.
pub const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
    // The agent masquerades instance traffic leaving the overlay.
    ("nft", "nftables"),
    // The cluster store the agents and the tests run.
    ("etcd", "etcd-server"),
    // Real DNS clients for the name service tests.
    ("dig", "dnsutils"),
    // The bench's DNS row: the load tool and the server compared with ours.
    ("dnsperf", "dnsperf"),
    ("dnsmasq", "dnsmasq-base"),
    // Checks the agent's /metrics exposition.
    ("promtool", "prometheus"),
];

/// Where the kernel's BPF file system belongs.
const BPFFS: &str = "/sys/fs/bpf";

/// Everything `cargo xtask test` and `demo` need from the machine. `what`
/// names the command for the root message ("cargo xtask test").
pub fn prepare(what: &str, needs: &str) -> anyhow::Result<()> {
    require_root(what, needs)?;
    install_missing_packages()?;
    mount_bpffs()?;
    let deleted = overlay_testnet::cleanup_stale()
        .context("deleting namespaces left by earlier test runs")?;
    if deleted > 0 {
        println!("prepare: deleted {deleted} namespace(s) left by earlier runs");
    }
    Ok(())
}

/// Fails with one sentence unless running as root.
pub fn require_root(what: &str, needs: &str) -> anyhow::Result<()> {
    if overlay_testnet::require_root().is_err() {
        bail!("{what} needs root: {needs}");
    }
    Ok(())
}

fn install_missing_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("prepare: installing {}", missing.join(" "));
    let hint = format!(
        "could not install {}: install them with your package manager",
        missing.join(" ")
    );
    apt(&["update"]).context(hint.clone())?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).context(hint)?;
    let still: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(cmd, _)| *cmd)
        .collect();
    if !still.is_empty() {
        bail!(
            "after installing packages these commands are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether `cmd` is an executable in `PATH` or the sbin directories (which
/// a non-login root shell may lack in `PATH`).
fn on_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .any(|dir| {
            std::fs::metadata(dir.join(cmd))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Mounts the BPF file system on `/sys/fs/bpf` unless it already is.
fn mount_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        return Ok(());
    }
    println!("prepare: mounting bpffs on {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .status()
        .context("cannot run mount")?;
    if !status.success() {
        bail!("`mount -t bpf bpf {BPFFS}` failed ({status})");
    }
    Ok(())
}

fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields
            .next()
            .is_some_and(|dir| Path::new(dir) == Path::new(BPFFS))
            && fields.next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_only_where_it_belongs() {
        let yes = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        let elsewhere = "bpf /mnt/bpf bpf rw 0 0\n";
        let wrong_type = "none /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(bpffs_mounted(yes));
        assert!(!bpffs_mounted(elsewhere));
        assert!(!bpffs_mounted(wrong_type));
        assert!(!bpffs_mounted(""));
    }

    #[test]
    fn package_list_has_no_duplicates() {
        for (i, (cmd, _)) in PACKAGES.iter().enumerate() {
            assert!(!PACKAGES[..i].iter().any(|(c, _)| c == cmd), "{cmd}");
        }
        assert!(on_path("sh"));
        assert!(!on_path("ovt-no-such-command"));
    }
}
