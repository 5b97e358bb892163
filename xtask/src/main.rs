//! `cargo xtask <command>`: the developer's entry points.
//!
//! * `build-ebpf [--release]`: secure the eBPF toolchain and build `overlay-ebpf`.
//! * `test`: prepare the machine (packages, bpffs) and run every test and lint.
//! * `demo`: a live overlay in network namespaces, with its counters.

mod build;
mod prepare;
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
    /// Run lints, host unit tests, eBPF packet tests and namespace end-to-end tests.
    Test,
    /// Run the overlay in network namespaces and show its counters.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::BuildEbpf { release } => build::build_ebpf(release).map(|p| {
            println!("{}", p.display());
        }),
        Cmd::Test => test::run(),
        Cmd::Demo => test::demo(),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the xtask crate's parent directory).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
