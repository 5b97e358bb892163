//! One cluster size: etcd in a namespace, the preload, the cold start, the
//! full agents joining, the steady state, the deploys.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use overlay_ctl::store::{DEFAULT_SERVICE_POOL, Store};
use overlay_testnet::{Etcd, Netns};

use super::full::{self, FullStats};
use super::light::{self, Counts};
use super::report::{ScaleRow, percentile};
use super::{Run, ScalePlan, Sim, fixture};

pub fn one(plan: &ScalePlan, nodes: usize) -> anyhow::Result<ScaleRow> {
    overlay_testnet::require_root().context("the scale simulation runs etcd in a namespace")?;
    let ns = Netns::new("scale")?;
    let etcd = Etcd::start(&ns, Ipv4Addr::LOCALHOST)?;
    let endpoint = etcd.endpoint();
    let data_dir = etcd.data_dir();
    let db = data_dir.join("member/snap/db");
    let row = ns.enter(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = rt.block_on(simulate(plan, nodes, endpoint, &data_dir));
        // The nodes' tasks end with the runtime, before etcd does.
        rt.shutdown_timeout(Duration::from_secs(2));
        result
    })??;
    let etcd_db_mb = std::fs::metadata(&db).map_or(0.0, |m| m.len() as f64 / 1e6);
    Ok(ScaleRow { etcd_db_mb, ..row })
}

/// The time of a phase started at `t` that [`until`] waited for: one that
/// ran out of `timeout` is reported and measuring goes on (`how`: with
/// what); any other failure ends the run.
fn out_of_time(
    waited: anyhow::Result<Duration>,
    t: Instant,
    timeout: Duration,
    how: &str,
) -> anyhow::Result<Duration> {
    match waited {
        Err(e) if t.elapsed() >= timeout => {
            eprintln!("scale: {e}; measuring on {how}");
            Ok(t.elapsed())
        }
        other => other,
    }
}

/// Polls `done` every 100 ms until it holds, failing on the first node
/// error or after `timeout`; returns the time it took.
async fn until(
    what: &str,
    timeout: Duration,
    counts: &[Arc<Counts>],
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut told = Instant::now();
    while !done() {
        if told.elapsed() > Duration::from_secs(15) {
            told = Instant::now();
            progress(what, start, counts);
        }
        for (i, c) in counts.iter().enumerate() {
            if let Some(e) = c.error.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                bail!("{what}: node {} failed: {e}", super::node_name(i));
            }
        }
        if crate::run::INTERRUPTED.load(Ordering::SeqCst) {
            bail!("{what}: interrupted");
        }
        if start.elapsed() > timeout {
            bail!("{what}: not done after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

/// How far the nodes are, on stderr.
fn progress(what: &str, start: Instant, counts: &[Arc<Counts>]) {
    let least = |f: fn(&Counts) -> i64| counts.iter().map(|c| f(c)).min().unwrap_or(0);
    let published = counts
        .iter()
        .filter(|c| c.published.load(Ordering::Relaxed))
        .count();
    let retries: u64 = counts
        .iter()
        .map(|c| c.retries.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "scale: {what} after {:.0} s: {published} nodes published; every node sees at least \
         {} nodes, {} services, {} instances; {retries} retries{}",
        start.elapsed().as_secs_f64(),
        least(|c| c.nodes.load(Ordering::Relaxed)),
        least(|c| c.services.load(Ordering::Relaxed)),
        least(|c| c.instances.load(Ordering::Relaxed)),
        last_errors(counts),
    );
}

/// The nodes' last errors, the most frequent first (with their count).
fn last_errors(counts: &[Arc<Counts>]) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for c in counts {
        if let Some(e) = c
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            *by.entry(e.chars().take(120).collect()).or_default() += 1;
        }
    }
    let mut top: Vec<_> = by.into_iter().collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    top.iter()
        .take(3)
        .map(|(e, n)| format!("\n  last error of {n} nodes: {e}"))
        .collect()
}

async fn simulate(
    plan: &ScalePlan,
    nodes: usize,
    endpoint: String,
    etcd_dir: &Path,
) -> anyhow::Result<ScaleRow> {
    let sim = Sim {
        nodes,
        services: plan.services,
        instances: plan.instances,
        period: plan.period,
        flows_per_node: plan.flows_per_node,
        publishing: plan.publishing,
    };
    let orch = Store::connect(endpoint.as_str()).await?;
    let per_node = plan.instances.div_ceil(nodes);
    orch.set_node_subnets(Some(fixture::node_subnets(per_node)))
        .await?;
    let t = Instant::now();
    orch.put_records(&fixture::service_records(plan.services))
        .await?;
    // As `node add` does before a node's first start: the cold start is
    // the restart of a cluster whose nodes hold their subnets.
    for i in 0..nodes {
        orch.lease_node_subnet(&super::node_name(i)).await?;
    }
    let preload_s = t.elapsed().as_secs_f64();
    let run = Arc::new(Run {
        endpoint: endpoint.clone(),
        targets: fixture::load_targets(plan.instances),
        plan: sim,
    });

    // Cold start: every node at once.
    let rss0 = rss_bytes();
    let counts: Vec<Arc<Counts>> = (0..nodes).map(|_| Arc::default()).collect();
    for (i, c) in counts.iter().enumerate() {
        let delay = plan.ramp.mul_f64(i as f64 / nodes as f64);
        light::spawn(run.clone(), i, c.clone(), delay);
    }
    let whole = |c: &Counts| {
        c.published.load(Ordering::Relaxed)
            && c.nodes.load(Ordering::Relaxed) == nodes as i64
            && c.instances.load(Ordering::Relaxed) == plan.instances as i64
            && c.services.load(Ordering::Relaxed) == plan.services as i64
    };
    // A cold start that does not converge in time is reported as such
    // (how far it got), and the rest is measured on the nodes that did.
    let t = Instant::now();
    let cpu0 = (process_cpu_ns(), etcd_cpu_ns(etcd_dir));
    let converged = until("cold start", plan.timeout, &counts, || {
        counts.iter().all(|c| whole(c))
    })
    .await;
    let cold = out_of_time(converged, t, plan.timeout, "with the nodes that converged")?;
    let cpu1 = (process_cpu_ns(), etcd_cpu_ns(etcd_dir));
    let received: u64 = counts.iter().map(|c| c.bytes.load(Ordering::Relaxed)).sum();
    let up: Vec<bool> = counts.iter().map(|c| whole(c)).collect();
    let most = |f: fn(&Counts) -> i64| counts.iter().map(|c| f(c)).max().unwrap_or(0);
    let expect = (
        most(|c| c.nodes.load(Ordering::Relaxed)) as usize,
        most(|c| c.instances.load(Ordering::Relaxed)) as usize,
    );
    let rss1 = rss_bytes();
    let retries = counts
        .iter()
        .map(|c| c.retries.load(Ordering::Relaxed))
        .sum();

    // The full agents join the converged cluster.
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<FullStats>> = (0..plan.full_agents).map(|_| Arc::default()).collect();
    let threads: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(k, s)| full::spawn(run.clone(), k, s.clone(), stop.clone(), expect))
        .collect();
    let t = Instant::now();
    let joined = until("full agents", plan.timeout, &counts, || {
        stats
            .iter()
            .all(|s| s.converged.lock().map(|c| c.is_some()).unwrap_or(false))
    })
    .await;
    let join = out_of_time(joined, t, plan.timeout, "with the full agents that joined")?;
    let rss2 = rss_bytes();

    tokio::time::sleep(plan.settle).await;
    let steady = steady(plan, &orch, &counts, &stats).await?;
    let latencies = deploys(plan, &orch, &counts, &up, &stats).await?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let full_mb = (rss2.saturating_sub(rss1)) as f64 / plan.full_agents.max(1) as f64 / 1e6;
    Ok(ScaleRow {
        nodes,
        services: plan.services,
        instances: plan.instances,
        per_node_prefix: fixture::node_subnets(per_node).per_node,
        preload_s,
        cold_start_s: cold.as_secs_f64(),
        converged_nodes: up.iter().filter(|u| **u).count(),
        full_join_s: join.as_secs_f64(),
        cold_start_retries: retries,
        cold_start_mb_per_node: received as f64 / nodes as f64 / 1e6,
        cold_start_sim_cpu_s: cpu1.0.saturating_sub(cpu0.0) as f64 / 1e9,
        cold_start_etcd_cpu_s: cpu1.1.saturating_sub(cpu0.1) as f64 / 1e9,
        ramp_s: plan.ramp.as_secs_f64(),
        deploy_p50_ms: percentile(&latencies, 50.0),
        deploy_p99_ms: percentile(&latencies, 99.0),
        deploy_max_ms: percentile(&latencies, 100.0),
        light_mem_kb_per_node: rss1.saturating_sub(rss0) as f64 / nodes as f64 / 1e3,
        full_agent_mem_mb: full_mb,
        etcd_db_mb: 0.0,
        load_avg: load_avg(),
        publishing: format!("{:?}", plan.publishing),
        ..steady
    })
}

/// The steady state over `plan.window`: writes, bytes, CPU.
async fn steady(
    plan: &ScalePlan,
    orch: &Store,
    counts: &[Arc<Counts>],
    stats: &[Arc<FullStats>],
) -> anyhow::Result<ScaleRow> {
    let received = || -> Vec<u64> {
        counts
            .iter()
            .map(|c| c.bytes.load(Ordering::Relaxed))
            .collect()
    };
    let full_cpu = || -> u64 { stats.iter().map(|s| s.cpu_ns.load(Ordering::Relaxed)).sum() };
    let (rev0, bytes0, cpu0, fcpu0) = (
        orch.revision().await?,
        received(),
        process_cpu_ns(),
        full_cpu(),
    );
    let t = Instant::now();
    tokio::time::sleep(plan.window).await;
    let (rev1, bytes1, cpu1, fcpu1) = (
        orch.revision().await?,
        received(),
        process_cpu_ns(),
        full_cpu(),
    );
    let secs = t.elapsed().as_secs_f64();
    let n = counts.len() as f64;
    let per_agent: Vec<f64> = bytes1
        .iter()
        .zip(&bytes0)
        .map(|(b, a)| (b - a) as f64 / secs)
        .collect();
    let full_share = (fcpu1 - fcpu0) as f64 / 1e6 / secs / stats.len().max(1) as f64;
    let light_ms = ((cpu1 - cpu0) as f64 / 1e6 - (fcpu1 - fcpu0) as f64 / 1e6) / secs / n;
    Ok(ScaleRow {
        writes_per_s: (rev1 - rev0) as f64 / secs,
        // Every node receives every write: one node's watch is the
        // cluster's write volume (key and value bytes).
        write_bytes_per_s: per_agent.iter().copied().fold(0.0, f64::max),
        watch_bytes_per_s_per_agent: per_agent.iter().sum::<f64>() / n,
        light_cpu_ms_per_s_per_node: light_ms,
        full_agent_cpu_ms_per_s: full_share,
        ..ScaleRow::default()
    })
}

/// `plan.deploys` deploys a second apart: from the command's start to the
/// service's key at every light node and its ServIP in every full agent's
/// maps, ms.
async fn deploys(
    plan: &ScalePlan,
    orch: &Store,
    counts: &[Arc<Counts>],
    up: &[bool],
    stats: &[Arc<FullStats>],
) -> anyhow::Result<Vec<f64>> {
    let mut started = Vec::new();
    for k in 0..plan.deploys {
        let d = fixture::descriptor(&format!("deploy{k}"));
        started.push((d.name(), Instant::now()));
        orch.deploy_service(&d, DEFAULT_SERVICE_POOL).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let want = plan.deploys;
    let waited = until("deploys", Duration::from_secs(60), counts, || {
        counts
            .iter()
            .zip(up)
            .all(|(c, up)| !up || c.deploys.lock().is_ok_and(|d| d.len() >= want))
            && stats
                .iter()
                .all(|s| s.deploys.lock().is_ok_and(|d| d.len() >= want))
    })
    .await;
    if let Err(e) = waited {
        eprintln!("scale: {e}; the latencies are those of the nodes the deploys reached");
    }
    let mut out = Vec::new();
    let mut add = |seen: &[(String, Instant)]| {
        for (name, at) in seen {
            if let Some((_, t0)) = started.iter().find(|(n, _)| n == name) {
                out.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
            }
        }
    };
    for c in counts {
        add(&c.deploys.lock().unwrap_or_else(|e| e.into_inner()));
    }
    for s in stats {
        add(&s.deploys.lock().unwrap_or_else(|e| e.into_inner()));
    }
    Ok(out)
}

/// The process's resident memory, bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The process's CPU time (every thread), ns.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU time (user and system) of the etcd whose data directory is
/// `dir` (found by its command line), ns; 0 if there is none.
fn etcd_cpu_ns(dir: &Path) -> u64 {
    let dir = dir.to_string_lossy();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !(cmd.starts_with("etcd\0") && cmd.contains(&*dir)) {
            continue;
        }
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis: utime and
        // stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        return ticks * 1_000_000_000 / hz;
    }
    0
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
