//! Following a rotation of the cluster's probe key without losing probes.
//!
//! `overlay-ctl cluster rotate-probe-key` first publishes the next key,
//! which every agent accepts once it has read it while still signing with
//! the current one; then it makes the next key current. An agent signs with
//! the current key from its next read on and accepts the one before a while
//! longer, so probes and echoes crossing the switch-over still verify.

use std::time::{Duration, Instant};

use crate::probe::Prober;
use crate::store::Store;

use crate::probe::KEY_REFRESH as REFRESH;
/// How long the key before the current one is still accepted.
const KEEP_OLD: Duration = Duration::from_secs(30);

/// The keys this agent last read.
#[derive(Default)]
pub struct KeyFollower {
    current: Option<[u8; 32]>,
    next: Option<[u8; 32]>,
    previous: Option<([u8; 32], Instant)>,
    read: Option<Instant>,
}

impl KeyFollower {
    /// Reads the keys (every [`REFRESH`]) and hands any change to `prober`.
    pub async fn refresh(&mut self, store: &Store, prober: &Prober) {
        let now = Instant::now();
        if self.read.is_some_and(|t| now.duration_since(t) < REFRESH) {
            return;
        }
        self.read = Some(now);
        let (current, next) = match store.probe_keys().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::debug!("probe keys not read: {e}");
                return;
            }
        };
        let expired = self
            .previous
            .is_some_and(|(_, t)| now.duration_since(t) >= KEEP_OLD);
        if self.current == Some(current) && self.next == next && !expired {
            return;
        }
        if let Some(old) = self.current.filter(|old| *old != current) {
            tracing::info!("probe key rotated: signing with the new key");
            self.previous = Some((old, now));
        }
        if expired {
            self.previous = None;
        }
        self.current = Some(current);
        self.next = next;
        let accept: Vec<[u8; 32]> = next
            .into_iter()
            .chain(self.previous.map(|(k, _)| k))
            .collect();
        prober.set_keys(&current, &accept);
    }
}
