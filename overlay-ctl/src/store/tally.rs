//! What following the store costs, without keeping the state: the same read
//! and watch the follower makes (`follow`), reported key by key to a
//! callback that counts. The scale simulation runs one per simulated node,
//! where a full follower per node would not fit in one machine.

use super::ops::prefix_end;
use super::{Cursor, Result, Store, StoreError, is_state_key, proto};

/// One key the read or the watch delivered.
#[derive(Debug)]
pub struct Seen<'a> {
    /// Relative to the store's prefix.
    pub key: &'a str,
    /// Key and value bytes as received (a deletion carries its key only).
    pub bytes: usize,
    pub change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key did not exist before (or was read at the start).
    Created,
    Updated,
    Deleted,
}

impl Store {
    /// Reads every state key, then watches the prefix from the next
    /// revision, calling `seen` for each state key, until the read or the
    /// watch fails (its error is returned) or `seen` returns `false` (`Ok`).
    /// `cursor` is where the follower stands: new to start with the read;
    /// after a failure, calling again with it continues the read from its
    /// last page, or the watch where it stopped, as the follower does (a
    /// new cursor after [`StoreError::Compacted`]: everything is read again).
    pub async fn tally(
        &self,
        cursor: &mut Cursor,
        mut seen: impl FnMut(Seen<'_>) -> bool,
    ) -> Result<()> {
        while !cursor.read_done() {
            if !self.tally_page(cursor, &mut seen).await? {
                return Ok(());
            }
        }
        let create = proto::WatchCreateRequest {
            key: self.prefix.clone().into_bytes(),
            range_end: prefix_end(&self.prefix),
            start_revision: cursor.revision() + 1,
            progress_notify: true,
        };
        let (_requests, mut stream) = self.client.watch(create).await?;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Err(self.client.watch_error(tonic::Status::cancelled("end"))),
                Err(status) => return Err(self.client.watch_error(status)),
            };
            if resp.canceled || resp.compact_revision > 0 {
                *cursor = Cursor::default();
                return Err(StoreError::Compacted);
            }
            if resp.events.is_empty() && !resp.created {
                cursor.seen(resp.header.map_or(0, |h| h.revision));
            }
            for kv in resp
                .events
                .iter()
                .filter_map(|e| Some((e.r#type, e.kv.as_ref()?)))
            {
                let (kind, kv) = kv;
                cursor.seen(kv.mod_revision);
                let key = String::from_utf8_lossy(&kv.key);
                let Some(rel) = key.strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                if !is_state_key(rel) {
                    continue;
                }
                let change = match kind {
                    proto::EVENT_DELETE => Change::Deleted,
                    _ if kv.version == 1 => Change::Created,
                    _ => Change::Updated,
                };
                let bytes = kv.key.len() + kv.value.len();
                if !seen(Seen {
                    key: rel,
                    bytes,
                    change,
                }) {
                    return Ok(());
                }
            }
        }
    }

    /// One page of the read of [`Store::tally`]; `false` when `seen` said
    /// to stop.
    async fn tally_page(
        &self,
        cursor: &mut Cursor,
        seen: &mut impl FnMut(Seen<'_>) -> bool,
    ) -> Result<bool> {
        let kvs = self.next_page("", cursor, false).await?;
        for kv in kvs.iter().filter(|kv| is_state_key(&kv.key)) {
            let bytes = self.prefix.len() + kv.key.len() + kv.value.len();
            let change = Change::Created;
            if !seen(Seen {
                key: &kv.key,
                bytes,
                change,
            }) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
