//! Two agents in two node namespaces, desired state from a file, instances
//! deployed through the CLI and the agents' API.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::agents::{Agent, Workdir, node_spec, tcx_programs};
use overlay_ctl::model::{ClusterState, InstanceSpec, Policy, ServiceSpec};
use overlay_testnet::servers;
use overlay_testnet::{Netns, Topology, wait_until};

const SVC: &str = "shop.prod.cart.v1";
const CLIENT: &str = "shop.prod.web.v1";
const CLOSEST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const ROUNDROBIN: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const PORT: u16 = 8080;

fn service(name: &str, id: u32, base: u8, ports: Vec<u16>) -> ServiceSpec {
    let servips = Policy::SERVIPS
        .iter()
        .zip(0..)
        .map(|(p, i)| (*p, Ipv4Addr::new(172, 30, base, 1 + i)))
        .collect();
    ServiceSpec {
        name: name.into(),
        id,
        ports,
        stateful: false,
        servips,
        exposed: false,
        needs: Vec::new(),
        // Ready at once: these tests are about other things.
        readiness: Some(overlay_ctl::model::Readiness::None),
    }
}

struct Setup {
    topo: Topology,
    work: Workdir,
    agents: Vec<Agent>,
    state: ClusterState,
}

fn setup(label: &str) -> Setup {
    overlay_testnet::require_root().unwrap();
    let topo = Topology::new(2).unwrap();
    let work = Workdir::new(label);
    let state = ClusterState {
        nodes: topo
            .nodes()
            .iter()
            .map(|n| node_spec(&format!("n{}", n.index), n.index, n.ip))
            .collect(),
        services: vec![
            service(SVC, 1, 0, vec![PORT]),
            service(CLIENT, 2, 1, vec![]),
        ],
        ..Default::default()
    };
    work.write_cluster(&state);
    let mut agents = Vec::new();
    for n in topo.nodes() {
        let mut a = Agent::configure(&work, &format!("n{}", n.index), n.index);
        a.start(n.ns());
        agents.push(a);
    }
    Setup {
        topo,
        work,
        agents,
        state,
    }
}

impl Setup {
    fn publish(&mut self, inst: InstanceSpec) {
        self.state.instances.push(inst);
        self.work.write_cluster(&self.state);
    }
}

fn who_set(ns: &Netns, vip: Ipv4Addr, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| servers::tcp_who(ns, SocketAddr::from((vip, PORT))).ok())
        .map(|(w, _)| w)
        .collect()
}

/// Connects until a connection lands on `want`; returns it, still open.
fn connect_to(ns: &Netns, vip: Ipv4Addr, want: &str) -> std::net::TcpStream {
    use std::io::{BufRead, BufReader, Write};
    for _ in 0..64 {
        let s = ns
            .enter(|| {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((vip, PORT)),
                    Duration::from_secs(3),
                )
            })
            .unwrap()
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(b"who\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        if line.trim() == want {
            return s;
        }
    }
    panic!("no connection reached {want}");
}

/// `rows` without the slot counts and weights of fastest ServIPs: they
/// follow the measured load, which the stream under test itself moves.
fn unweighted(mut rows: serde_json::Value) -> serde_json::Value {
    for row in rows.as_array_mut().into_iter().flatten() {
        if row["policy"] == "fastest" {
            let row = row.as_object_mut().unwrap();
            row.remove("slots");
            row.remove("weight");
        }
    }
    rows
}

#[test]
fn agents_serve_servips_and_restart_without_loss() {
    let mut s = setup("restart");
    let (s1_ns, s2_ns, c_ns) = (
        Netns::new("s1").unwrap(),
        Netns::new("s2").unwrap(),
        Netns::new("c").unwrap(),
    );
    let s1 = s.agents[0].deploy(SVC, 1, &s1_ns);
    let s2 = s.agents[1].deploy(SVC, 2, &s2_ns);
    let c = s.agents[0].deploy(CLIENT, 1, &c_ns);
    assert_eq!(
        s.agents[0].deploy(SVC, 1, &s1_ns),
        s1,
        "deploy is idempotent"
    );
    for i in [s1.clone(), s2.clone(), c] {
        s.publish(i);
    }
    servers::tcp(&s1_ns, PORT, "s1");
    servers::tcp(&s2_ns, PORT, "s2");

    wait_until(
        Duration::from_secs(10),
        "both instances behind the roundrobin ServIP",
        || who_set(&c_ns, ROUNDROBIN, 12).len() == 2,
    )
    .unwrap();
    assert_eq!(
        who_set(&c_ns, CLOSEST, 8),
        BTreeSet::from(["s1".to_string()]),
        "closest prefers the local instance"
    );
    let services = s.agents[0].maps_json("services");
    assert!(
        services
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["servip"] == ROUNDROBIN.to_string()),
        "{services}"
    );

    // Restart n1's agent (SIGTERM) while a ping runs through its dataplane.
    let mut cmd = c_ns.cmd(
        "ping",
        [
            "-i",
            "0.02",
            "-c",
            "150",
            "-W",
            "1",
            &ROUNDROBIN.to_string(),
        ],
    );
    let mut ping =
        overlay_testnet::NsChild::spawn(cmd.stdout(std::process::Stdio::piped())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.agents[0].stop();
    let stopped = who_set(&c_ns, ROUNDROBIN, 12);
    assert_eq!(
        stopped.len(),
        2,
        "dataplane keeps forwarding without its agent: {stopped:?}"
    );
    let endpoints = s.agents[0].maps_json("endpoints");
    assert_eq!(
        endpoints.as_array().unwrap().len(),
        2,
        "maps readable while no agent runs: {endpoints}"
    );
    s.agents[0].start(s.topo.node(1).ns());
    let out = ping.wait_with_output_lossy();
    assert!(
        out.contains("150 packets transmitted, 150 received"),
        "no packet may be lost across a restart:\n{out}"
    );

    // kill -9 during a TCP stream: the stream goes on, the new agent adopts.
    let tables = ["services", "backends", "endpoints", "nodes"];
    let before: Vec<_> = tables
        .iter()
        .map(|t| unweighted(s.agents[0].maps_json(t)))
        .collect();
    let mut conn = connect_to(&c_ns, ROUNDROBIN, "s1");
    let stream = std::thread::spawn(move || {
        for _ in 0..40 {
            servers::bulk(&mut conn, 1 << 20)?;
        }
        Ok::<_, std::io::Error>(())
    });
    std::thread::sleep(Duration::from_millis(50));
    s.agents[0].kill9();
    s.agents[0].start(s.topo.node(1).ns());
    stream
        .join()
        .unwrap()
        .expect("the TCP stream survives kill -9 and restart");
    let after: Vec<_> = tables
        .iter()
        .map(|t| unweighted(s.agents[0].maps_json(t)))
        .collect();
    assert_eq!(
        before, after,
        "the restarted agent adopts the maps unchanged"
    );
    let host_if = format!("ov{}", s1.nsip.octets()[3]);
    assert_eq!(
        tcx_programs(s.topo.node(1).ns(), &host_if),
        1,
        "one program on the instance link after restart"
    );
    assert_eq!(
        tcx_programs(s.topo.node(1).ns(), "eth0"),
        1,
        "one program on the uplink after restart"
    );

    // Human and JSON CLI output.
    let pin = s.agents[0].pin_dir.to_str().unwrap().to_string();
    let table = s.agents[0].ctl_ok(&["maps", "services", "--pin-dir", &pin]);
    assert!(
        table.starts_with("SERVIP")
            && table.contains("roundrobin")
            && table.contains(&ROUNDROBIN.to_string()),
        "{table}"
    );
    let config = s.agents[0].config.to_str().unwrap().to_string();
    let named = s.agents[0].ctl_ok(&["maps", "services", "--config", &config]);
    assert!(
        named.contains(&format!("{SVC} (1)")),
        "names from the agent's index: {named}"
    );
    let nodes = s.agents[0].ctl_ok(&["maps", "nodes", "--config", &config]);
    assert!(nodes.contains("n1 (") && nodes.contains("n2 ("), "{nodes}");
    let stats = s.agents[0].ctl_ok(&[
        "maps",
        "stats",
        "--config",
        s.agents[0].config.to_str().unwrap(),
    ]);
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("deliver_local") || l.contains(" deliver_local ")),
        "{stats}"
    );
    let ls = s.agents[0].ctl_ok(&["instance", "ls"]);
    assert!(
        ls.starts_with("SERVICE") && ls.contains(&s1.nsip.to_string()),
        "{ls}"
    );

    // Undeploy: endpoint and link go, new flows go to s2 only.
    s.agents[0].ctl_ok(&["instance", "rm", SVC, "--instance", "1"]);
    s.state.instances.retain(|i| i.nsip != s1.nsip);
    s.work.write_cluster(&s.state);
    assert!(
        s.topo.node(1).ns().ip(["link", "show", &host_if]).is_err(),
        "link {host_if} removed"
    );
    wait_until(Duration::from_secs(5), "n1 forgets s1", || {
        who_set(&c_ns, ROUNDROBIN, 6) == BTreeSet::from(["s2".to_string()])
    })
    .unwrap();

    // Teardown removes pins and detaches the programs.
    s.agents[0].stop();
    s.agents[0].ctl_ok(&[
        "agent",
        "--config",
        s.agents[0].config.to_str().unwrap(),
        "--teardown",
    ]);
    assert!(!s.agents[0].pin_dir.exists(), "pins removed");
    assert_eq!(
        tcx_programs(s.topo.node(1).ns(), "eth0"),
        0,
        "uplink program detached"
    );
}

#[test]
fn masquerade_and_clear_errors() {
    let mut s = setup("errors");
    let ext = s
        .topo
        .add_host("ext", Ipv4Addr::new(192, 0, 2, 100))
        .unwrap()
        .name()
        .to_string();
    let c_ns = Netns::new("c").unwrap();
    let c = s.agents[0].deploy(CLIENT, 1, &c_ns);
    s.publish(c);
    c_ns.run("ping", ["-c", "2", "-W", "2", "192.0.2.100"])
        .unwrap_or_else(|e| panic!("instance reaches {ext} through masquerade: {e}"));

    let a = &s.agents[0];
    let out = a.ctl(&[
        "instance",
        "deploy",
        "no.such.svc.x",
        "--instance",
        "1",
        "--netns",
        c_ns.name(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown service"),
        "{out:?}"
    );
    let out = a.ctl(&[
        "instance",
        "deploy",
        SVC,
        "--instance",
        "1",
        "--netns",
        "no-such-ns",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-ns"),
        "{out:?}"
    );
    assert_eq!(
        a.ctl_ok(&["instance", "ls", "--json"])
            .matches("\"nsip\"")
            .count(),
        1,
        "nothing half-deployed"
    );
    let out = a.ctl(&["instance", "rm", SVC, "--instance", "9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("404") && stderr.contains("no instance 9 of"),
        "{stderr}"
    );

    let bad = s.work.dir.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace("uplink", "uplnk"),
    )
    .unwrap();
    let out = a.ctl(&["agent", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uplnk"),
        "{out:?}"
    );

    let out = std::process::Command::new(common::agents::BIN)
        .args(["instance", "ls"])
        .env("OVERLAY_API", "/nonexistent.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"),
        "{out:?}"
    );
}

trait WaitLossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl WaitLossy for overlay_testnet::NsChild {
    fn wait_with_output_lossy(&mut self) -> String {
        let _ = self.wait();
        let mut out = String::new();
        if let Some(mut so) = self.stdout.take() {
            use std::io::Read;
            let _ = so.read_to_string(&mut out);
        }
        out
    }
}

/// Under `ip netns exec` (a private mount namespace, /sys remounted) the
/// pin directory /sys/fs/bpf/... is on no bpffs; one the agent mounted there
/// would die with it, pins and all: the agent refuses, naming the fix, and
/// creates nothing.
#[test]
fn a_bpffs_that_dies_with_the_agent_is_refused() {
    let work = Workdir::new("privbpf");
    let ns = Netns::new("pb").unwrap();
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .unwrap();
    ns.ip(["addr", "add", "192.0.2.11/24", "dev", "eth0"])
        .unwrap();
    ns.ip(["link", "set", "eth0", "up"]).unwrap();
    let pins = format!("/sys/fs/bpf/{}-n1", ns.name());
    let config = work.dir.join("agent.toml");
    let text = format!(
        "node_id = \"n1\"\nuplink = \"eth0\"\nstate_dir = \"{dir}/state\"\nbpf_pin_dir = \"{pins}\"\napi_socket = \"{dir}/n1.sock\"\nstate_file = \"{dir}/cluster.json\"\nsubnet = \"10.30.1.0/24\"\n",
        dir = work.dir.display()
    );
    std::fs::write(&config, text).unwrap();
    std::fs::write(work.dir.join("cluster.json"), "{}").unwrap();
    let mut child = ns
        .cmd(
            common::agents::BIN,
            ["agent", "--config", config.to_str().unwrap()],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let refused = wait_until(Duration::from_secs(10), "the agent to exit", || {
        child.try_wait().unwrap().is_some()
    })
    .is_ok();
    if !refused {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused && !out.status.success(),
        "the agent kept running: {stderr}"
    );
    assert!(
        stderr.contains("private mount namespace") && stderr.contains("nsenter"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&pins).exists(),
        "nothing pinned in the host's bpffs"
    );
}

/// The API answers root and the agent's own user only: its socket is
/// created with mode 0600, and a caller of another user is closed on even
/// when the socket's mode is widened.
#[test]
fn the_api_answers_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let s = setup("apiowner");
    let sock = &s.agents[0].socket;
    let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket's mode");
    // A copy of the CLI that user 65534 can run wherever the checkout is
    // (a clone in a 0700 temporary directory, say), in a directory it can
    // reach, as it can reach the socket's.
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&s.work.dir, open.clone()).unwrap();
    let bin = s.work.dir.join("overlay-ctl-as-nobody");
    std::fs::copy(common::agents::BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, open).unwrap();
    let as_nobody = || {
        std::process::Command::new(&bin)
            .args(["instance", "ls", "--api", sock.to_str().unwrap()])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{err}"
    );
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another user was answered: {err}");
    // Root still is.
    s.agents[0].ctl_ok(&["instance", "ls"]);
}
