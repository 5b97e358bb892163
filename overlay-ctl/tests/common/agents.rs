//! Agents as processes inside node namespaces, with their own bpffs, config
//! and desired-state file, removed again on Drop.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use overlay_ctl::model::{ClusterState, InstanceSpec, NodeSpec};
use overlay_testnet::{Netns, NsChild, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_overlay-ctl");

/// A private directory with a bpffs mounted inside (pins must outlive the
/// agent's `ip netns exec` mount namespace, so the test mounts it).
pub struct Workdir {
    pub dir: PathBuf,
}

impl Workdir {
    pub fn new(label: &str) -> Workdir {
        let dir = std::env::temp_dir().join(format!("ovt{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bpf")).expect("workdir");
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.join("bpf"))
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a bpffs in {}", dir.display());
        Workdir { dir }
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    pub fn write_cluster(&self, state: &ClusterState) {
        let tmp = self.dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap()).unwrap();
        std::fs::rename(&tmp, self.cluster_file()).unwrap();
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.join("bpf"))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One agent's files and process.
pub struct Agent {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub proc: Option<NsChild>,
    /// The `overlay-ctl` that runs as this agent and as its CLI: this tree's
    /// unless a test sets another release's.
    pub bin: PathBuf,
}

impl Agent {
    /// Writes `agent.toml` for node `name` (subnet 10.30.<index>.0/24) that
    /// follows the desired-state file of `work`.
    pub fn configure(work: &Workdir, name: &str, index: usize) -> Agent {
        let source = format!(
            "state_file = \"{}\"\nsubnet = \"10.30.{index}.0/24\"\n",
            work.cluster_file().display()
        );
        Agent::with_source(work, name, &source)
    }

    /// Writes `agent.toml` for node `name` that takes its state and subnet
    /// from the etcd at `store`, with a registration lease of `ttl` seconds
    /// and `extra` settings (TOML; may end in tables).
    pub fn configure_store(
        work: &Workdir,
        name: &str,
        store: &str,
        ttl: u64,
        extra: &str,
    ) -> Agent {
        Agent::with_source(
            work,
            name,
            &format!("store = \"{store}\"\nnode_ttl = {ttl}\n{extra}"),
        )
    }

    /// The configuration every test agent shares, plus its state `source`.
    fn with_source(work: &Workdir, name: &str, source: &str) -> Agent {
        let base = work.dir.join(name);
        std::fs::create_dir_all(&base).unwrap();
        let socket = base.join("agent.sock");
        let pin_dir = work.dir.join("bpf").join(name);
        let config = base.join("agent.toml");
        let text = format!(
            "node_id = \"{name}\"\nuplink = \"eth0\"\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\napi_socket = \"{}\"\n{source}",
            base.join("state").display(),
            pin_dir.display(),
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        Agent {
            name: name.into(),
            config,
            socket,
            pin_dir,
            proc: None,
            bin: PathBuf::from(BIN),
        }
    }

    /// Starts the agent in `ns` and waits for its API socket.
    pub fn start(&mut self, ns: &Netns) {
        let _ = std::fs::remove_file(&self.socket);
        let mut child = ns
            .spawn(
                &self.bin,
                ["agent", "--config", self.config.to_str().unwrap()],
            )
            .expect("spawn agent");
        let sock = self.socket.clone();
        let mut exited = None;
        let up = wait_until(
            Duration::from_secs(20),
            &format!("agent {} API socket", self.name),
            || {
                exited = child.try_wait().ok().flatten();
                sock.exists() || exited.is_some()
            },
        );
        assert!(
            exited.is_none(),
            "agent {} exited at start-up with {exited:?} (its log is above)",
            self.name
        );
        up.expect("agent up");
        self.proc = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.config.with_file_name("agent.log")
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.proc.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait agent");
        assert!(status.success(), "agent {} exited with {status}", self.name);
    }

    /// kill -9: no clean-up at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.proc.take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("OVERLAY_API", &self.socket)
            .output()
            .expect("run overlay-ctl")
    }

    /// Runs `overlay-ctl ARGS`, expecting success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "overlay-ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deploys instance `n` of `service` in `netns`; returns the instance record.
    pub fn deploy(&self, service: &str, n: u32, netns: &Netns) -> InstanceSpec {
        let out = self.ctl_ok(&[
            "instance",
            "deploy",
            service,
            "--instance",
            &n.to_string(),
            "--netns",
            netns.name(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("deploy output is JSON");
        InstanceSpec {
            service: service.into(),
            instance: n,
            node: self.name.clone(),
            nsip: v["nsip"].as_str().unwrap().parse().unwrap(),
            fixed_ip: None,
            health: Default::default(),
        }
    }

    pub fn maps_json(&self, table: &str) -> serde_json::Value {
        let out = self.ctl_ok(&[
            "maps",
            table,
            "--json",
            "--pin-dir",
            self.pin_dir.to_str().unwrap(),
        ]);
        serde_json::from_str(&out).expect("maps JSON")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.proc.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn node_spec(name: &str, index: usize, ip: std::net::Ipv4Addr) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        ip,
        ewp: overlay_common::DEFAULT_EWP,
        subnet: format!("10.30.{index}.0/24").parse().unwrap(),
        location: None,
        own: None,
        mtu: 0,
    }
}

/// Programs on the TCX ingress of `ifname` in `ns`.
pub fn tcx_programs(ns: &Netns, ifname: &str) -> usize {
    let ifname = ifname.to_string();
    ns.enter(move || {
        aya::programs::SchedClassifier::query_tcx(&ifname, aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| progs.len())
            .unwrap_or(0)
    })
    .unwrap()
}
