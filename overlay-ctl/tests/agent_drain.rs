//! One node with an agent and an etcd in namespaces. While the store is
//! paused (SIGSTOP), a deploy waits on it: reads of the agent's API still
//! answer, and a SIGTERM lets that deploy finish before the agent exits.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agents::{Agent, BIN, Workdir};
use common::store_cluster::{API, ETCD_IP, TTL, descriptor};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use overlay_testnet::{Etcd, Netns, Topology, wait_until};

/// How long a read may take while a deploy waits on the store.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// Fields drop in order: agent, etcd, files, then the namespaces.
struct Node {
    agent: Agent,
    etcd: Etcd,
    work: Workdir,
    topo: Topology,
}

/// A node whose agent follows an etcd that holds service `API`.
fn setup(label: &str) -> Node {
    overlay_testnet::require_root().unwrap();
    let mut topo = Topology::new(1).unwrap();
    let etcd_ns = topo.add_host("etcd", ETCD_IP).unwrap();
    let orchestrator = etcd_ns.name().to_string();
    let etcd = Etcd::start(etcd_ns, ETCD_IP).unwrap();
    let work = Workdir::new(label);
    let mut agent = Agent::configure_store(&work, "n1", &etcd.endpoint(), TTL, "");
    agent.start(topo.node(1).ns());
    let path = work.dir.join("api.json");
    std::fs::write(&path, descriptor("api", &[8080], false)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &orchestrator, BIN, "service", "deploy"])
        .arg(&path)
        .env("OVERLAY_STORE", etcd.endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "service deploy: {out:?}");
    wait_until(
        Duration::from_secs(10),
        "the agent knows the service",
        || get(&agent, "/v1/status", READ_DEADLINE).unwrap()["services"] == 1,
    )
    .unwrap();
    Node {
        agent,
        etcd,
        work,
        topo,
    }
}

/// `GET uri` on the agent's API, or `None` when it has not answered
/// within `deadline`.
fn get(agent: &Agent, uri: &str, deadline: Duration) -> Option<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = overlay_ctl::api::call(&agent.socket, "GET", uri, None);
    let answer = rt
        .block_on(async { tokio::time::timeout(deadline, call).await })
        .ok()?;
    Some(answer.unwrap_or_else(|e| panic!("GET {uri}: {e}")))
}

/// `overlay-ctl instance deploy` started in the background.
fn start_deploy(agent: &Agent, netns: &Netns) -> Child {
    Command::new(BIN)
        .args(["instance", "deploy", API, "--instance", "1", "--netns"])
        .arg(netns.name())
        .env("OVERLAY_API", &agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The etcd server stopped with SIGSTOP (its connections stay open and
/// calls wait) until dropped.
struct Paused(Pid);

impl Paused {
    fn new(etcd: &Etcd) -> Paused {
        let pid = etcd_pid(etcd);
        kill(pid, Signal::SIGSTOP).unwrap();
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The process serving `etcd`'s data directory (this test started it).
fn etcd_pid(etcd: &Etcd) -> Pid {
    let dir = etcd.data_dir();
    let dir = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"etcd")) && args.contains(&dir.as_bytes())
        })
        .map(Pid::from_raw)
        .expect("the test's etcd process")
}

fn tcx_programs(ns: &Netns, ifname: &str) -> usize {
    let ifname = ifname.to_string();
    ns.enter(move || {
        aya::programs::SchedClassifier::query_tcx(&ifname, aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| progs.len())
            .unwrap_or(0)
    })
    .unwrap()
}

#[test]
fn reads_answer_while_a_deploy_waits_on_the_store() {
    let n = setup("reads");
    let inst = Netns::new("r1").unwrap();
    let paused = Paused::new(&n.etcd);
    let mut deploy = start_deploy(&n.agent, &inst);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        deploy.try_wait().unwrap().is_none(),
        "the deploy waits on the paused store"
    );
    for uri in ["/v1/instances", "/v1/status"] {
        let start = Instant::now();
        get(&n.agent, uri, READ_DEADLINE)
            .unwrap_or_else(|| panic!("GET {uri} answers within {READ_DEADLINE:?}"));
        println!("GET {uri} during the deploy: {:?}", start.elapsed());
    }
    drop(paused);
    let out = deploy.wait_with_output().unwrap();
    assert!(out.status.success(), "the deploy goes through: {out:?}");
}

#[test]
fn sigterm_lets_a_deploy_in_flight_finish() {
    let mut n = setup("drain");
    let inst = Netns::new("d1").unwrap();
    let paused = Paused::new(&n.etcd);
    let deploy = start_deploy(&n.agent, &inst);
    std::thread::sleep(Duration::from_millis(500));
    let mut agent_proc = n.agent.proc.take().unwrap();
    let pid = Pid::from_raw(agent_proc.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent_proc.try_wait().unwrap().is_none(),
        "the agent waits for the deploy in flight"
    );
    let late = n.agent.ctl(&["instance", "ls"]);
    assert!(!late.status.success(), "no new calls once stopping");
    drop(paused);

    let out = deploy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the deploy in flight at SIGTERM answers success: {out:?}"
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = agent_proc.wait().unwrap();
    assert!(status.success(), "the agent exits cleanly: {status}");

    let (nsip, host_if) = (
        rec["nsip"].as_str().unwrap(),
        rec["host_if"].as_str().unwrap(),
    );
    assert_eq!(
        tcx_programs(n.topo.node(1).ns(), host_if),
        1,
        "the instance's link carries its program"
    );
    let saved = std::fs::read_to_string(n.work.dir.join("n1/state/instances.json")).unwrap();
    assert!(saved.contains(nsip), "the instance is recorded: {saved}");
    assert!(
        n.agent.maps_json("endpoints").to_string().contains(nsip),
        "the maps deliver to the instance"
    );
}
