//! Typed access to the dataplane's maps, from a freshly loaded object or
//! from the pins an agent left behind.
//!
//! Writers follow one rule (after Cilium): never show a packet a half-built
//! service. A ServIP's ports, backends and slots are written before its
//! `SERVIPS` entry announces the slot count; stale slots are deleted after.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use overlay_common::maps::{
    Backend, Config, Counter, Endpoint, Epoch, Layout, NeedKey, Node, PortKey, ServIp, SlotKey, ip,
};
use overlay_common::policy::Policy;
use overlay_common::registry::{self, MapDef, MapKind, def};
use overlay_common::stats::{REASONS, Reason};

mod conntrack;
mod events;
mod guard;
mod north_south;

pub use conntrack::{Lifetimes, Tracked, ticks};
pub use events::parse_event;

use super::batch::read_all;
use super::{Error, Result};

/// The map type of a registry entry, as aya spells it in userspace.
macro_rules! user_type {
    (Array, $k:ty, $v:ty) => { Array<MapData, $v> };
    (PerCpuArray, $k:ty, $v:ty) => { PerCpuArray<MapData, $v> };
    (RingBuf, $k:ty, $v:ty) => { RingBuf<MapData> };
    // aya reads and writes an LRU hash through its `HashMap` handle.
    (LruHashMap, $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    ($kind:ident, $k:ty, $v:ty) => { $kind<MapData, $k, $v> };
}

/// How many entries a map of the registry's `kind` holds: an array always
/// holds its capacity; the conntrack LRU is read in batches.
macro_rules! entries {
    (Array, $m:expr, $d:expr) => {
        $d.max_entries as usize
    };
    (PerCpuArray, $m:expr, $d:expr) => {
        $d.max_entries as usize
    };
    (LruHashMap, $m:expr, $d:expr) => {
        read_all(&$m).len()
    };
    // Events are not entries: what a ring holds is its reader's business.
    (RingBuf, $m:expr, $d:expr) => {
        0
    };
    ($kind:ident, $m:expr, $d:expr) => {
        $m.keys().filter(|k| k.is_ok()).count()
    };
}

/// `Tables`: one typed handle per pinned map of the registry (the private
/// maps are the programs' alone).
macro_rules! tables {
    (pinned { $( $(#[$doc:meta])* $name:ident $field:ident :
        $kind:ident < $key:ty, $val:ty >, $cap:expr, $flags:expr, $ver:literal; )* }
     private { $($private:tt)* }) => {
        /// Every pinned map of one dataplane.
        pub struct Tables {
            $( $(#[$doc])* $field: user_type!($kind, $key, $val), )*
        }

        impl Tables {
            /// Builds the handles from `get`, which gives the map of a declaration.
            fn build(
                mut get: impl FnMut(&'static MapDef) -> Result<Option<Map>>,
            ) -> Result<Self> {
                Ok(Tables { $( $field: typed(&def::$name, get(&def::$name)?)?, )* })
            }

            /// How many entries each pinned map holds (reads whole maps).
            pub fn fill(&self) -> Vec<(&'static MapDef, usize)> {
                vec![ $( (&def::$name, entries!($kind, self.$field, def::$name)), )* ]
            }
        }
    };
}

overlay_common::for_each_map!(tables);

fn typed<T: TryFrom<Map, Error = MapError>>(d: &'static MapDef, map: Option<Map>) -> Result<T> {
    let map = map.ok_or(Error::Missing(d.name))?;
    T::try_from(map).map_err(map_err(d))
}

fn map_err(d: &'static MapDef) -> impl Fn(MapError) -> Error {
    move |source| Error::Map {
        name: d.name,
        source,
    }
}

/// Pinned maps that an agent of an earlier release did not pin: opening
/// its pins, an empty stand-in takes their place.
const NEWER: [&str; 2] = [def::LAYOUT.name, def::EPOCH.name];

/// A new, unpinned, empty map as `d` declares it.
fn create(d: &'static MapDef) -> Result<MapData> {
    let obj = aya_obj::Map::new_from_params(
        d.kind as u32,
        d.key_size,
        d.value_size,
        d.max_entries,
        d.flags,
    );
    MapData::create(obj, d.name, None).map_err(map_err(d))
}

/// A pinned map's data as the `Map` of its kind.
fn wrap(d: &MapDef, data: MapData) -> Map {
    match d.kind {
        MapKind::Array => Map::Array(data),
        MapKind::PerCpuArray => Map::PerCpuArray(data),
        MapKind::HashMap => Map::HashMap(data),
        MapKind::PerCpuHashMap => Map::PerCpuHashMap(data),
        MapKind::LruHashMap => Map::LruHashMap(data),
        MapKind::LpmTrie => Map::LpmTrie(data),
        MapKind::RingBuf => Map::RingBuf(data),
    }
}

impl Tables {
    /// Takes the maps out of a loaded object (its programs keep using them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|d| Ok(ebpf.take_map(d.name)))
    }

    /// Opens the maps pinned in `dir` (by an agent, possibly no longer
    /// running). Pins of the release before layout versions were recorded
    /// have no `LAYOUT`: an empty one stands in (read as "version 1").
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::build(|d| {
            let path = dir.join(d.name);
            let data = match MapData::from_pin(&path) {
                // Maps newer than the agent that pinned the others.
                Err(_) if NEWER.contains(&d.name) && !path.exists() => create(d)?,
                other => other.map_err(|source| Error::Pinned { path, source })?,
            };
            Ok(Some(wrap(d, data)))
        })
    }

    /// Records the registry's layout versions in `LAYOUT`: the maps just
    /// loaded, adopted or migrated are now of this layout.
    pub fn record_layout(&mut self) -> Result<()> {
        for d in registry::PINNED {
            self.layout
                .insert(Layout::of(d.name), d.version, 0)
                .map_err(map_err(&def::LAYOUT))?;
        }
        Ok(())
    }

    /// The layout version recorded for each pinned map.
    pub fn layout(&self) -> std::collections::BTreeMap<String, u32> {
        self.layout
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect()
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(&def::CONFIG))
    }

    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        self.config.set(0, cfg, 0).map_err(map_err(&def::CONFIG))?;
        self.bump_epoch()
    }

    /// Ends every decision the programs cached (`FLOW_CACHE`): called after
    /// each change to a map such a decision reads (the settings, nodes and
    /// their addresses, subnets, local instances, ServIPs) and after ending
    /// conntrack entries. Serialised within the process, so that two
    /// writers (reconcile, conntrack GC) never move it back.
    pub fn bump_epoch(&mut self) -> Result<()> {
        static BUMP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUMP.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.epoch.get(&0, 0).map_err(map_err(&def::EPOCH))?;
        let pool = crate::store::DEFAULT_SERVICE_POOL;
        let next = Epoch {
            value: now.value.wrapping_add(1),
            // Validation keeps every ServIP and fixed IP in this pool.
            servips: ip::to_wire(pool.addr),
            servips_mask: pool.mask().to_be(),
        };
        self.epoch.set(0, next, 0).map_err(map_err(&def::EPOCH))
    }

    /// Per-reason counters summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(Reason, Counter)>> {
        (0..REASONS)
            .filter_map(|i| Reason::from_index(i).map(|r| (i, r)))
            .map(|(i, reason)| {
                let per_cpu = self.stats.get(&i, 0).map_err(map_err(&def::STATS))?;
                let total = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                Ok((reason, total))
            })
            .collect()
    }

    /// Packets counted under `reason` so far.
    pub fn count(&self, reason: Reason) -> Result<u64> {
        Ok(self
            .stats()?
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c.packets)
            .unwrap_or(0))
    }

    /// A node: where its tunnel packets go (and the overlay MTU toward it),
    /// and that its address may send them.
    pub fn put_node(&mut self, id: u32, addr: Ipv4Addr, ewp: u16, mtu: u16) -> Result<()> {
        let node = Node {
            mtu,
            ..tunnel_end(addr, ewp)
        };
        let old = self.nodes.get(&id, 0).ok();
        self.nodes
            .insert(id, node, 0)
            .map_err(map_err(&def::NODES))?;
        if let Some(old) = old.filter(|o| o.ip != node.ip) {
            self.settle_peer(old.ip)?;
        }
        self.settle_peer(node.ip)?;
        self.bump_epoch()
    }

    pub fn remove_node(&mut self, id: u32) -> Result<()> {
        let old = self.nodes.get(&id, 0).ok();
        ignore_missing(self.nodes.remove(&id)).map_err(map_err(&def::NODES))?;
        if let Some(node) = old {
            self.settle_peer(node.ip)?;
        }
        self.bump_epoch()
    }

    /// Sets `PEERS` for the address `ip` (wire order) from the nodes that
    /// have it: none, one (its id), or several behind one NAT (`SHARED_PEER`),
    /// so that one node leaving never takes the address from another.
    fn settle_peer(&mut self, ip: u32) -> Result<()> {
        let ids: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, n)| n.ip == ip)
            .map(|(id, _)| id)
            .collect();
        match ids.as_slice() {
            [] => ignore_missing(self.peers.remove(&ip)).map_err(map_err(&def::PEERS)),
            [id] => self.peers.insert(ip, *id, 0).map_err(map_err(&def::PEERS)),
            _ => self
                .peers
                .insert(ip, overlay_common::maps::SHARED_PEER, 0)
                .map_err(map_err(&def::PEERS)),
        }
    }

    /// A node's instance subnet.
    pub fn put_route(&mut self, subnet: Ipv4Addr, prefix: u32, node: u32) -> Result<()> {
        let key = Key::new(prefix, ip::to_wire(subnet));
        self.routes
            .insert(&key, node, 0)
            .map_err(map_err(&def::ROUTES))?;
        self.bump_epoch()
    }

    pub fn remove_route(&mut self, subnet: Ipv4Addr, prefix: u32) -> Result<()> {
        let key = Key::new(prefix, ip::to_wire(subnet));
        ignore_missing(self.routes.remove(&key)).map_err(map_err(&def::ROUTES))?;
        self.bump_epoch()
    }

    pub fn put_endpoint(&mut self, nsip: Ipv4Addr, ep: &Endpoint) -> Result<()> {
        self.endpoints
            .insert(ip::to_wire(nsip), ep, 0)
            .map_err(map_err(&def::ENDPOINTS))?;
        self.bump_epoch()
    }

    pub fn remove_endpoint(&mut self, nsip: Ipv4Addr) -> Result<()> {
        ignore_missing(self.endpoints.remove(&ip::to_wire(nsip)))
            .map_err(map_err(&def::ENDPOINTS))?;
        self.bump_epoch()
    }

    pub fn put_backend(&mut self, id: u32, nsip: Ipv4Addr, node: u32) -> Result<()> {
        let b = Backend {
            nsip: ip::to_wire(nsip),
            node,
        };
        self.backends
            .insert(id, b, 0)
            .map_err(map_err(&def::BACKENDS))
    }

    pub fn remove_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id)).map_err(map_err(&def::BACKENDS))
    }

    /// The ports (and protocols) a service forwards; port 0 with ICMP is echo.
    pub fn put_port(&mut self, service: u32, port: u16, proto: u8) -> Result<()> {
        let key = PortKey {
            service,
            port: ip::port_to_wire(port),
            proto,
            _pad: 0,
        };
        self.ports
            .insert(key, 1, 0)
            .map_err(map_err(&def::SVC_PORTS))
    }

    pub fn remove_port(&mut self, service: u32, port: u16, proto: u8) -> Result<()> {
        let key = PortKey {
            service,
            port: ip::port_to_wire(port),
            proto,
            _pad: 0,
        };
        ignore_missing(self.ports.remove(&key)).map_err(map_err(&def::SVC_PORTS))
    }

    /// Publishes a ServIP with its slot table (backend ids, repeated for
    /// weight). Each ServIP has two tables: the new one is written into the
    /// idle one, one update of `SERVIPS` switches to it (a packet sees the
    /// old table or the new, never a mix), then the old one is deleted.
    pub fn put_servip(
        &mut self,
        servip: Ipv4Addr,
        service: u32,
        policy: Policy,
        slots: &[u32],
    ) -> Result<()> {
        let vip = ip::to_wire(servip);
        let count = u16::try_from(slots.len()).map_err(|_| Error::TooManySlots(slots.len()))?;
        let old = self.servips.get(&vip, 0).ok();
        let table = old.map_or(0, |o| o.table ^ 1);
        for (i, id) in slots.iter().enumerate() {
            self.slots
                .insert(SlotKey::new(vip, table, i as u32), id, 0)
                .map_err(map_err(&def::SLOTS))?;
        }
        let sv = ServIp {
            service,
            count,
            policy: policy.code(),
            table,
        };
        self.servips
            .insert(vip, sv, 0)
            .map_err(map_err(&def::SERVIPS))?;
        self.bump_epoch()?;
        match old {
            Some(o) => self.remove_slots(vip, o.table, o.count),
            None => Ok(()),
        }
    }

    pub fn remove_servip(&mut self, servip: Ipv4Addr) -> Result<()> {
        let vip = ip::to_wire(servip);
        let Ok(sv) = self.servips.get(&vip, 0) else {
            return Ok(());
        };
        ignore_missing(self.servips.remove(&vip)).map_err(map_err(&def::SERVIPS))?;
        self.bump_epoch()?;
        ignore_missing(self.turns.remove(&vip)).map_err(map_err(&def::TURNS))?;
        self.remove_slots(vip, sv.table, sv.count)
    }

    fn remove_slots(&mut self, vip: u32, table: u8, count: u16) -> Result<()> {
        for i in 0..count as u32 {
            ignore_missing(self.slots.remove(&SlotKey::new(vip, table, i)))
                .map_err(map_err(&def::SLOTS))?;
        }
        Ok(())
    }

    pub fn servips(&self) -> Vec<(Ipv4Addr, ServIp)> {
        self.servips
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (ip::from_wire(k), v))
            .collect()
    }

    pub fn slots(&self, servip: Ipv4Addr) -> Vec<u32> {
        let vip = ip::to_wire(servip);
        let Ok(sv) = self.servips.get(&vip, 0) else {
            return Vec::new();
        };
        (0..sv.count as u32)
            .filter_map(|i| self.slots.get(&SlotKey::new(vip, sv.table, i), 0).ok())
            .collect()
    }

    /// Every ServIP's live slot table, read in batches (a restart's resync
    /// over thousands of ServIPs would otherwise cost a syscall per slot).
    pub fn all_slots(&self) -> std::collections::BTreeMap<Ipv4Addr, Vec<u32>> {
        let live: std::collections::BTreeMap<u32, ServIp> =
            self.servips.iter().filter_map(|r| r.ok()).collect();
        let mut tables: std::collections::BTreeMap<Ipv4Addr, Vec<(u32, u32)>> = Default::default();
        for (k, id) in read_all(&self.slots) {
            let Some(sv) = live.get(&k.servip) else {
                continue;
            };
            let (table, index) = (k.table(), k.index());
            if table == sv.table && index < sv.count as u32 {
                tables
                    .entry(ip::from_wire(k.servip))
                    .or_default()
                    .push((index, id));
            }
        }
        tables
            .into_iter()
            .map(|(vip, mut slots)| {
                slots.sort_unstable();
                (vip, slots.into_iter().map(|(_, id)| id).collect())
            })
            .collect()
    }

    pub fn ports(&self) -> Vec<PortKey> {
        self.ports.keys().filter_map(|r| r.ok()).collect()
    }

    pub fn backends(&self) -> Vec<(u32, Backend)> {
        read_all(&self.backends)
    }

    pub fn endpoints(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        self.endpoints
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (ip::from_wire(k), v))
            .collect()
    }

    pub fn nodes(&self) -> Vec<(u32, Node)> {
        self.nodes.iter().filter_map(|r| r.ok()).collect()
    }

    /// What underlay routers reported about the paths to node addresses
    /// (`PATH_MTU`), in force or not (see `overlay_common::pmtu`).
    pub fn path_mtu(&self) -> Vec<(Ipv4Addr, overlay_common::maps::PathMtu)> {
        let reports = self.path_mtu.iter().filter_map(|r| r.ok());
        reports.map(|(a, r)| (ip::from_wire(a), r)).collect()
    }

    /// The accepted tunnel sources and their node ids (`SHARED_PEER`).
    pub fn peers(&self) -> Vec<(Ipv4Addr, u32)> {
        let peers = self.peers.iter().filter_map(|r| r.ok());
        peers.map(|(a, id)| (ip::from_wire(a), id)).collect()
    }

    pub fn routes(&self) -> Vec<(Ipv4Addr, u32, u32)> {
        self.routes
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, node)| (ip::from_wire(k.data()), k.prefix_len(), node))
            .collect()
    }

    /// Limits `service`'s new flows to its `needs` (`DEFAULT_DENY`: the cluster setting).
    pub fn put_restricted(&mut self, service: u32) -> Result<()> {
        self.restricted
            .insert(service, 1, 0)
            .map_err(map_err(&def::RESTRICTED))
    }

    pub fn remove_restricted(&mut self, service: u32) -> Result<()> {
        ignore_missing(self.restricted.remove(&service)).map_err(map_err(&def::RESTRICTED))
    }

    pub fn restricted(&self) -> Vec<u32> {
        self.restricted.keys().filter_map(|r| r.ok()).collect()
    }

    /// Allows `src` to open new flows to `dst`.
    pub fn put_need(&mut self, src: u32, dst: u32) -> Result<()> {
        self.needs
            .insert(NeedKey { src, dst }, 1, 0)
            .map_err(map_err(&def::NEEDS))
    }

    pub fn remove_need(&mut self, src: u32, dst: u32) -> Result<()> {
        ignore_missing(self.needs.remove(&NeedKey { src, dst })).map_err(map_err(&def::NEEDS))
    }

    pub fn needs(&self) -> Vec<NeedKey> {
        self.needs.keys().filter_map(|r| r.ok()).collect()
    }

    /// New flows denied so far, per sending service (summed over CPUs).
    pub fn denied(&self) -> Vec<(u32, u64)> {
        per_service(&self.denied)
    }

    /// New flows this node opened per destination service, summed over CPUs.
    pub fn new_flows(&self) -> Vec<(u32, u64)> {
        per_service(&self.flows_new)
    }
}

/// A per-CPU counter map keyed by service, summed over the CPUs.
fn per_service(map: &PerCpuHashMap<MapData, u32, u64>) -> Vec<(u32, u64)> {
    map.iter()
        .filter_map(|r| r.ok())
        .map(|(svc, per_cpu)| (svc, per_cpu.iter().sum()))
        .collect()
}

/// A tunnel endpoint (a node, or a gateway) as the maps hold it.
fn tunnel_end(addr: Ipv4Addr, port: u16) -> Node {
    Node {
        ip: ip::to_wire(addr),
        port: ip::port_to_wire(port),
        mtu: 0,
    }
}

/// The current conntrack tick (`CtEntry::seen`): the programs read the same
/// clock through `bpf_ktime_get_coarse_ns`.
pub fn tick_now() -> u32 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("CLOCK_MONOTONIC_COARSE is always available on Linux");
    let ns = ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64;
    overlay_common::maps::ct::tick(ns)
}

/// Deleting what is already gone is success: writers are idempotent.
fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
