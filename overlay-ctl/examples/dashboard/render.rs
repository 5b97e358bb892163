//! The dashboard's panels over the run: each panel's PromQL (as in
//! `docs/grafana-dashboard.json`, with `$node` = every node and
//! `$__rate_interval` = 30 s) evaluated by Prometheus, drawn by gnuplot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use overlay_testnet::Netns;
use serde_json::Value;

use super::PROM_IP;

/// A time-series panel: title, y label, scale of the values, query, legend.
struct Panel {
    title: &'static str,
    ylabel: &'static str,
    scale: f64,
    expr: &'static str,
    legend: &'static str,
}

const PANELS: &[Panel] = &[
    Panel {
        title: "Packets per node (forwarded or passed)",
        ylabel: "packets/s",
        scale: 1.0,
        expr: r#"sum by (instance) (rate(overlay_packets_total{instance=~".*", reason!~"drop_.*|new_flow|north_south_in|gateway_in"}[30s]))"#,
        legend: "{{instance}}",
    },
    Panel {
        title: "Traffic per node",
        ylabel: "kbit/s",
        scale: 8.0 / 1000.0,
        expr: r#"sum by (instance) (rate(overlay_bytes_total{instance=~".*", reason=~"deliver_local|encap|decap|north_south_out|gateway_out"}[30s]))"#,
        legend: "{{instance}}",
    },
    Panel {
        title: "Drops by reason",
        ylabel: "packets/s",
        scale: 1.0,
        expr: r#"sum by (reason) (rate(overlay_packets_total{instance=~".*", reason=~"drop_.*"}[30s]))"#,
        legend: "{{reason}}",
    },
    Panel {
        title: "New flows per service",
        ylabel: "flows/s",
        scale: 1.0,
        expr: r#"sum by (service) (rate(overlay_flows_new_total{instance=~".*"}[30s]))"#,
        legend: "{{service}}",
    },
    Panel {
        title: "Denied flows per service",
        ylabel: "flows/s",
        scale: 1.0,
        expr: r#"sum by (service) (rate(overlay_flows_denied_total{instance=~".*"}[30s]))"#,
        legend: "{{service}}",
    },
    Panel {
        title: "Active flows per service",
        ylabel: "flows",
        scale: 1.0,
        expr: r#"sum by (service) (overlay_flows_active{instance=~".*"})"#,
        legend: "{{service}}",
    },
    Panel {
        title: "Store watch lag",
        ylabel: "s",
        scale: 1.0,
        expr: r#"overlay_store_watch_lag_seconds{instance=~".*"}"#,
        legend: "{{instance}}",
    },
];

/// The RTT matrix panel's query (a table: node × peer).
const RTT: &str = r#"overlay_peer_rtt_seconds{instance=~".*"}"#;

/// `GET path` from Prometheus, inside its namespace; the body.
pub fn get(ns: &Netns, path: &str) -> anyhow::Result<String> {
    let answer = ns.enter(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect(SocketAddr::from((PROM_IP, 9090)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: prom\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

fn encode(q: &str) -> String {
    q.bytes().fold(String::new(), |mut out, b| {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    })
}

/// `{{label}}` of `legend` filled from a series' labels.
fn legend(legend: &str, metric: &Value) -> String {
    let mut out = legend.to_string();
    for (k, v) in metric.as_object().into_iter().flatten() {
        out = out.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or(""));
    }
    out
}

/// A series' labels (as JSON) and its points.
type Series = (String, Vec<(f64, f64)>);

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Each series of `expr` from `start` to `end` (Unix s): legend → (minutes
/// since `start`, value).
fn range(ns: &Netns, expr: &str, start: f64, end: f64) -> anyhow::Result<Vec<Series>> {
    let path = format!(
        "/api/v1/query_range?query={}&start={start:.0}&end={end:.0}&step=5",
        encode(expr)
    );
    let v: Value = serde_json::from_str(&get(ns, &path)?)?;
    let series = v["data"]["result"].as_array().context("no result")?;
    Ok(series
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let t = p[0].as_f64()?;
                    let v: f64 = p[1].as_str()?.parse().ok()?;
                    v.is_finite().then_some(((t - start) / 60.0, v))
                });
            (s["metric"].to_string(), points.collect())
        })
        .collect())
}

/// Evaluates every panel over the run that began at `began` and draws the
/// dashboard into `out`.
pub fn render(ns: &Netns, began: Instant, out: &Path) -> anyhow::Result<()> {
    let end = unix(SystemTime::now());
    let start = end - began.elapsed().as_secs_f64();
    let dir = std::env::temp_dir().join(format!("ovt{}-dashboard-plot", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut script = format!(
        "set terminal png size 1800,1560 font ',10'\nset output '{}'\n\
         set multiplot layout 4,2 title 'EdgeIO overlay: 3 nodes, {:.0} min of traffic (Prometheus, 5 s scrapes; panels of docs/grafana-dashboard.json)'\n\
         set key outside right top vertical font ',8'\nset grid\nset xlabel 'minutes'\nset yrange [0:*]\n",
        out.display(),
        (end - start) / 60.0
    );
    for (i, p) in PANELS.iter().enumerate() {
        let series = range(ns, p.expr, start, end)?;
        let file = dir.join(format!("panel{i}.dat"));
        let mut data = String::new();
        let mut plots = Vec::new();
        // Series that stay at 0 (every drop reason has a counter) are left
        // out, as a Grafana legend set to hide empty series would.
        let series = series
            .iter()
            .filter(|(_, pts)| pts.iter().any(|(_, v)| *v > 0.0));
        for (k, (metric, points)) in series.enumerate() {
            let metric: Value = serde_json::from_str(metric)?;
            for (t, v) in points {
                let _ = writeln!(data, "{t:.3} {:.6}", v * p.scale);
            }
            data.push_str("\n\n");
            let title = legend(p.legend, &metric).replace('_', "\\_");
            plots.push(format!(
                "'{}' index {k} with lines lw 2 title '{title}'",
                file.display()
            ));
        }
        std::fs::write(&file, data)?;
        let _ = write!(
            script,
            "set title '{}'\nset ylabel '{}'\n",
            p.title, p.ylabel
        );
        match plots.is_empty() {
            true => script.push_str("plot NaN notitle\n"),
            false => {
                let _ = writeln!(script, "plot {}", plots.join(", "));
            }
        }
    }
    script.push_str(&rtt_matrix(ns, &dir)?);
    script.push_str("unset multiplot\n");
    let file = dir.join("dashboard.gp");
    std::fs::write(&file, script)?;
    let status = std::process::Command::new("gnuplot").arg(&file).status()?;
    if !status.success() {
        bail!("gnuplot {} failed", file.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The RTT matrix at the end of the run: node (row) × peer (column), in ms.
fn rtt_matrix(ns: &Netns, dir: &Path) -> anyhow::Result<String> {
    let v: Value =
        serde_json::from_str(&get(ns, &format!("/api/v1/query?query={}", encode(RTT)))?)?;
    let mut cells: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let (Some(node), Some(peer)) = (
            s["metric"]["instance"].as_str(),
            s["metric"]["peer"].as_str(),
        ) else {
            continue;
        };
        let value: f64 = s["value"][1]
            .as_str()
            .unwrap_or("nan")
            .parse()
            .unwrap_or(f64::NAN);
        cells.insert((node.to_string(), peer.to_string()), value * 1000.0);
    }
    let names: Vec<String> = cells
        .keys()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut data = String::new();
    let mut labels = String::new();
    for (y, node) in names.iter().enumerate() {
        for (x, peer) in names.iter().enumerate() {
            let ms = cells.get(&(node.clone(), peer.clone())).copied();
            let _ = writeln!(
                data,
                "{x} {y} {}",
                ms.map_or("NaN".into(), |m| format!("{m:.3}"))
            );
            if let Some(m) = ms {
                let _ = writeln!(labels, "set label '{m:.3} ms' at {x},{y} center front");
            }
        }
        data.push('\n');
    }
    let file = dir.join("rtt.dat");
    std::fs::write(&file, data)?;
    let tics = |axis: &str| {
        let list: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("'{n}' {i}"))
            .collect();
        format!("set {axis} ({})\n", list.join(", "))
    };
    let last = names.len().max(1) as f64 - 0.5;
    Ok(format!(
        "set title 'Peer RTT matrix (end of run; row: node, column: peer)'\nunset grid\nset xlabel 'peer'\nset ylabel 'node'\n\
         set xrange [-0.5:{last}]\nset yrange [{last}:-0.5]\n{}{}set cblabel 'ms'\nset palette defined (0 '#fff5eb', 1 '#fd8d3c', 2 '#7f2704')\n{labels}\
         plot '{}' using 1:2:3 with image notitle\nunset label\n",
        tics("xtics"),
        tics("ytics"),
        file.display()
    ))
}
