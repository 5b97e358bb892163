//! Who may write what: etcd's users and roles, and the move from the v1 key
//! schema. With `--client-cert-auth`, etcd takes the user name from the
//! client certificate's common name, so a certificate is an identity:
//! * `root` sets the store up and admits nodes (etcd's own admin user);
//! * the orchestrator (role `overlay-orchestrator`) reads and writes every
//!   key under the prefix: services, addresses, gateways, settings, subnets;
//! * node `<n>` (role `overlay-node-<n>`) reads every key under the prefix
//!   and writes only under `node/<n>/`.

use super::ops::{get_prefix, ops, prefix_end, put};
use super::{Result, Store, StoreError, Subnet, V1_PREFIX, keys, proto};

/// etcd's administrator: its user and its built-in role share the name.
pub const ROOT: &str = "root";
/// The role of the orchestrator's identity.
pub const ORCHESTRATOR_ROLE: &str = "overlay-orchestrator";
/// The orchestrator's identity unless `store setup` is told another.
pub const DEFAULT_ORCHESTRATOR: &str = "orchestrator";

/// The role of node `node`.
pub fn node_role(node: &str) -> String {
    format!("overlay-node-{node}")
}

/// v1 keys the orchestrator owned, and where they live in v2. The keys
/// nodes wrote (`nodes/`, `instances/`, `rtt/`, `load/`) are under their
/// leases: each agent writes them again under `node/<name>/`.
const MOVED: &[(&str, &str)] = &[
    ("services/", "services/"),
    ("counters/", "counters/"),
    ("servips/", "servips/"),
    ("fixed/", "fixed/"),
    ("released/", "released/"),
    ("gateways/", "gateways/"),
    ("exposed/", "exposed/"),
    ("subnets/", "subnets/"),
    ("subnet-of/", "subnet-of/"),
    ("cluster/settings", "cluster/settings"),
    ("cluster/probe-key-next", keys::PROBE_KEY_NEXT),
    ("cluster/probe-key", keys::PROBE_KEY),
];

/// Puts per transaction while migrating (etcd allows 128 operations).
const BATCH: usize = 100;

impl Store {
    /// Sets up access control: the root user, the orchestrator's role and
    /// user, the probe key, then `auth enable`. Needs the root identity once
    /// auth is on; repeating it changes nothing.
    pub async fn setup_access(&self, orchestrator: &str, probe_key: [u8; 32]) -> Result<()> {
        self.probe_key(probe_key).await?;
        self.user(ROOT, ROOT).await?;
        self.role(
            ORCHESTRATOR_ROLE,
            &[(proto::PERM_READWRITE, self.prefix.clone(), true)],
        )
        .await?;
        self.user(orchestrator, ORCHESTRATOR_ROLE).await?;
        self.client
            .auth(
                "auth enable",
                "/etcdserverpb.Auth/AuthEnable",
                proto::AuthEnableRequest {},
            )
            .await
    }

    /// Admits node `node`: its etcd user and role (read everything, write
    /// its own keys) and its subnetwork. Needs the root identity.
    pub async fn add_node(&self, node: &str, pool: Subnet, len: u8) -> Result<Subnet> {
        self.node_identity(node).await?;
        self.lease_subnet(node, pool, len).await
    }

    /// [`Store::add_node`] with a subnetwork per the cluster's node subnet
    /// setting.
    pub async fn admit_node(&self, node: &str) -> Result<Subnet> {
        self.node_identity(node).await?;
        self.lease_node_subnet(node).await
    }

    /// The node's etcd user and role: read everything, write its own keys.
    async fn node_identity(&self, node: &str) -> Result<()> {
        let role = node_role(node);
        let own = format!("{}{}", self.prefix, keys::node_dir(node));
        self.role(
            &role,
            &[
                (proto::PERM_READ, self.prefix.clone(), true),
                (proto::PERM_READWRITE, own, true),
            ],
        )
        .await?;
        self.user(node, &role).await
    }

    /// Withdraws node `node`'s identity (its certificate no longer reaches
    /// any key) and gives its subnetwork back. Refused while it is registered.
    pub async fn remove_node(&self, node: &str) -> Result<Option<Subnet>> {
        let subnet = self.release_subnet(node).await?;
        let user = proto::AuthUserDeleteRequest { name: node.into() };
        let role = proto::AuthRoleDeleteRequest {
            role: node_role(node),
        };
        for result in [
            self.client
                .auth("user delete", "/etcdserverpb.Auth/UserDelete", user)
                .await,
            self.client
                .auth("role delete", "/etcdserverpb.Auth/RoleDelete", role)
                .await,
        ] {
            match result {
                Err(StoreError::Rpc { reason, .. }) if reason.contains("not found") => {}
                other => other?,
            }
        }
        Ok(subnet)
    }

    /// Adds `user` (no password: it signs in with its certificate) with `role`.
    async fn user(&self, user: &str, role: &str) -> Result<()> {
        let add = proto::AuthUserAddRequest {
            name: user.into(),
            password: String::new(),
            options: Some(proto::UserAddOptions { no_password: true }),
        };
        self.client
            .auth("user add", "/etcdserverpb.Auth/UserAdd", add)
            .await?;
        let grant = proto::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        self.client
            .auth("user grant", "/etcdserverpb.Auth/UserGrantRole", grant)
            .await
    }

    /// Adds `role` with permissions (type, key, whether the key is a prefix).
    async fn role(&self, role: &str, perms: &[(i32, String, bool)]) -> Result<()> {
        let add = proto::AuthRoleAddRequest { name: role.into() };
        self.client
            .auth("role add", "/etcdserverpb.Auth/RoleAdd", add)
            .await?;
        for (perm_type, key, prefix) in perms {
            let grant = proto::AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(proto::Permission {
                    perm_type: *perm_type,
                    key: key.clone().into_bytes(),
                    range_end: if *prefix { prefix_end(key) } else { Vec::new() },
                }),
            };
            self.client
                .auth(
                    "role grant",
                    "/etcdserverpb.Auth/RoleGrantPermission",
                    grant,
                )
                .await?;
        }
        Ok(())
    }

    /// Copies the orchestrator's keys of a v1 store (`/overlay/v1/`) to this
    /// prefix, unless it holds the v2 schema already; returns how many keys
    /// were copied. A key present in both is left as this prefix has it.
    pub async fn migrate_v1(&self) -> Result<usize> {
        self.migrate_from(V1_PREFIX).await
    }

    /// [`Store::migrate_v1`] from another prefix.
    pub async fn migrate_from(&self, old: &str) -> Result<usize> {
        let schema = self.key(keys::SCHEMA);
        let (r, _) = self.read(vec![super::ops::get(&schema)]).await?;
        if !r[0].is_empty() {
            return Ok(0);
        }
        let old_store = self.clone().with_prefix(old);
        let (kvs, _) = old_store.range_all("", false).await?;
        let (mine, _) = self.range_all("", true).await?;
        let mut puts = Vec::new();
        for kv in &kvs {
            let Some(new) = moved(&kv.key) else { continue };
            if !mine.iter().any(|m| m.key == new) {
                puts.push(put(&self.key(&new), kv.value.clone(), 0));
            }
        }
        let copied = puts.len();
        for batch in puts.chunks(BATCH) {
            self.write(batch.to_vec()).await?;
        }
        self.write(vec![put(&schema, b"2".to_vec(), 0)]).await?;
        if copied > 0 {
            tracing::info!(
                "store: copied {copied} key(s) of the v1 schema at {old} to {}",
                self.prefix
            );
        }
        Ok(copied)
    }

    async fn write(&self, puts: Vec<proto::request_op::Request>) -> Result<()> {
        let txn = proto::TxnRequest {
            success: ops(puts),
            ..Default::default()
        };
        self.client.txn(txn).await.map(|_| ())
    }

    /// Whether agents of the previous release are registered (v1 node keys).
    pub async fn has_v1_nodes(&self) -> Result<bool> {
        let (r, _) = self
            .read(vec![get_prefix(&format!("{V1_PREFIX}nodes/"))])
            .await?;
        Ok(!r[0].is_empty())
    }
}

/// Where a v1 key (relative) lives in v2, if the migration moves it.
fn moved(key: &str) -> Option<String> {
    MOVED.iter().find_map(|(from, to)| {
        if from.ends_with('/') {
            key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
        } else {
            (key == *from).then(|| (*to).to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn migration_moves_the_orchestrators_keys() {
        use super::moved;
        assert_eq!(
            moved("services/a.b.c.d").as_deref(),
            Some("services/a.b.c.d")
        );
        assert_eq!(
            moved("cluster/probe-key").as_deref(),
            Some("secret/probe-key")
        );
        assert_eq!(
            moved("cluster/probe-key-next").as_deref(),
            Some("secret/probe-key-next")
        );
        assert_eq!(moved("nodes/n1"), None);
        assert_eq!(moved("instances/a.b.c.d/1"), None);
        assert_eq!(moved("rtt/n1"), None);
    }
}
