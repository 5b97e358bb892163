//! Running `overlay-ctl` inside the examples' namespaces: one copy for the
//! demo and the dashboard example.

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;

/// How to run `overlay-ctl` against the example's cluster.
pub struct Ctl {
    pub bin: PathBuf,
    /// The directory of the cluster's CA and certificates.
    pub pki: PathBuf,
    /// The store's endpoint (`https://...`).
    pub store: String,
    /// The namespace beside etcd, where the operator's commands run.
    pub beside_etcd: String,
}

impl Ctl {
    /// `overlay-ctl ARGS` in namespace `ns` with `env`; its stdout.
    pub fn run(&self, ns: &str, env: &[(&str, String)], args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            bail!(
                "overlay-ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `overlay-ctl ARGS` beside etcd with the certificate of `who`.
    pub fn store_as(&self, who: &str, args: &[&str]) -> anyhow::Result<String> {
        let file = |f: &str| self.pki.join(f).display().to_string();
        let env = [
            ("OVERLAY_STORE", self.store.clone()),
            ("OVERLAY_STORE_CA", file("ca.crt")),
            ("OVERLAY_STORE_CERT", file(&format!("{who}.crt"))),
            ("OVERLAY_STORE_KEY", file(&format!("{who}.key"))),
        ];
        self.run(&self.beside_etcd, &env, args)
    }
}
