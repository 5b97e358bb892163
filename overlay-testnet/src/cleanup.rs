//! Tearing namespaces down: on drop, and for leftovers of dead test runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::owner_pid;
use crate::{Error, Result, run_checked, wait_until};

/// Names of all named network namespaces (`ip netns list`), this crate's and
/// others'.
pub fn list_netns() -> Result<Vec<String>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    Ok(run_checked(cmd)?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes this crate's namespaces (`ovt<pid>n...`) whose creating process
/// is gone, e.g. after a test run was SIGKILLed; returns how many it deleted.
/// Namespaces of live processes, including this one, are left alone.
pub fn cleanup_stale() -> Result<usize> {
    let mut deleted = 0;
    for name in list_netns()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        match destroy(&name) {
            Ok(()) => deleted += 1,
            // Another process cleaned it up at the same time.
            Err(_) if !Path::new("/run/netns").join(&name).exists() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(deleted)
}

fn pid_alive(pid: i32) -> bool {
    pid == std::process::id() as i32 || kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

pub(crate) fn etc_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

pub(crate) fn pids(name: &str) -> Result<Vec<i32>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "pids", name]);
    Ok(run_checked(cmd)?
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// Kills everything inside namespace `name`, deletes it and its
/// `/etc/netns` directory. Keeps going after a failure and reports the first.
pub(crate) fn destroy(name: &str) -> Result<()> {
    let killed = kill_all(name);
    let mut del = Command::new("ip");
    del.args(["netns", "del", name]);
    let deleted = run_checked(del);
    let etc = remove_etc_dir(name);
    killed.and(deleted).and(etc)
}

fn kill_all(name: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let victims: Vec<i32> = pids(name)?.into_iter().filter(|&p| p != me).collect();
    if victims.is_empty() {
        return Ok(());
    }
    for &pid in &victims {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                return Err(Error::Sys {
                    what: format!("killing pid {pid} in namespace {name}"),
                    source,
                });
            }
        }
    }
    wait_until(
        Duration::from_secs(2),
        &format!("processes {victims:?} in namespace {name} to exit"),
        || pids(name).is_ok_and(|left| left.iter().all(|p| *p == me)),
    )
}

fn remove_etc_dir(name: &str) -> Result<()> {
    let dir = etc_dir(name);
    if fs::symlink_metadata(&dir).is_err() {
        return Ok(());
    }
    if fs::remove_dir_all(&dir).is_ok() {
        return Ok(());
    }
    // Something is mounted on or below it: detach and try once more.
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    fs::remove_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("removing {}", dir.display()),
        source,
    })
}
