//! `cargo xtask build-ebpf`.

use std::path::PathBuf;
use std::time::Instant;

use overlay_build::Options;

pub fn build_ebpf(release: bool) -> anyhow::Result<PathBuf> {
    let ws = crate::workspace();
    let start = Instant::now();
    let object = overlay_build::build_ebpf(&Options::new(&ws, release), &mut |m| {
        eprintln!("build-ebpf: {m}")
    })?;
    eprintln!(
        "build-ebpf: built {} in {:.1}s",
        object.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(object)
}
