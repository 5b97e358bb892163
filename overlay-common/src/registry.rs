//! The map registry: every BPF map of the dataplane, declared once.
//!
//! [`for_each_map!`] holds one line per map: its name, the agent's field name
//! for it, its kind, key and value types, capacity, flags, whether it is
//! pinned and the version of its layout. Everything else derives from it:
//!
//! * the eBPF crate expands it into its `#[map]` statics,
//! * the agent expands it into its typed handles (`Tables`), opens pins and
//!   checks their layout against [`MAPS`],
//! * [`MAPS`] describes each map at run time (`overlay-ctl`, the registry test
//!   that compares it with the compiled object).
//!
//! Adding a map is one line here plus its key and value types in
//! [`crate::maps`]; a map declared anywhere else fails the registry test.
//! The capacities the user's input must fit into are in [`limits`].

/// `BPF_F_NO_PREALLOC`: the map's memory follows its entries (as Cilium's
/// load-balancer maps); the capacity is only a ceiling.
pub const NO_PREALLOC: u32 = 1;
/// `BPF_F_NO_COMMON_LRU`: an LRU map with a list per CPU (no shared lock
/// on the hot path).
pub const NO_COMMON_LRU: u32 = 2;

/// Capacities of the maps. Sized for thousands of services per cluster.
pub mod capacity {
    pub const SERVIPS: u32 = 65_536;
    pub const SVC_PORTS: u32 = 65_536;
    /// Not preallocated: room for large weighted tables costs nothing until used.
    pub const SLOTS: u32 = 1 << 20;
    pub const BACKENDS: u32 = 65_536;
    pub const ENDPOINTS: u32 = 4_096;
    pub const NODES: u32 = 1_024;
    pub const ROUTES: u32 = 1_024;
    /// The default; a node sets its own (`conntrack_entries`).
    pub const CONNTRACK: u32 = 262_144;
    pub const CT_NEW: u32 = 65_536;
    pub const RESTRICTED: u32 = 65_536;
    pub const NEEDS: u32 = 262_144;
    pub const EXPOSED: u32 = 4_096;
    pub const GATEWAYS: u32 = 256;
    /// Two tunnel ports per node, the store's endpoints and the node's own addresses.
    pub const INFRA: u32 = 4_096;
    pub const UDP_PEERS: u32 = 65_536;
    /// The pools and every node subnet (subnets outside the pools included).
    pub const OVERLAY_NETS: u32 = 2 * ROUTES;
    /// Established flows whose decisions are cached (both ways).
    pub const FLOW_CACHE: u32 = 32_768;
    /// Room for every map of a registry many times this size.
    pub const LAYOUT: u32 = 128;
}

/// What user input must respect so that it fits the maps: checked by
/// descriptor validation, by the store's checks on what it writes, and by
/// reconcile on whatever the store holds (one service breaking a limit is
/// refused alone; the rest of the cluster is applied).
pub mod limits {
    use super::capacity;

    /// Ports one service may declare (each is a TCP and a UDP `SVC_PORTS` entry).
    pub const PORTS_PER_SERVICE: usize = 256;
    /// Entries of one service's `needs`.
    pub const NEEDS_PER_SERVICE: usize = 256;
    /// Slots of one ServIP's table: the index is 16 bits wide (`SlotKey`).
    pub const SLOTS_PER_SERVIP: usize = 0xffff;
    /// Services of the cluster (each takes up to three ServIPs).
    pub const SERVICES: usize = capacity::SERVIPS as usize / 3;
    /// Nodes of the cluster.
    pub const NODES: usize = capacity::NODES as usize;
    /// Registered north-south gateways.
    pub const GATEWAYS: usize = capacity::GATEWAYS as usize;
    /// Exposed ports of the cluster (each is a TCP and a UDP `EXPOSED` entry).
    pub const EXPOSED_PORTS: usize = capacity::EXPOSED as usize / 2;
    /// Instances on one node.
    pub const INSTANCES_PER_NODE: usize = capacity::ENDPOINTS as usize;
}

/// Calls `$callback!` with the declaration of every map, in two groups:
/// `pinned { .. }`, the maps the agent pins and shares with the programs,
/// and `private { .. }`, the programs' own (never pinned, so a restart may
/// drop them). One entry: `NAME field: Kind<Key, Value>, capacity, flags,
/// version;` (the key of an array is its `u32` index; the key of an
/// `LpmTrie` is the address part, the prefix length comes on top).
#[macro_export]
macro_rules! for_each_map {
    ($callback:ident) => {
        $callback! {
          pinned {
            /// Index 0: the node-wide settings (`Config`).
            CONFIG config: Array<u32, $crate::maps::Config>, 1, 0, 1;
            /// Per-CPU packet and byte counters, one slot per `Reason`.
            STATS stats: PerCpuArray<u32, $crate::maps::Counter>,
                $crate::stats::REASONS, 0, 3;
            /// ServIP (or fixed instance IP) → what it stands for.
            SERVIPS servips: HashMap<u32, $crate::maps::ServIp>,
                $crate::registry::capacity::SERVIPS, $crate::registry::NO_PREALLOC, 1;
            /// Ports (and protocols) a service forwards.
            SVC_PORTS ports: HashMap<$crate::maps::PortKey, u32>,
                $crate::registry::capacity::SVC_PORTS, $crate::registry::NO_PREALLOC, 1;
            /// A ServIP's slot tables: slot → backend id.
            SLOTS slots: HashMap<$crate::maps::SlotKey, u32>,
                $crate::registry::capacity::SLOTS, $crate::registry::NO_PREALLOC, 1;
            /// Backend id → NamespaceIP and node.
            BACKENDS backends: HashMap<u32, $crate::maps::Backend>,
                $crate::registry::capacity::BACKENDS, $crate::registry::NO_PREALLOC, 1;
            /// NamespaceIP → a local instance's link.
            ENDPOINTS endpoints: HashMap<u32, $crate::maps::Endpoint>,
                $crate::registry::capacity::ENDPOINTS, $crate::registry::NO_PREALLOC, 1;
            /// Node id → where its tunnel packets go.
            NODES nodes: HashMap<u32, $crate::maps::Node>,
                $crate::registry::capacity::NODES, $crate::registry::NO_PREALLOC, 1;
            /// Registered node addresses (value: node id, or `SHARED_PEER` for an
            /// address several nodes share): the only accepted tunnel sources.
            PEERS peers: HashMap<u32, u32>,
                $crate::registry::capacity::NODES, $crate::registry::NO_PREALLOC, 1;
            /// Node subnets (value: node id), for traffic to a remote NamespaceIP.
            ROUTES routes: LpmTrie<u32, u32>,
                $crate::registry::capacity::ROUTES, $crate::registry::NO_PREALLOC, 1;
            /// Confirmed flows (a reply went through), both directions: a
            /// preallocated hash map whose size the node sets and that never
            /// evicts; the agent's GC ends flows past their lifetime.
            CONNTRACK conntrack: HashMap<$crate::maps::CtKey, $crate::maps::CtEntry>,
                $crate::registry::capacity::CONNTRACK, 0, 2;
            /// Flows without a reply yet, both directions: an LRU of their own,
            /// so that a flood of new flows evicts only other new flows.
            CT_NEW ct_new: LruHashMap<$crate::maps::CtKey, $crate::maps::CtEntry>,
                $crate::registry::capacity::CT_NEW, 0, 1;
            /// Services whose new flows are limited to their `needs` (key
            /// `DEFAULT_DENY`: services without `needs` may open none).
            RESTRICTED restricted: HashMap<u32, u32>,
                $crate::registry::capacity::RESTRICTED, $crate::registry::NO_PREALLOC, 1;
            /// (service, service it may open flows to).
            NEEDS needs: HashMap<$crate::maps::NeedKey, u32>,
                $crate::registry::capacity::NEEDS, $crate::registry::NO_PREALLOC, 1;
            /// New flows denied, per sending service (per CPU).
            DENIED denied: PerCpuHashMap<u32, u64>,
                $crate::registry::capacity::RESTRICTED, $crate::registry::NO_PREALLOC, 1;
            /// New flows this node opened, per destination service (per CPU).
            FLOWS_NEW flows_new: PerCpuHashMap<u32, u64>,
                $crate::registry::capacity::RESTRICTED, $crate::registry::NO_PREALLOC, 1;
            /// Ports of the node's address that lead to exposed services.
            EXPOSED exposed: HashMap<$crate::maps::ExposeKey, $crate::maps::Exposed>,
                $crate::registry::capacity::EXPOSED, $crate::registry::NO_PREALLOC, 1;
            /// Per-CPU round-robin turns of roundrobin ServIPs.
            TURNS turns: PerCpuHashMap<u32, u32>,
                $crate::registry::capacity::SERVIPS, $crate::registry::NO_PREALLOC, 1;
            /// Registered north-south gateways: address → where replies go.
            GATEWAYS gateways: HashMap<u32, $crate::maps::Node>,
                $crate::registry::capacity::GATEWAYS, $crate::registry::NO_PREALLOC, 1;
            /// Every instance of the cluster: NamespaceIP → its service id, for
            /// `needs` on connections to NamespaceIPs.
            NSIP_SERVICES nsip_services: HashMap<u32, u32>,
                $crate::registry::capacity::BACKENDS, $crate::registry::NO_PREALLOC, 1;
            /// Addresses (and ports) of the infrastructure that instances may
            /// not reach: nodes' tunnel ports, the store, this node's own addresses.
            INFRA infra: HashMap<$crate::maps::InfraKey, u32>,
                $crate::registry::capacity::INFRA, $crate::registry::NO_PREALLOC, 1;
            /// The overlay's address space (the pools and node subnets): never
            /// reached from outside except through exposed ports, never left
            /// through the node's default route.
            OVERLAY_NETS overlay_nets: LpmTrie<u32, u32>,
                $crate::registry::capacity::OVERLAY_NETS, $crate::registry::NO_PREALLOC, 1;
            /// UDP datagrams delivered to a local instance whose `needs` would
            /// refuse its replies (key: sender → instance, as CONNTRACK's): its
            /// replies to them pass as replies.
            UDP_PEERS udp_peers: LruHashMap<$crate::maps::CtKey, u32>,
                $crate::registry::capacity::UDP_PEERS, 0, 1;
            /// Path MTU toward node addresses, as underlay routers reported it
            /// (key: the address tunnel packets go to).
            PATH_MTU path_mtu: LruHashMap<u32, $crate::maps::PathMtu>,
                $crate::registry::capacity::NODES, 0, 1;
            /// Index 0: the flow cache's epoch (a `FLOW_CACHE` entry of an
            /// older one is not used) and the ServIP pool (`Epoch`).
            EPOCH epoch: Array<u32, $crate::maps::Epoch>, 1, 0, 1;
            /// Map name → layout version of the pinned maps (see `Layout`).
            LAYOUT layout: HashMap<$crate::maps::Layout, u32>,
                $crate::registry::capacity::LAYOUT, $crate::registry::NO_PREALLOC, 1;
            /// Monitor slots: each running monitor's deadline and rate (`events`).
            MONITOR monitor: Array<u32, $crate::events::Monitors>, 1, 0, 1;
            /// Per monitor slot and CPU: its token bucket, what it held back,
            /// the event being written.
            LIMITER limiter: PerCpuArray<u32, $crate::events::Limiter>,
                $crate::events::MONITORS, 0, 1;
            /// The monitors' ring buffers, one per slot.
            EVENTS_0 events_0: RingBuf<(), ()>, $crate::events::RING_BYTES, 0, 1;
            EVENTS_1 events_1: RingBuf<(), ()>, $crate::events::RING_BYTES, 0, 1;
            EVENTS_2 events_2: RingBuf<(), ()>, $crate::events::RING_BYTES, 0, 1;
            EVENTS_3 events_3: RingBuf<(), ()>, $crate::events::RING_BYTES, 0, 1;
          }
          private {
            /// Per-CPU scratch space for building packets off the stack.
            SCRATCH scratch: PerCpuArray<u32, $crate::maps::Scratch>, 1, 0, 1;
            /// Per-CPU space where an event is built (`events`), off the stack.
            EVENT event: PerCpuArray<u32, $crate::events::Event>, 1, 0, 1;
            /// Cached FIB results for tunnel destinations (node address → hop),
            /// so that an established flow's packets skip `bpf_fib_lookup`.
            HOPS hops: PerCpuHashMap<u32, $crate::maps::CachedHop>,
                $crate::registry::capacity::NODES, $crate::registry::NO_PREALLOC, 1;
            /// Decisions for established flows (a ServIP flow's packets from
            /// its client, its replies from the backend's node), valid for
            /// one tick and one `EPOCH` (`docs/architecture.md`).
            FLOW_CACHE flow_cache: LruHashMap<$crate::maps::FlowKey, $crate::maps::CachedFlow>,
                $crate::registry::capacity::FLOW_CACHE, $crate::registry::NO_COMMON_LRU, 1;
          }
        }
    };
}

/// The kinds of map the dataplane uses (`bpf_map_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    HashMap = 1,
    Array = 2,
    PerCpuHashMap = 5,
    PerCpuArray = 6,
    LruHashMap = 9,
    LpmTrie = 11,
    /// Key and value sizes 0; the capacity is the ring's size in bytes.
    RingBuf = 27,
}

/// One map as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    /// Per CPU for the per-CPU kinds.
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// Pinned by the agent (adopted across restarts and upgrades).
    pub pinned: bool,
    /// Version of the key and value layout: raised with every change to
    /// either, so that an agent knows whether it can adopt a pinned map.
    pub version: u32,
}

impl MapDef {
    pub const fn new<K, V>(
        name: &'static str,
        kind: MapKind,
        max_entries: u32,
        flags: u32,
        pinned: bool,
        version: u32,
    ) -> MapDef {
        let key = core::mem::size_of::<K>() as u32;
        MapDef {
            name,
            kind,
            // An LPM key carries its prefix length first.
            key_size: match kind {
                MapKind::LpmTrie => 4 + key,
                _ => key,
            },
            value_size: core::mem::size_of::<V>() as u32,
            max_entries,
            flags,
            pinned,
            version,
        }
    }
}

macro_rules! defs {
    ($pinned:literal; $( $(#[$doc:meta])* $name:ident $field:ident :
        $kind:ident < $key:ty, $val:ty >, $cap:expr, $flags:expr, $ver:literal; )*) => {
        $(
            $(#[$doc])*
            pub const $name: MapDef = MapDef::new::<$key, $val>(
                stringify!($name), MapKind::$kind, $cap, $flags, $pinned, $ver,
            );
        )*
    };
}

macro_rules! all_defs {
    (pinned { $($p:tt)* } private { $($q:tt)* }) => {
        defs!(true; $($p)*);
        defs!(false; $($q)*);
    };
}

/// Every map's [`MapDef`], as a constant named after the map.
pub mod def {
    use super::{MapDef, MapKind};
    for_each_map!(all_defs);
}

/// The `def` constants of a group of entries, as a slice.
macro_rules! slice {
    ($( $(#[$doc:meta])* $name:ident $field:ident :
        $kind:ident < $key:ty, $val:ty >, $cap:expr, $flags:expr, $ver:literal; )*) => {
        &[$(def::$name,)*]
    };
}

macro_rules! pinned {
    (pinned { $($p:tt)* } private { $($q:tt)* }) => { slice!($($p)*) };
}

macro_rules! private {
    (pinned { $($p:tt)* } private { $($q:tt)* }) => { slice!($($q)*) };
}

/// The maps the agent pins, in declaration order.
pub const PINNED: &[MapDef] = for_each_map!(pinned);
/// The maps private to the programs.
pub const PRIVATE: &[MapDef] = for_each_map!(private);

/// The declaration of the map called `name`.
pub fn find(name: &str) -> Option<&'static MapDef> {
    PINNED.iter().chain(PRIVATE).find(|d| d.name == name)
}

/// Maps the loaded object may hold besides the registry's: aya-log's own.
pub const FOREIGN: &[&str] = &["AYA_LOGS", "AYA_LOG_BUF"];

/// What the kernel is told about a map: its type, sizes, capacity and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    pub const fn shape(&self) -> Shape {
        Shape {
            map_type: self.kind as u32,
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: self.max_entries,
            flags: self.flags,
        }
    }
}

/// A difference between the registry and a compiled object's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch<'a> {
    /// The object holds a map the registry does not declare.
    Undeclared(&'a str),
    /// The registry declares a map the object lacks.
    Missing(&'static str),
    /// Both have it, with another kind, size, capacity or flags.
    Differs(&'static str),
}

/// Compares the registry with the maps an object holds: every map on both
/// sides, with the same shape.
pub fn check_object<'a>(found: &[(&'a str, Shape)]) -> Result<(), Mismatch<'a>> {
    for (name, _) in found {
        if find(name).is_none() && !FOREIGN.contains(name) && !name.starts_with('.') {
            return Err(Mismatch::Undeclared(name));
        }
    }
    for want in PINNED.iter().chain(PRIVATE) {
        match found.iter().find(|(n, _)| *n == want.name) {
            None => return Err(Mismatch::Missing(want.name)),
            Some((_, have)) if *have != want.shape() => return Err(Mismatch::Differs(want.name)),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn every_map() -> Vec<(&'static str, Shape)> {
        PINNED
            .iter()
            .chain(PRIVATE)
            .map(|d| (d.name, d.shape()))
            .collect()
    }

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        let all: &[MapDef] = &[PINNED, PRIVATE].concat();
        for (i, d) in all.iter().enumerate() {
            assert!(
                d.name.len() < 16,
                "{} is longer than BPF_OBJ_NAME_LEN",
                d.name
            );
            assert!(
                all[..i].iter().all(|o| o.name != d.name),
                "{} twice",
                d.name
            );
        }
    }

    #[test]
    fn an_object_with_a_map_on_one_side_only_is_refused() {
        let mut found = every_map();
        found.push(("AYA_LOGS", def::CONFIG.shape()));
        assert_eq!(check_object(&found), Ok(()));
        found.push(("EXTRA", def::CONFIG.shape()));
        assert_eq!(check_object(&found), Err(Mismatch::Undeclared("EXTRA")));
        found.pop();
        found.retain(|(n, _)| *n != "NEEDS");
        assert_eq!(check_object(&found), Err(Mismatch::Missing("NEEDS")));
    }

    #[test]
    fn a_changed_layout_is_refused() {
        let mut found = every_map();
        found[0].1.value_size += 4;
        assert_eq!(check_object(&found), Err(Mismatch::Differs("CONFIG")));
    }
}
