//! Leaves the eBPF object in `OUT_DIR` for embedding: the prebuilt one named
//! by `OVERLAY_EBPF_OBJECT` if set, else one built with the same code as
//! `cargo xtask build-ebpf` (the `overlay-build` crate). Installing toolchain
//! parts is announced as a cargo warning; a failure is one cargo error.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let ws = manifest.parent().unwrap_or(Path::new("..")).to_path_buf();
    println!("cargo:rerun-if-env-changed={}", overlay_build::OBJECT_ENV);
    let object = match overlay_build::prebuilt_object(&ws) {
        Ok(Some(prebuilt)) => {
            println!("cargo:rerun-if-changed={}", prebuilt.display());
            prebuilt
        }
        Ok(None) => build(&ws),
        Err(e) => fail(&e.to_string()),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("overlay-ebpf.o");
    if let Err(e) = std::fs::copy(&object, &out) {
        fail(&format!(
            "cannot copy {} to {}: {e}",
            object.display(),
            out.display()
        ));
    }
}

/// Builds the object from the workspace's sources, installing what the
/// toolchain lacks.
fn build(ws: &Path) -> PathBuf {
    for dir in ["overlay-ebpf", "overlay-common/src", "overlay-build/src"] {
        println!("cargo:rerun-if-changed={}", ws.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let opts = overlay_build::Options::new(ws, release);
    let mut log = |m: &str| println!("cargo:warning={m}");
    overlay_build::build_ebpf(&opts, &mut log).unwrap_or_else(|e| fail(&e.to_string()))
}

/// Fails the build with `message` as its one error line: cargo fails the
/// build after a `cargo::error`, and a zero exit keeps it from printing the
/// script's whole output after the line.
fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(0);
}
