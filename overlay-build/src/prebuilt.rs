//! A prebuilt eBPF object passed in by a packager, instead of building one.
//!
//! A distribution that builds the object once (or on another machine) sets
//! [`OBJECT_ENV`] to its path; `overlay-ctl`'s build script then embeds that
//! file and needs neither nightly Rust nor `bpf-linker`. The file is checked
//! here so that a wrong path fails the build with one sentence, not the agent
//! at load time.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Names the prebuilt object; unset or empty: build from source.
pub const OBJECT_ENV: &str = "OVERLAY_EBPF_OBJECT";

/// `EM_BPF`, the ELF machine number of BPF objects.
const EM_BPF: u16 = 247;
/// An ELF64 header is 64 bytes; the checks below read within it.
const ELF64_HEADER: usize = 64;

/// The object [`OBJECT_ENV`] names, checked, if the variable is set and not
/// empty. A relative path is taken from `workspace` (build scripts run in
/// their package's directory, which is not where a packager types it).
pub fn prebuilt_object(workspace: &Path) -> Result<Option<PathBuf>> {
    match std::env::var_os(OBJECT_ENV) {
        Some(value) if !value.is_empty() => {
            let path = resolve(&value, workspace);
            check_object(&path)?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

fn resolve(value: &OsStr, workspace: &Path) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace.join(path)
    }
}

/// Fails unless `path` is a readable 64-bit little-endian ELF file for BPF
/// (what the `bpfel-unknown-none` build produces).
pub fn check_object(path: &Path) -> Result<()> {
    let shown = path.display();
    let fail = |why: &str| Err(Error(format!("{OBJECT_ENV}={shown}: {why}")));
    let mut header = Vec::with_capacity(ELF64_HEADER);
    let read = File::open(path).and_then(|f| {
        f.take(ELF64_HEADER as u64).read_to_end(&mut header)?;
        Ok(())
    });
    if let Err(e) = read {
        return fail(&format!(
            "cannot read it ({e}); give the path of a built overlay-ebpf object, or unset {OBJECT_ENV} to build it"
        ));
    }
    if header.len() < ELF64_HEADER || header[..4] != *b"\x7fELF" {
        return fail("not an ELF object file");
    }
    if header[4] != 2 || header[5] != 1 {
        return fail("not a 64-bit little-endian ELF file (bpfel-unknown-none builds one)");
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != EM_BPF {
        return fail(&format!(
            "an ELF file for machine {machine}, not a BPF object (machine {EM_BPF})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header with the given class, data encoding and machine.
    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; ELF64_HEADER];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[6] = 1; // EV_CURRENT
        h[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    /// Writes `bytes` to a fresh file of this test's own and checks it.
    fn check_bytes(name: &str, bytes: &[u8]) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("overlay-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let result = check_object(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn error(r: Result<()>) -> String {
        r.expect_err("must be refused").0
    }

    #[test]
    fn accepts_a_bpf_object() {
        let mut object = header(2, 1, EM_BPF);
        object.extend_from_slice(&[0; 256]);
        check_bytes("good.o", &object).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_bpf_object() {
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("empty.o", Vec::new(), "not an ELF"),
            ("text.o", b"#!/bin/sh\necho hi\n".repeat(8), "not an ELF"),
            ("short.o", header(2, 1, EM_BPF)[..40].to_vec(), "not an ELF"),
            ("x86.o", header(2, 1, 62), "machine 62, not a BPF object"),
            ("be.o", header(2, 2, EM_BPF), "64-bit little-endian"),
        ];
        for (name, bytes, want) in cases {
            let e = error(check_bytes(name, &bytes));
            assert!(e.starts_with(OBJECT_ENV), "{name}: {e}");
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
        let e = error(check_bytes("elf32.o", &header(1, 1, EM_BPF)));
        assert!(e.contains("64-bit"), "{e}");
    }

    #[test]
    fn a_missing_file_says_what_to_do() {
        let e = error(check_object(Path::new("/nonexistent/overlay-ebpf")));
        assert!(e.contains("/nonexistent/overlay-ebpf"), "{e}");
        assert!(e.contains("cannot read") && e.contains("unset"), "{e}");
    }

    #[test]
    fn relative_paths_are_taken_from_the_workspace() {
        let ws = Path::new("/src/overlay");
        let rel = resolve(OsStr::new("target/bpf/x/overlay-ebpf"), ws);
        assert_eq!(rel, Path::new("/src/overlay/target/bpf/x/overlay-ebpf"));
        let abs = resolve(OsStr::new("/opt/overlay-ebpf.o"), ws);
        assert_eq!(abs, Path::new("/opt/overlay-ebpf.o"));
    }
}
