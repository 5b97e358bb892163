//! A three-member etcd: the store client outlives the member it first used.

use super::*;

/// The first member of the list stops for good: the node stays registered
/// past its lease time, its publishes land, and a follower keeps following.
#[test]
fn the_first_member_stopping_changes_nothing() {
    require_root().unwrap();
    let ns = Netns::new("st-members").unwrap();
    let ips = [2, 3, 4].map(|h| Ipv4Addr::new(127, 0, 0, h));
    let mut members = Etcd::start_cluster(&ns, &ips).unwrap();
    let endpoints: Vec<String> = members.iter().map(Etcd::endpoint).collect();
    let endpoints = endpoints.join(",");
    let first = &mut members[0];
    ns.enter(move || {
        runtime().block_on(async move {
            let store = Store::connect(&endpoints).await.unwrap();
            let (tx, mut rx) = watch::channel(ClusterState::default());
            let follower = tokio::spawn({
                let endpoints = endpoints.clone();
                async move { store::follow(&endpoints, tx).await }
            });
            let subnet = store
                .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
                .await
                .unwrap();
            let record = node("n1", subnet);
            let ttl = Duration::from_secs(3);
            let reg = store.register_node(&record, ttl).await.unwrap();
            state_until(&mut rx, "node n1", |s| s.node("n1").is_some()).await;

            first.kill().unwrap();
            // Well past the lease: the keepalives went to the other members.
            tokio::time::sleep(3 * ttl).await;
            let a = store
                .deploy_service(&descriptor("a"), DEFAULT_SERVICE_POOL)
                .await
                .unwrap();
            reg.publish_instance(&instance(&a.name, 1, &record))
                .await
                .unwrap();
            state_until(&mut rx, "n1 and its instance", |s| {
                s.node("n1").is_some() && s.instances.iter().any(|i| i.service == a.name)
            })
            .await;
            let (state, _) = store.snapshot().await.unwrap();
            assert!(state.node("n1").is_some(), "still registered: {state:?}");
            follower.abort();
        })
    })
    .unwrap();
}
