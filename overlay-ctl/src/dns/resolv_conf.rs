//! `/etc/netns/NAME/resolv.conf`: `ip netns exec NAME` bind-mounts the files
//! of `/etc/netns/NAME/` over `/etc`, so processes started that way resolve
//! through the agent.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{DnsError, Result};

const NETNS_ETC: &str = "/etc/netns";

/// `/etc/netns/<netns_name>/resolv.conf`.
pub fn resolv_conf_path(netns_name: &str) -> Result<PathBuf> {
    if netns_name.is_empty()
        || netns_name == "."
        || netns_name == ".."
        || netns_name.contains('/')
        || netns_name.contains('\0')
    {
        return Err(DnsError::InvalidNetns(netns_name.to_owned()));
    }
    Ok(Path::new(NETNS_ETC).join(netns_name).join("resolv.conf"))
}

/// The file's contents: one name server, names with a dot tried as given
/// first (`ndots:1`), and a fast give-up (1 s, 2 tries) since the server is
/// on the node itself.
pub fn resolv_conf_text(nameserver: Ipv4Addr) -> String {
    format!(
        "# written by overlay-ctl: the node agent answers *.local service names\n\
         nameserver {nameserver}\n\
         options ndots:1 timeout:1 attempts:2\n"
    )
}

/// Writes `/etc/netns/<netns_name>/resolv.conf` pointing at `nameserver`,
/// creating the directory; replaces the file atomically.
pub fn write_resolv_conf(netns_name: &str, nameserver: Ipv4Addr) -> Result<()> {
    let path = resolv_conf_path(netns_name)?;
    let dir = path.parent().expect("path has a parent");
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let tmp = dir.join(".resolv.conf.tmp");
    std::fs::write(&tmp, resolv_conf_text(nameserver)).map_err(file_error("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(file_error("writing", &path))
}

/// Removes what [`write_resolv_conf`] wrote: the file, then the directory if
/// it is empty. Missing files are fine.
pub fn remove_resolv_conf(netns_name: &str) -> Result<()> {
    let path = resolv_conf_path(netns_name)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(file_error("removing", &path)(e));
        }
        _ => {}
    }
    let dir = path.parent().expect("path has a parent");
    match std::fs::remove_dir(dir) {
        // Not empty (the operator put other files there) or already gone.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        other => other.map_err(file_error("removing", dir)),
    }
}

/// Turns an I/O error on `path` into a [`DnsError::File`].
fn file_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DnsError {
    let path = path.to_owned();
    move |source| DnsError::File { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_text() {
        assert_eq!(
            resolv_conf_path("inst-1").unwrap(),
            Path::new("/etc/netns/inst-1/resolv.conf")
        );
        for bad in ["", ".", "..", "a/b", "../etc"] {
            assert!(resolv_conf_path(bad).is_err(), "{bad}");
        }
        let text = resolv_conf_text(Ipv4Addr::new(169, 254, 1, 1));
        assert!(text.contains("\nnameserver 169.254.1.1\n"), "{text}");
        assert!(
            text.ends_with("options ndots:1 timeout:1 attempts:2\n"),
            "{text}"
        );
    }
}
