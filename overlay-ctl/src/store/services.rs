//! Services: deploy (id + ServIPs), remove (addresses into their grace
//! period), and fixed IPs of stateful instances.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::ops::{
    absent, delete, delete_prefix, get, get_prefix, none_created_since, put, unchanged,
};
use super::pool::{
    AddressClaim, FREE_PER_TXN, MAX_ATTEMPTS, Released, backoff, check_pool, json, now_ms,
};
use super::{Kv, Result, Store, StoreError, keys, parse_ip_key};
use crate::descriptor::{Descriptor, ServiceRecord};
use crate::model::{Policy, Subnet};

impl Store {
    /// Registers a service: allocates its id and, unless it is stateful, one
    /// ServIP per policy from `pool`, all in one transaction. Idempotent: the
    /// same descriptor again returns the stored record and writes nothing; a
    /// changed descriptor (other than `stateful`) updates the record and keeps
    /// its id and ServIPs.
    pub async fn deploy_service(&self, d: &Descriptor, pool: Subnet) -> Result<ServiceRecord> {
        d.validate()?;
        check_pool(pool)?;
        let name = d.name();
        let skey = self.key(&format!("services/{name}"));
        let ckey = self.key("counters/service-id");
        for attempt in 1..=MAX_ATTEMPTS {
            let ranges = vec![
                get(&skey),
                get(&ckey),
                get_prefix(&self.key("servips/")),
                get_prefix(&self.key("released/")),
                get_prefix(&self.key("exposed/")),
                get_prefix(&self.key(keys::NODES)),
                get(&self.key(super::cluster::SETTINGS)),
            ];
            let (r, _) = self.read(ranges).await?;
            let rules = self.exposure_rules(&r[5], &r[6])?;
            let (expose_cmp, expose_ops) = self.expose_ops(&name, d, &r[4], &rules)?;
            if let Some(kv) = r[0].first() {
                let old: ServiceRecord = kv.decode()?;
                if old.descriptor == *d {
                    return Ok(old);
                }
                if old.descriptor.stateful != d.stateful {
                    return Err(StoreError::StatefulChange {
                        service: name,
                        was: old.descriptor.stateful,
                    });
                }
                let new = ServiceRecord {
                    descriptor: d.clone(),
                    ..old
                };
                let mut compare = vec![unchanged(&skey, kv.mod_revision)];
                compare.extend(expose_cmp);
                let mut success = vec![put(&skey, json(&new), 0)];
                success.extend(expose_ops);
                if self.commit(compare, success).await? {
                    tracing::info!("store: updated service {name}");
                    return Ok(new);
                }
                backoff(attempt).await;
                continue;
            }
            let (last, counter_rev) = match r[1].first() {
                Some(kv) => (kv.decode::<u32>()?, kv.mod_revision),
                None => (0, 0),
            };
            let id = last
                .checked_add(1)
                .ok_or_else(|| StoreError::Invalid("service ids are exhausted".into()))?;
            let mut compare = vec![absent(&skey), unchanged(&ckey, counter_rev)];
            compare.extend(expose_cmp);
            let mut success = vec![put(&ckey, json(&id), 0)];
            success.extend(expose_ops);
            let mut servips = BTreeMap::new();
            if !d.stateful {
                let picks = self.pick(pool, Policy::SERVIPS.len(), &r[2], &r[3])?;
                for (policy, pick) in Policy::SERVIPS.into_iter().zip(&picks) {
                    let claim = AddressClaim {
                        service: name.clone(),
                        policy: Some(policy),
                        instance: None,
                    };
                    self.claim(pick, &claim, &mut compare, &mut success);
                    servips.insert(policy, pick.ip);
                }
            }
            let record = ServiceRecord {
                name: name.clone(),
                id,
                descriptor: d.clone(),
                servips,
            };
            success.push(put(&skey, json(&record), 0));
            if self.commit(compare, success).await? {
                tracing::info!(
                    "store: deployed service {name} (id {id}, servips {:?})",
                    record.servips
                );
                self.sweep_released(&r[3]).await;
                return Ok(record);
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "deploying a service",
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes expired `released/` entries (best effort: each is guarded by
    /// its revision, so an entry written again meanwhile stays).
    async fn sweep_released(&self, released: &[Kv]) {
        let now = now_ms();
        let expired: Vec<&Kv> = released
            .iter()
            .filter(|kv| kv.decode::<Released>().is_ok_and(|r| r.until_ms <= now))
            .collect();
        for kv in expired {
            let key = self.key(&kv.key);
            if let Err(e) = self
                .commit(vec![unchanged(&key, kv.mod_revision)], vec![delete(&key)])
                .await
            {
                tracing::debug!("store: sweeping {key}: {e}");
            }
        }
    }

    /// Removes a service (`app.appns.svc.svcns`): its record, its ServIP and
    /// fixed-IP claims, which enter their grace period as `released/<ip>`.
    /// Instances are the agents' keys and stay until their nodes unpublish
    /// them. Returns whether there was anything to remove.
    pub async fn remove_service(&self, name: &str) -> Result<bool> {
        let name = name.to_ascii_lowercase();
        let skey = self.key(&format!("services/{name}"));
        let fixed = self.key(&format!("fixed/{name}/"));
        let mut removed = false;
        for attempt in 1..=MAX_ATTEMPTS {
            let (r, revision) = self
                .read(vec![
                    get(&skey),
                    get_prefix(&fixed),
                    get_prefix(&self.key("servips/")),
                    get_prefix(&self.key("exposed/")),
                ])
                .await?;
            let mut claims = Vec::new();
            for kv in &r[2] {
                if kv.decode::<AddressClaim>()?.service == name {
                    claims.push((parse_ip_key(kv, "servips/")?, kv));
                }
            }
            if r[0].is_empty() && r[1].is_empty() && claims.is_empty() {
                return Ok(removed);
            }
            let until = now_ms() + self.grace.as_millis() as u64;
            let released = json(&Released {
                service: name.clone(),
                until_ms: until,
            });
            let mut batches = claims.chunks(FREE_PER_TXN);
            let first = batches.next().unwrap_or_default();
            let service_rev = r[0].first().map_or(0, |kv| kv.mod_revision);
            let mut compare = vec![
                unchanged(&skey, service_rev),
                none_created_since(&fixed, revision),
            ];
            let mut success = vec![delete(&skey), delete_prefix(&fixed)];
            for kv in &r[3] {
                if kv.decode::<String>()? == name {
                    success.push(delete(&self.key(&kv.key)));
                }
            }
            let mut complete = true;
            for batch in std::iter::once(first).chain(batches) {
                for (ip, kv) in batch {
                    let key = self.key(&kv.key);
                    compare.push(unchanged(&key, kv.mod_revision));
                    success.push(delete(&key));
                    success.push(put(
                        &self.key(&format!("released/{ip}")),
                        released.clone(),
                        0,
                    ));
                }
                if !self
                    .commit(std::mem::take(&mut compare), std::mem::take(&mut success))
                    .await?
                {
                    complete = false;
                    break;
                }
                removed = true;
            }
            if complete {
                tracing::info!(
                    "store: removed service {name}; {} address(es) in grace until {until} ms",
                    claims.len()
                );
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "removing a service",
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The fixed IP of instance `instance` of a stateful service, allocated
    /// from `pool` on first use (same guards as ServIPs); the same address
    /// on every later call.
    pub async fn allocate_fixed_ip(
        &self,
        service: &str,
        instance: u32,
        pool: Subnet,
    ) -> Result<Ipv4Addr> {
        check_pool(pool)?;
        let name = service.to_ascii_lowercase();
        let skey = self.key(&format!("services/{name}"));
        let fkey = self.key(&format!("fixed/{name}/{instance}"));
        for attempt in 1..=MAX_ATTEMPTS {
            let ranges = vec![
                get(&skey),
                get(&fkey),
                get_prefix(&self.key("servips/")),
                get_prefix(&self.key("released/")),
            ];
            let (r, _) = self.read(ranges).await?;
            let Some(skv) = r[0].first() else {
                return Err(StoreError::NoSuchService(name));
            };
            if !skv.decode::<ServiceRecord>()?.descriptor.stateful {
                return Err(StoreError::NotStateful(name));
            }
            if let Some(kv) = r[1].first() {
                return kv.decode();
            }
            let pick = self.pick(pool, 1, &r[2], &r[3])?.remove(0);
            let claim = AddressClaim {
                service: name.clone(),
                policy: None,
                instance: Some(instance),
            };
            let mut compare = vec![unchanged(&skey, skv.mod_revision), absent(&fkey)];
            let mut success = vec![put(&fkey, json(&pick.ip), 0)];
            self.claim(&pick, &claim, &mut compare, &mut success);
            if self.commit(compare, success).await? {
                tracing::info!("store: fixed IP {} for {name} instance {instance}", pick.ip);
                return Ok(pick.ip);
            }
            backoff(attempt).await;
        }
        Err(StoreError::Contention {
            op: "allocating a fixed IP",
            attempts: MAX_ATTEMPTS,
        })
    }
}
