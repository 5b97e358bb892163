//! `cargo xtask <command>`: the developer's entry points.
//!
//! * `build-ebpf [--release]`: secure the eBPF toolchain and build `overlay-ebpf`.
//! * `test [-- CARGO_TEST_ARGS]`: prepare the machine (root, packages, bpffs),
//!   build the previous release's `overlay-ctl` for the upgrade test, and run
//!   every lint and test, and verify the release build's eBPF programs.
//! * `previous`: build the previous release's `overlay-ctl` and print its
//!   path, for running the upgrade test by hand
//!   (`OVERLAY_PREVIOUS_CTL=$(cargo xtask previous) cargo test --test upgrade_e2e`).
//! * `demo`: a live dataplane in network namespaces, with its counters.
//! * `bench [--quick] [--rounds N] [--scale]`: the overlay against plain routing, VXLAN
//!   and a TUN forwarder; results in `target/bench/` (`docs/benchmark.md`).
//!
//! The xtask depends on neither `overlay-ctl` nor the eBPF object, so it
//! compiles even when the eBPF build is broken.

mod bench;
mod build;
mod prepare;
mod previous;
mod test;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "EdgeIO overlay developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (installs nightly rust-src and bpf-linker when missing).
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// As root: prepare the machine, then fmt, clippy (host and eBPF), all tests,
    /// and a check that no test namespace is left.
    Test {
        /// Extra arguments for `cargo test`, after `--`; e.g.
        /// `cargo xtask test -- ping -- --nocapture`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Build the previous release's overlay-ctl (for the upgrade test) and
    /// print its path.
    Previous,
    /// As root: run the dataplane in network namespaces and show its counters.
    Demo,
    /// As root: benchmark the data paths, program costs and control plane
    /// (results in target/bench/; see docs/benchmark.md).
    Bench {
        /// Short runs and 2 rounds: about two minutes.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds of the data-path measurements (default 5; quick 2).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only the scale simulation: 100, 300 and 1,000 simulated nodes on
        /// one etcd (quick: 20; see docs/scale.md).
        #[arg(long)]
        scale: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::BuildEbpf { release } => build::build_ebpf(release).map(|p| {
            println!("{}", p.display());
        }),
        Cmd::Test { cargo_test_args } => test::run(&cargo_test_args),
        Cmd::Previous => previous::ensure(&workspace()).map(|p| {
            println!("{}", p.display());
        }),
        Cmd::Demo => test::demo().map(|code| std::process::exit(code)),
        Cmd::Bench {
            quick,
            rounds,
            scale,
        } => bench::run(quick, rounds, scale).map(|code| std::process::exit(code)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the xtask crate's parent directory). `cargo run` sets
/// `CARGO_MANIFEST_DIR` at run time too; that one wins over the compiled-in
/// path, which goes stale when a built tree is moved.
pub fn workspace() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_args_after_double_dash_go_to_cargo_test() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "ping", "--", "--nocapture"]).unwrap();
        let Cmd::Test { cargo_test_args } = cli.cmd else {
            panic!("not the test command");
        };
        assert_eq!(cargo_test_args, ["ping", "--", "--nocapture"]);
        let cli = Cli::try_parse_from(["xtask", "test"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Test { cargo_test_args } if cargo_test_args.is_empty()));
    }
}
