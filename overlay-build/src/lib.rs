//! The one way this project builds its eBPF object.
//!
//! Both `cargo xtask build-ebpf` and `overlay-ctl`'s `build.rs` call
//! [`build_ebpf`], so the object the agent embeds is exactly the one the
//! developer built. Before building, [`ensure_toolchain`] secures what a fresh
//! machine lacks: the nightly toolchain's `rust-src` and a `bpf-linker` whose
//! LLVM major version equals nightly rustc's, built against rustc's own
//! libLLVM. Every failure is one sentence saying what to do.
//!
//! Whatever it installs is announced through the caller's `log` (the build
//! script turns each line into a cargo warning), always starting with
//! [`INSTALLING`]. A packager can skip all of it by passing a prebuilt object
//! ([`prebuilt_object`], the variable [`OBJECT_ENV`]).

mod prebuilt;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use prebuilt::{OBJECT_ENV, check_object, prebuilt_object};
pub use toolchain::{INSTALLING, Toolchain, ensure_toolchain};

/// The eBPF target triple (little-endian hosts only).
pub const TARGET: &str = "bpfel-unknown-none";
/// Package and binary name of the eBPF crate.
pub const PACKAGE: &str = "overlay-ebpf";

/// A failure, already phrased for the person who must act on it.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Where and how to build.
pub struct Options<'a> {
    pub workspace: &'a Path,
    /// Cargo target directory for the eBPF build (kept apart from the host's).
    pub target_dir: PathBuf,
    pub release: bool,
}

impl<'a> Options<'a> {
    /// Default layout: `<target>/bpf`, where `<target>` honours `CARGO_TARGET_DIR`.
    pub fn new(workspace: &'a Path, release: bool) -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        Options {
            workspace,
            target_dir: target.join("bpf"),
            release,
        }
    }
}

/// Secures the toolchain, builds `overlay-ebpf` with BTF, returns the object's path.
pub fn build_ebpf(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let tc = ensure_toolchain(log)?;
    let mut cmd = ebpf_cargo(&tc, "build", opts.workspace, &opts.target_dir);
    cmd.arg("--bins");
    if opts.release {
        cmd.arg("--release");
    }
    run(
        &mut cmd,
        "building overlay-ebpf failed (compiler output above)",
    )?;
    let profile = if opts.release { "release" } else { "debug" };
    let object = opts.target_dir.join(TARGET).join(profile).join(PACKAGE);
    if !object.is_file() {
        return Err(Error(format!(
            "the eBPF build succeeded but left no object at {}",
            object.display()
        )));
    }
    Ok(object)
}

/// Secures the toolchain and runs clippy on `overlay-ebpf` for its target,
/// with the environment of [`build_ebpf`] and every warning an error.
pub fn clippy_ebpf(workspace: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let tc = ensure_toolchain(log)?;
    ensure_nightly_clippy(&tc, log)?;
    let opts = Options::new(workspace, false);
    let mut cmd = ebpf_cargo(&tc, "clippy", workspace, &opts.target_dir);
    cmd.args(["--", "-D", "warnings"]);
    run(
        &mut cmd,
        "clippy found problems in overlay-ebpf (output above)",
    )
}

/// `cargo +nightly <subcommand> --package overlay-ebpf` for the eBPF target,
/// with `build-std`, the given target directory and the flags every eBPF
/// build needs; callers add their own arguments.
fn ebpf_cargo(tc: &Toolchain, subcommand: &str, workspace: &Path, target_dir: &Path) -> Command {
    let mut cmd = tc.nightly_cargo();
    cmd.current_dir(workspace)
        .args([subcommand, "--package", PACKAGE, "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        // BTF for CO-RE and readable verifier logs; the cfg is what aya-ebpf expects.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // BPF code must be optimised in every profile (unoptimised code does not
    // verify); set for the nested build only, so host crates keep their profile.
    for profile in ["DEV", "RELEASE"] {
        cmd.env(format!("CARGO_PROFILE_{profile}_OPT_LEVEL"), "3")
            .env(format!("CARGO_PROFILE_{profile}_DEBUG_ASSERTIONS"), "false")
            .env(format!("CARGO_PROFILE_{profile}_OVERFLOW_CHECKS"), "false")
            .env(format!("CARGO_PROFILE_{profile}_CODEGEN_UNITS"), "1");
    }
    cmd
}

/// Adds clippy to the nightly toolchain when it lacks it.
fn ensure_nightly_clippy(tc: &Toolchain, log: &mut dyn FnMut(&str)) -> Result<()> {
    if output(tc.nightly_cargo().args(["clippy", "--version"])).is_some() {
        return Ok(());
    }
    log(&format!(
        "{INSTALLING}clippy for the nightly toolchain (rustup component add clippy --toolchain nightly)"
    ));
    run(
        Command::new("rustup").args(["component", "add", "clippy", "--toolchain", "nightly"]),
        "could not add clippy: run `rustup component add clippy --toolchain nightly`",
    )
}

/// Runs a command with inherited output; maps a failure to `what`.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| Error(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error(format!("{what} ({status})")))
    }
}

/// Runs a command and returns its stdout, or `None` when it cannot run or fails.
pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
