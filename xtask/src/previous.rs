//! The previous release's `overlay-ctl`, for the upgrade test: the agent a
//! node runs before it is upgraded to this tree's.
//!
//! The release is a commit of this repository, so a clone with full history
//! holds it. Its source is exported with `git archive` (no worktree to
//! register or leave behind) and built in a target directory of its own: its
//! `build.rs` puts the eBPF object under `<target>/bpf` and cargo puts the
//! binary under `<target>/debug`, both of which would otherwise overwrite
//! this tree's. The binary lands in a directory named after the commit, so
//! a binary that is there is up to date: a commit never changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The release this tree upgrades from: move it forward when a release is cut.
pub const RELEASE: &str = "50a5be8f8c726ae2ae163989e02529cb06bbfc3f";

/// The variable that hands the binary's path to the upgrade test.
pub const ENV: &str = "OVERLAY_PREVIOUS_CTL";

/// Where the previous release's files live: `previous` in the workspace's
/// target directory (`CARGO_TARGET_DIR` when set).
fn root(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"))
        .join("previous")
}

/// The previous release's `overlay-ctl`, whether built yet or not.
pub fn binary(ws: &Path) -> PathBuf {
    root(ws).join(&RELEASE[..12]).join("overlay-ctl")
}

/// Builds the previous release's `overlay-ctl` unless it is already there;
/// returns its path.
pub fn ensure(ws: &Path) -> anyhow::Result<PathBuf> {
    let bin = binary(ws);
    if bin.is_file() {
        eprintln!("previous: {} is up to date", bin.display());
        return Ok(bin);
    }
    require_commit(ws, RELEASE)?;
    let dir = bin.parent().context("binary path has a parent")?;
    let src = dir.join("src");
    export(ws, &src)?;
    let built = build(&src, &root(ws).join("target"))?;
    // Copied under a temporary name, then renamed: a half-copied binary
    // would count as up to date in the next run.
    let tmp = dir.join("overlay-ctl.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &bin).with_context(|| format!("renaming to {}", bin.display()))?;
    Ok(bin)
}

/// Fails with what to do when the clone lacks the release `commit` (a
/// shallow clone, typically).
fn require_commit(ws: &Path, commit: &str) -> anyhow::Result<()> {
    let found = Command::new("git")
        .current_dir(ws)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .context("cannot run git")?;
    if !found.success() {
        bail!(
            "the previous release {commit} (xtask/src/previous.rs) is not in this clone; \
             the upgrade test needs it: fetch the full history (`git fetch --unshallow`, \
             or clone without `--depth`)"
        );
    }
    Ok(())
}

/// Writes the release's tracked files to `src` (replacing what is there).
fn export(ws: &Path, src: &Path) -> anyhow::Result<()> {
    if src.exists() {
        std::fs::remove_dir_all(src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(src).with_context(|| format!("creating {}", src.display()))?;
    let mut archive = Command::new("git")
        .current_dir(ws)
        .args(["archive", "--format=tar", RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(src)
        .stdin(stdout)
        .status()
        .context("cannot run tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !archived.success() || !untar.success() {
        bail!("exporting {RELEASE} to {} failed", src.display());
    }
    Ok(())
}

/// `cargo build -p overlay-ctl` in the exported tree, into `target`; returns
/// the binary. `CARGO_TARGET_DIR` is set so the release's `build.rs` puts its
/// eBPF object under `target` too.
fn build(src: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    eprintln!(
        "previous: building overlay-ctl of {RELEASE} in {}",
        target.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(src)
        .args([
            "build",
            "--locked",
            "-p",
            "overlay-ctl",
            "--bin",
            "overlay-ctl",
        ])
        .env("CARGO_TARGET_DIR", target)
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("building overlay-ctl of the previous release {RELEASE} failed ({status})");
    }
    Ok(target.join("debug").join("overlay-ctl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_release_commit_says_how_to_get_it() {
        let ws = crate::workspace();
        let err = require_commit(&ws, "0123456789abcdef0123456789abcdef01234567").unwrap_err();
        assert!(err.to_string().contains("git fetch --unshallow"), "{err}");
        assert_eq!(RELEASE.len(), 40, "a full commit hash");
    }
}
