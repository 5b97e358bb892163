//! Following the store: keeps a `watch::Sender<ClusterState>` equal to the
//! store's desired state. A full read first, then a watch on the prefix from
//! the next revision; after a disconnect the read continues from its last
//! page and the watch where it stopped (with jittered exponential backoff
//! between attempts), and if that history was compacted meanwhile, a full
//! read replaces it. While the store cannot be
//! reached, the channel keeps the last state: the dataplane keeps forwarding.
//! Changes are gathered before a state is published: those of the nodes,
//! services and instances for a few milliseconds, those of the measurements
//! only for up to [`MEASUREMENTS_EVERY`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::keys::{self, NodeKey};
use super::ops::prefix_end;
use super::{
    Access, Cursor, DEFAULT_PREFIX, Kv, Store, StoreError, build_state, is_state_key,
    normalise_prefix, proto,
};
use crate::model::ClusterState;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the follower asks the store to confirm that it is current.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A change of the nodes, services or instances is published once the
/// events that arrived with it are applied, and at most this long after it
/// (events that follow closely, as in a deploy or a node's start, make one
/// state instead of many).
const GATHER: Duration = Duration::from_millis(20);
/// Changes of the measurements only (`rtt`, `load`) are published at most
/// this often: in a large cluster they arrive many times a second, and
/// each published state is rebuilt and reconciled by the agent whole
/// (`docs/scale.md`).
const MEASUREMENTS_EVERY: Duration = Duration::from_secs(2);

/// The follower's copy of the state keys, at a revision.
struct Mirror {
    entries: BTreeMap<String, Vec<u8>>,
    revision: i64,
}

impl Mirror {
    fn state(&self) -> ClusterState {
        build_state(self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}

/// A full read under way: what its pages brought so far, and where the
/// next page starts.
#[derive(Default)]
struct Partial {
    entries: BTreeMap<String, Vec<u8>>,
    cursor: Cursor,
}

/// Publishes `state` unless the receivers already have it.
fn publish(tx: &watch::Sender<ClusterState>, state: ClusterState) {
    tx.send_if_modified(|current| {
        if *current == state {
            false
        } else {
            *current = state;
            true
        }
    });
}

/// How a watch ended.
enum WatchEnd {
    /// The watch cannot continue from the mirror's revision: read everything again.
    Resync(String),
    Failed(StoreError),
}

/// How a follower's connection to the store is doing, for `/metrics`.
#[derive(Debug, Default)]
pub struct FollowHealth {
    /// Whether the watch is established (false from the first failure on).
    pub connected: std::sync::atomic::AtomicBool,
    /// The store revision the follower's state is at.
    pub revision: std::sync::atomic::AtomicI64,
    /// When the store last confirmed that the follower had every change
    /// (an event, or the answer to a progress request); `None` before the
    /// first read.
    pub current_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl FollowHealth {
    /// The follower's state is the store's as of now.
    fn confirmed(&self) {
        let mut at = self.current_at.lock().unwrap_or_else(|e| e.into_inner());
        *at = Some(std::time::Instant::now());
    }

    /// How long ago the store last confirmed the follower's state (`None`:
    /// never): the watch's lag, bounded below by the progress request period.
    pub fn lag(&self) -> Option<Duration> {
        let at = *self.current_at.lock().unwrap_or_else(|e| e.into_inner());
        at.map(|t| t.elapsed())
    }
}

/// [`follow_prefix`] under [`DEFAULT_PREFIX`].
pub async fn follow(access: impl Into<Access>, tx: watch::Sender<ClusterState>) {
    follow_prefix(access, DEFAULT_PREFIX, tx).await
}

/// Keeps `tx` equal to the desired state under `prefix` in the store at
/// `access`. Runs until every receiver of `tx` is
/// gone; spawn it. Never gives up on the store: it logs, backs off (100 ms
/// doubling to 5 s) and tries again, leaving the last state in `tx`.
pub async fn follow_prefix(
    access: impl Into<Access>,
    prefix: &str,
    tx: watch::Sender<ClusterState>,
) {
    follow_with_health(access, prefix, tx, Arc::default()).await
}

/// [`follow_prefix`], reporting its connection in `health`.
pub async fn follow_with_health(
    access: impl Into<Access>,
    prefix: &str,
    tx: watch::Sender<ClusterState>,
    health: Arc<FollowHealth>,
) {
    let access = access.into();
    let prefix = normalise_prefix(prefix);
    let closed = tx.clone();
    tokio::select! {
        _ = closed.closed() => tracing::debug!("store: nobody follows the state any more"),
        _ = run(&access, &prefix, &tx, &health) => {}
    }
}

async fn run(
    access: &Access,
    prefix: &str,
    tx: &watch::Sender<ClusterState>,
    health: &FollowHealth,
) {
    let mut mirror: Option<Mirror> = None;
    let mut partial = Partial::default();
    let mut backoff = BACKOFF_MIN;
    // Starts true so that a store unreachable from the start is reported too.
    let mut connected = true;
    loop {
        let result = async {
            let store = Store::connect(access).await?.with_prefix(prefix);
            if mirror.is_none() {
                let m = read_all(&store, &mut partial).await?;
                tracing::info!(
                    "store: read the full state from {} at revision {}",
                    store.endpoint(),
                    m.revision
                );
                // Announced even when equal to what the receivers hold (an
                // empty store at start): they learn that this is the state.
                tx.send_replace(m.state());
                health.confirmed();
                mirror = Some(m);
            }
            let m = mirror.as_mut().expect("mirror was just read");
            Ok::<_, StoreError>(watch(&store, m, tx, &mut connected, &mut backoff, health).await)
        }
        .await;
        let end = match result {
            Ok(end) => end,
            Err(e) => WatchEnd::Failed(e),
        };
        match end {
            WatchEnd::Resync(why) => {
                tracing::warn!("store: {why}; reading the full state again");
                mirror = None;
                continue;
            }
            WatchEnd::Failed(e) => {
                health.connected.store(false, Ordering::Relaxed);
                if connected {
                    tracing::warn!(
                        "store: cannot follow the store: {e}; keeping the last state, retrying"
                    );
                    connected = false;
                } else {
                    tracing::debug!("store: still unreachable: {e}; next try in {backoff:?}");
                }
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads every state key into `partial`, page by page; after a failed page,
/// what was read stays in `partial`, and the next call continues from there
/// at the same revision (or starts over if that revision was compacted).
async fn read_all(store: &Store, partial: &mut Partial) -> Result<Mirror, StoreError> {
    while !partial.cursor.read_done() {
        if partial.cursor.is_new() {
            partial.entries.clear();
        }
        let kvs = store.next_page("", &mut partial.cursor, false).await?;
        let state = kvs.into_iter().filter(|kv| is_state_key(&kv.key));
        partial.entries.extend(state.map(|kv| (kv.key, kv.value)));
    }
    let Partial { entries, cursor } = std::mem::take(partial);
    Ok(Mirror {
        entries,
        revision: cursor.revision(),
    })
}

/// Between `d / 2` and `d`, at random: followers that lost the store
/// together (an overloaded or restarted etcd) do not come back in step.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) % 1024;
    d / 2 + d.mul_f64(r as f64 / 2048.0)
}

fn compacted(mirror: &Mirror) -> WatchEnd {
    WatchEnd::Resync(format!(
        "the history after revision {} was compacted",
        mirror.revision
    ))
}

/// Watches the prefix from `mirror.revision + 1`, applying events to the
/// mirror and publishing each change, until the stream fails.
async fn watch(
    store: &Store,
    mirror: &mut Mirror,
    tx: &watch::Sender<ClusterState>,
    connected: &mut bool,
    backoff: &mut Duration,
    health: &FollowHealth,
) -> WatchEnd {
    let create = proto::WatchCreateRequest {
        key: store.prefix.clone().into_bytes(),
        range_end: prefix_end(&store.prefix),
        start_revision: mirror.revision + 1,
        progress_notify: true,
    };
    let (requests, mut stream) = match store.client.watch(create).await {
        Ok(pair) => pair,
        Err(StoreError::Compacted) => return compacted(mirror),
        Err(e) => return WatchEnd::Failed(e),
    };
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut pending = Pending::default();
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = until(pending.due()) => {
                // Due: publish what was gathered.
                publish(tx, mirror.state());
                pending.published();
                health.revision.store(mirror.revision, Ordering::Relaxed);
                continue;
            }
            _ = progress.tick() => {
                let ask = proto::watch_request::RequestUnion::ProgressRequest(
                    proto::WatchProgressRequest {},
                );
                let _ = requests.unbounded_send(proto::WatchRequest {
                    request_union: Some(ask),
                });
                continue;
            }
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return WatchEnd::Failed(StoreError::Rpc {
                    op: "watch",
                    endpoint: store.endpoint().to_owned(),
                    reason: "the store closed the watch".into(),
                });
            }
            Err(status) => {
                return match store.client.watch_error(status) {
                    StoreError::Compacted => compacted(mirror),
                    e => WatchEnd::Failed(e),
                };
            }
        };
        if resp.compact_revision > 0 {
            return compacted(mirror);
        }
        if resp.canceled {
            return WatchEnd::Failed(StoreError::Rpc {
                op: "watch",
                endpoint: store.endpoint().to_owned(),
                reason: format!("the store canceled the watch: {}", resp.cancel_reason),
            });
        }
        if resp.created {
            let now = resp.header.as_ref().map_or(0, |h| h.revision);
            if now < mirror.revision {
                // A wiped or restored etcd: a watch from our revision would
                // wait for the future instead of failing.
                return WatchEnd::Resync(format!(
                    "the store is at revision {now}, behind the {} seen before (a new or restored etcd?)",
                    mirror.revision
                ));
            }
            tracing::info!(
                "store: following {} from revision {}",
                store.endpoint(),
                mirror.revision + 1
            );
            *connected = true;
            *backoff = BACKOFF_MIN;
            health.connected.store(true, Ordering::Relaxed);
        }
        if resp.events.is_empty() {
            // A progress notification: everything up to here was sent.
            if !resp.created {
                let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                mirror.revision = mirror.revision.max(revision);
            }
            health.revision.store(mirror.revision, Ordering::Relaxed);
            if !resp.created {
                // Sent only to a watcher that has sent everything.
                health.confirmed();
            }
            continue;
        }
        for event in resp.events {
            let Some(kv) = event.kv else { continue };
            mirror.revision = mirror.revision.max(kv.mod_revision);
            let kv = Kv::new(&store.prefix, kv);
            if !is_state_key(&kv.key) {
                continue;
            }
            pending.changed(&kv.key);
            match event.r#type {
                proto::EVENT_PUT => {
                    mirror.entries.insert(kv.key, kv.value);
                }
                proto::EVENT_DELETE => {
                    mirror.entries.remove(&kv.key);
                }
                _ => {}
            }
        }
        // Published when due (`Pending`). A watcher catching up gets old
        // events under the store's current revision: current only once it
        // reached that revision.
        if resp
            .header
            .as_ref()
            .is_none_or(|h| mirror.revision >= h.revision)
        {
            health.confirmed();
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// When the changes applied to the mirror but not yet published are due.
#[derive(Default)]
struct Pending {
    /// Since when the nodes, services or instances changed.
    structure: Option<Instant>,
    /// Since when measurements changed.
    measurements: Option<Instant>,
    /// The last publish.
    last: Option<Instant>,
}

impl Pending {
    fn changed(&mut self, key: &str) {
        let measurement = matches!(
            keys::parse_node_key(key),
            Some((_, NodeKey::Rtt | NodeKey::Load))
        );
        if measurement {
            self.measurements.get_or_insert_with(Instant::now);
        } else {
            self.structure.get_or_insert_with(Instant::now);
        }
    }

    fn due(&self) -> Option<Instant> {
        if let Some(since) = self.structure {
            return Some(since + GATHER);
        }
        // A fixed deadline (not one that moves with every event): a
        // measurement change waits for the next slot, never longer.
        let since = self.measurements?;
        Some(match self.last {
            Some(last) => (last + MEASUREMENTS_EVERY).max(since),
            None => since + MEASUREMENTS_EVERY,
        })
    }

    fn published(&mut self) {
        *self = Pending {
            last: Some(Instant::now()),
            ..Pending::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_wait_for_their_slot_and_structure_does_not() {
        let mut p = Pending::default();
        assert_eq!(p.due(), None);
        p.changed("node/n1/rtt");
        let first = p.due().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        p.changed("node/n2/load");
        assert_eq!(
            p.due(),
            Some(first),
            "more measurements do not push it back"
        );
        assert!(first >= Instant::now() + MEASUREMENTS_EVERY - Duration::from_millis(50));
        p.changed("node/n2/record");
        assert!(p.due().unwrap() <= Instant::now() + GATHER);
        p.published();
        assert_eq!(p.due(), None);
        p.changed("node/n1/rtt");
        let next = p.due().unwrap();
        assert!(next >= p.last.unwrap() + MEASUREMENTS_EVERY);
    }
}
