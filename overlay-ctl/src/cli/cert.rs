//! `overlay-ctl cert`: the cluster's certificate authority, and the
//! certificates of the store, the nodes and the orchestrator.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::store::{self, Issued};

#[derive(Subcommand)]
pub enum CertCmd {
    /// Create the cluster's CA (DIR/ca.crt, DIR/ca.key) and the certificates
    /// of etcd's `root` and of the orchestrator; refuses to replace any file.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// The orchestrator's identity (the etcd user `store setup` creates).
        #[arg(long, default_value = store::DEFAULT_ORCHESTRATOR)]
        orchestrator: String,
    },
    /// Issue DIR/NAME.crt and DIR/NAME.key, signed by DIR/ca.*: NAME is the
    /// node id for a node, or the identity of an etcd member or an orchestrator.
    Issue {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// An address the certificate serves on (etcd members): repeat as needed.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A DNS name the certificate serves on: repeat as needed.
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
}

pub fn cert(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Ca { dir, orchestrator } => {
            check_name(&orchestrator)?;
            let ca = store::new_ca("EdgeIO overlay cluster CA")?;
            write(&dir, "ca", &ca)?;
            println!("{}", dir.join("ca.crt").display());
            for name in [store::ROOT, orchestrator.as_str()] {
                write(&dir, name, &store::issue(&ca, name, &[], &[])?)?;
                println!("{}", dir.join(format!("{name}.crt")).display());
            }
        }
        CertCmd::Issue {
            name,
            dir,
            ips,
            dns,
        } => {
            check_name(&name)?;
            let issued = store::issue(&read_ca(&dir)?, &name, &ips, &dns)?;
            write(&dir, &name, &issued)?;
            println!("{}", dir.join(format!("{name}.crt")).display());
        }
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !crate::model::is_plain_name(name) {
        bail!("certificate name `{name}`: must be 1-63 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// DIR/ca.crt and DIR/ca.key.
fn read_ca(dir: &Path) -> anyhow::Result<Issued> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading the CA: {}", path.display()))
    };
    Ok(Issued {
        cert: read("ca.crt")?,
        key: read("ca.key")?,
    })
}

/// DIR/NAME.crt and .key, issued by the CA in DIR unless NAME.crt exists
/// already (then it must name NAME). Returns whether it was issued.
pub fn ensure(dir: &Path, name: &str) -> anyhow::Result<bool> {
    check_name(name)?;
    let path = dir.join(format!("{name}.crt"));
    if let Ok(pem) = std::fs::read_to_string(&path) {
        let named = store::certificate_name(&pem)?;
        if named != name {
            bail!("{} names `{named}`, not `{name}`", path.display());
        }
        return Ok(false);
    }
    write(dir, name, &store::issue(&read_ca(dir)?, name, &[], &[])?)?;
    Ok(true)
}

/// Writes NAME.crt and NAME.key (the key readable by its owner only),
/// refusing to replace either.
fn write(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (ext, text, mode) in [("crt", &issued.cert, 0o644), ("key", &issued.key, 0o600)] {
        let path = dir.join(format!("{name}.{ext}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("{} (an existing file is never replaced)", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
