//! Per-packet cost of every program path under `BPF_PROG_TEST_RUN`.
//!
//! `repeat = N` reruns a program N times on the *same* skb, so from the
//! second run on a program that rewrites its packet measures what it does
//! with its own output (see `overlay-ctl/tests/packets/cost.rs`). Instead,
//! each path is timed over many **single runs on fresh packets**: the kernel
//! times one run with `ktime_get_ns()` around it, which adds a constant (the
//! clock reads, `local_bh_disable/enable`, the run context), so a trivial
//! program (`r0 = verdict; exit`, loaded here with `bpf(2)`) is measured the
//! same way, interleaved with the real ones, and its median is subtracted
//! from theirs. New flows get a new source port every run; their conntrack
//! entries are deleted between chunks so the LRU never fills.
//!
//! The runs happen on a thread inside a namespace of their own whose `up0`
//! veth stands in for the uplink (the encapsulation's FIB lookup needs one).

mod fixtures;
mod measure;
mod monitor;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, ensure};
use aya::programs::ProgramFd;
use overlay_common::stats::Reason;

use crate::rawbpf;
use crate::report::CostRow;
use crate::stats::percentile_sorted;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A program and what to feed it.
struct Case {
    key: &'static str,
    description: &'static str,
    program: &'static str,
    fd: OwnedFdOrProgram,
    frame: Vec<u8>,
    /// The ingress interface of the `__sk_buff` (TC only).
    tc: bool,
    verdict: u32,
    /// Counter that must rise by one per run (besides `new_flow`).
    counted: Option<Reason>,
    /// A new source port every run.
    new_flows: bool,
    /// Runs with a monitor attached at this rate (0: every event), else none.
    monitor: Option<u64>,
    baseline: &'static str,
    /// The program leaves the packet as it found it: `repeat` is valid too.
    idempotent: bool,
    /// Runs `1/share` of the runs (the profile rows, which only explain the others).
    share: usize,
    samples: Vec<u32>,
    verified_insns: Option<u32>,
    xlated_insns: Option<u32>,
}

enum OwnedFdOrProgram {
    Raw(OwnedFd),
    Prog(ProgramFd),
}

impl OwnedFdOrProgram {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            OwnedFdOrProgram::Raw(f) => f.as_fd(),
            OwnedFdOrProgram::Prog(p) => p.as_fd(),
        }
    }
}

fn verdict_name(tc: bool, v: u32) -> String {
    match (tc, v) {
        (true, TC_ACT_OK) => "TC_ACT_OK".into(),
        (true, 2) => "TC_ACT_SHOT".into(),
        (true, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT".into(),
        (false, XDP_DROP) => "XDP_DROP".into(),
        (false, XDP_PASS) => "XDP_PASS".into(),
        (_, v) => v.to_string(),
    }
}

/// Times every path `runs` times; returns one row per path, baselines
/// first, and what `bpf_stats` reports for the trivial TC program.
/// `only`, when not empty, keeps just those paths (and the baselines): for
/// profiling one path with `perf record -e cpu-clock`.
pub fn run(
    runs: usize,
    only: &[String],
    stop: &AtomicBool,
) -> anyhow::Result<(Vec<CostRow>, Option<f64>)> {
    let (ns, uplink) = fixtures::uplink_ns()?;
    ns.enter(|| measure::measure(runs, only, uplink, stop))?
}

/// With `bpf_stats` on, the mean run time the kernel records for the trivial
/// program: the cost of the statistics themselves.
fn stats_overhead(
    trivial: std::os::fd::BorrowedFd,
    frame: &[u8],
    ctx: &[u8],
    runs: usize,
) -> anyhow::Result<f64> {
    let info = |fd| -> anyhow::Result<(u64, u64)> {
        let prog = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("bench_tc"))
            .filter(|p| p.fd().is_ok_and(|f| same_program(f.as_fd(), fd)))
            .last()
            .context("the trivial program is not listed")?;
        Ok((prog.run_time().as_nanos() as u64, prog.run_count()))
    };
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let (t0, n0) = info(trivial)?;
    rawbpf::test_run(
        trivial,
        frame,
        None,
        Some(ctx),
        runs.min(u32::MAX as usize) as u32,
    )?;
    let (t1, n1) = info(trivial)?;
    ensure!(n1 > n0, "bpf_stats counted no runs");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

/// Whether two program fds refer to the same program (same id).
fn same_program(a: std::os::fd::BorrowedFd, b: std::os::fd::BorrowedFd) -> bool {
    match (rawbpf::prog_id(a), rawbpf::prog_id(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// One row per case, from its samples and its `repeat` figure, with
/// `net_ns` against its baseline's median.
fn into_rows(cases: &mut [Case], repeat: Vec<Option<f64>>) -> Vec<CostRow> {
    let mut rows: Vec<CostRow> = Vec::new();
    for (c, repeat_ns) in cases.iter_mut().zip(repeat) {
        c.samples.sort_unstable();
        let median = percentile_sorted(&c.samples, 50.0).unwrap_or(0) as f64;
        let p99 = percentile_sorted(&c.samples, 99.0).unwrap_or(0) as f64;
        let mean = c.samples.iter().map(|&x| x as f64).sum::<f64>() / c.samples.len().max(1) as f64;
        rows.push(CostRow {
            key: c.key.to_owned(),
            description: c.description.to_owned(),
            program: c.program.to_owned(),
            runs: c.samples.len() as u64,
            verdict: verdict_name(c.tc, c.verdict),
            median_ns: median,
            mean_ns: mean,
            p99_ns: p99,
            baseline: c.baseline.to_owned(),
            net_ns: None,
            repeat_ns,
            verified_insns: c.verified_insns,
            xlated_insns: c.xlated_insns,
        });
    }
    let base: Vec<(String, f64)> = rows.iter().map(|r| (r.key.clone(), r.median_ns)).collect();
    for r in &mut rows {
        if let Some((_, b)) = base.iter().find(|(k, _)| *k == r.baseline) {
            r.net_ns = Some(r.median_ns - b);
        }
    }
    rows
}
