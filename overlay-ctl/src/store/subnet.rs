//! Node subnetworks: one `/len` per node out of a pool, never shared.

use std::net::Ipv4Addr;

use super::cluster::SETTINGS;
use super::ops::{absent, delete, get, get_prefix, none_created_since, put, unchanged};
use super::pool::{MAX_ATTEMPTS, backoff, json};
use super::{Result, Store, StoreError, keys};
use crate::descriptor::check_label;
use crate::model::{ClusterSettings, Subnet};
use crate::subnets::NodeSubnets;

/// Where a lease takes its pool and length from.
#[derive(Clone, Copy)]
enum Source {
    Given(NodeSubnets),
    /// The cluster setting, read in the lease's transaction and compared
    /// unchanged at its commit.
    Settings,
}

impl Store {
    /// The node's subnetwork: the one it already holds, else the first free
    /// `/len` of `pool`, taken in a transaction so that no two nodes share
    /// one. Subnet leases have no etcd lease: a restarted node gets its own
    /// subnetwork back.
    pub async fn lease_subnet(&self, node: &str, pool: Subnet, len: u8) -> Result<Subnet> {
        let per_node = len;
        self.lease(node, Source::Given(NodeSubnets { pool, per_node }))
            .await
    }

    /// [`Store::lease_subnet`] from the cluster's node subnet setting.
    pub async fn lease_node_subnet(&self, node: &str) -> Result<Subnet> {
        self.lease(node, Source::Settings).await
    }

    async fn lease(&self, node: &str, from: Source) -> Result<Subnet> {
        check_label(node).map_err(|why| StoreError::Invalid(format!("node name: {why}")))?;
        let of = self.key(&format!("subnet-of/{node}"));
        let settings = self.key(SETTINGS);
        for attempt in 1..=MAX_ATTEMPTS {
            let (r, _) = self
                .read(vec![
                    get(&of),
                    get_prefix(&self.key("subnets/")),
                    get(&settings),
                ])
                .await?;
            if let Some(kv) = r[0].first() {
                return kv.decode();
            }
            let (
                NodeSubnets {
                    pool,
                    per_node: len,
                },
                guard,
            ) = match from {
                Source::Given(given) => (given, None),
                Source::Settings => {
                    let kv = r[2].first();
                    let set = match kv {
                        Some(kv) => kv.decode::<ClusterSettings>()?.node_subnets(),
                        None => NodeSubnets::DEFAULT,
                    };
                    (set, Some(kv.map_or(0, |kv| kv.mod_revision)))
                }
            };
            if len < pool.prefix || len > 30 {
                return Err(StoreError::Invalid(format!(
                    "cannot lease /{len} subnetworks out of {pool}"
                )));
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
            // The first free subnet; after a conflict (nodes starting
            // together all want the same one), one after a random start.
            let start = if attempt == 1 { 0 } else { random() };
            let Some(subnet) = free_subnet(taken, pool, len, start) else {
                return Err(StoreError::PoolExhausted {
                    what: "node subnet",
                    pool,
                    needed: 1,
                    free: 0,
                });
            };
            let skey = self.key(&format!("subnets/{}-{}", subnet.addr, subnet.prefix));
            let mut compare = vec![absent(&of), absent(&skey)];
            compare.extend(guard.map(|rev| unchanged(&settings, rev)));
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

impl Store {
    /// Makes `subnets` (`None`: the default) the cluster's node subnets.
    /// Refused, with nothing changed, when they are not valid, or when a
    /// subnet some node holds would not be one of them (a node holds its
    /// subnet until `node rm`): while nodes hold subnets, the pool may only
    /// grow or move around them, at the same length.
    pub async fn set_node_subnets(&self, subnets: Option<NodeSubnets>) -> Result<()> {
        let want = subnets.unwrap_or(NodeSubnets::DEFAULT);
        want.check(super::DEFAULT_SERVICE_POOL)
            .map_err(StoreError::Invalid)?;
        let (settings, leased) = (self.key(SETTINGS), self.key("subnets/"));
        for attempt in 1..=MAX_ATTEMPTS {
            let (r, revision) = self.read(vec![get(&settings), get_prefix(&leased)]).await?;
            let mut current: ClusterSettings = match r[0].first() {
                Some(kv) => kv.decode()?,
                None => ClusterSettings::default(),
            };
            for kv in &r[1] {
                let held = kv
                    .key
                    .strip_prefix("subnets/")
                    .and_then(|s| s.replacen('-', "/", 1).parse::<Subnet>().ok());
                let fits =
                    held.is_some_and(|h| h.prefix == want.per_node && want.pool.contains(h.addr));
                if !fits {
                    let node: String = kv.decode().unwrap_or_default();
                    return Err(StoreError::Invalid(format!(
                        "node subnets {want}: node `{node}` holds {}, which is not one of them \
                         (release it with `overlay-ctl node rm {node}` first)",
                        held.map_or(kv.key.clone(), |h| h.to_string()),
                    )));
                }
            }
            current.node_subnets = subnets;
            let rev = r[0].first().map_or(0, |kv| kv.mod_revision);
            let compare = vec![
                unchanged(&settings, rev),
                none_created_since(&leased, revision),
            ];
            if self
                .commit(compare, vec![put(&settings, json(&current), 0)])
                .await?
            {
                tracing::info!("store: node subnets are now {want}");
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "changing the node subnets",
            attempts: MAX_ATTEMPTS,
        })
    }
}

/// A random number (for spreading racers over the pool).
fn random() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// The first `/len` of `pool` from the `start`th on (wrapping around) that
/// overlaps none of `taken` (which do not overlap each other).
fn free_subnet(mut taken: Vec<Subnet>, pool: Subnet, len: u8, start: u32) -> Option<Subnet> {
    taken.sort();
    let overlaps = |s: &Subnet| {
        // The nearest taken at or below `s` may contain it; the nearest
        // above may lie inside it.
        let i = taken.partition_point(|t| t.addr <= s.addr);
        let below = i.checked_sub(1).map(|j| taken[j]);
        below.is_some_and(|t| t.contains(s.addr))
            || taken.get(i).is_some_and(|t| s.contains(t.addr))
    };
    let step = 1u64 << (32 - len);
    let count = 1u64 << (len - pool.prefix);
    (0..count)
        .map(|i| (i + u64::from(start)) % count)
        .map(|i| Subnet {
            addr: Ipv4Addr::from((u64::from(u32::from(pool.addr)) + i * step) as u32),
            prefix: len,
        })
        .find(|s| !overlaps(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn free_subnets_skip_every_overlap() {
        let pool = net("10.30.0.0/16");
        let taken = vec![
            net("10.30.0.0/24"),
            net("10.30.1.128/25"),
            net("10.30.4.0/22"),
        ];
        let free = |len, start| free_subnet(taken.clone(), pool, len, start);
        assert_eq!(free(24, 0), Some(net("10.30.2.0/24")));
        assert_eq!(free(25, 0), Some(net("10.30.1.0/25")));
        assert_eq!(free(24, 4), Some(net("10.30.8.0/24")));
        assert_eq!(free(24, 255), Some(net("10.30.255.0/24")));
        assert_eq!(free(16, 0), None);
        let all: Vec<Subnet> = (0..256).map(|i| net(&format!("10.30.{i}.0/24"))).collect();
        assert_eq!(free_subnet(all, pool, 26, 7), None);
    }
}
