//! Cluster-wide keys:
//! * `secret/probe-key`: a random secret that `store setup` (or, on a store
//!   without access control, the first agent) creates and every agent reads,
//!   so that RTT probes between nodes are authenticated without an operator
//!   distributing a key;
//! * `secret/probe-key-next`: during a rotation, the key that replaces it;
//! * `cluster/settings`: settings every node applies (`ClusterSettings`).

use super::ops::{absent, delete, ops, put};
use super::{Result, Store, StoreError, keys, proto};
use crate::model::ClusterSettings;

const KEY: &str = keys::PROBE_KEY;
const NEXT: &str = keys::PROBE_KEY_NEXT;
pub(crate) const SETTINGS: &str = "cluster/settings";

impl Store {
    /// The cluster's probe key; `fresh` becomes it if there is none yet
    /// (created in a transaction, so concurrent agents agree on one). A node
    /// may not create it where the store controls access: `store setup` does.
    pub async fn probe_key(&self, fresh: [u8; 32]) -> Result<[u8; 32]> {
        if let Some(key) = self.stored_probe_key().await? {
            return Ok(key);
        }
        let key = self.key(KEY);
        let txn = proto::TxnRequest {
            compare: vec![absent(&key)],
            success: ops([put(&key, hex_json(&fresh), 0)]),
            ..Default::default()
        };
        match self.client.txn(txn).await {
            Err(StoreError::PermissionDenied { .. }) => {
                return Err(StoreError::Invalid(format!(
                    "the cluster has no probe key (`{KEY}`) and this identity may not create \
                     one: run `overlay-ctl store setup` with the root certificate"
                )));
            }
            other => other?,
        };
        self.stored_probe_key()
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("`{KEY}` vanished after its creation")))
    }

    async fn stored_probe_key(&self) -> Result<Option<[u8; 32]>> {
        let (kvs, _) = self.range_all(KEY, false).await?;
        let Some(kv) = kvs.iter().find(|kv| kv.key == KEY) else {
            return Ok(None);
        };
        let stored: String = kv.decode()?;
        decode_hex(&stored)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                key: KEY.into(),
                reason: "not 64 hexadecimal digits".into(),
            })
    }
}

/// A key as its JSON value: a string of hexadecimal digits.
fn hex_json(key: &[u8; 32]) -> Vec<u8> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::to_vec(&hex).expect("strings serialise")
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
        let current = find(KEY)?.ok_or_else(|| {
            StoreError::Invalid(format!("`{KEY}` is missing: run `overlay-ctl store setup`"))
        })?;
        Ok((current, find(NEXT)?))
    }

    /// Starts a rotation of the probe key: `fresh` is published as the next
    /// key, which every agent accepts once it has read it (within seconds)
    /// while still signing with the current one.
    pub async fn begin_probe_key_rotation(&self, fresh: [u8; 32]) -> Result<()> {
        self.probe_keys().await?;
        let txn = proto::TxnRequest {
            success: ops([put(&self.key(NEXT), hex_json(&fresh), 0)]),
            ..Default::default()
        };
        self.client.txn(txn).await.map(|_| ())
    }

    /// Ends a rotation: the next key becomes the key (agents sign with it
    /// from their next read on, and accept the old one a while longer).
    pub async fn finish_probe_key_rotation(&self) -> Result<()> {
        let (_, next) = self.probe_keys().await?;
        let next = next.ok_or_else(|| StoreError::Invalid("no probe key rotation runs".into()))?;
        let txn = proto::TxnRequest {
            success: ops([
                put(&self.key(KEY), hex_json(&next), 0),
                delete(&self.key(NEXT)),
            ]),
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
