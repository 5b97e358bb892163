//! Shared by the orchestrator's allocations (`services`, `subnet`): address
//! claims and picking free pool addresses. Each allocation reads what it
//! needs at one revision, then writes everything in ONE transaction guarded
//! by compares on every key it relies on; a conflicting writer makes the
//! transaction fail, and the allocation starts over from a fresh read.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::client::MAX_TXN_OPS;
use super::ops::{absent, delete, ops, put, unchanged};
use super::proto::{self, request_op::Request as Op, response_op::Response};
use super::{Kv, Result, Store, StoreError, parse_ip_key};
use crate::model::{Policy, Subnet};

/// Allocations give up after this many conflicting attempts.
pub(super) const MAX_ATTEMPTS: u32 = 500;
/// Claims freed per transaction of [`Store::remove_service`] (2 ops each).
pub(super) const FREE_PER_TXN: usize = (MAX_TXN_OPS - 2) / 2;

/// What an address of the ServIP pool is used for (`servips/<ip>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressClaim {
    pub service: String,
    /// Set for a ServIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Set for a stateful instance's fixed IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
}

/// A freed address in its grace period (`released/<ip>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Released {
    pub(super) service: String,
    /// Unix time in milliseconds until which the address is not reused.
    pub(super) until_ms: u64,
}

/// An address chosen for a claim, with the guard and clean-up it needs.
pub(super) struct Pick {
    pub(super) ip: Ipv4Addr,
    /// The expired `released/<ip>` entry to delete, by its mod revision.
    released: Option<i64>,
}

pub(super) fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A short random pause that grows with the attempt, so that racers spread out.
pub(super) async fn backoff(attempt: u32) {
    let cap = u64::from(attempt.min(10)) * 5;
    let ms = RandomState::new().hash_one(attempt) % (cap + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub(super) fn check_pool(pool: Subnet) -> Result<()> {
    if pool.prefix > 30 {
        return Err(StoreError::Invalid(format!(
            "address pool {pool} is too small: at most /30"
        )));
    }
    Ok(())
}

/// Pool addresses that may be handed out: not the pool's network or
/// broadcast address, and no `x.y.z.0` / `x.y.z.255` either (some stacks
/// still treat those as special).
fn usable(pool: Subnet) -> impl Iterator<Item = Ipv4Addr> {
    (1..pool.size() - 1)
        .map(move |i| pool.host(i))
        .filter(|ip| !matches!(ip.octets()[3], 0 | 255))
}

impl Store {
    /// Reads several ranges at one revision (a transaction without compares).
    pub(super) async fn read(&self, ranges: Vec<Op>) -> Result<(Vec<Vec<Kv>>, i64)> {
        let resp = self
            .client
            .txn(proto::TxnRequest {
                success: ops(ranges),
                ..Default::default()
            })
            .await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let lists = resp
            .responses
            .into_iter()
            .map(|r| match r.response {
                Some(Response::Range(r)) => r
                    .kvs
                    .into_iter()
                    .map(|kv| Kv::new(&self.prefix, kv))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Ok((lists, revision))
    }

    pub(super) async fn commit(
        &self,
        compare: Vec<proto::Compare>,
        success: Vec<Op>,
    ) -> Result<bool> {
        let txn = proto::TxnRequest {
            compare,
            success: ops(success),
            failure: Vec::new(),
        };
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Chooses `n` free addresses of `pool` given the current claims and
    /// released entries; addresses still in their grace period are skipped.
    pub(super) fn pick(
        &self,
        pool: Subnet,
        n: usize,
        claims: &[Kv],
        released: &[Kv],
    ) -> Result<Vec<Pick>> {
        let taken: BTreeSet<Ipv4Addr> = claims
            .iter()
            .map(|kv| parse_ip_key(kv, "servips/"))
            .collect::<Result<_>>()?;
        let mut grace: HashMap<Ipv4Addr, (u64, i64)> = HashMap::new();
        for kv in released {
            let r: Released = kv.decode()?;
            grace.insert(
                parse_ip_key(kv, "released/")?,
                (r.until_ms, kv.mod_revision),
            );
        }
        let now = now_ms();
        let picks: Vec<Pick> = usable(pool)
            .filter(|ip| !taken.contains(ip))
            .filter_map(|ip| match grace.get(&ip) {
                Some(&(until, _)) if until > now => None,
                Some(&(_, rev)) => Some(Pick {
                    ip,
                    released: Some(rev),
                }),
                None => Some(Pick { ip, released: None }),
            })
            .take(n)
            .collect();
        if picks.len() < n {
            return Err(StoreError::PoolExhausted {
                what: "ServIP",
                pool,
                needed: n,
                free: picks.len(),
            });
        }
        Ok(picks)
    }

    /// Guards and ops that claim `pick` for `claim`.
    pub(super) fn claim(
        &self,
        pick: &Pick,
        claim: &AddressClaim,
        compare: &mut Vec<proto::Compare>,
        success: &mut Vec<Op>,
    ) {
        let key = self.key(&format!("servips/{}", pick.ip));
        let released = self.key(&format!("released/{}", pick.ip));
        compare.push(absent(&key));
        match pick.released {
            Some(rev) => {
                compare.push(unchanged(&released, rev));
                success.push(delete(&released));
            }
            None => compare.push(absent(&released)),
        }
        success.push(put(&key, json(claim), 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_addresses_skip_network_broadcast_and_dot_zero() {
        let small: Subnet = "172.30.0.0/29".parse().unwrap();
        let all: Vec<_> = usable(small).map(|ip| ip.octets()[3]).collect();
        assert_eq!(all, [1, 2, 3, 4, 5, 6]);
        let big: Subnet = "172.30.0.0/23".parse().unwrap();
        assert_eq!(usable(big).count(), 512 - 4);
        assert!(usable(big).all(|ip| !matches!(ip.octets()[3], 0 | 255)));
    }
}
