//! The cluster store: etcd (v3 API) as the cluster's source of truth.
//! Key schema: `docs/store.md`.
//!
//! * [`Store`]: a connection plus the key prefix; reads ([`Store::nodes`],
//!   [`Store::snapshot`], ...), the orchestrator's allocations
//!   ([`Store::deploy_service`], [`Store::remove_service`],
//!   [`Store::allocate_fixed_ip`] in `services`, [`Store::lease_subnet`] in
//!   `subnet`, shared address picking in `pool`) and node registration
//!   ([`Store::register_node`] returning a [`Registration`]; in
//!   `registration`).
//! * [`NodeRecord`] and the `ClusterState` built from the store (`state`).
//! * [`follow`]: keeps a `watch::Sender<ClusterState>` equal to the store;
//!   [`Store::tally`] makes the same read and watch, counting instead.
//! * `client`/`proto`: a minimal etcd gRPC client (tonic + hand-declared
//!   prost messages, so building needs no `protoc`).

mod auth;
mod bulk;
mod client;
mod cluster;
mod exposure;
mod follow;
mod gateways;
pub mod keys;
mod ops;
mod paged;
mod pool;
mod proto;
mod publish;
mod registration;
mod services;
mod state;
mod subnet;
mod tally;
mod tls;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::descriptor::{DescriptorError, ServiceRecord};
use crate::model::{ClusterState, InstanceSpec, Subnet};
use client::Client;
use state::{build_state, is_state_key};

pub use auth::{DEFAULT_ORCHESTRATOR, ORCHESTRATOR_ROLE, ROOT, node_role};
pub use follow::{FollowHealth, follow, follow_prefix, follow_with_health};
pub use paged::Cursor;
pub use pool::AddressClaim;
pub use publish::Publishing;
pub use registration::Registration;
pub use state::{NodeRecord, merge_legacy};
pub use tally::{Change, Seen};
pub use tls::{Access, Issued, TlsFiles, certificate_name, issue, new_ca};

/// Every key lives under this prefix unless [`Store::with_prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "/overlay/v2/";
/// Where the previous key schema lived (migrated by [`Store::migrate_v1`]).
pub const V1_PREFIX: &str = "/overlay/v1/";
/// ServIPs and fixed instance IPs come from here (`docs/addresses.md`).
pub const DEFAULT_SERVICE_POOL: Subnet = Subnet {
    addr: Ipv4Addr::new(172, 30, 0, 0),
    prefix: 16,
};
/// Node subnetworks come from here (`docs/addresses.md`).
pub const DEFAULT_SUBNET_POOL: Subnet = Subnet {
    addr: Ipv4Addr::new(10, 30, 0, 0),
    prefix: 16,
};
/// Each node gets a subnetwork of this length.
pub const DEFAULT_SUBNET_LEN: u8 = 24;
/// A node registration's lease TTL.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);
/// How long a freed address stays out of circulation.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store endpoint {0}")]
    Endpoint(String),
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Connect { endpoints: String, reason: String },
    #[error("etcd {op} at {endpoint} failed: {reason}")]
    Rpc {
        op: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("etcd {op} at {endpoint} got no answer within {after:?}")]
    Timeout {
        op: &'static str,
        endpoint: String,
        after: Duration,
    },
    #[error("the lease is gone (expired or revoked)")]
    LeaseNotFound,
    #[error("the requested revision has been compacted")]
    Compacted,
    #[error("store key `{key}` holds invalid data: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} pool {pool} is exhausted: {needed} needed, {free} free")]
    PoolExhausted {
        what: &'static str,
        pool: Subnet,
        needed: usize,
        free: usize,
    },
    #[error(
        "service `{service}` is deployed with stateful={was}; remove it before changing `stateful`"
    )]
    StatefulChange { service: String, was: bool },
    #[error("service `{0}` is not deployed")]
    NoSuchService(String),
    #[error("service `{0}` is not stateful: only stateful services get fixed instance IPs")]
    NotStateful(String),
    #[error("{op}: gave up after {attempts} attempts that conflicted with concurrent writers")]
    Contention { op: &'static str, attempts: u32 },
    #[error(
        "etcd refused {op}: {reason} (the certificate's name is the etcd user; a node may write \
         only under its own `node/<name>/` keys, the orchestrator the rest)"
    )]
    PermissionDenied { op: &'static str, reason: String },
    #[error("store TLS: {0}")]
    Tls(String),
    #[error("the registration of node `{0}` is closed")]
    Closed(String),
    #[error(
        "node_id `{name}` is registered by a running agent at {addr}:{ewp}; each node needs a \
         node_id of its own (an agent restarting on the same address takes its name over)"
    )]
    DuplicateNode {
        name: String,
        addr: std::net::Ipv4Addr,
        ewp: u16,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection to the cluster store. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    prefix: String,
    grace: Duration,
    /// Registrations also write the v1 node keys ([`Store::with_v1_mirror`]).
    v1_mirror: bool,
}

impl Store {
    /// Connects to every endpoint (once one answers) of a comma-separated list of
    /// `http://HOST:PORT` or `https://HOST:PORT` URLs, giving each 2 s.
    pub async fn connect(access: impl Into<Access>) -> Result<Store> {
        Ok(Store {
            client: Client::connect(&access.into()).await?,
            prefix: DEFAULT_PREFIX.to_owned(),
            grace: DEFAULT_GRACE,
            v1_mirror: false,
        })
    }

    /// Uses another key prefix (a trailing `/` is added if missing).
    pub fn with_prefix(mut self, prefix: &str) -> Store {
        self.prefix = normalise_prefix(prefix);
        self
    }

    /// How long a freed ServIP or fixed IP is kept out of circulation.
    pub fn with_grace(mut self, grace: Duration) -> Store {
        self.grace = grace;
        self
    }

    /// Node registrations also write the node's record and instances in the
    /// v1 schema, so that agents of the previous release keep seeing the
    /// node during a rolling upgrade.
    pub fn with_v1_mirror(mut self, on: bool) -> Store {
        self.v1_mirror = on;
        self
    }

    /// The endpoint this store is connected to.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Every key and value under `rel` (relative to the prefix), read at
    /// one revision in pages; keys are returned relative to the prefix.
    async fn range_all(&self, rel: &str, keys_only: bool) -> Result<(Vec<Kv>, i64)> {
        let mut cursor = Cursor::default();
        let mut out = Vec::new();
        while !cursor.read_done() {
            out.extend(self.next_page(rel, &mut cursor, keys_only).await?);
        }
        Ok((out, cursor.revision()))
    }

    async fn records<T: DeserializeOwned>(&self, rel: &str) -> Result<Vec<T>> {
        let (kvs, _) = self.range_all(rel, false).await?;
        kvs.iter().map(Kv::decode).collect()
    }

    /// Registered (live) nodes, by name; each named by its key.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut nodes: Vec<NodeRecord> = self.node_keys(keys::NodeKey::Record).await?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// What every node publishes under `node/<name>/<kind>` (beyond the
    /// state: `conflicts`, say), by node.
    pub async fn node_status<T: DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<BTreeMap<String, T>> {
        let (kvs, _) = self.range_all(keys::NODES, false).await?;
        let mut out = BTreeMap::new();
        for kv in &kvs {
            if let Some((node, keys::NodeKey::Other(k))) = keys::parse_node_key(&kv.key)
                && k == kind
            {
                out.insert(node.to_owned(), kv.decode()?);
            }
        }
        Ok(out)
    }

    /// Every record of one kind under `node/`, each bound to its key's node.
    async fn node_keys<T: DeserializeOwned + keys::OfNode>(
        &self,
        kind: keys::NodeKey<'_>,
    ) -> Result<Vec<T>> {
        let (kvs, _) = self.range_all(keys::NODES, false).await?;
        let mut out = Vec::new();
        for kv in &kvs {
            match keys::parse_node_key(&kv.key) {
                Some((node, k)) if k == kind => {
                    let mut record: T = kv.decode()?;
                    record.bind(node);
                    out.push(record);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Deployed services, by name.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>> {
        self.records("services/").await
    }

    /// One deployed service.
    pub async fn service(&self, name: &str) -> Result<Option<ServiceRecord>> {
        let key = format!("services/{}", name.to_ascii_lowercase());
        let (kvs, _) = self.range_all(&key, false).await?;
        kvs.iter()
            .find(|kv| kv.key == key)
            .map(Kv::decode)
            .transpose()
    }

    /// Published instances of live nodes, by service and instance number.
    pub async fn instances(&self) -> Result<Vec<InstanceSpec>> {
        let mut all: Vec<InstanceSpec> = self.node_keys(keys::NodeKey::Instance).await?;
        all.sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
        Ok(all)
    }

    /// Address claims (`servips/<ip>`): every ServIP and fixed IP in use.
    pub async fn claims(&self) -> Result<BTreeMap<Ipv4Addr, AddressClaim>> {
        let (kvs, _) = self.range_all("servips/", false).await?;
        kvs.iter()
            .map(|kv| Ok((parse_ip_key(kv, "servips/")?, kv.decode()?)))
            .collect()
    }

    /// The desired state as the dataplane needs it, and the store revision
    /// it was read at. Records that do not parse are skipped with a warning.
    pub async fn snapshot(&self) -> Result<(ClusterState, i64)> {
        let (kvs, revision) = self.range_all("", false).await?;
        let state = build_state(kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())));
        Ok((state, revision))
    }

    /// Every key under the prefix (relative to it), for inspection.
    pub async fn keys(&self) -> Result<Vec<String>> {
        let (kvs, _) = self.range_all("", true).await?;
        Ok(kvs.into_iter().map(|kv| kv.key).collect())
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64> {
        let resp = self
            .client
            .range(proto::RangeRequest {
                key: self.prefix.clone().into_bytes(),
                limit: 1,
                keys_only: true,
                ..Default::default()
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Compacts the store's history up to `revision` (maintenance).
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.client.compact(revision).await
    }

    /// Revokes a lease, deleting every key attached to it (maintenance:
    /// evicts a node whose agent is gone without waiting for its TTL).
    pub async fn revoke_lease(&self, lease: i64) -> Result<()> {
        self.client.lease_revoke(lease).await
    }
}

pub(crate) fn normalise_prefix(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// A key (relative to the prefix) with its value and revisions.
#[derive(Clone, Debug)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl Kv {
    fn new(prefix: &str, kv: proto::KeyValue) -> Kv {
        let key = String::from_utf8_lossy(&kv.key);
        Kv {
            key: key.strip_prefix(prefix).unwrap_or(&key).to_owned(),
            value: kv.value,
            mod_revision: kv.mod_revision,
        }
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.value).map_err(|e| StoreError::Corrupt {
            key: self.key.clone(),
            reason: e.to_string(),
        })
    }
}

fn parse_ip_key(kv: &Kv, rel: &str) -> Result<Ipv4Addr> {
    kv.key
        .strip_prefix(rel)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            key: kv.key.clone(),
            reason: "the key does not end in an IPv4 address".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(ops::prefix_end("/overlay/v1/"), b"/overlay/v10".to_vec());
        assert_eq!(ops::prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(normalise_prefix("/x"), "/x/");
        assert_eq!(normalise_prefix("/x/"), "/x/");
    }
}
