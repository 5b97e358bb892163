//! Instance health on a three-node cluster: instances get new flows only
//! once their port accepts, a server that dies is ejected and comes back,
//! and `instance rm` lets established flows finish before ending them.
//! Services here are deployed without a `readiness` field: the default
//! check (one of the service's ports accepts a TCP connection).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::{Netns, servers, wait_until};

const PORT: u16 = 8080;

/// Deploys `svc` (port [`PORT`]) as the orchestrator, with the default
/// readiness check (the cluster helper would declare `readiness: none`).
fn deploy_checked(c: &Cluster, svc: &str) -> serde_json::Value {
    deploy_as_is(c, svc, &descriptor(svc, &[PORT], false))
}

fn deploy_as_is(c: &Cluster, svc: &str, json: &str) -> serde_json::Value {
    let path = c.work.dir.join(format!("{svc}-checked.json"));
    std::fs::write(&path, json).unwrap();
    let out = c.ctl_ok(&["service", "deploy", path.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// A "who" server on a port inside a namespace that can die like a
/// killed process: its listening socket closes, new connections are refused.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(port: u16, ns: &Netns, name: &str) -> Server {
        let name = name.to_string();
        let listener = ns
            .enter(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || answer(conn, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket (and waits until it is closed).
    fn kill(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers one line with the server's name, then closes.
fn answer(conn: TcpStream, name: &str) {
    conn.set_nonblocking(false).unwrap();
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_ok() {
        let _ = (&conn).write_all(format!("{name}\n").as_bytes());
    }
}

/// Every result of a client that opens a new connection every 100 ms, with
/// when it was made.
type Log = Vec<(Instant, Result<String, String>)>;

/// A client in `ns` opening a new connection to `to` every 100 ms until
/// [`Client::stop`].
struct Client {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Log>,
}

impl Client {
    fn start(ns: &Netns, to: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = ns
            .thread(move || {
                let mut log = Vec::new();
                while !stopped.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    log.push((at, who(to)));
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
                }
                log
            })
            .unwrap();
        Client { stop, thread }
    }

    fn stop(self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One connection, from the calling thread's namespace: who answered.
fn who(to: SocketAddr) -> Result<String, String> {
    let exchange = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"who\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        Ok(line.trim().to_string())
    };
    exchange().map_err(|e| e.to_string())
}

/// Whether `agent` lists instance `n` as ready (a listing without health
/// is from before health existed: every instance was ready).
fn ready(agent: &common::agents::Agent, n: u32) -> bool {
    listed(agent, n).is_some_and(|i| i.get("health").is_none_or(|h| h == "ready"))
}

/// The health `agent` lists for its instance `n`.
fn health(agent: &common::agents::Agent, n: u32) -> Option<String> {
    listed(agent, n)?["health"].as_str().map(str::to_string)
}

/// Instance `n` as `agent` lists it.
fn listed(agent: &common::agents::Agent, n: u32) -> Option<serde_json::Value> {
    let out = agent.ctl_ok(&["instance", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()?
        .iter()
        .find(|i| i["instance"] == n)
        .cloned()
}

/// Deploy new, wait until it is ready, remove the old (which drains), 20
/// times, while a client on another node opens a connection every 100 ms:
/// not one fails. Each new server starts listening a moment after its
/// instance is deployed, as a container's process does.
#[test]
fn a_rolling_update_fails_no_connection() {
    // A drain shorter than the default (which the download test uses): this
    // client's connections last milliseconds, and 20 cycles add up.
    let c = Cluster::with_config("roll", |_| "drain_ms = 1500\n".into());
    let api = deploy_checked(&c, "api");
    c.deploy_service(&descriptor("web", &[], false));
    let w1 = Netns::new("w1").unwrap();
    c.agents[0].deploy(WEB, 1, &w1);
    let rr = SocketAddr::from((servip(&api, "roundrobin"), PORT));
    let mut old = (Netns::new("api1").unwrap(), 1u32);
    c.agents[1].deploy(API, 1, &old.0);
    let mut server = Server::start(PORT, &old.0, "api1");
    wait_until(Duration::from_secs(10), "api1 answers", || {
        w1.enter(|| who(rr)).unwrap().is_ok()
    })
    .unwrap();
    let client = Client::start(&w1, rr);
    for n in 2..=21u32 {
        let ns = Netns::new(&format!("api{n}")).unwrap();
        c.agents[1].deploy(API, n, &ns);
        std::thread::sleep(Duration::from_millis(300));
        let next = Server::start(PORT, &ns, &format!("api{n}"));
        wait_until(Duration::from_secs(10), "the new instance ready", || {
            ready(&c.agents[1], n)
        })
        .unwrap();
        c.agents[1].ctl_ok(&["instance", "rm", API, "--instance", &old.1.to_string()]);
        std::mem::replace(&mut server, next).kill();
        old = (ns, n);
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = client.stop();
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let answered: std::collections::BTreeSet<_> =
        log.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    println!(
        "{} connections, {} failed, {} servers answered",
        log.len(),
        failed.len(),
        answered.len()
    );
    assert!(failed.is_empty(), "failed connections: {failed:?}");
    assert!(log.len() > 200, "the client ran throughout: {}", log.len());
    assert!(
        answered.len() >= 20,
        "the new instances answered: {answered:?}"
    );
}

/// Seconds after `from` of each result of `log` that `pred` picks.
fn times(log: &Log, from: Instant, pred: impl Fn(&Result<String, String>) -> bool) -> Vec<f64> {
    log.iter()
        .filter(|(at, r)| *at >= from && pred(r))
        .map(|(at, _)| at.duration_since(from).as_secs_f64())
        .collect()
}

/// A server that dies while its instance stays deployed gets no new flows
/// within 5 s (it is shown failing), and gets them again within 5 s of
/// coming back.
#[test]
fn a_dead_server_is_ejected_and_comes_back() {
    let c = Cluster::new("eject");
    let api = deploy_checked(&c, "api");
    c.deploy_service(&descriptor("web", &[], false));
    let (a2, a3, w1) = (
        Netns::new("a2").unwrap(),
        Netns::new("a3").unwrap(),
        Netns::new("w1").unwrap(),
    );
    c.agents[0].deploy(WEB, 1, &w1);
    c.agents[1].deploy(API, 2, &a2);
    let i3 = c.agents[2].deploy(API, 3, &a3);
    let _s2 = Server::start(PORT, &a2, "api2");
    let s3 = Server::start(PORT, &a3, "api3");
    let rr = SocketAddr::from((servip(&api, "roundrobin"), PORT));
    wait_until(Duration::from_secs(10), "both answer", || {
        let got = who_all(&w1, rr, 6);
        got.contains("api2") && got.contains("api3")
    })
    .unwrap();

    let client = Client::start(&w1, rr);
    s3.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let shown = backend_health(&c, 0, i3.nsip);
    let _s3 = Server::start(PORT, &a3, "api3");
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let log = client.stop();

    let failures = times(&log, killed, |r| r.is_err());
    println!("failures after the kill (s): {failures:?}");
    assert!(
        failures.iter().all(|&t| t < 5.0),
        "new flows still reached the dead server 5 s after it died: {failures:?}"
    );
    let again = times(&log, back, |r| r.as_deref() == Ok("api3"));
    assert!(
        again.first().is_some_and(|&t| t < 5.0),
        "api3 got no new flow within 5 s of coming back: {again:?}"
    );
    assert_eq!(shown.as_deref(), Some("failing"), "maps backends on n1");
    let ls = c.ctl_ok(&["service", "ls", "--json"]);
    assert!(!ls.contains("failing"), "ready again in service ls: {ls}");
}

fn who_all(ns: &Netns, to: SocketAddr, tries: usize) -> std::collections::BTreeSet<String> {
    (0..tries)
        .filter_map(|_| ns.enter(|| who(to)).unwrap().ok())
        .collect()
}

/// The health `maps backends` shows on node `i` for `nsip` (any ServIP).
fn backend_health(c: &Cluster, i: usize, nsip: std::net::Ipv4Addr) -> Option<String> {
    let a = &c.agents[i];
    let out = a.ctl_ok(&[
        "maps",
        "backends",
        "--json",
        "--config",
        a.config.to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()?
        .iter()
        .find(|r| r["backend"] == nsip.to_string())
        .and_then(|r| r["health"].as_str().map(str::to_string))
}

/// A download under way when its instance is removed completes during the
/// drain; new connections meanwhile fail fast (no other instance). `--now`
/// skips the drain.
#[test]
fn a_download_completes_during_the_drain() {
    const TOTAL: u64 = 4 << 20;
    let c = Cluster::new("drain");
    let dl = deploy_checked(&c, "dl");
    c.deploy_service(&descriptor("web", &[], false));
    let (srv, cli) = (Netns::new("dl1").unwrap(), Netns::new("w1").unwrap());
    let s1 = c.agents[1].deploy("demo.prod.dl.v1", 1, &srv);
    c.agents[0].deploy(WEB, 1, &cli);
    servers::paced(&srv, PORT);
    let vip = SocketAddr::from((servip(&dl, "roundrobin"), PORT));
    let connect = || {
        cli.enter(|| TcpStream::connect_timeout(&vip, Duration::from_secs(3)))
            .unwrap()
    };
    wait_until(Duration::from_secs(10), "the server ready", || {
        connect().is_ok()
    })
    .unwrap();

    let mut conn = connect().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    // 3 s of paced download, inside the 5 s drain.
    let download = std::thread::spawn(move || servers::download(&mut conn, TOTAL, 3, &seen));
    wait_until(Duration::from_secs(5), "the download under way", || {
        progress.load(Ordering::Relaxed) > 0
    })
    .unwrap();
    let start = Instant::now();
    c.agents[1].ctl_ok(&["instance", "rm", "demo.prod.dl.v1", "--instance", "1"]);
    let took = start.elapsed();
    let got = download.join().unwrap();
    assert_eq!(
        got.ok(),
        Some(TOTAL),
        "the download completed during the drain"
    );
    assert!(took >= Duration::from_secs(4), "rm drained first: {took:?}");
    assert!(c.everywhere(s1.nsip, false), "gone after rm");

    let srv2 = Netns::new("dl2").unwrap();
    c.agents[1].deploy("demo.prod.dl.v1", 2, &srv2);
    servers::paced(&srv2, PORT);
    wait_until(Duration::from_secs(10), "the second ready", || {
        connect().is_ok()
    })
    .unwrap();
    let start = Instant::now();
    c.agents[1].ctl_ok(&[
        "instance",
        "rm",
        "demo.prod.dl.v1",
        "--instance",
        "2",
        "--now",
    ]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "--now does not drain"
    );
}

/// A health port of its own (`readiness: {port: 9000}`): the instance gets
/// no new flow while 9000 is closed, though 8080 listens (a new connection
/// fails at once); when 9000 closes later, new flows stop but an
/// established connection goes on.
#[test]
fn a_health_port_rules_new_flows_not_established_ones() {
    const HEALTH: u16 = 9000;
    let c = Cluster::new("hport");
    let json = descriptor("api", &[PORT], false).replacen('{', r#"{"readiness":{"port":9000},"#, 1);
    let api = deploy_as_is(&c, "api", &json);
    c.deploy_service(&descriptor("web", &[], false));
    let (a2, w1) = (Netns::new("a2").unwrap(), Netns::new("w1").unwrap());
    c.agents[0].deploy(WEB, 1, &w1);
    c.agents[1].deploy(API, 2, &a2);
    servers::tcp(&a2, PORT, "api2");
    let rr = SocketAddr::from((servip(&api, "roundrobin"), PORT));

    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(health(&c.agents[1], 2).as_deref(), Some("starting"));
    let start = Instant::now();
    assert!(
        w1.enter(|| who(rr)).unwrap().is_err(),
        "not ready: no new flow"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "it fails fast");

    let check = Server::start(HEALTH, &a2, "health");
    wait_until(Duration::from_secs(5), "ready once 9000 accepts", || {
        w1.enter(|| who(rr)).unwrap().is_ok()
    })
    .unwrap();
    let mut conn = w1
        .enter(|| TcpStream::connect_timeout(&rr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = || -> std::io::Result<String> {
        conn.write_all(b"who\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok(line.trim().to_string())
    };
    assert_eq!(ask().unwrap(), "api2");

    check.kill();
    wait_until(Duration::from_secs(8), "ejected", || {
        health(&c.agents[1], 2).as_deref() == Some("failing")
    })
    .unwrap();
    wait_until(Duration::from_secs(3), "no new flow on n1", || {
        w1.enter(|| who(rr)).unwrap().is_err()
    })
    .unwrap();
    assert_eq!(ask().unwrap(), "api2", "the established connection goes on");
}
