//! `cargo xtask bench [--quick] [--rounds N]`: prepares the machine as `demo`
//! does, then runs the `overlay-bench` binary (release build), which builds
//! its networks in namespaces, measures, and writes `target/bench/`.

use std::process::Command;

use anyhow::Context;

use crate::prepare::prepare;

const NEEDS: &str = "the benchmark builds network namespaces and loads eBPF programs";

/// The `cargo run` arguments for the bench binary.
pub fn cargo_args(quick: bool, rounds: Option<usize>) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--release", "--quiet", "-p", "overlay-bench", "--"]
        .map(String::from)
        .to_vec();
    if quick {
        args.push("--quick".into());
    }
    if let Some(n) = rounds {
        args.push("--rounds".into());
        args.push(n.to_string());
    }
    args
}

/// Prepares the machine and runs the benchmark; returns its exit code.
/// Ctrl-C reaches the benchmark, which unwinds and deletes its namespaces;
/// should it die anyway, they are deleted here once it has exited.
pub fn run(quick: bool, rounds: Option<usize>) -> anyhow::Result<i32> {
    prepare("cargo xtask bench", NEEDS)?;
    let _guard = IgnoreSigint::install()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::workspace())
        .args(cargo_args(quick, rounds))
        .status()
        .context("cannot start cargo")?;
    let deleted =
        overlay_testnet::cleanup_stale().context("deleting the benchmark's namespaces")?;
    if deleted > 0 {
        eprintln!("bench: deleted {deleted} namespace(s) the benchmark left behind");
    }
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(1)
    }))
}

/// While alive, SIGINT does not kill the xtask (so it can clean up after the
/// benchmark); a handler rather than SIG_IGN, so the child's default is
/// restored by exec and Ctrl-C still reaches it.
struct IgnoreSigint(nix::sys::signal::SigAction);

extern "C" fn on_sigint(_: nix::libc::c_int) {}

impl IgnoreSigint {
    fn install() -> anyhow::Result<Self> {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let action = SigAction::new(
            SigHandler::Handler(on_sigint),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, which is async-signal-safe.
        let old =
            unsafe { sigaction(Signal::SIGINT, &action) }.context("installing a SIGINT handler")?;
        Ok(IgnoreSigint(old))
    }
}

impl Drop for IgnoreSigint {
    fn drop(&mut self) {
        // SAFETY: restores the disposition that was there before.
        let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::cargo_args;

    #[test]
    fn bench_arguments_reach_the_binary() {
        let args = cargo_args(true, Some(3));
        let tail: Vec<&str> = args
            .iter()
            .skip_while(|a| *a != "--")
            .map(String::as_str)
            .collect();
        assert_eq!(tail, ["--", "--quick", "--rounds", "3"]);
        assert!(args.contains(&"--release".to_string()));
        assert!(!cargo_args(false, None).contains(&"--quick".to_string()));
    }
}
