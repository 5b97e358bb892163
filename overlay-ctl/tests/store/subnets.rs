//! Node subnets as a cluster setting: more than 256 nodes as /26s of the
//! default pool, and a setting that changes only where held subnets allow.

use overlay_ctl::subnets::NodeSubnets;

use super::*;

fn subnets(p: &str, per_node: u8) -> Option<NodeSubnets> {
    Some(NodeSubnets {
        pool: pool(p),
        per_node,
    })
}

#[test]
fn three_hundred_nodes_lease_26s_and_the_setting_guards_them() {
    let c = cluster("st-subnets");
    run(&c, |store| async move {
        let err = store
            .set_node_subnets(subnets("172.16.0.0/12", 24))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("overlaps the ServIP pool"),
            "{err}"
        );
        assert_eq!(store.settings().await.unwrap().node_subnets, None);

        let quarter = subnets("10.30.0.0/16", 26);
        store.set_node_subnets(quarter).await.unwrap();
        assert_eq!(store.settings().await.unwrap().node_subnets, quarter);
        let mut leased = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for i in 0..300 {
            let s = store.lease_node_subnet(&format!("n{i}")).await.unwrap();
            assert_eq!(s.prefix, 26);
            assert!(pool("10.30.0.0/16").contains(s.addr), "{s}");
            leased.insert(s);
            ids.insert(s.node_id());
        }
        assert_eq!((leased.len(), ids.len()), (300, 300));
        assert!(!ids.contains(&0));
        assert_eq!(
            store.lease_node_subnet("n1").await.unwrap(),
            pool("10.30.0.64/26"),
            "a node asking again gets its own subnet"
        );

        // Held /26s would no longer be node subnets: refused, nothing changed.
        for refused in [
            None,
            subnets("10.30.0.0/16", 24),
            subnets("10.31.0.0/16", 26),
        ] {
            let err = store.set_node_subnets(refused).await.unwrap_err();
            assert!(
                err.to_string().contains("node `n0` holds 10.30.0.0/26"),
                "{err}"
            );
            assert_eq!(store.settings().await.unwrap().node_subnets, quarter);
        }
        // A pool that still holds them all, at the same length, may replace it.
        let grown = subnets("10.30.0.0/15", 26);
        store.set_node_subnets(grown).await.unwrap();
        assert_eq!(store.settings().await.unwrap().node_subnets, grown);
        let settings = store.settings().await.unwrap().node_subnets.unwrap();
        assert_eq!(settings.max_nodes(), 1024);
    });
}
