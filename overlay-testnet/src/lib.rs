//! Throw-away test networks built from Linux network namespaces.
//!
//! The overlay's integration tests run as root and build their networks out
//! of named network namespaces (`ip netns`) joined by veth pairs and a bridge.
//! This crate creates those pieces under collision-free names and removes
//! them again when they are dropped, including when a test panics:
//!
//! * [`Netns`]: one named namespace (`ovt<pid>n<counter>-<label>`) with its
//!   loopback up; run commands in it ([`Netns::run`], [`Netns::ip`],
//!   [`Netns::spawn`]) or run a closure on a thread inside it
//!   ([`Netns::enter`]). Dropping it kills every process left inside and
//!   deletes it.
//! * [`veth`]: a veth pair with one end in each of two namespaces.
//! * [`Topology`]: a switch namespace with bridge `br0` and N node
//!   namespaces on it (`n1` = 192.0.2.11/24, `n2` = 192.0.2.12/24, ...),
//!   plus optional extra hosts ([`Topology::add_host`]).
//! * [`NsChild`]: a background process in a namespace, killed on drop.
//! * [`servers`]: tiny TCP/UDP servers that say which instance answered, and
//!   a paced download whose every byte the client checks.
//! * [`Etcd`]: an etcd inside a namespace, for the cluster store.
//! * [`tun`]: a TUN device in a namespace with a userspace forwarder that
//!   carries its packets bare in UDP ([`tun::Forwarder`]), as Oakestra's
//!   data path and a test gateway do.
//! * [`cleanup_stale`]: deletes namespaces left behind by a test process
//!   that was SIGKILLed before its destructors ran.
//!
//! Nothing here ever touches the root namespace: every `ip` command runs
//! with `-n NAME` or under `ip netns exec NAME`, and veth pairs are created
//! directly inside a test namespace.
//!
//! These tests need root. Call [`require_root`] first: it fails with a clear
//! message instead of letting a test skip itself.

mod child;
mod cleanup;
pub mod etcd;
mod netns;
pub mod servers;
mod topology;
pub mod tun;

use std::io;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

pub use child::NsChild;
pub use cleanup::{cleanup_stale, list_netns};
pub use etcd::{Etcd, EtcdTls};
pub use netns::{Netns, veth};
pub use topology::{Node, Router, Topology};

/// What went wrong while building or tearing down a test network.
///
/// Its `Debug` output is the same readable message as `Display`, so a test
/// returning [`Result`] fails with e.g. "command `ip -n ... ` failed (exit
/// status: 1): ..." rather than a struct dump.
#[derive(thiserror::Error)]
pub enum Error {
    /// A command ran but exited unsuccessfully.
    #[error(
        "command `{cmd}` failed ({status}): {}",
        describe_output(stderr, stdout)
    )]
    Command {
        /// The command line, as it would be typed in a shell.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
        /// Its standard output, trimmed.
        stdout: String,
    },
    /// A command could not be started at all (e.g. the program is missing).
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: nix::Error,
    },
    /// The tests were started without root privileges.
    #[error("these tests need root (CAP_NET_ADMIN, CAP_BPF): run them with sudo or as root")]
    NotRoot,
    /// [`wait_until`] gave up.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// A caller passed an argument this crate cannot use.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe_output(stderr: &str, stdout: &str) -> String {
    match (stderr.is_empty(), stdout.is_empty()) {
        (false, true) => stderr.to_owned(),
        (false, false) => format!("{stderr} (stdout: {stdout})"),
        (true, false) => format!("no stderr (stdout: {stdout})"),
        (true, true) => "no output".to_owned(),
    }
}

/// Fails with [`Error::NotRoot`] unless the effective user is root.
///
/// Tests call this first so that a run without privileges fails with a clear
/// message rather than a confusing `ip` error (or, worse, a silent skip).
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// Polls `f` every 20 ms until it returns true, or fails with
/// [`Error::Timeout`] naming `what` once `timeout` has passed.
///
/// `f` is always called at least once, and once more after the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return if f() {
                Ok(())
            } else {
                Err(Error::Timeout {
                    what: what.to_owned(),
                    timeout,
                })
            };
        }
        std::thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
}

/// Renders a command line for error messages, quoting arguments that need it.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with stdin closed; returns its stdout, or an
/// error naming the command line, exit status and stderr.
pub(crate) fn run_checked(mut cmd: Command) -> Result<String> {
    let line = command_line(&cmd);
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            cmd: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            stdout: stdout.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_when_needed() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "ovt1n0-a", "sh", "-c", "echo 'hi' > x", ""]);
        assert_eq!(
            command_line(&cmd),
            r#"ip netns exec ovt1n0-a sh -c 'echo '\''hi'\'' > x' ''"#
        );
    }

    #[test]
    fn failed_command_error_names_command_status_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo oops >&2; exit 3"]);
        let err = run_checked(cmd).unwrap_err().to_string();
        assert!(
            err.contains("sh -c 'echo out; echo oops >&2; exit 3'"),
            "{err}"
        );
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert!(err.contains("stdout: out"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_checked(Command::new("/nonexistent/ovt-program")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ovt-program"));
    }

    #[test]
    fn wait_until_succeeds_and_times_out() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls >= 3
        })
        .unwrap();
        assert_eq!(calls, 3);

        let start = Instant::now();
        let err = wait_until(Duration::from_millis(100), "never", || false).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(matches!(err, Error::Timeout { .. }));
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn not_root_message() {
        assert_eq!(
            Error::NotRoot.to_string(),
            "these tests need root (CAP_NET_ADMIN, CAP_BPF): run them with sudo or as root"
        );
    }
}
