//! An SVG bar chart of the ratios to plain routing, written by hand (no
//! fonts to embed: the viewer renders the text).

use std::fmt::Write as _;

use crate::plan::PathId;
use crate::report::{RatioMetric, Report, ratio};

const WIDTH: f64 = 760.0;
const LEFT: f64 = 250.0;
const RIGHT: f64 = 70.0;
const BAR: f64 = 22.0;
const GAP: f64 = 6.0;
const PANEL_TOP: f64 = 30.0;
const PANEL_BOTTOM: f64 = 26.0;

/// The target for (b)/(a) of each metric, drawn as a dashed line.
fn goal(m: RatioMetric) -> f64 {
    match m {
        RatioMetric::Tcp => 0.95,
        RatioMetric::UdpPps => 0.85,
        RatioMetric::P50 => 1.15,
        RatioMetric::Tcp8 => 0.90,
        RatioMetric::WireTcp => 0.75,
    }
}

fn colour(p: PathId) -> &'static str {
    match p {
        PathId::Plain => "#999999",
        PathId::OverlayRemote => "#1f77b4",
        PathId::OverlayLocal => "#6baed6",
        PathId::Vxlan => "#ff7f0e",
        PathId::Tun => "#d62728",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel per metric; in each, one bar per path: its value relative to (a)
/// plain routing (1.0, solid line), and the goal for (b) (dashed line).
pub fn svg(r: &Report) -> String {
    let paths: Vec<PathId> = r
        .plan
        .paths
        .iter()
        .copied()
        .filter(|&p| p != PathId::Plain)
        .collect();
    let panel_h = PANEL_TOP + paths.len() as f64 * (BAR + GAP) + PANEL_BOTTOM;
    let height = 50.0 + RatioMetric::ALL.len() as f64 * panel_h + 10.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="16" font-weight="bold">Ratios to (a) plain routing ({} run, {} rounds, medians of per-round ratios)</text>"#,
        10,
        if r.plan.quick { "quick" } else { "full" },
        r.plan.rounds
    );
    for (k, &m) in RatioMetric::ALL.iter().enumerate() {
        let top = 40.0 + k as f64 * panel_h;
        let values: Vec<Option<f64>> = paths
            .iter()
            .map(|&p| ratio(r, m, p, PathId::Plain))
            .collect();
        let max = values
            .iter()
            .flatten()
            .copied()
            .fold(goal(m).max(1.0), f64::max)
            * 1.1;
        let x = |v: f64| LEFT + plot_w * (v / max).clamp(0.0, 1.0);
        let better = if m == RatioMetric::P50 {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" font-weight="bold">{} ({better})</text>"#,
            top + 18.0,
            m.label()
        );
        let bars_top = top + PANEL_TOP;
        let bars_bottom = bars_top + paths.len() as f64 * (BAR + GAP);
        for (i, (&p, v)) in paths.iter().zip(&values).enumerate() {
            let y = bars_top + i as f64 * (BAR + GAP);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">({}) {}</text>"#,
                LEFT - 8.0,
                y + BAR * 0.7,
                p.letter(),
                esc(p.label())
            );
            match v {
                Some(v) => {
                    let _ = writeln!(
                        s,
                        r#"<rect x="{LEFT}" y="{y}" width="{:.1}" height="{BAR}" fill="{}"/><text x="{:.1}" y="{}">{:.2}x</text>"#,
                        x(*v) - LEFT,
                        colour(p),
                        x(*v) + 4.0,
                        y + BAR * 0.7,
                        v
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{}" y="{}" fill="#777">not measured</text>"##,
                        LEFT + 4.0,
                        y + BAR * 0.7
                    );
                }
            }
        }
        for (v, style, label) in [
            (1.0, "stroke:#333;stroke-width:1.5", "(a) = 1".to_owned()),
            (
                goal(m),
                "stroke:#2ca02c;stroke-width:1.5;stroke-dasharray:5,3",
                format!("goal (b) {:.2}", goal(m)),
            ),
        ] {
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" style="{style}"/><text x="{0:.1}" y="{3}" font-size="11" text-anchor="middle">{label}</text>"#,
                x(v),
                bars_top - 4.0,
                bars_bottom,
                bars_bottom + 14.0 + if v == 1.0 { 0.0 } else { 10.0 },
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
