//! The scale simulation at its quick size (20 nodes, 600 instances), so
//! that the code behind `overlay-bench --scale` keeps working.

use overlay_bench::scale::{self, ScalePlan, report};

#[test]
fn a_small_cluster_converges_and_is_measured() {
    let plan = ScalePlan::quick();
    let rows = scale::run(&plan).unwrap();
    let r = &rows[0];
    println!("{}", report::markdown(&rows));
    assert_eq!((r.nodes, r.instances), (20, 600));
    assert!(r.cold_start_s > 0.0 && r.full_join_s > 0.0, "{r:?}");
    assert_eq!(r.converged_nodes, 20, "{r:?}");
    assert!(
        r.deploy_p50_ms > 0.0 && r.deploy_p99_ms >= r.deploy_p50_ms,
        "{r:?}"
    );
    // Nodes keep publishing measurements, and everyone watches them.
    assert!(
        r.writes_per_s > 0.0 && r.watch_bytes_per_s_per_agent > 0.0,
        "{r:?}"
    );
    assert!(
        r.full_agent_cpu_ms_per_s >= 0.0 && r.etcd_db_mb > 0.0,
        "{r:?}"
    );
    let svg = report::svg(&rows);
    assert!(svg.starts_with("<svg") && svg.contains("converged"));
    serde_json::to_string(&rows).unwrap();
}
