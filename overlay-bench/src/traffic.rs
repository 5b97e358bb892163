//! The measurements on a path: iperf3 TCP and UDP runs (bounded in time and
//! killed if they overrun), a UDP ping-pong of our own, and CPU time from
//! `/proc/stat`.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use overlay_testnet::Netns;
use serde_json::Value;

use crate::stats::percentile_sorted;
use crate::topo::{ECHO_PORT, Env, IPERF_PORT};

/// How often blocking loops look at their stop flag.
const POLL: Duration = Duration::from_millis(100);
/// An iperf3 client that has not finished this long after its run time is killed.
const IPERF_GRACE: Duration = Duration::from_secs(15);
/// Ping-pong requests sent before the timed ones.
const WARMUP: usize = 200;
/// A request without an answer after this long counts as lost.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes of each ping-pong request.
const PING_LEN: usize = 64;
/// A latency run stops after this long, whatever is left (the TUN path at
/// its worst answers in milliseconds; a dead path in `PING_TIMEOUT`).
const LATENCY_BUDGET: Duration = Duration::from_secs(30);

// ------------------------------------------------------------ echo server

/// A UDP echo server on a thread inside a namespace; stopped and joined on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<EchoServer> {
        let sock = ns
            .enter(|| UdpSocket::bind(("0.0.0.0", port)))?
            .with_context(|| format!("binding the echo server to port {port}"))?;
        sock.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Round-trip times of a ping-pong run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub lost: usize,
}

/// `n` sequential requests from the client to the echo server behind
/// `env.target`, one outstanding at a time, after a warm-up.
pub fn latency(env: &Env, n: usize, stop: &AtomicBool) -> anyhow::Result<Latency> {
    let to = SocketAddr::from((env.target, ECHO_PORT));
    let (mut rtts, lost) = env.client.enter(|| -> anyhow::Result<(Vec<u64>, usize)> {
        let sock = UdpSocket::bind(("0.0.0.0", 0))?;
        sock.connect(to)?;
        sock.set_read_timeout(Some(PING_TIMEOUT))?;
        let mut rtts = Vec::with_capacity(n);
        let mut lost = 0;
        let mut req = [0u8; PING_LEN];
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + LATENCY_BUDGET;
        for i in 0..WARMUP + n {
            if i % 256 == 0 && stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                lost += WARMUP + n - i.max(WARMUP);
                break;
            }
            req[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let start = Instant::now();
            sock.send(&req)?;
            // Skip late answers to earlier requests.
            let answered = loop {
                match sock.recv(&mut buf) {
                    Ok(len) if len >= 8 && buf[..8] == req[..8] => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            let rtt = start.elapsed();
            if i < WARMUP {
                continue;
            }
            if answered {
                rtts.push(rtt.as_nanos() as u64);
            } else {
                lost += 1;
            }
        }
        Ok((rtts, lost))
    })??;
    if rtts.len() < n / 2 {
        bail!("ping-pong to {to}: {lost} of {n} requests unanswered");
    }
    rtts.sort_unstable();
    let us = |p| percentile_sorted(&rtts, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    Ok(Latency {
        p50_us: us(50.0),
        p99_us: us(99.0),
        lost,
    })
}

// ------------------------------------------------------------------ iperf3

/// Runs `cmd` to completion, killing it if it runs longer than `limit`;
/// returns its stdout.
pub(crate) fn run_bounded(mut cmd: Command, limit: Duration) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        // iperf3 -J reports its errors in the JSON.
        let json_err = serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        bail!("{line} failed ({status}): {} {}", err.trim(), json_err);
    }
    Ok(out)
}

fn iperf_client(env: &Env, extra: &[&str], secs: u32) -> anyhow::Result<Value> {
    let target = env.target.to_string();
    let port = IPERF_PORT.to_string();
    let secs_s = secs.to_string();
    let mut args = vec![
        "-c",
        &target,
        "-p",
        &port,
        "-t",
        &secs_s,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    args.extend_from_slice(extra);
    let cmd = env.client.cmd("iperf3", args);
    let out = run_bounded(cmd, Duration::from_secs(secs as u64) + IPERF_GRACE)?;
    let v: Value = serde_json::from_str(&out).context("iperf3 printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// A TCP run: throughput and what it cost the machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tcp {
    pub gbps: f64,
    pub retransmits: f64,
    /// Machine-wide busy CPU seconds per gigabit received.
    pub cpu_s_per_gbit: f64,
}

pub fn tcp(env: &Env, secs: u32) -> anyhow::Result<Tcp> {
    tcp_streams(env, secs, 1)
}

/// `streams` parallel TCP streams; the throughput is their sum.
pub fn tcp_streams(env: &Env, secs: u32, streams: u32) -> anyhow::Result<Tcp> {
    let before = CpuTimes::read()?;
    let n = streams.to_string();
    let args: &[&str] = if streams > 1 { &["-P", &n] } else { &[] };
    let v = iperf_client(env, args, secs)?;
    let after = CpuTimes::read()?;
    parse_tcp(&v, after.busy_secs_since(&before))
}

/// Throughput and CPU per gigabit from iperf3's TCP JSON and the busy CPU
/// seconds spent meanwhile.
pub fn parse_tcp(v: &Value, busy_secs: f64) -> anyhow::Result<Tcp> {
    let rx = &v["end"]["sum_received"];
    let bps = rx["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let secs = rx["seconds"].as_f64().unwrap_or(0.0);
    let gbit = bps * secs / 1e9;
    Ok(Tcp {
        gbps: bps / 1e9,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
        cpu_s_per_gbit: if gbit > 0.0 {
            busy_secs / gbit
        } else {
            f64::NAN
        },
    })
}

/// 64-byte UDP datagrams per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Udp {
    pub received_kpps: f64,
    pub sent_kpps: f64,
}

pub fn udp(env: &Env, secs: u32) -> anyhow::Result<Udp> {
    let v = iperf_client(env, &["-u", "-l", "64", "-b", "0"], secs)?;
    parse_udp(&v)
}

/// Received and sent packet rates from iperf3's UDP JSON.
pub fn parse_udp(v: &Value) -> anyhow::Result<Udp> {
    let rx = &v["end"]["sum_received"];
    let tx = &v["end"]["sum_sent"];
    let secs = rx["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .context("iperf3 JSON has no end.sum_received.seconds")?;
    let packets = rx["packets"].as_f64().context("no packets")?;
    let lost = rx["lost_packets"].as_f64().unwrap_or(0.0);
    let sent = tx["packets"].as_f64().unwrap_or(packets);
    Ok(Udp {
        received_kpps: (packets - lost).max(0.0) / secs / 1000.0,
        sent_kpps: sent / secs / 1000.0,
    })
}

// -------------------------------------------------------------------- CPU

/// The `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn read() -> anyhow::Result<CpuTimes> {
        let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        CpuTimes::parse(&s).context("no cpu line in /proc/stat")
    }

    /// user nice system idle iowait irq softirq steal (guest time is already
    /// inside user and nice).
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 8 {
            return None;
        }
        let idle = f[3] + f[4];
        let total: u64 = f.iter().sum();
        Some(CpuTimes {
            busy: total - idle,
            total,
        })
    }

    pub fn busy_secs_since(&self, before: &CpuTimes) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy.saturating_sub(before.busy) as f64 / hz
    }
}

/// Packets and bytes `dev` in `ns` has sent.
pub fn tx_counters(ns: &Netns, dev: &str) -> anyhow::Result<(u64, u64)> {
    let base = format!("/sys/class/net/{dev}/statistics");
    let out = ns.run(
        "cat",
        [format!("{base}/tx_packets"), format!("{base}/tx_bytes")],
    )?;
    let v: Vec<u64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [p, b] => Ok((p, b)),
        _ => bail!("unexpected counters of {dev}: {out}"),
    }
}

/// Target of a measurement, for messages.
pub fn describe(env: &Env) -> String {
    let t: Ipv4Addr = env.target;
    format!("{} -> {t}", env.client.name())
}
