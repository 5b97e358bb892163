//! `overlay-ctl monitor` against a running cluster: a denied flow shows up
//! within a second (in two monitors at once), a killed monitor's events stop
//! when its deadline lapses, and a flood is held to the rate limit with
//! what was held back reported.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::agents::BIN;
use common::store_cluster::*;
use overlay_common::events::{LEASE_NS, NS_PER_S};
use overlay_ctl::dataplane::Tables;
use overlay_testnet::Netns;
use serde_json::Value;

/// A running `overlay-ctl monitor` and its lines, each with when it came.
struct Monitor {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

impl Monitor {
    fn start(config: &std::path::Path, args: &[&str]) -> Monitor {
        let mut child = Command::new(BIN)
            .arg("monitor")
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }

    /// The first line that `wanted` accepts within `timeout`, and when it came.
    fn until(&self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if wanted(&line) => return Some((at, line)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Every line that comes within `quiet` of the last one.
    fn drain(&self, quiet: Duration) -> Vec<String> {
        std::iter::from_fn(|| self.lines.recv_timeout(quiet).ok().map(|(_, l)| l)).collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * NS_PER_S + ts.tv_nsec as u64
}

/// `n` datagrams from `ns` to `dst`, from one socket bound to `sport`.
fn send(ns: &Netns, dst: (Ipv4Addr, u16), sport: u16, n: usize) {
    ns.enter(|| {
        let s = UdpSocket::bind(("0.0.0.0", sport)).unwrap();
        for _ in 0..n {
            s.send_to(b"x", dst).unwrap();
        }
    })
    .unwrap();
}

#[test]
fn monitor_reports_denied_flows_lapses_when_killed_and_limits_a_flood() {
    let c = Cluster::new("monitor");
    c.deploy_service(&access("api", &[8080], false, false, &[]));
    let web = c.deploy_service(&access("web", &[], false, false, &[API]));
    let db = c.deploy_service(&access("db", &[5432], false, false, &[]));
    let db_vip = servip(&db, "roundrobin");
    let (w1, d2) = (Netns::new("w1").unwrap(), Netns::new("d2").unwrap());
    let w1_ip = c.agents[0].deploy(WEB, 1, &w1).nsip;
    c.agents[1].deploy(DB, 1, &d2);
    let (web_name, db_name) = (web["name"].as_str().unwrap(), db["name"].as_str().unwrap());
    let config = &c.agents[0].config;

    // Two monitors at once: one by reason (JSON), one by service (text).
    let by_reason = Monitor::start(config, &["--reason", "drop_denied", "--json"]);
    let by_service = Monitor::start(config, &["--service", web_name]);
    // Until the node has the services' maps, web's datagrams are not denied yet.
    let first = (0..100).find_map(|_| {
        send(&w1, (db_vip, 5432), 0, 1);
        by_reason.until(Duration::from_millis(200), |_| true)
    });
    assert!(first.is_some(), "no denied flow within 20 s");
    by_reason.drain(Duration::from_millis(300));

    let sent = Instant::now();
    send(&w1, (db_vip, 5432), 41234, 1);
    let (at, line) = by_reason
        .until(Duration::from_secs(2), |l| l.contains("41234"))
        .expect("the denied flow in the JSON monitor");
    eprintln!("denied flow printed {:?} after it was sent", at - sent);
    assert!(
        at - sent < Duration::from_secs(1),
        "seen after {:?}",
        at - sent
    );
    let ev: Value = serde_json::from_str(&line).unwrap();
    let want = serde_json::json!({
        "kind": "denied", "reason": "drop_denied", "hook": "from_instance", "proto": "udp",
        "src": w1_ip.to_string(), "sport": 41234, "dst": db_vip.to_string(), "dport": 5432,
        "src_service": web_name, "dst_service": db_name, "policy": "roundrobin",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&ev[k], v, "{k} in {line}");
    }
    let text = by_service
        .until(Duration::from_secs(2), |l| l.contains(":41234 "))
        .expect("the denied flow in the service's monitor")
        .1;
    assert!(
        text.contains("drop_denied") && text.contains(&format!("{web_name} -> {db_name}")),
        "{text}"
    );
    drop(by_service);

    // kill -9: nothing closes the switch; the deadline lapses on its own.
    drop(by_reason);
    let killed = coarse_ns();
    let mut tables = Tables::open_pinned(&c.agents[0].pin_dir).unwrap();
    let deadline = (0..4).map(|s| tables.monitor(s).unwrap().deadline_ns).max();
    assert!(deadline.unwrap() <= killed + LEASE_NS, "{deadline:?}");
    while coarse_ns() <= deadline.unwrap() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ring = tables.events(0).unwrap();
    while ring.next().is_some() {}
    let held_back = tables.suppressed(0).unwrap();
    send(&w1, (db_vip, 5432), 41235, 50);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        tables.events(0).unwrap().next().is_none(),
        "an event after the deadline"
    );
    assert_eq!(tables.suppressed(0).unwrap(), held_back);

    // A flood: at most the burst plus the rate per CPU gets through, and
    // everything else is counted as suppressed.
    let rate = 1000;
    let flood = Monitor::start(
        config,
        &["--reason", "drop_denied", "--json", "--rate", "1000"],
    );
    let total = 20_000;
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    send(&w1, (db_vip, 5432), 41236, total);
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = flood.drain(Duration::from_millis(1500));
    let events = lines.iter().filter(|l| l.contains("41236")).count() as u64;
    let suppressed: u64 = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["suppressed"].as_u64())
        .sum();
    eprintln!("flood: {events} events, {suppressed} suppressed of {total} in {secs:.2} s");
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let most = (cpus * (rate as f64 * (1.0 + secs + 0.5))) as u64;
    assert!(
        events >= rate && events <= most,
        "{events} events of {total} in {secs:.2} s (most {most})"
    );
    assert!(
        events + suppressed >= total as u64 && suppressed > 0,
        "{events} events, {suppressed} suppressed of {total}"
    );
}
