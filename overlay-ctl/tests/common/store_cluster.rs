//! Three nodes with agents and an etcd in namespaces, the orchestrator
//! beside etcd: the cluster end-to-end tests' topology.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Output;

use overlay_testnet::servers;
use overlay_testnet::{Etcd, EtcdTls, Netns, Topology};

use super::agents::{Agent, BIN, Workdir};

pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const API: &str = "demo.prod.api.v1";
pub const WEB: &str = "demo.prod.web.v1";
pub const DB: &str = "demo.prod.db.v1";
pub const TTL: u64 = 3;

/// Fields drop in order: agents, etcd, files, then the namespaces.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub etcd: Etcd,
    pub work: Workdir,
    pub orchestrator: String,
    /// An external client on the switch (not a node): 192.0.2.200.
    pub outside: String,
    pub topo: Topology,
}

impl Cluster {
    pub fn new(label: &str) -> Cluster {
        Cluster::with_config(label, |_| String::new())
    }

    /// With `extra(i)` appended to node `i`'s `agent.toml` (1-based).
    pub fn with_config(label: &str, extra: impl Fn(usize) -> String) -> Cluster {
        overlay_testnet::require_root().unwrap();
        Cluster::on(label, Topology::new(3).unwrap(), extra)
    }

    /// The cluster on `topo`: an agent on each of its nodes, with `extra(i)`
    /// appended to node `i`'s `agent.toml`, etcd and the external client on
    /// its switch.
    pub fn on(label: &str, mut topo: Topology, extra: impl Fn(usize) -> String) -> Cluster {
        let ns = topo.add_host("etcd", ETCD_IP).unwrap();
        let orchestrator = ns.name().to_string();
        let work = Workdir::new(label);
        let pki = Pki::new(&work);
        let etcd = Etcd::start_tls(ns, ETCD_IP, pki.etcd()).unwrap();
        let outside = topo
            .add_host("ext", Ipv4Addr::new(192, 0, 2, 200))
            .unwrap()
            .name()
            .to_string();
        let mut c = Cluster {
            agents: Vec::new(),
            etcd,
            work,
            orchestrator,
            outside,
            topo,
        };
        // Access control on, each node admitted with its own identity.
        c.ctl_as("root", &["store", "setup"]);
        let names: Vec<String> = c
            .topo
            .nodes()
            .iter()
            .map(|n| format!("n{}", n.index))
            .collect();
        for name in &names {
            let dir = Pki::at(&c.work).dir;
            c.ctl_as(
                "root",
                &["node", "add", name, "--dir", dir.to_str().unwrap()],
            );
        }
        for n in c.topo.nodes() {
            let name = format!("n{}", n.index);
            // The TLS keys first: `extra` may end in tables.
            let config = pki.agent_toml(&name) + &extra(n.index);
            let mut a = Agent::configure_store(&c.work, &name, &c.etcd.endpoint(), TTL, &config);
            a.start(n.ns());
            c.agents.push(a);
        }
        c
    }

    /// The external client's namespace (192.0.2.200 on the switch).
    pub fn outside_host(&self) -> &Netns {
        self.topo
            .hosts()
            .iter()
            .find(|h| h.name() == self.outside)
            .expect("the outside host")
    }

    /// `overlay-ctl ARGS` run by the orchestrator (beside etcd).
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with("orchestrator", args)
    }

    /// `overlay-ctl ARGS` beside etcd with the certificate of `who`.
    pub fn ctl_with(&self, who: &str, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new("ip");
        let pki = Pki::at(&self.work);
        cmd.args(["netns", "exec", &self.orchestrator, BIN])
            .args(args)
            .env("OVERLAY_STORE", self.etcd.endpoint())
            .env("OVERLAY_STORE_CA", pki.file("ca", "crt"))
            .env("OVERLAY_STORE_CERT", pki.file(who, "crt"))
            .env("OVERLAY_STORE_KEY", pki.file(who, "key"));
        cmd.output().unwrap()
    }

    /// [`Cluster::ctl_with`], which must succeed; its output.
    pub fn ctl_as(&self, who: &str, args: &[&str]) -> String {
        let out = self.ctl_with(who, args);
        assert!(
            out.status.success(),
            "overlay-ctl {args:?} as {who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        self.ctl_as("orchestrator", args)
    }

    /// Deploys a service as the orchestrator; a stateful one with the
    /// fixed IPs of instances 1 to 4. Unless the descriptor says otherwise,
    /// its instances are ready at once (`readiness: none`): the tests of
    /// other features do not wait for checks (health_e2e tests readiness).
    pub fn deploy_service(&self, json: &str) -> serde_json::Value {
        let json = match json.contains("\"readiness\"") {
            true => json.to_string(),
            false => json.replacen('{', r#"{"readiness":"none","#, 1),
        };
        let path = self.work.dir.join(format!("svc-{}.json", json.len()));
        std::fs::write(&path, &json).unwrap();
        let mut args = vec!["service", "deploy", path.to_str().unwrap(), "--json"];
        if json.contains("\"statefull\":true") {
            args.extend(["--instances", "4"]);
        }
        serde_json::from_str(&self.ctl_ok(&args)).unwrap()
    }

    /// Whether every node's BACKENDS map holds `nsip`.
    pub fn everywhere(&self, nsip: Ipv4Addr, present: bool) -> bool {
        self.agents.iter().filter(|a| a.proc.is_some()).all(|a| {
            a.maps_json("backends")
                .to_string()
                .contains(&format!("\"{nsip}\""))
                == present
        })
    }
}

/// The cluster's CA and certificates (etcd, root, the orchestrator; the
/// nodes' come from `overlay-ctl node add --dir`), made with the same code
/// as `overlay-ctl cert`.
pub struct Pki {
    pub dir: std::path::PathBuf,
}

impl Pki {
    pub fn new(work: &Workdir) -> Pki {
        use overlay_ctl::store::{Issued, issue, new_ca};
        let pki = Pki::at(work);
        std::fs::create_dir_all(&pki.dir).unwrap();
        let write = |name: &str, i: &Issued| {
            std::fs::write(pki.file(name, "crt"), &i.cert).unwrap();
            std::fs::write(pki.file(name, "key"), &i.key).unwrap();
        };
        let ca = new_ca("test cluster CA").unwrap();
        write("ca", &ca);
        write("etcd", &issue(&ca, "etcd", &[ETCD_IP.into()], &[]).unwrap());
        for name in ["root", "orchestrator"] {
            write(name, &issue(&ca, name, &[], &[]).unwrap());
        }
        pki
    }

    pub fn at(work: &Workdir) -> Pki {
        Pki {
            dir: work.dir.join("pki"),
        }
    }

    pub fn file(&self, name: &str, ext: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    pub fn etcd(&self) -> EtcdTls {
        EtcdTls {
            ca: self.file("ca", "crt"),
            cert: self.file("etcd", "crt"),
            key: self.file("etcd", "key"),
        }
    }

    /// The `agent.toml` lines of node `name`'s TLS material.
    pub fn agent_toml(&self, name: &str) -> String {
        format!(
            "store_ca = \"{}\"\nstore_cert = \"{}\"\nstore_key = \"{}\"\n",
            self.file("ca", "crt").display(),
            self.file(name, "crt").display(),
            self.file(name, "key").display()
        )
    }
}

pub fn descriptor(svc: &str, ports: &[u16], stateful: bool) -> String {
    access(svc, ports, stateful, false, &[])
}

pub fn access(svc: &str, ports: &[u16], stateful: bool, exposed: bool, needs: &[&str]) -> String {
    format!(
        r#"{{"appname":"demo","appns":"prod","servicename":"{svc}","servicens":"v1","exposed":{exposed},"needs":{needs:?},"ports":{ports:?},"statefull":{stateful}}}"#
    )
}

pub fn who(ns: &Netns, ip: Ipv4Addr, port: u16, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| servers::tcp_who(ns, SocketAddr::from((ip, port))).ok())
        .map(|(w, _)| w)
        .collect()
}

pub fn servip(rec: &serde_json::Value, policy: &str) -> Ipv4Addr {
    rec["servips"][policy].as_str().unwrap().parse().unwrap()
}
