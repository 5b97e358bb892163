//! Cluster-wide keys:
//! * `cluster/probe-key`: a random secret the first agent creates and every
//!   agent reads, so that RTT probes between nodes are authenticated without
//!   an operator distributing a key;
//! * `cluster/settings`: settings every node applies (`ClusterSettings`).

use super::ops::{absent, ops, put};
use super::{Result, Store, StoreError, proto};
use crate::model::ClusterSettings;

const KEY: &str = "cluster/probe-key";
pub(crate) const SETTINGS: &str = "cluster/settings";

impl Store {
    /// The cluster's probe key; `fresh` becomes it if there is none yet
    /// (created in a transaction, so concurrent agents agree on one).
    pub async fn probe_key(&self, fresh: [u8; 32]) -> Result<[u8; 32]> {
        let key = self.key(KEY);
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let value = serde_json::to_vec(&hex).expect("strings serialise");
        let txn = proto::TxnRequest {
            compare: vec![absent(&key)],
            success: ops([put(&key, value, 0)]),
            ..Default::default()
        };
        self.client.txn(txn).await?;
        let (kvs, _) = self.range_all(KEY, false).await?;
        let stored: String = kvs
            .iter()
            .find(|kv| kv.key == KEY)
            .ok_or_else(|| StoreError::Invalid(format!("`{KEY}` vanished after its creation")))?
            .decode()?;
        decode_hex(&stored).ok_or_else(|| StoreError::Corrupt {
            key: KEY.into(),
            reason: "not 64 hexadecimal digits".into(),
        })
    }
}

impl Store {
    /// The cluster's settings (defaults where none were set).
    pub async fn settings(&self) -> Result<ClusterSettings> {
        let (kvs, _) = self.range_all(SETTINGS, false).await?;
        kvs.iter()
            .find(|kv| kv.key == SETTINGS)
            .map_or(Ok(ClusterSettings::default()), |kv| kv.decode())
    }

    /// Replaces the cluster's settings; every agent applies them at once.
    pub async fn set_settings(&self, settings: &ClusterSettings) -> Result<()> {
        let value = serde_json::to_vec(settings).expect("settings serialise");
        let txn = proto::TxnRequest {
            success: ops([put(&self.key(SETTINGS), value, 0)]),
            ..Default::default()
        };
        self.client.txn(txn).await.map(|_| ())
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        let k: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::decode_hex(&hex), Some(k));
        assert_eq!(super::decode_hex(&hex[1..]), None);
        assert_eq!(super::decode_hex(&hex.replace('0', "g")), None);
    }
}
