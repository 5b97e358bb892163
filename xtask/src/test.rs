//! `cargo xtask test` and `cargo xtask demo`.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::prepare::{prepare, require_root};
use crate::previous;

const TEST_NEEDS: &str = "the end-to-end tests build network namespaces and load eBPF programs";
const DEMO_NEEDS: &str = "the demo builds network namespaces and loads eBPF programs";

type StepFn<'a> = Box<dyn FnOnce() -> anyhow::Result<()> + 'a>;

/// Runs every step in order; the first failure stops the run. `cargo_test_args`
/// are appended to `cargo test`.
pub fn run(cargo_test_args: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask test", TEST_NEEDS)?;
    let ws = crate::workspace();
    let ws = ws.as_path();
    let mut test_args = vec!["test", "--workspace", "--exclude", "overlay-ebpf"];
    test_args.extend(cargo_test_args.iter().map(String::as_str));
    let steps: Vec<(&str, String, StepFn)> = vec![
        (
            "prepare",
            "root, Debian packages, bpffs, stale namespaces".into(),
            Box::new(|| prepare("cargo xtask test", TEST_NEEDS)),
        ),
        (
            "fmt",
            "cargo fmt --all --check".into(),
            Box::new(move || cargo(ws, &["fmt", "--all", "--check"])),
        ),
        (
            "clippy",
            "cargo clippy --workspace --exclude overlay-ebpf --all-targets -- -D warnings".into(),
            Box::new(move || {
                cargo(
                    ws,
                    &[
                        "clippy",
                        "--workspace",
                        "--exclude",
                        "overlay-ebpf",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )
            }),
        ),
        (
            "clippy-ebpf",
            "cargo +nightly clippy --package overlay-ebpf --target bpfel-unknown-none -- -D warnings"
                .into(),
            Box::new(move || {
                overlay_build::clippy_ebpf(ws, &mut |m| println!("clippy-ebpf: {m}"))?;
                Ok(())
            }),
        ),
        (
            "previous",
            format!(
                "overlay-ctl of the previous release {} for the upgrade test",
                &previous::RELEASE[..12]
            ),
            Box::new(move || previous::ensure(ws).map(drop)),
        ),
        (
            "test",
            format!("cargo {}", test_args.join(" ")),
            Box::new(move || {
                let prev = previous::binary(ws);
                cargo_with(ws, &test_args, &[(previous::ENV, prev.as_os_str())])
            }),
        ),
        (
            "release",
            "cargo test --release -p overlay-ctl --test programs all_programs_verify".into(),
            // The release eBPF object is what `cargo build --release` ships;
            // its code differs from the debug object's (stack frames,
            // registers), and the verifier judges each on its own.
            Box::new(move || {
                cargo(
                    ws,
                    &[
                        "test",
                        "--release",
                        "-p",
                        "overlay-ctl",
                        "--test",
                        "programs",
                        "all_programs_verify",
                    ],
                )
            }),
        ),
        (
            "leftovers",
            "no ovt* namespace may remain".into(),
            Box::new(no_leftover_namespaces),
        ),
    ];

    let total = steps.len();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut failure = None;
    for (i, (name, what, step)) in steps.into_iter().enumerate() {
        println!("==> [{}/{total}] {name}: {what}", i + 1);
        let start = Instant::now();
        let result = step();
        timings.push((name, start.elapsed()));
        if let Err(e) = result {
            failure = Some((name, e));
            break;
        }
    }
    println!("==> timings");
    for (name, took) in &timings {
        println!("    {name:<12} {:>7.1}s", took.as_secs_f64());
    }
    let sum: Duration = timings.iter().map(|(_, d)| *d).sum();
    println!("    {:<12} {:>7.1}s", "total", sum.as_secs_f64());
    match failure {
        Some((name, e)) => Err(e.context(format!("cargo xtask test: step `{name}` failed"))),
        None => {
            println!("==> all {total} steps passed");
            Ok(())
        }
    }
}

/// `cargo ARGS` in the workspace with the cargo that runs the xtask.
fn cargo(ws: &Path, args: &[&str]) -> anyhow::Result<()> {
    cargo_with(ws, args, &[])
}

/// `cargo ARGS` with extra environment variables.
fn cargo_with(ws: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> anyhow::Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(ws)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo_bin() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Fails naming every `ovt*` namespace whose creator has exited. The
/// `prepare` step deleted those of earlier runs, so these are the tests'
/// own; namespaces of live processes (another test run, a running demo)
/// are not this run's and only mentioned.
fn no_leftover_namespaces() -> anyhow::Result<()> {
    let (left, foreign): (Vec<String>, Vec<String>) = overlay_testnet::list_netns()
        .context("listing network namespaces")?
        .into_iter()
        .filter(|n| n.starts_with("ovt"))
        .partition(|n| !owner_alive(n));
    if !foreign.is_empty() {
        println!(
            "leftovers: ignoring namespaces of running processes: {}",
            foreign.join(" ")
        );
    }
    if !left.is_empty() {
        bail!(
            "the tests left network namespaces behind: {} (a test does not drop its Netns/Topology; delete them with `ip netns del NAME`)",
            left.join(" ")
        );
    }
    Ok(())
}

/// Whether the process named in an overlay-testnet namespace name
/// (`ovt<pid>n<counter>-<label>`) still runs.
fn owner_alive(name: &str) -> bool {
    let pid = name
        .strip_prefix("ovt")
        .and_then(|rest| rest.split_once('n'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
        .filter(|&pid| pid > 0);
    pid.is_some_and(|pid| {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, None) != Err(nix::errno::Errno::ESRCH)
    })
}

/// Prepares the machine and runs `overlay-ctl`'s `demo` example; returns
/// its exit code. Ctrl-C reaches the demo, which cleans up; should it die
/// anyway, its namespaces are deleted here once it has exited.
pub fn demo() -> anyhow::Result<i32> {
    prepare("cargo xtask demo", DEMO_NEEDS)?;
    let _guard = IgnoreSigint::install()?;
    // The demo drives the real `overlay-ctl` binary: build it too.
    let built = Command::new(cargo_bin())
        .current_dir(crate::workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "overlay-ctl",
            "--bin",
            "overlay-ctl",
            "--example",
            "demo",
        ])
        .status()
        .context("cannot start cargo")?;
    if !built.success() {
        anyhow::bail!("building overlay-ctl and the demo failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target"));
    let status = Command::new(target.join("debug/examples/demo"))
        .env("OVERLAY_CTL_BIN", target.join("debug/overlay-ctl"))
        .status()
        .context("cannot start the demo")?;
    let deleted = overlay_testnet::cleanup_stale().context("deleting the demo's namespaces")?;
    if deleted > 0 {
        eprintln!("demo: deleted {deleted} namespace(s) the demo left behind");
    }
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(1)
    }))
}

/// While alive, SIGINT does not kill the xtask (so it can clean up after the
/// demo); a handler rather than SIG_IGN, so the child's default is restored
/// by exec and Ctrl-C still reaches it.
pub(crate) struct IgnoreSigint(nix::sys::signal::SigAction);

extern "C" fn on_sigint(_: nix::libc::c_int) {}

impl IgnoreSigint {
    pub(crate) fn install() -> anyhow::Result<Self> {
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
    use super::owner_alive;

    #[test]
    fn namespace_owner_liveness() {
        assert!(owner_alive(&format!("ovt{}n3-sw", std::process::id())));
        assert!(!owner_alive("ovt2000000000n0-sw"));
        assert!(!owner_alive("ovt-handmade"));
    }
}
