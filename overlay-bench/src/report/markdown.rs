//! The report as markdown, one function per section.

use std::fmt::Write as _;

use super::{Goal, RatioMetric, Report, med, ratio, targets};
use crate::plan::PathId;

/// `v` with `prec` decimals, or "-".
pub fn num(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.prec$}"),
        _ => "-".to_owned(),
    }
}

fn goal_text(g: Goal, unit: &str) -> String {
    let (op, v) = match g {
        Goal::AtLeast(v) => ("≥", v),
        Goal::AtMost(v) => ("≤", v),
    };
    match unit {
        "x" => format!("{op} {v:.2}x"),
        u => format!("{op} {v} {u}"),
    }
}

fn value_text(v: Option<f64>, unit: &str) -> String {
    match (v, unit) {
        (None, _) => "-".to_owned(),
        (Some(v), "x") => format!("{v:.2}x"),
        (Some(v), "ns") => format!("{v:.0} ns"),
        (Some(v), u) => format!("{v:.2} {u}"),
    }
}

/// The whole report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    data_paths(&mut s, r);
    ratio_table(&mut s, r);
    target_table(&mut s, r);
    cost_table(&mut s, r);
    in_situ_table(&mut s, r);
    control_table(&mut s, r);
    dns_table(&mut s, r);
    error_list(&mut s, r);
    s
}

/// The title and the run's parameters.
fn header(s: &mut String, r: &Report) {
    let p = &r.plan;
    let _ = writeln!(s, "# EdgeIO overlay benchmark\n");
    let _ = writeln!(
        s,
        "{} run: {} interleaved round(s), TCP {} s, UDP {} s, {} pings per path and round; \
         kernel {}, {} CPUs; load average {} at the start, {} at the end; {:.0} s in all.\n",
        if p.quick { "Quick" } else { "Full" },
        p.rounds,
        p.tcp_secs,
        p.udp_secs,
        p.pings,
        or_dash(&r.meta.kernel),
        r.meta.cpus,
        or_dash(&r.meta.loadavg_start),
        or_dash(&r.meta.loadavg_end),
        r.meta.elapsed_s,
    );
}

/// Each path's medians.
fn data_paths(s: &mut String, r: &Report) {
    let _ = writeln!(s, "## Data paths (medians over the rounds)\n");
    let _ = writeln!(
        s,
        "| path | TCP Gbit/s | CPU s/Gbit | uplink skb B (TCP) | UDP 64 B kpps received | RTT p50 µs | RTT p99 µs | TCP 8 streams Gbit/s | TCP wire mode Gbit/s |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for ps in &r.paths {
        let Some(path) = ps.path else { continue };
        let _ = writeln!(
            s,
            "| ({}) {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            path.letter(),
            path.label(),
            num(med(&ps.tcp_gbps), 2),
            num(med(&ps.cpu_s_per_gbit), 2),
            num(med(&ps.uplink_skb_bytes), 0),
            num(med(&ps.udp_kpps), 0),
            num(med(&ps.p50_us), 0),
            num(med(&ps.p99_us), 0),
            num(med(&ps.tcp8_gbps), 2),
            num(med(&ps.wire_tcp_gbps), 2),
        );
    }
}

/// Each path against (a), per metric.
fn ratio_table(s: &mut String, r: &Report) {
    let p = &r.plan;
    let _ = writeln!(
        s,
        "\n## Ratios to (a) plain routing (median of the per-round ratios)\n"
    );
    let _ = writeln!(
        s,
        "| path | TCP | UDP pps | p50 latency | TCP, 8 streams | TCP, wire mode |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for &path in p.paths.iter().filter(|&&q| q != PathId::Plain) {
        let cells: Vec<String> = RatioMetric::ALL
            .iter()
            .map(|&m| value_text(ratio(r, m, path, PathId::Plain), "x"))
            .collect();
        let _ = writeln!(
            s,
            "| ({}) {} | {} |",
            path.letter(),
            path.label(),
            cells.join(" | ")
        );
    }
}

/// The targets, met or missed.
fn target_table(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | measured | goal | result |");
    let _ = writeln!(s, "| --- | ---: | ---: | --- |");
    for t in targets(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.name,
            value_text(t.value, &t.unit),
            goal_text(t.goal, &t.unit),
            t.status.label()
        );
    }
}

/// The per-packet costs.
fn cost_table(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\n## Per-packet cost under BPF_PROG_TEST_RUN (fresh packet per run)\n"
    );
    let _ = writeln!(
        s,
        "| path | program | runs | verdict | median ns | mean ns | p99 ns | minus trivial ns | repeat ns | verified insns |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &r.costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            c.description,
            c.program,
            c.runs,
            c.verdict,
            c.median_ns,
            c.mean_ns,
            c.p99_ns,
            num(c.net_ns, 0),
            num(c.repeat_ns, 0),
            c.verified_insns
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
    }
}

/// The programs' `bpf_stats` during (b), if any.
fn in_situ_table(s: &mut String, r: &Report) {
    if !r.in_situ.is_empty() {
        let _ = writeln!(
            s,
            "\n## In situ: bpf_stats of the programs while (b) carried traffic (all rounds)\n"
        );
        let _ = writeln!(
            s,
            "Statistics overhead (trivial program, same counters): {} ns per run.\n",
            num(r.stats_overhead_ns, 0)
        );
        let _ = writeln!(
            s,
            "| during | node | program | mostly | runs | ns per run | minus overhead |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | ---: | ---: | ---: |");
        for x in r.in_situ.iter().filter(|x| x.runs > 0) {
            let net = x.ns_per_run().zip(r.stats_overhead_ns).map(|(a, b)| a - b);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                x.during,
                x.node,
                x.program,
                x.work,
                x.runs,
                num(x.ns_per_run(), 0),
                num(net, 0)
            );
        }
    }
}

/// Reconciler timings and map memory.
fn control_table(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## Control plane\n");
    let _ = writeln!(s, "| measurement | value |");
    let _ = writeln!(s, "| --- | ---: |");
    if let Some(c) = &r.control.converge {
        let _ = writeln!(
            s,
            "| {} services × 3 instances over {} nodes ({} instances): every node's maps written, nodes in parallel | {:.0} ms |",
            c.services, c.nodes, c.instances, c.wall_ms
        );
        let per: Vec<String> = c
            .per_node_ms
            .iter()
            .zip(&c.written)
            .map(|(ms, n)| format!("{ms:.0} ms ({n} entries)"))
            .collect();
        let _ = writeln!(s, "| ... per node (desired + apply) | {} |", per.join(", "));
    }
    if let Some(x) = &r.control.resync {
        let _ = writeln!(
            s,
            "| full resync of {} services ({} instances over {} nodes, {} local) against empty maps | {:.0} ms |",
            x.services, x.instances, x.nodes, x.local_instances, x.total_ms
        );
        let _ = writeln!(
            s,
            "| ... read {:.0} ms, desired {:.0} ms, diff + apply {:.0} ms | {} entries |",
            x.read_ms, x.desired_ms, x.apply_ms, x.written
        );
        let _ = writeln!(
            s,
            "| resync again with nothing changed (restart) | {:.0} ms, {} entries |",
            x.noop_ms, x.noop_written
        );
    }
    if !r.control.memory.is_empty() {
        let _ = writeln!(
            s,
            "| BPF map memory of one node (memlock, {} maps) | {:.1} MiB |",
            r.control.memory.len(),
            r.control.memory_total() as f64 / (1024.0 * 1024.0)
        );
        let mut maps = r.control.memory.clone();
        maps.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        let parts: Vec<String> = maps
            .iter()
            .filter(|m| m.bytes >= 64 * 1024)
            .map(|m| format!("{} {:.1}", m.name, m.bytes as f64 / (1024.0 * 1024.0)))
            .collect();
        let _ = writeln!(
            s,
            "| ... maps of 64 KiB or more, MiB | {} |",
            parts.join(", ")
        );
    }
}

/// Our DNS server against dnsmasq.
fn dns_table(s: &mut String, r: &Report) {
    let d = &r.dns;
    let _ = writeln!(s, "\n## DNS (dnsperf, medians over the rounds)\n");
    if d.ours_qps.is_empty() && d.dnsmasq_qps.is_empty() {
        let _ = writeln!(s, "not measured\n");
    } else {
        let _ = writeln!(
            s,
            "{} A names ({} services × 3 policies), {} s per server and round, \
             server and client namespaces joined by a veth.\n",
            d.names, d.services, d.secs
        );
    }
    let _ = writeln!(s, "| server | queries/s | lost queries |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    for (label, qps, lost) in [
        (crate::dns::Which::Ours.label(), &d.ours_qps, &d.ours_lost),
        (
            crate::dns::Which::Dnsmasq.label(),
            &d.dnsmasq_qps,
            &d.dnsmasq_lost,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            num(med(qps), 0),
            num(med(lost), 0)
        );
    }
    let _ = writeln!(
        s,
        "| ratio ours/dnsmasq (median of per-round ratios) | {} | |",
        value_text(d.ratio(), "x")
    );
}

/// The measurements that failed, if any.
fn error_list(s: &mut String, r: &Report) {
    if !r.errors.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for e in &r.errors {
            let _ = writeln!(s, "* {}", e.replace('\n', " "));
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
