//! Writing records as they are, many to a transaction: fixtures for tests
//! and the scale simulation, which preloads thousands of services faster
//! than the orchestrator's allocations would (no claims, no checks).

use super::client::MAX_TXN_OPS;
use super::ops::{ops, put};
use super::{Result, Store, proto};

impl Store {
    /// Puts every `(key, value)` (keys relative to the prefix), without a
    /// lease, in transactions of at most the store's operation limit.
    pub async fn put_records(&self, records: &[(String, Vec<u8>)]) -> Result<()> {
        for chunk in records.chunks(MAX_TXN_OPS) {
            let puts = chunk.iter().map(|(k, v)| put(&self.key(k), v.clone(), 0));
            let txn = proto::TxnRequest {
                success: ops(puts),
                ..Default::default()
            };
            self.client.txn(txn).await?;
        }
        Ok(())
    }
}
