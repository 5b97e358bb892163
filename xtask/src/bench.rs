//! `cargo xtask bench [--quick] [--rounds N] [--scale]`: prepares the machine as `demo`
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
/// `scale`: the scale simulation alone (`docs/scale.md`).
pub fn run(quick: bool, rounds: Option<usize>, scale: bool) -> anyhow::Result<i32> {
    prepare("cargo xtask bench", NEEDS)?;
    let _guard = crate::test::IgnoreSigint::install()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::workspace())
        .args(cargo_args(quick, rounds))
        .args(scale.then_some("--scale"))
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
