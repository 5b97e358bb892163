//! `overlay-ctl cert`: the cluster's certificate authority, and the
//! certificates of the store, the nodes and the orchestrator.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::store::{self, Issued};

#[derive(Subcommand)]
pub enum CertCmd {
    /// Create the cluster's CA (DIR/ca.crt, DIR/ca.key); refuses to replace one.
    Ca {
        #[arg(long)]
        dir: PathBuf,
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
        CertCmd::Ca { dir } => {
            let ca = store::new_ca("EdgeIO overlay cluster CA")?;
            write(&dir, "ca", &ca)?;
            println!("{}", dir.join("ca.crt").display());
        }
        CertCmd::Issue {
            name,
            dir,
            ips,
            dns,
        } => {
            if !crate::model::is_plain_name(&name) {
                bail!("certificate name `{name}`: must be 1-63 letters, digits, '-' or '_'");
            }
            let read = |file: &str| {
                let path = dir.join(file);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the CA: {}", path.display()))
            };
            let ca = Issued {
                cert: read("ca.crt")?,
                key: read("ca.key")?,
            };
            let issued = store::issue(&ca, &name, &ips, &dns)?;
            write(&dir, &name, &issued)?;
            println!("{}", dir.join(format!("{name}.crt")).display());
        }
    }
    Ok(())
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
