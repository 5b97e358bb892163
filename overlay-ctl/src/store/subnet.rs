//! Node subnetworks: one `/len` per node out of a pool, never shared.

use std::net::Ipv4Addr;

use super::ops::{absent, delete, get, get_prefix, put, unchanged};
use super::pool::{MAX_ATTEMPTS, backoff, json};
use super::{Result, Store, StoreError, keys};
use crate::descriptor::check_label;
use crate::model::Subnet;

impl Store {
    /// The node's subnetwork: the one it already holds, else the first free
    /// `/len` of `pool`, taken in a transaction so that no two nodes share
    /// one. Subnet leases have no etcd lease: a restarted node gets its own
    /// subnetwork back.
    pub async fn lease_subnet(&self, node: &str, pool: Subnet, len: u8) -> Result<Subnet> {
        check_label(node).map_err(|why| StoreError::Invalid(format!("node name: {why}")))?;
        if len < pool.prefix || len > 30 {
            return Err(StoreError::Invalid(format!(
                "cannot lease /{len} subnetworks out of {pool}"
            )));
        }
        let of = self.key(&format!("subnet-of/{node}"));
        for attempt in 1..=MAX_ATTEMPTS {
            let (r, _) = self
                .read(vec![get(&of), get_prefix(&self.key("subnets/"))])
                .await?;
            if let Some(kv) = r[0].first() {
                return kv.decode();
            }
            let taken: Vec<Subnet> = r[1]
                .iter()
                .map(|kv| {
                    kv.key
                        .strip_prefix("subnets/")
                        .and_then(|s| s.replacen('-', "/", 1).parse().ok())
                        .ok_or_else(|| StoreError::Corrupt {
                            key: kv.key.clone(),
                            reason: "the key does not end in ADDRESS-PREFIX".into(),
                        })
                })
                .collect::<Result<_>>()?;
            let overlaps = |s: &Subnet| {
                taken
                    .iter()
                    .any(|t| t.contains(s.addr) || s.contains(t.addr))
            };
            let step = 1u32 << (32 - len);
            let count = 1u32 << (len - pool.prefix);
            let Some(subnet) = (0..count)
                .map(|i| Subnet {
                    addr: Ipv4Addr::from(u32::from(pool.addr) + i * step),
                    prefix: len,
                })
                .find(|s| !overlaps(s))
            else {
                return Err(StoreError::PoolExhausted {
                    what: "node subnet",
                    pool,
                    needed: 1,
                    free: 0,
                });
            };
            let skey = self.key(&format!("subnets/{}-{}", subnet.addr, subnet.prefix));
            let compare = vec![absent(&of), absent(&skey)];
            let success = vec![put(&skey, json(&node), 0), put(&of, json(&subnet), 0)];
            if self.commit(compare, success).await? {
                tracing::info!("store: leased {subnet} to node {node}");
                return Ok(subnet);
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "leasing a subnet",
            attempts: MAX_ATTEMPTS,
        })
    }
}

impl Store {
    /// Gives a node's subnetwork back to the pool (a decommissioned node).
    /// Refused while the node is registered. Returns the subnet it had.
    pub async fn release_subnet(&self, node: &str) -> Result<Option<Subnet>> {
        let of = self.key(&format!("subnet-of/{node}"));
        let live = self.key(&keys::node_record(node));
        for attempt in 1..=MAX_ATTEMPTS {
            let (r, _) = self.read(vec![get(&of), get(&live)]).await?;
            if !r[1].is_empty() {
                return Err(StoreError::Invalid(format!(
                    "node `{node}` is registered: stop its agent before releasing its subnet"
                )));
            }
            let Some(kv) = r[0].first() else {
                return Ok(None);
            };
            let subnet: Subnet = kv.decode()?;
            let skey = self.key(&format!("subnets/{}-{}", subnet.addr, subnet.prefix));
            let compare = vec![unchanged(&of, kv.mod_revision), absent(&live)];
            if self
                .commit(compare, vec![delete(&of), delete(&skey)])
                .await?
            {
                tracing::info!("store: released subnet {subnet} of node {node}");
                return Ok(Some(subnet));
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "releasing a subnet",
            attempts: MAX_ATTEMPTS,
        })
    }
}
