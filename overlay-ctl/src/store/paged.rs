//! Reading a range in pages at one revision, resumably: a page that fails
//! (a timeout under load, a lost connection) is asked for again from the
//! key after the last page received, at the same revision, instead of
//! reading everything over. Only a revision compacted meanwhile starts the
//! read over. A page that timed out is asked for again half as large and
//! given twice as long, and the read's next pages keep that longer
//! deadline while they grow back: when many nodes read at once (a cluster's
//! cold start), each one's share of the store is small, a page that does
//! not arrive within the usual call timeout would not arrive whole the next
//! time either, and asking again throws away what the store had done; small
//! pages, though, cost a round trip each (`docs/scale.md`).

use std::time::Duration;

use super::client::CALL_TIMEOUT;
use super::ops::prefix_end;
use super::{Kv, Result, Store, StoreError, proto};

/// Keys per page when the store answers in time.
pub(crate) const PAGE_MAX: i64 = 1000;
/// Keys per page after repeated timeouts.
const PAGE_MIN: i64 = 100;
/// The longest a page may take after repeated timeouts.
const PATIENCE_MAX: Duration = Duration::from_secs(40);

/// Where a follower stands: a read of the whole prefix in progress (the
/// revision it reads at and the key its next page starts at), or, once the
/// read is done, the revision the follower has seen up to (where its watch
/// resumes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    revision: i64,
    /// The next page's first key; `None` once the read is done.
    next: Option<Vec<u8>>,
    /// Keys to ask for in the next page.
    page: i64,
    /// How long the next page may take.
    patience: Duration,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            revision: 0,
            next: Some(Vec::new()),
            page: PAGE_MAX,
            patience: CALL_TIMEOUT,
        }
    }
}

impl Cursor {
    /// Nothing read yet (or the read had to start over).
    pub fn is_new(&self) -> bool {
        self.revision == 0 && self.next.as_ref().is_some_and(Vec::is_empty)
    }

    /// Whether the read is done (the watch may start).
    pub fn read_done(&self) -> bool {
        self.next.is_none()
    }

    /// The revision read at, or seen up to once the read is done (0 before
    /// the first page).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The watch saw everything up to `revision`.
    pub(crate) fn seen(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Keys the next page asks for.
    pub fn page(&self) -> i64 {
        self.page
    }

    /// How long the next page may take.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The page timed out: it is asked for again smaller, and given longer,
    /// as are the read's next pages (a store that was slow once is slow for
    /// a while).
    fn timed_out(&mut self) {
        self.page = (self.page / 2).max(PAGE_MIN);
        self.patience = (self.patience * 2).min(PATIENCE_MAX);
    }

    /// A page came: the next may be larger again, with the same deadline.
    fn answered(&mut self) {
        self.page = (self.page * 2).min(PAGE_MAX);
    }
}

impl Store {
    /// The next page of the range under `rel` (relative to the prefix) that
    /// `cursor` is reading, with keys relative to the prefix; the cursor
    /// moves past it. After an error the cursor is where it was, so calling
    /// again (on any connection) asks for the same keys, fewer of them and
    /// with more time after a timeout; after [`StoreError::Compacted`] it is new: the read starts
    /// over at the current revision.
    pub(crate) async fn next_page(
        &self,
        rel: &str,
        cursor: &mut Cursor,
        keys_only: bool,
    ) -> Result<Vec<Kv>> {
        let start = self.key(rel);
        let from = match &cursor.next {
            Some(k) if !k.is_empty() => k.clone(),
            Some(_) => start.clone().into_bytes(),
            None => return Ok(Vec::new()),
        };
        let asked = self
            .client
            .range_within(
                proto::RangeRequest {
                    key: from,
                    range_end: prefix_end(&start),
                    limit: cursor.page,
                    revision: cursor.revision,
                    keys_only,
                },
                cursor.patience,
            )
            .await;
        let resp = match asked {
            Ok(resp) => resp,
            Err(e) => {
                match e {
                    StoreError::Timeout { .. } => cursor.timed_out(),
                    StoreError::Compacted => *cursor = Cursor::default(),
                    _ => {}
                }
                return Err(e);
            }
        };
        if cursor.revision == 0 {
            cursor.revision = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        cursor.answered();
        cursor.next = match resp.kvs.last() {
            Some(last) if resp.more => {
                let mut next = last.key.clone();
                next.push(0);
                Some(next)
            }
            _ => None,
        };
        Ok(resp
            .kvs
            .into_iter()
            .map(|kv| Kv::new(&self.prefix, kv))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cursor_reads_from_the_start_at_the_current_revision() {
        let c = Cursor::default();
        assert!(c.is_new() && !c.read_done());
        assert_eq!((c.revision(), c.page()), (0, PAGE_MAX));
        let mut done = Cursor {
            next: None,
            revision: 7,
            ..c
        };
        assert!(done.read_done() && !done.is_new());
        done.seen(5);
        assert_eq!(done.revision(), 7, "never goes back");
        done.seen(9);
        assert_eq!(done.revision(), 9);
    }

    #[test]
    fn timeouts_make_pages_smaller_and_more_patient_and_pages_grow_back() {
        let mut c = Cursor::default();
        c.timed_out();
        assert_eq!((c.page(), c.patience()), (PAGE_MAX / 2, CALL_TIMEOUT * 2));
        for _ in 0..20 {
            c.timed_out();
        }
        assert_eq!((c.page(), c.patience()), (PAGE_MIN, PATIENCE_MAX));
        c.answered();
        assert_eq!((c.page(), c.patience()), (PAGE_MIN * 2, PATIENCE_MAX));
        for _ in 0..20 {
            c.answered();
        }
        assert_eq!((c.page(), c.patience()), (PAGE_MAX, PATIENCE_MAX));
        assert_eq!(Cursor::default().patience(), CALL_TIMEOUT);
    }
}
