//! One node with an agent and an etcd in namespaces. While the store is
//! paused (SIGSTOP), a deploy waits on it: reads of the agent's API still
//! answer, and a SIGTERM lets that deploy finish before the agent exits.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agents::{Agent, BIN, Workdir, tcx_programs};
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

/// A deploy sent by hand whose request is only half sent: the agent has
/// taken the call, but its body is still on the way.
struct HalfSent {
    stream: UnixStream,
    rest: String,
}

impl HalfSent {
    fn start(agent: &Agent, instance: u32, netns: &Netns) -> HalfSent {
        let body =
            serde_json::json!({ "service": API, "instance": instance, "netns": netns.name() })
                .to_string();
        let mut stream = UnixStream::connect(&agent.socket).unwrap();
        let (first, rest) = body.split_at(body.len() / 2);
        write!(
            stream,
            "POST /v1/instances HTTP/1.1\r\nHost: overlay\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
            body.len()
        )
        .unwrap();
        HalfSent {
            stream,
            rest: rest.to_string(),
        }
    }

    /// Sends the rest of the body.
    fn send_rest(&mut self) {
        self.stream.write_all(self.rest.as_bytes()).unwrap();
    }

    /// The status line and the body of the answer.
    fn answer(mut self) -> (String, serde_json::Value) {
        let mut answer = String::new();
        let _ = self.stream.read_to_string(&mut answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.lines().next().unwrap_or("").to_string();
        (status, serde_json::from_str(body).unwrap_or_default())
    }
}

/// Whether instance `rec` is fully linked on node 1 after its agent stopped:
/// its link carries the program, its record is saved, the maps deliver to it.
fn assert_linked(n: &Node, rec: &serde_json::Value) {
    let (nsip, host_if) = (
        rec["nsip"].as_str().unwrap(),
        rec["host_if"].as_str().unwrap(),
    );
    assert_eq!(
        tcx_programs(n.topo.node(1).ns(), host_if),
        1,
        "the link of {nsip} carries its program"
    );
    let saved = std::fs::read_to_string(n.work.dir.join("n1/state/instances.json")).unwrap();
    assert!(saved.contains(nsip), "{nsip} is recorded: {saved}");
    assert!(
        n.agent.maps_json("endpoints").to_string().contains(nsip),
        "the maps deliver to {nsip}"
    );
}

#[test]
fn sigterm_lets_calls_in_flight_finish() {
    let mut n = setup("drain");
    let (ns1, ns2) = (Netns::new("d1").unwrap(), Netns::new("d2").unwrap());
    let paused = Paused::new(&n.etcd);
    // One deploy waits on the store, another is still being received.
    let waiting = start_deploy(&n.agent, &ns1);
    let mut arriving = HalfSent::start(&n.agent, 2, &ns2);
    std::thread::sleep(Duration::from_millis(500));
    let mut agent_proc = n.agent.proc.take().unwrap();
    let pid = Pid::from_raw(agent_proc.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent_proc.try_wait().unwrap().is_none(),
        "the agent waits for the calls in flight"
    );
    let late = n.agent.ctl(&["instance", "ls"]);
    assert!(!late.status.success(), "no new calls once stopping");
    arriving.send_rest();
    std::thread::sleep(Duration::from_millis(200));
    drop(paused);
    let (status, second) = arriving.answer();

    assert!(
        status.contains(" 200 "),
        "the call received at SIGTERM answers: {status}"
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the deploy waiting at SIGTERM answers success: {out:?}"
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exit = agent_proc.wait().unwrap();
    assert!(exit.success(), "the agent exits cleanly: {exit}");
    assert_linked(&n, &first);
    assert_linked(&n, &second);
}
