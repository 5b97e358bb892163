//! A node's registration: its `node/<name>/record` key and its instances'
//! `node/<name>/instances/<service>/<n>` keys, all under one lease that a background
//! task keeps alive. If the lease is lost (the node was cut off longer than
//! the TTL, or an operator revoked it), the task registers again with a new
//! lease and puts the node and every published instance back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use super::client::Client;
use super::ops::{delete, ops, put};
use super::proto::request_op::Request as Op;
use super::{NodeRecord, Result, Store, StoreError, keys, proto};
use crate::descriptor::check_label;
use crate::model::InstanceSpec;

struct Inner {
    client: Client,
    prefix: String,
    record: NodeRecord,
    /// While agents of the previous release run: their prefix, where this
    /// node's record and instances are written too, so that they see it.
    v1_mirror: Option<String>,
    ttl: i64,
    lease: AtomicI64,
    /// What the node publishes; the lock also serialises (re-)registration
    /// with publish/unpublish.
    state: Mutex<Published>,
    /// The node's measurements (`node/<node>/rtt`, `.../load`): full key →
    /// (value, written yet). The keepalive task writes them, so that whoever
    /// sets them never waits for the store.
    status: std::sync::Mutex<BTreeMap<String, (Vec<u8>, bool)>>,
    /// The measurements' pace (`rtt`, `load`): at most one write per
    /// `.0`, the last at `.1` ([`super::Publishing`]).
    pace: std::sync::Mutex<(Duration, Option<std::time::Instant>)>,
}

#[derive(Default)]
struct Published {
    instances: BTreeMap<(String, u32), InstanceSpec>,
    /// A publish or unpublish did not reach the store: the keepalive task
    /// registers again (which rewrites everything) once the store answers.
    dirty: bool,
}

/// A live node registration; see [`Store::register_node`]. Dropping it stops
/// the keepalive and revokes the lease in the background (needs a running
/// runtime); [`Registration::close`] does so and waits.
pub struct Registration {
    inner: Arc<Inner>,
    /// `true` asks the keepalive task to stop; it revokes when told to.
    stop: watch::Sender<Option<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("node", &self.inner.record.name)
            .field("lease", &self.lease_id())
            .finish()
    }
}

impl Inner {
    fn node_key(&self) -> String {
        format!("{}{}", self.prefix, keys::node_record(&self.record.name))
    }

    fn instance_key(&self, service: &str, instance: u32) -> String {
        format!(
            "{}{}",
            self.prefix,
            keys::instance(&self.record.name, service, instance)
        )
    }

    /// Puts of an instance (in both schemas while mirroring).
    fn instance_puts(&self, spec: &InstanceSpec, lease: i64) -> Vec<Op> {
        let value = serde_json::to_vec(spec).expect("instances serialise");
        let mut puts = vec![put(
            &self.instance_key(&spec.service, spec.instance),
            value,
            lease,
        )];
        if let Some(v1) = &self.v1_mirror {
            // The previous release refuses unknown fields: it gets the record
            // without the health (and balances over every instance, as it did).
            let old = InstanceSpec {
                health: Default::default(),
                ..spec.clone()
            };
            let value = serde_json::to_vec(&old).expect("instances serialise");
            let key = format!("{v1}instances/{}/{}", spec.service, spec.instance);
            puts.push(put(&key, value, lease));
        }
        puts
    }

    fn instance_deletes(&self, service: &str, instance: u32) -> Vec<Op> {
        let mut deletes = vec![delete(&self.instance_key(service, instance))];
        if let Some(v1) = &self.v1_mirror {
            deletes.push(delete(&format!("{v1}instances/{service}/{instance}")));
        }
        deletes
    }

    /// Grants a new lease and puts the node and all `instances` under it in
    /// one transaction.
    async fn register(&self, published: &Published) -> Result<()> {
        let instances = &published.instances;
        let lease = self.client.lease_grant(self.ttl).await?;
        let node = serde_json::to_vec(&self.record).expect("node records serialise");
        let mut success = vec![put(&self.node_key(), node.clone(), lease)];
        if let Some(v1) = &self.v1_mirror {
            success.push(put(&format!("{v1}nodes/{}", self.record.name), node, lease));
        }
        let status = self.unwritten_status(true);
        for (key, value) in &status {
            success.push(put(key, value.clone(), lease));
        }
        for spec in instances.values() {
            success.extend(self.instance_puts(spec, lease));
        }
        let txn = proto::TxnRequest {
            success: ops(success),
            ..Default::default()
        };
        if let Err(e) = self.client.txn(txn).await {
            let _ = self.client.lease_revoke(lease).await;
            return Err(e);
        }
        self.status_written(&status);
        let old = self.lease.swap(lease, Ordering::SeqCst);
        if old != 0 {
            let _ = self.client.lease_revoke(old).await;
        }
        tracing::info!(
            "store: node {} registered (lease {lease:x}, ttl {} s, {} instance(s))",
            self.record.name,
            self.ttl,
            instances.len()
        );
        Ok(())
    }

    /// Status entries still to write (`all`: every one).
    fn unwritten_status(&self, all: bool) -> Vec<(String, Vec<u8>)> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status
            .iter()
            .filter(|(_, (_, written))| all || !written)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    fn status_written(&self, done: &[(String, Vec<u8>)]) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        for (key, value) in done {
            if let Some(entry) = status.get_mut(key).filter(|(v, _)| v == value) {
                entry.1 = true;
            }
        }
    }

    /// Writes status entries that changed since the last write; the
    /// measurements only once their pace allows.
    async fn write_status(&self) -> Result<()> {
        let mut status = self.unwritten_status(false);
        let paced = |k: &str| k.ends_with("/rtt") || k.ends_with("/load");
        let due = {
            let pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
            pace.1.is_none_or(|last| last.elapsed() >= pace.0)
        };
        if !due {
            status.retain(|(k, _)| !paced(k));
        }
        if status.is_empty() {
            return Ok(());
        }
        if status.iter().any(|(k, _)| paced(k)) {
            let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
            pace.1 = Some(std::time::Instant::now());
        }
        let lease = self.lease.load(Ordering::SeqCst);
        let txn = proto::TxnRequest {
            success: ops(status.iter().map(|(k, v)| put(k, v.clone(), lease))),
            ..Default::default()
        };
        self.client.txn(txn).await?;
        self.status_written(&status);
        Ok(())
    }

    async fn keepalive(self: Arc<Self>, mut stop: watch::Receiver<Option<bool>>) {
        let period = Duration::from_millis((self.ttl as u64 * 1000 / 3).max(200));
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => {
                    if *stop.borrow() == Some(true) {
                        let lease = self.lease.load(Ordering::SeqCst);
                        if let Err(e) = self.client.lease_revoke(lease).await {
                            tracing::warn!("store: revoking the lease of node {}: {e}", self.record.name);
                        }
                    }
                    return;
                }
            }
            let mut state = self.state.lock().await;
            let lease = self.lease.load(Ordering::SeqCst);
            let result = match self.client.lease_keepalive(lease).await {
                Ok(ttl) if ttl > 0 && !state.dirty => self.write_status().await,
                Ok(ttl) if ttl > 0 => {
                    tracing::info!(
                        "store: node {}: writing instances that missed the store",
                        self.record.name
                    );
                    self.register(&state).await
                }
                Ok(_) | Err(StoreError::LeaseNotFound) => {
                    tracing::warn!(
                        "store: node {} lost its lease {lease:x}; registering again",
                        self.record.name
                    );
                    self.register(&state).await
                }
                Err(e) => Err(e),
            };
            if result.is_ok() {
                state.dirty = false;
            }
            drop(state);
            match result {
                Ok(()) if !healthy => {
                    tracing::info!("store: node {} keepalive works again", self.record.name);
                    healthy = true;
                }
                Ok(()) => {}
                Err(e) if healthy => {
                    tracing::warn!("store: node {} keepalive failed: {e}", self.record.name);
                    healthy = false;
                }
                Err(e) => tracing::debug!("store: node {} keepalive failed: {e}", self.record.name),
            }
        }
    }
}

impl Store {
    /// Registers a node under a fresh lease of `ttl` (whole seconds, at least
    /// 1; etcd may raise very short ones to its minimum) and keeps it alive
    /// every `ttl / 3` in a task on the current runtime. A node key left by a
    /// previous run of the same node (same address and port) is taken over;
    /// a live one of another address is another agent with the same name,
    /// and refused.
    pub async fn register_node(&self, record: &NodeRecord, ttl: Duration) -> Result<Registration> {
        check_label(&record.name)
            .map_err(|why| StoreError::Invalid(format!("node name: {why}")))?;
        self.check_unique(record).await?;
        let inner = Arc::new(Inner {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            record: record.clone(),
            v1_mirror: self.v1_mirror.then(|| super::V1_PREFIX.to_owned()),
            ttl: ttl.as_secs().max(1) as i64,
            lease: AtomicI64::new(0),
            state: Mutex::new(Published::default()),
            status: Default::default(),
            pace: std::sync::Mutex::new((Duration::ZERO, None)),
        });
        inner.register(&Published::default()).await?;
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(inner.clone().keepalive(stop_rx));
        Ok(Registration {
            inner,
            stop,
            task: Some(task),
        })
    }
}

impl Store {
    /// Refuses `record`'s name while a live registration of that name comes
    /// from another address (a key under a lease lives as long as its agent).
    async fn check_unique(&self, record: &NodeRecord) -> Result<()> {
        let key = self.key(&keys::node_record(&record.name));
        let resp = self
            .client
            .range(proto::RangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            })
            .await?;
        // An unreadable record is nobody's: taken over.
        let other = resp
            .kvs
            .first()
            .and_then(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok());
        match other {
            Some(o) if (o.ip, o.ewp, o.public) != (record.ip, record.ewp, record.public) => {
                Err(StoreError::DuplicateNode {
                    name: record.name.clone(),
                    addr: o.ip,
                    ewp: o.ewp,
                })
            }
            _ => Ok(()),
        }
    }
}

impl Registration {
    /// The node's record as registered.
    pub fn record(&self) -> &NodeRecord {
        &self.inner.record
    }

    /// The current lease (changes when the node registers again).
    pub fn lease_id(&self) -> i64 {
        self.inner.lease.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        match self.task.as_ref() {
            Some(task) if !task.is_finished() => Ok(()),
            _ => Err(StoreError::Closed(self.inner.record.name.clone())),
        }
    }

    /// Publishes (or updates) an instance running on this node, under the
    /// node's lease. `spec.node` must name this node. If the store cannot
    /// be reached the error is returned, and the registration still writes
    /// the instance once the store answers again (likewise for unpublish).
    pub async fn publish_instance(&self, spec: &InstanceSpec) -> Result<()> {
        self.check_open()?;
        let node = &self.inner.record.name;
        if spec.node != *node {
            return Err(StoreError::Invalid(format!(
                "instance {}/{} runs on node `{}`, not on this node `{node}`",
                spec.service, spec.instance, spec.node
            )));
        }
        let mut state = self.inner.state.lock().await;
        state
            .instances
            .insert((spec.service.clone(), spec.instance), spec.clone());
        let txn = proto::TxnRequest {
            success: ops(self.inner.instance_puts(spec, self.lease_id())),
            ..Default::default()
        };
        let result = match self.inner.client.txn(txn).await {
            Ok(_) => Ok(()),
            // The lease ran out: register again, which puts this one too.
            Err(StoreError::LeaseNotFound) => self.inner.register(&state).await,
            Err(e) => Err(e),
        };
        state.dirty |= result.is_err();
        result
    }

    /// [`Registration::publish_instance`] for many at once: one transaction
    /// (per [`MAX_TXN_OPS`](super::client::MAX_TXN_OPS) puts), so that a
    /// starting node's instances reach every watch as one event batch
    /// rather than one each.
    pub async fn publish_instances(&self, specs: &[InstanceSpec]) -> Result<()> {
        self.check_open()?;
        let node = &self.inner.record.name;
        if let Some(spec) = specs.iter().find(|s| s.node != *node) {
            return Err(StoreError::Invalid(format!(
                "instance {}/{} runs on node `{}`, not on this node `{node}`",
                spec.service, spec.instance, spec.node
            )));
        }
        let mut state = self.inner.state.lock().await;
        for spec in specs {
            state
                .instances
                .insert((spec.service.clone(), spec.instance), spec.clone());
        }
        let per_txn =
            super::client::MAX_TXN_OPS / if self.inner.v1_mirror.is_some() { 2 } else { 1 };
        let mut result = Ok(());
        for chunk in specs.chunks(per_txn) {
            let puts = chunk
                .iter()
                .flat_map(|spec| self.inner.instance_puts(spec, self.lease_id()));
            let txn = proto::TxnRequest {
                success: ops(puts),
                ..Default::default()
            };
            result = match self.inner.client.txn(txn).await {
                Ok(_) => Ok(()),
                Err(StoreError::LeaseNotFound) => self.inner.register(&state).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
        }
        state.dirty |= result.is_err();
        result
    }

    /// Sets one of the node's measurements, `node/<node>/<kind>` (`rtt`,
    /// `load`), under the node's lease so that it leaves with the node. The
    /// keepalive task writes it (within TTL/3), also after a lost lease.
    pub fn set_status<T: serde::Serialize>(&self, kind: &str, value: &T) {
        let node = keys::node_dir(&self.inner.record.name);
        let key = format!("{}{node}{kind}", self.inner.prefix);
        let value = serde_json::to_vec(value).expect("status values serialise");
        let mut status = self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
        status.insert(key, (value, false));
    }

    /// Writes the node's measurements at most once per `every` (the
    /// keepalive writes what is due on its next round).
    pub fn pace_status(&self, every: Duration) {
        let mut pace = self.inner.pace.lock().unwrap_or_else(|e| e.into_inner());
        pace.0 = every;
    }

    /// Withdraws an instance of this node. Returns whether it was published.
    pub async fn unpublish_instance(&self, service: &str, instance: u32) -> Result<bool> {
        self.check_open()?;
        let mut state = self.inner.state.lock().await;
        let had = state
            .instances
            .remove(&(service.to_owned(), instance))
            .is_some();
        let txn = proto::TxnRequest {
            success: ops(self.inner.instance_deletes(service, instance)),
            ..Default::default()
        };
        if let Err(e) = self.inner.client.txn(txn).await {
            state.dirty = true;
            return Err(e);
        }
        Ok(had)
    }

    /// Instances this registration publishes.
    pub async fn instances(&self) -> Vec<InstanceSpec> {
        let state = self.inner.state.lock().await;
        state.instances.values().cloned().collect()
    }

    /// Stops the keepalive and revokes the lease: the node and its
    /// instances leave the store at once.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.stop.send(Some(false));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.inner.client.lease_revoke(self.lease_id()).await
    }

    /// Stops the keepalive without revoking: the node's keys stay until the
    /// lease runs out (as for a crashed agent, or one restarting in place
    /// that wants its routes kept meanwhile).
    pub async fn detach(mut self) {
        let _ = self.stop.send(Some(false));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.task.is_some() {
            // The task revokes the lease and ends.
            let _ = self.stop.send(Some(true));
        }
    }
}
