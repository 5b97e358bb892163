//! A full read cut off mid-way continues from its last page instead of
//! starting over: what a cluster's cold start needs, where many nodes read
//! at once and pages time out (`docs/scale.md`).

use std::collections::BTreeSet;

use overlay_ctl::descriptor::ServiceRecord;
use overlay_ctl::model::Policy;
use overlay_ctl::store::Cursor;

use super::follow::Relay;
use super::*;

/// Services in the store: 6 pages of the follower's read.
const SERVICES: usize = 6000;

/// Writes `SERVICES` service records; returns their key and value bytes.
async fn preload(store: &Store) -> u64 {
    let records: Vec<(String, Vec<u8>)> = (0..SERVICES)
        .map(|i| {
            let d = descriptor(&format!("s{i}"));
            let base = u32::from(Ipv4Addr::new(172, 30, 128, 0)) + 4 * i as u32;
            let rec = ServiceRecord {
                name: d.name(),
                id: 1000 + i as u32,
                descriptor: d,
                servips: Policy::SERVIPS
                    .iter()
                    .zip(1..)
                    .map(|(p, k)| (*p, Ipv4Addr::from(base + k)))
                    .collect(),
            };
            let value = serde_json::to_vec(&rec).unwrap();
            (format!("services/{}", rec.name), value)
        })
        .collect();
    let bytes = records
        .iter()
        .map(|(k, v)| (store.prefix().len() + k.len() + v.len()) as u64)
        .sum();
    store.put_records(&records).await.unwrap();
    bytes
}

/// The follower's connection is cut half-way through its first read; once
/// it can reach the store again, it completes the read from where it was
/// cut: about the state's bytes come from the store in all, not the half
/// before the cut and the whole state again.
#[test]
fn a_follower_cut_off_mid_read_continues_where_it_was() {
    let Cluster { etcd, ns } = cluster("st-resume");
    let relay = Relay::start(&ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 2379)));
    let endpoint = etcd.endpoint();
    let (relay, relayed) = (&relay, relay.endpoint());
    ns.enter(move || {
        runtime().block_on(async move {
            let store = Store::connect(&endpoint).await.unwrap();
            let bytes = preload(&store).await;
            let (expected, _) = store.snapshot().await.unwrap();
            assert_eq!(expected.services.len(), SERVICES);

            relay.cut_after(bytes / 2);
            let (tx, mut rx) = watch::channel(ClusterState::default());
            let follower = tokio::spawn(async move { store::follow(&relayed, tx).await });
            eventually("the cut", Duration::from_secs(20), || async {
                !relay.is_open()
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            relay.mend();
            state_until(&mut rx, "every service", |s| s.services.len() == SERVICES).await;
            assert_eq!(*rx.borrow(), expected);
            let down = relay.down();
            assert!(
                down < bytes * 13 / 10,
                "{down} bytes came from the store for a state of {bytes}: the read started over"
            );
            follower.abort();
        })
    })
    .unwrap();
    drop(etcd);
}

/// [`Store::tally`] (the scale simulation's follower) likewise: called again
/// with the cursor of a read that failed, on a new connection, it delivers
/// the keys not delivered yet, each once.
#[test]
fn a_tally_cut_off_mid_read_delivers_every_key_once() {
    let Cluster { etcd, ns } = cluster("st-tally");
    let relay = Relay::start(&ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 2379)));
    let endpoint = etcd.endpoint();
    let (relay, relayed) = (&relay, relay.endpoint());
    ns.enter(move || {
        runtime().block_on(async move {
            let store = Store::connect(&endpoint).await.unwrap();
            let bytes = preload(&store).await;
            relay.cut_after(bytes / 2);
            let mut cursor = Cursor::default();
            let mut keys = Vec::new();
            let first = tally(&relayed, &mut cursor, &mut keys).await;
            assert!(first.is_err(), "the cut ends the first read");
            assert!(
                !cursor.is_new() && !cursor.read_done() && !keys.is_empty(),
                "the read got some pages before the cut: {cursor:?}, {} keys",
                keys.len()
            );
            relay.mend();
            tally(&relayed, &mut cursor, &mut keys).await.unwrap();
            let unique: BTreeSet<&String> = keys.iter().collect();
            assert_eq!(
                (keys.len(), unique.len()),
                (SERVICES, SERVICES),
                "every key, once"
            );
        })
    })
    .unwrap();
    drop(etcd);
}

/// Tallies on a new connection to `endpoint` until every service was seen.
async fn tally(endpoint: &str, cursor: &mut Cursor, keys: &mut Vec<String>) -> store::Result<()> {
    let store = Store::connect(endpoint).await?;
    store
        .tally(cursor, |s| {
            keys.push(s.key.to_owned());
            keys.len() < SERVICES
        })
        .await
}
