//! Securing nightly `rust-src` and a matching `bpf-linker`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result, output, run};

/// bpf-linker release built when it is missing; its features name LLVM majors.
const BPF_LINKER_VERSION: &str = "0.13.0";
const SUPPORTED_LLVM: [u32; 3] = [21, 22, 23];

/// How every message about installing something begins, so that a cargo
/// warning says at once that the build is changing the machine's toolchain.
pub const INSTALLING: &str = "installing the eBPF toolchain: ";

/// What the eBPF build needs to know about the machine's toolchains.
pub struct Toolchain {
    pub llvm_major: u32,
    pub cargo_bin: PathBuf,
}

impl Toolchain {
    /// `cargo` of the nightly toolchain, with the variables an outer cargo
    /// (when called from a build script) sets stripped so they cannot leak in.
    pub fn nightly_cargo(&self) -> Command {
        let mut cmd = clean(Command::new("rustup"));
        cmd.args(["run", "nightly", "cargo"]);
        cmd.env("PATH", self.path_with_cargo_bin());
        cmd
    }

    fn path_with_cargo_bin(&self) -> OsString {
        let mut paths = vec![self.cargo_bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }
}

/// Strips what an outer cargo sets for a build script (or for itself), so a
/// nested build sees the same environment from `build.rs` as from the xtask
/// and its fingerprints stay warm in both.
fn clean(mut cmd: Command) -> Command {
    const BUILD_SCRIPT_VARS: [&str; 8] = [
        "HOST",
        "TARGET",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTFLAGS",
    ];
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO") && key != "CARGO_HOME";
        let rust_var =
            key.starts_with("RUSTC") || key.starts_with("RUSTDOC") || key == "RUSTUP_TOOLCHAIN";
        if cargo_var || rust_var || BUILD_SCRIPT_VARS.contains(&key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Makes sure nightly, its `rust-src` and a matching `bpf-linker` are present,
/// installing what is missing. Cheap when everything is already there.
pub fn ensure_toolchain(log: &mut dyn FnMut(&str)) -> Result<Toolchain> {
    let vv = output(clean(Command::new("rustup")).args(["run", "nightly", "rustc", "-vV"]))
        .ok_or_else(|| {
            Error("the nightly Rust toolchain is missing: run `rustup toolchain install nightly --component rust-src`".into())
        })?;
    let llvm_major = field(&vv, "LLVM version:")
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .ok_or_else(|| Error("cannot read the LLVM version from `rustc +nightly -vV`".into()))?;
    let sysroot = output(
        clean(Command::new("rustup")).args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )
    .map(|s| PathBuf::from(s.trim()))
    .ok_or_else(|| Error("cannot ask nightly rustc for its sysroot".into()))?;
    ensure_rust_src(&sysroot, log)?;
    let cargo_bin = cargo_home().join("bin");
    let tc = Toolchain {
        llvm_major,
        cargo_bin,
    };
    ensure_bpf_linker(&tc, &sysroot, &vv, log)?;
    Ok(tc)
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn ensure_rust_src(sysroot: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        return Ok(());
    }
    log(&format!(
        "{INSTALLING}rust-src for the nightly toolchain (rustup component add rust-src --toolchain nightly)"
    ));
    run(
        clean(Command::new("rustup")).args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]),
        "could not add rust-src: run `rustup component add rust-src --toolchain nightly`",
    )
}

/// The LLVM major a `bpf-linker` binary links against, read from `ldd`;
/// `Some(None)` when it runs but links LLVM statically, `None` when it cannot run.
fn linker_llvm(linker: &Path) -> Option<Option<u32>> {
    output(Command::new(linker).arg("--version"))?;
    let ldd = output(Command::new("ldd").arg(linker)).unwrap_or_default();
    if ldd.contains("not found") {
        return None;
    }
    let major = ldd.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("libLLVM")?;
        let rest = rest.trim_start_matches(".so.").trim_start_matches('-');
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some(major)
}

fn ensure_bpf_linker(
    tc: &Toolchain,
    sysroot: &Path,
    rustc_vv: &str,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let linker = tc.cargo_bin.join("bpf-linker");
    let why = match linker_llvm(&linker) {
        Some(Some(m)) if m == tc.llvm_major => return Ok(()),
        Some(None) => return Ok(()), // static LLVM: cannot tell, trust the user's build
        Some(Some(m)) => format!(
            "{} uses LLVM {m}, nightly rustc LLVM {}",
            linker.display(),
            tc.llvm_major
        ),
        None => format!("{} is missing or cannot run", linker.display()),
    };
    log(&format!(
        "{INSTALLING}{why}; building bpf-linker {BPF_LINKER_VERSION} against nightly rustc's libLLVM {} with `cargo install` (about two minutes, once)",
        tc.llvm_major
    ));
    if !SUPPORTED_LLVM.contains(&tc.llvm_major) {
        return Err(Error(format!(
            "nightly rustc uses LLVM {}, which bpf-linker {BPF_LINKER_VERSION} does not support: install a nightly with LLVM {:?}",
            tc.llvm_major, SUPPORTED_LLVM
        )));
    }
    let commit = field(rustc_vv, "commit-hash:").unwrap_or("unknown");
    let prefix = llvm_prefix(sysroot, commit)?;
    let mut cmd = clean(Command::new("rustup"));
    cmd.args(["run", "stable", "cargo", "install", "bpf-linker", "--force"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{}", tc.llvm_major)])
        .env("LLVM_PREFIX", &prefix);
    run(
        &mut cmd,
        "building bpf-linker failed: check that crates.io is reachable and a C compiler is installed",
    )?;
    match linker_llvm(&linker) {
        Some(_) => Ok(()),
        None => Err(Error(format!(
            "bpf-linker was built but {} does not run",
            linker.display()
        ))),
    }
}

/// A directory whose `lib/` holds `libLLVM.so` and the library's own file
/// name, both pointing at nightly rustc's libLLVM. It must outlive the build:
/// bpf-linker finds the library through it at run time.
fn llvm_prefix(sysroot: &Path, commit: &str) -> Result<PathBuf> {
    let libdir = sysroot.join("lib");
    let lib = fs::read_dir(&libdir)
        .map_err(|e| Error(format!("cannot read {}: {e}", libdir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .and_then(|p| fs::canonicalize(p).ok())
        .ok_or_else(|| {
            Error(format!(
                "no libLLVM in {}: reinstall nightly with `rustup toolchain install nightly --force`",
                libdir.display()
            ))
        })?;
    let short = &commit[..commit.len().min(12)];
    let prefix = cargo_home().join("overlay-llvm").join(short);
    let dir = prefix.join("lib");
    let io = |e: std::io::Error| Error(format!("cannot prepare {}: {e}", dir.display()));
    fs::create_dir_all(&dir).map_err(io)?;
    let own_name = lib.file_name().unwrap_or_default();
    for name in [std::ffi::OsStr::new("libLLVM.so"), own_name] {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).map_err(io)?;
    }
    Ok(prefix)
}
