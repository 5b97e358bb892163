//! Builds the eBPF object with the same code as `cargo xtask build-ebpf`
//! (the `overlay-build` crate) and leaves it in `OUT_DIR` for embedding.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ws = manifest.parent().unwrap_or(Path::new("..")).to_path_buf();
    for dir in ["overlay-ebpf", "overlay-common/src", "overlay-build/src"] {
        println!("cargo:rerun-if-changed={}", ws.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let opts = overlay_build::Options::new(&ws, release);
    let mut log = |m: &str| println!("cargo:warning={m}");
    let object = match overlay_build::build_ebpf(&opts, &mut log) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("overlay-ebpf.o");
    if let Err(e) = std::fs::copy(&object, &out) {
        eprintln!(
            "error: cannot copy {} to {}: {e}",
            object.display(),
            out.display()
        );
        std::process::exit(1);
    }
}
