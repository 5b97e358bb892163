//! The figures of one cluster size, their table, and a chart of each
//! against the cluster size with its target.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Everything measured at one cluster size (raw figures of the JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleRow {
    pub nodes: usize,
    pub services: usize,
    pub instances: usize,
    /// Node subnet length used (the instances per node decide it).
    pub per_node_prefix: u8,
    /// Writing the services (not measured against a target).
    pub preload_s: f64,
    /// Nodes started evenly over this long (0: all at once).
    pub ramp_s: f64,
    /// Every node started (see `ramp_s`) until every node has registered,
    /// published its instances and seen every node, service and instance.
    pub cold_start_s: f64,
    /// Nodes converged at the end of the cold start (all of them, unless
    /// it timed out: then `cold_start_s` is the timeout).
    pub converged_nodes: usize,
    /// The full agents joining the converged cluster until their maps
    /// hold everything.
    pub full_join_s: f64,
    /// Store calls the nodes tried again during the cold start (timeouts of
    /// an overloaded store).
    pub cold_start_retries: u64,
    /// Key and value bytes one node received during the cold start (its
    /// read and its watch), MB on average.
    pub cold_start_mb_per_node: f64,
    /// CPU time etcd spent during the cold start, s.
    pub cold_start_etcd_cpu_s: f64,
    /// CPU time the simulation's process (every node) spent during the cold
    /// start, s.
    pub cold_start_sim_cpu_s: f64,
    /// A deploy command until the service is at every node (light: its key
    /// arrived; full: its ServIP in the computed maps).
    pub deploy_p50_ms: f64,
    pub deploy_p99_ms: f64,
    pub deploy_max_ms: f64,
    /// Steady state: etcd revisions (write transactions) per second.
    pub writes_per_s: f64,
    /// Steady state: key and value bytes written per second.
    pub write_bytes_per_s: f64,
    /// Steady state: key and value bytes one node's watch receives per second.
    pub watch_bytes_per_s_per_agent: f64,
    /// Steady state: CPU ms per second of one light node (the whole
    /// process's time less the full agents', over the nodes).
    pub light_cpu_ms_per_s_per_node: f64,
    /// Steady state: CPU ms per second of one full agent.
    pub full_agent_cpu_ms_per_s: f64,
    /// Resident memory the light nodes added, per node.
    pub light_mem_kb_per_node: f64,
    /// Resident memory one full agent added (its state and maps).
    pub full_agent_mem_mb: f64,
    pub etcd_db_mb: f64,
    /// How nodes published their measurements (`store::Publishing`).
    pub publishing: String,
    /// The machine's 1-minute load average at the end.
    pub load_avg: f64,
}

impl ScaleRow {
    pub fn summary(&self) -> String {
        format!(
            "{} nodes: cold start {:.1} s, deploy p50 {:.0} ms p99 {:.0} ms, {:.0} writes/s, \
             watch {:.1} KB/s per node, full agent {:.0} MB",
            self.nodes,
            self.cold_start_s,
            self.deploy_p50_ms,
            self.deploy_p99_ms,
            self.writes_per_s,
            self.watch_bytes_per_s_per_agent / 1e3,
            self.full_agent_mem_mb
        )
    }
}

/// The `p`th percentile (nearest rank) of `xs`; 0 for none.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// A chart panel: title, unit, the value of a row, the target.
type Metric = (&'static str, fn(&ScaleRow) -> f64, Option<f64>);

const METRICS: [Metric; 6] = [
    (
        "converged after the last start, s",
        |r| (r.cold_start_s - r.ramp_s).max(0.0),
        Some(60.0),
    ),
    (
        "deploy to every node, p99 ms",
        |r| r.deploy_p99_ms,
        Some(2000.0),
    ),
    ("etcd writes/s (steady)", |r| r.writes_per_s, Some(200.0)),
    (
        "watch KB/s per node (steady)",
        |r| r.watch_bytes_per_s_per_agent / 1e3,
        Some(20.0),
    ),
    (
        "full agent memory, MB",
        |r| r.full_agent_mem_mb,
        Some(100.0),
    ),
    ("etcd database, MB", |r| r.etcd_db_mb, None),
];

/// The cold start as the table shows it.
fn cold(r: &ScaleRow) -> String {
    let ramp = if r.ramp_s > 0.0 {
        format!(" (started over {:.0} s)", r.ramp_s)
    } else {
        String::new()
    };
    if r.converged_nodes >= r.nodes {
        format!("{:.1} s{ramp}", r.cold_start_s)
    } else {
        format!(
            "not converged: {} of {} nodes after {:.0} s{ramp}",
            r.converged_nodes, r.nodes, r.cold_start_s
        )
    }
}

/// The table of `rows` in Markdown.
pub fn markdown(rows: &[ScaleRow]) -> String {
    let mut s = String::from(
        "| nodes | cold start | deploy p50 / p99 | writes/s | written KB/s | watch KB/s per node | \
         light node CPU, mem | full agent CPU, mem | etcd db |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} / {:.0} ms | {:.0} | {:.1} | {:.1} | {:.2} ms/s, {:.0} KB | \
             {:.0} ms/s, {:.0} MB | {:.1} MB |",
            r.nodes,
            cold(r),
            r.deploy_p50_ms,
            r.deploy_p99_ms,
            r.writes_per_s,
            r.write_bytes_per_s / 1e3,
            r.watch_bytes_per_s_per_agent / 1e3,
            r.light_cpu_ms_per_s_per_node,
            r.light_mem_kb_per_node,
            r.full_agent_cpu_ms_per_s,
            r.full_agent_mem_mb,
            r.etcd_db_mb
        );
    }
    s
}

const PANEL_W: f64 = 250.0;
const PANEL_H: f64 = 170.0;
const MARGIN: f64 = 40.0;

/// One panel per metric, value against the cluster size (one point per
/// row, evenly spaced), the target dashed.
pub fn svg(rows: &[ScaleRow]) -> String {
    let (cols, rows_n) = (3.0, 2.0);
    let (w, h) = (cols * PANEL_W, rows_n * PANEL_H + 30.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14">Scale simulation: figures against the number of nodes (dashed: target)</text>"#
    );
    for (i, (title, value, target)) in METRICS.iter().enumerate() {
        let (px, py) = ((i % 3) as f64 * PANEL_W, 30.0 + (i / 3) as f64 * PANEL_H);
        panel(&mut s, rows, (px, py), title, *value, *target);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(
    s: &mut String,
    rows: &[ScaleRow],
    (px, py): (f64, f64),
    title: &str,
    value: fn(&ScaleRow) -> f64,
    target: Option<f64>,
) {
    let (x0, y0) = (px + MARGIN, py + PANEL_H - 30.0);
    let (pw, ph) = (PANEL_W - MARGIN - 15.0, PANEL_H - 60.0);
    let top = rows
        .iter()
        .map(value)
        .chain(target)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}">{title}</text>"#,
        px + 10.0,
        py + 14.0
    );
    let _ = writeln!(
        s,
        r##"<path d="M{x0},{} V{y0} H{}" stroke="#444" fill="none"/>"##,
        y0 - ph,
        x0 + pw
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        x0 - 4.0,
        y0 - ph + 4.0,
        short(top)
    );
    let y = |v: f64| y0 - ph * v / top;
    if let Some(t) = target {
        let _ = writeln!(
            s,
            r##"<path d="M{x0},{:.1} H{}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
            y(t),
            x0 + pw
        );
    }
    let step = pw / rows.len().max(1) as f64;
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| (x0 + step * (k as f64 + 0.5), y(value(r))))
        .collect();
    let line: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" stroke="#1f77b4" stroke-width="2" fill="none"/>"##,
        line.join(" ")
    );
    for ((x, yv), r) in pts.iter().zip(rows) {
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{yv:.1}" r="3" fill="#1f77b4"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            yv - 6.0,
            short(value(r))
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y0 + 14.0,
            r.nodes
        );
    }
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
