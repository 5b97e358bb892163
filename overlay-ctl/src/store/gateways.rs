//! North-south gateways (`gateways/<name>`): registered by the operator, not
//! under any lease. Every node accepts tunnelled external traffic on its NSP
//! from exactly these addresses.

use super::ops::{delete, get_prefix, none_created_since, ops, put, unchanged};
use super::pool::{MAX_ATTEMPTS, backoff, json};
use super::proto::{self, response_op::Response};
use super::{Result, Store, StoreError, keys};
use crate::model::GatewaySpec;
use crate::store::NodeRecord;

const PREFIX: &str = "gateways/";

impl Store {
    /// Registers a gateway, or updates the one of that name. Refused with the
    /// reason, changing nothing: an invalid record, or an address another
    /// gateway or a node already has.
    pub async fn add_gateway(&self, g: &GatewaySpec) -> Result<()> {
        g.check().map_err(StoreError::Invalid)?;
        let key = self.key(&format!("{PREFIX}{}", g.name));
        for attempt in 1..=MAX_ATTEMPTS {
            let ranges = vec![
                get_prefix(&self.key(PREFIX)),
                get_prefix(&self.key(keys::NODES)),
            ];
            let (r, revision) = self.read(ranges).await?;
            let mut mine = 0;
            for kv in &r[0] {
                let other: GatewaySpec = kv.decode()?;
                if other.name == g.name {
                    mine = kv.mod_revision;
                } else if other.ip == g.ip {
                    return Err(StoreError::Invalid(format!(
                        "gateway address {}: already registered as gateway `{}`",
                        g.ip, other.name
                    )));
                }
            }
            let records = r[1].iter().filter(|kv| {
                keys::parse_node_key(&kv.key).is_some_and(|(_, k)| k == keys::NodeKey::Record)
            });
            for kv in records {
                let node: NodeRecord = kv.decode()?;
                if node.ip == g.ip || node.public.is_some_and(|p| *p.ip() == g.ip) {
                    return Err(StoreError::Invalid(format!(
                        "gateway address {}: it is node `{}`'s address",
                        g.ip, node.name
                    )));
                }
            }
            let compare = vec![
                unchanged(&key, mine),
                none_created_since(&self.key(PREFIX), revision),
            ];
            if self.commit(compare, vec![put(&key, json(g), 0)]).await? {
                tracing::info!("store: gateway {} at {}:{}", g.name, g.ip, g.port);
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "registering a gateway",
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Removes a gateway; false if there was none of that name.
    pub async fn remove_gateway(&self, name: &str) -> Result<bool> {
        let key = self.key(&format!("{PREFIX}{name}"));
        let resp = self
            .client
            .txn(proto::TxnRequest {
                success: ops([delete(&key)]),
                ..Default::default()
            })
            .await?;
        Ok(resp
            .responses
            .iter()
            .any(|r| matches!(&r.response, Some(Response::DeleteRange(d)) if d.deleted > 0)))
    }

    /// Registered gateways, by name.
    pub async fn gateways(&self) -> Result<Vec<GatewaySpec>> {
        self.records(PREFIX).await
    }
}
