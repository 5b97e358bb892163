//! North-south gateways: registered by the operator, in every snapshot,
//! refused with the reason when they cannot be.

use super::*;
use overlay_ctl::model::GatewaySpec;

fn gw(name: &str, ip: [u8; 4], port: u16) -> GatewaySpec {
    GatewaySpec {
        name: name.into(),
        ip: Ipv4Addr::from(ip),
        port,
    }
}

#[test]
fn gateways_are_registered_updated_refused_and_removed() {
    let c = cluster("st-gw");
    run(&c, |store| async move {
        let edge = gw("edge", [198, 51, 100, 1], 50104);
        store.add_gateway(&edge).await.unwrap();
        assert_eq!(store.gateways().await.unwrap(), std::slice::from_ref(&edge));
        assert_eq!(
            store.snapshot().await.unwrap().0.gateways,
            std::slice::from_ref(&edge)
        );
        // Same name: an update (new port), still one gateway.
        let moved = gw("edge", [198, 51, 100, 1], 40000);
        store.add_gateway(&moved).await.unwrap();
        assert_eq!(
            store.gateways().await.unwrap(),
            std::slice::from_ref(&moved)
        );

        // Refusals name what is wrong and change nothing.
        let subnet = store
            .lease_subnet("n1", DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_LEN)
            .await
            .unwrap();
        let reg = store
            .register_node(&node("n1", subnet), Duration::from_secs(10))
            .await
            .unwrap();
        let refused = [
            (
                gw("other", [198, 51, 100, 1], 50104),
                "already registered as gateway `edge`",
            ),
            (gw("n1gw", [192, 0, 2, 11], 50104), "node `n1`'s address"),
            (
                gw("bad name", [198, 51, 100, 2], 50104),
                "gateway name `bad name`",
            ),
            (gw("zero", [0, 0, 0, 0], 50104), "gateway address 0.0.0.0"),
            (
                gw("mcast", [224, 0, 0, 1], 50104),
                "gateway address 224.0.0.1",
            ),
            (gw("noport", [198, 51, 100, 3], 0), "gateway port"),
        ];
        for (g, why) in refused {
            let err = store.add_gateway(&g).await.unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains(why), "{g:?}: {err}");
        }
        assert_eq!(store.gateways().await.unwrap(), [moved]);

        assert!(store.remove_gateway("edge").await.unwrap());
        assert!(!store.remove_gateway("edge").await.unwrap(), "already gone");
        assert!(store.snapshot().await.unwrap().0.gateways.is_empty());
        reg.close().await.unwrap();
    });
}
