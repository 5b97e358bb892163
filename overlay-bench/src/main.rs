//! `overlay-bench [--quick] [--rounds N]`: run as root, normally through
//! `cargo xtask bench`, which prepares the machine first.

use std::path::PathBuf;

use clap::Parser;
use overlay_bench::plan::Plan;
use overlay_bench::run::{self, Sections};

#[derive(Parser)]
#[command(about = "EdgeIO overlay benchmark (root; network namespaces only)")]
struct Args {
    /// Short runs and fewer rounds: about two minutes.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds of the data-path measurements (default 5, quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Where results.md, results.json and ratios.svg go (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the data paths (development).
    #[arg(long)]
    no_paths: bool,
    /// Skip the per-packet costs (development).
    #[arg(long)]
    no_cost: bool,
    /// Skip the control plane (development).
    #[arg(long)]
    no_control: bool,
    /// Skip the DNS measurement (development).
    #[arg(long)]
    no_dns: bool,
    /// Fresh runs per program path (default 1,000,000).
    #[arg(long)]
    cost_runs: Option<usize>,
    /// Time only these program paths (e.g. `encap_established`), for profiling.
    #[arg(long, value_delimiter = ',')]
    cost_only: Vec<String>,
    /// Only the scale simulation (`docs/scale.md`): 100, 300 and 1,000
    /// simulated nodes (quick: 20); results in scale.json, scale.md, scale.svg.
    #[arg(long)]
    scale: bool,
    /// With --scale: these cluster sizes instead.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<usize>,
    /// With --scale: start the nodes evenly over this many seconds instead
    /// of all at once.
    #[arg(long)]
    ramp: Option<f64>,
    /// With --scale: give up waiting for a phase after this many seconds
    /// (the cold start's timeout is reported, and the rest measured).
    #[arg(long)]
    phase_timeout: Option<u64>,
    /// With --scale: nodes publish their measurements as the previous
    /// release did (every change, every peer), for comparison.
    #[arg(long)]
    publish_every_change: bool,
    /// Instead of running: the rows of these scale.json files (of separate
    /// runs) as one scale.json, scale.md and scale.svg in --out.
    #[arg(long, value_delimiter = ',')]
    scale_merge: Vec<PathBuf>,
}

/// `--scale`: the simulation alone, its files in `out`.
fn scale(args: &Args, out: &std::path::Path) -> anyhow::Result<()> {
    use overlay_bench::scale::{self, ScalePlan, report};
    let mut plan = if args.quick {
        ScalePlan::quick()
    } else {
        ScalePlan::full()
    };
    if !args.nodes.is_empty() {
        plan.sizes = args.nodes.clone();
    }
    if args.publish_every_change {
        plan.publishing = overlay_ctl::store::Publishing::EVERY_CHANGE;
    }
    if let Some(s) = args.phase_timeout {
        plan.timeout = std::time::Duration::from_secs(s);
    }
    if let Some(s) = args.ramp {
        plan.ramp = std::time::Duration::from_secs_f64(s.max(0.0));
    }
    let rows = if args.scale_merge.is_empty() {
        scale::run(&plan)?
    } else {
        let mut rows = Vec::new();
        for f in &args.scale_merge {
            let text = std::fs::read_to_string(f)?;
            rows.extend(serde_json::from_str::<Vec<report::ScaleRow>>(&text)?);
        }
        rows.sort_by_key(|r| r.nodes);
        rows
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(&rows)?)?;
    let md = report::markdown(&rows);
    std::fs::write(out.join("scale.md"), &md)?;
    std::fs::write(out.join("scale.svg"), report::svg(&rows))?;
    println!("{md}");
    println!(
        "bench: wrote {}/scale.json, scale.md and scale.svg",
        out.display()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    run::install_sigint();
    if args.scale || !args.scale_merge.is_empty() {
        let out = args.out.clone().unwrap_or_else(run::default_out_dir);
        if let Err(e) = scale(&args, &out) {
            eprintln!("bench failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut plan = Plan::new(args.quick, args.rounds);
    if let Some(n) = args.cost_runs {
        plan.cost_runs = n.max(1);
    }
    let sections = Sections {
        paths: !args.no_paths,
        cost: !args.no_cost,
        control: !args.no_control,
        dns: !args.no_dns,
        cost_only: args.cost_only,
    };
    eprintln!(
        "bench: {} run, {} round(s), estimated {:.0} s",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        plan.estimate_secs()
    );
    let out = args.out.unwrap_or_else(run::default_out_dir);
    let result = run::run(plan, &sections).and_then(|r| {
        let md = run::write_outputs(&r, &out)?;
        println!("{md}");
        println!(
            "bench: wrote {}/results.md, results.json and ratios.svg",
            out.display()
        );
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("bench failed: {e:#}");
        let code = if run::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            130
        } else {
            1
        };
        std::process::exit(code);
    }
}
