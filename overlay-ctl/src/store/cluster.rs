//! Cluster-wide keys:
//! * `cluster/probe-key`: a random secret the first agent creates and every
//!   agent reads, so that RTT probes between nodes are authenticated without
//!   an operator distributing a key;
//! * `cluster/probe-key-next`: during a rotation, the key that replaces it;
//! * `cluster/settings`: settings every node applies (`ClusterSettings`).

use super::ops::{absent, delete, ops, put};
use super::{Result, Store, StoreError, proto};
use crate::model::ClusterSettings;

const KEY: &str = "cluster/probe-key";
const NEXT: &str = "cluster/probe-key-next";
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
    /// The probe key and, while a rotation runs, the next one.
    pub async fn probe_keys(&self) -> Result<([u8; 32], Option<[u8; 32]>)> {
        let (kvs, _) = self.range_all(KEY, false).await?;
        let find = |name: &str| -> Result<Option<[u8; 32]>> {
            let Some(kv) = kvs.iter().find(|kv| kv.key == name) else {
                return Ok(None);
            };
            let hex: String = kv.decode()?;
            decode_hex(&hex)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    key: name.into(),
                    reason: "not 64 hexadecimal digits".into(),
                })
        };
        let current = find(KEY)?
            .ok_or_else(|| StoreError::Invalid(format!("`{KEY}` is missing: no agent ran yet")))?;
        Ok((current, find(NEXT)?))
    }

    /// Starts a rotation of the probe key: `fresh` is published as the next
    /// key, which every agent accepts once it has read it (within seconds)
    /// while still signing with the current one.
    pub async fn begin_probe_key_rotation(&self, fresh: [u8; 32]) -> Result<()> {
        self.probe_keys().await?;
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let value = serde_json::to_vec(&hex).expect("strings serialise");
        let txn = proto::TxnRequest {
            success: ops([put(&self.key(NEXT), value, 0)]),
            ..Default::default()
        };
        self.client.txn(txn).await.map(|_| ())
    }

    /// Ends a rotation: the next key becomes the key (agents sign with it
    /// from their next read on, and accept the old one a while longer).
    pub async fn finish_probe_key_rotation(&self) -> Result<()> {
        let (_, next) = self.probe_keys().await?;
        let next = next.ok_or_else(|| StoreError::Invalid("no probe key rotation runs".into()))?;
        let hex: String = next.iter().map(|b| format!("{b:02x}")).collect();
        let value = serde_json::to_vec(&hex).expect("strings serialise");
        let txn = proto::TxnRequest {
            success: ops([put(&self.key(KEY), value, 0), delete(&self.key(NEXT))]),
            ..Default::default()
        };
        self.client.txn(txn).await.map(|_| ())
    }

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
