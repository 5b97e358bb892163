//! Map names, keys and values.
//!
//! Lookup order of the from-instance program for a new flow:
//! `SERVIPS[dst]` → `SVC_PORTS[service, port, proto]` → `SLOTS[servip, hash % count]`
//! → `BACKENDS[id]` → (`ENDPOINTS[nsip]` if the backend is local, else `NODES[node]`).
//! Established flows hit `CONNTRACK` first and skip the rest.
//!
//! The maps themselves (names, kinds, capacities, layout versions) are
//! declared once, in [`crate::registry`].

/// `RESTRICTED` key meaning "services without `needs` may open no flows"
/// (the cluster's default-deny setting); service ids start at 1.
pub const DEFAULT_DENY: u32 = 0;

/// `PEERS` value of an address that several nodes share (nodes behind one
/// NAT): the sender is then the node whose subnet holds the inner source,
/// if that node has this address.
pub const SHARED_PEER: u32 = u32::MAX;

/// The node-wide settings, index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// This node's id (as used in `Backend::node`); never 0 once configured.
    pub node_id: u32,
    /// Outer source address of encapsulated packets (network order).
    pub node_ip: u32,
    pub uplink_ifindex: u32,
    /// East-West port, network order.
    pub ewp: u16,
    /// MTU of the instance links (uplink MTU minus the tunnel overhead).
    pub mtu: u16,
    /// North-South port (registered gateways tunnel external traffic to it), network order.
    pub nsp: u16,
    pub _pad: u16,
}

/// `SERVIPS[servip]`: what a ServIP (or a fixed instance IP) stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServIp {
    pub service: u32,
    /// Number of valid slots in `SLOTS` for this ServIP; 0 means no backend.
    pub count: u16,
    /// `Policy::code` of the ServIP's policy.
    pub policy: u8,
    /// Which of the two slot tables is live (see [`SlotKey::new`]): the agent
    /// writes a new table into the other one and flips this in one update.
    pub table: u8,
}

/// `SVC_PORTS` key: a port the service forwards. ICMP echo uses port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub service: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `SLOTS` key: slot `slot` of a ServIP's table; the value is a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub servip: u32,
    /// Table (0 or 1) in the upper 16 bits, index in the lower 16.
    pub slot: u32,
}

impl SlotKey {
    /// Slot `index` of table `table` (0 or 1) of `servip`'s table (`servip` in wire order).
    #[inline(always)]
    pub const fn new(servip: u32, table: u8, index: u32) -> SlotKey {
        SlotKey {
            servip,
            slot: ((table as u32) << 16) | (index & 0xffff),
        }
    }

    /// The table this slot belongs to (see [`SlotKey::new`]).
    pub const fn table(&self) -> u8 {
        (self.slot >> 16) as u8
    }

    /// The slot's index in its table.
    pub const fn index(&self) -> u32 {
        self.slot & 0xffff
    }
}

/// `BACKENDS[id]`: an instance a slot can point at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// NamespaceIP, network order.
    pub nsip: u32,
    /// Node id; equal to `Config::node_id` for a local instance.
    pub node: u32,
}

/// `ENDPOINTS[nsip]`: an instance on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth: packets from the instance enter here, and
    /// `bpf_redirect_peer` to it lands inside the instance.
    pub ifindex: u32,
    pub service: u32,
    pub instance: u32,
    /// MAC of the instance's interface (destination of delivered frames).
    pub mac: [u8; 6],
    /// MAC of the host-side veth (source of delivered frames).
    pub host_mac: [u8; 6],
}

/// `NODES[id]`: where to send tunnel packets for a node. Also the value of
/// `GATEWAYS[ip]`: a registered north-south gateway (`ip` is the key, `port`
/// where it receives the tunnelled replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Node IP (or its NAT-mapped public IP), network order.
    pub ip: u32,
    /// Its EWP (or NAT-mapped port), network order.
    pub port: u16,
    /// The overlay MTU toward the node: the smaller of both nodes' uplink
    /// MTUs minus the tunnel overhead (`crate::pmtu`); 0: this node's own
    /// (`Config::mtu`). Unused (0) in `GATEWAYS`.
    pub mtu: u16,
}

/// `PATH_MTU[address]`: what an underlay router reported about the path to
/// a node's address (ICMP fragmentation needed about a tunnel packet),
/// written by the dataplane, in force for `pmtu::LIFETIME_TICKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMtu {
    /// The reported next-hop MTU (outer packets), host order.
    pub mtu: u16,
    pub _pad: u16,
    /// When it was reported (`ct::tick`).
    pub tick: u32,
}

/// `CONNTRACK` key: a 5-tuple as seen on the wire in one direction.
/// ICMP echo uses the echo identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Direction of a conntrack entry.
pub mod ct {
    /// Client → ServIP: `nat_addr` is the chosen backend's NamespaceIP (the
    /// new destination), `via` the backend's node id; `nat_port`, when not
    /// 0, the client port written instead of the client's own (the reply
    /// tuple with its own was taken by another flow).
    pub const FORWARD: u8 = 1;
    /// Backend → client: `nat_addr` is the ServIP to restore as source;
    /// `nat_port`, when not 0, the client's own port to restore.
    pub const REVERSE: u8 = 2;
    /// External client → exposed port of this node: `nat_addr` is the
    /// backend, `nat_port` the source port used toward it (from the node's
    /// SNAT address), `via` the backend's node id.
    pub const NS_FORWARD: u8 = 3;
    /// Backend → node's SNAT address: `nat_addr`/`nat_port` are the external
    /// client's (the new destination); `via` is the gateway the client's
    /// packets were tunnelled from (its address, a `GATEWAYS` key), 0 when
    /// the client reached the node directly.
    pub const NS_REVERSE: u8 = 4;

    /// `CtEntry::state`: nothing but packets seen.
    pub const OPEN: u8 = 0;
    /// `CtEntry::state` bit: a TCP FIN or RST went through in the entry's
    /// direction; the flow lives only the closing lifetime longer.
    pub const CLOSING: u8 = 1;

    /// The forward key of a flow from its reverse entry (`rev`, the key a
    /// reply arrives with) and the entry: an east-west reply comes from the
    /// backend's port, which is the ServIP's; a north-south one goes to the
    /// SNAT port, and the client's own address and port are in the entry.
    #[inline(always)]
    pub fn forward_key(rev: &super::CtKey, e: &super::CtEntry, node_ip: u32) -> super::CtKey {
        let (saddr, daddr, sport) = if e.dir == NS_REVERSE {
            (e.nat_addr, node_ip, e.nat_port)
        } else if e.nat_port != 0 {
            // East-west with a translated client port: the client's own.
            (rev.daddr, e.nat_addr, e.nat_port)
        } else {
            (rev.daddr, e.nat_addr, rev.dport)
        };
        super::CtKey {
            saddr,
            daddr,
            sport,
            dport: rev.sport,
            proto: rev.proto,
            _pad: [0; 3],
        }
    }

    /// The reverse key of a flow from its forward key and entry.
    #[inline(always)]
    pub fn reverse_key(fwd: &super::CtKey, e: &super::CtEntry, snat: u32) -> super::CtKey {
        let (daddr, dport) = if e.dir == NS_FORWARD {
            (snat, e.nat_port)
        } else if e.nat_port != 0 {
            (fwd.saddr, e.nat_port)
        } else {
            (fwd.saddr, fwd.sport)
        };
        super::CtKey {
            saddr: e.nat_addr,
            daddr,
            sport: fwd.dport,
            dport,
            proto: fwd.proto,
            _pad: [0; 3],
        }
    }

    /// A conntrack timestamp: the monotonic clock (`bpf_ktime_get_coarse_ns`,
    /// `CLOCK_MONOTONIC_COARSE`) in units of 2^30 ns (about 1.07 s), so that
    /// refreshing `seen` costs one write per flow per tick, not per packet.
    #[inline(always)]
    pub const fn tick(monotonic_ns: u64) -> u32 {
        (monotonic_ns / TICK_NS) as u32
    }

    /// Length of a [`tick`] in nanoseconds.
    pub const TICK_NS: u64 = 1 << 30;
}

/// `CONNTRACK` and `CT_NEW` value. Written when a flow starts; afterwards
/// only `seen` changes (at most once per tick) and `state` (once, on FIN/RST).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The address the translation writes (per direction: see [`ct`]).
    pub nat_addr: u32,
    /// Where the flow goes through: the backend's node id (forward
    /// directions) or the gateway's address (`NS_REVERSE`).
    pub via: u32,
    pub service: u32,
    /// One of the [`ct`] directions.
    pub dir: u8,
    /// [`ct::OPEN`], or the bit [`ct::CLOSING`].
    pub state: u8,
    /// North-south entries: the port the translation writes, network order.
    pub nat_port: u16,
    /// Last tick ([`ct::tick`]) a packet used this entry: the agent counts
    /// recently used forward entries as each backend's active flows, and
    /// ends a flow whose two entries were both idle longer than its lifetime.
    pub seen: u32,
}

/// `EXPOSED` key: a port of the node's own address that leads to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExposeKey {
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `EXPOSED` value: the ServIP whose slot table balances the port (the
/// service's closest ServIP), and the source address backends see: an address
/// of this node's subnet that routes back here through the overlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposed {
    pub servip: u32,
    pub snat: u32,
}

/// `NEEDS` key: `src` may open new flows to `dst` (service ids). Consulted
/// only for a sender listed in `RESTRICTED` (its descriptor has `needs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeedKey {
    pub src: u32,
    pub dst: u32,
}

/// `INFRA` key: an address of the infrastructure instances must not reach.
/// With a port and protocol it is one service of that address (a node's
/// tunnel port, the store's client port); with port 0 and protocol 0 it is
/// the whole address (one of this node's own), and the value's [`infra`]
/// flags name what instances may still send to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfraKey {
    pub addr: u32,
    /// Network order; 0 with `proto` 0: the whole address.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The flags of an `INFRA` value for a whole address: what instances may
/// still send to it (anything else is refused).
pub mod infra {
    /// DNS questions (UDP and TCP port 53): the name service's address.
    pub const ALLOW_DNS: u32 = 1;
    /// ICMP echo requests: the instances' gateway answers pings.
    pub const ALLOW_ECHO: u32 = 2;
    /// For the node's instances only: dropped when it arrives on the uplink
    /// (the instances' gateway, where the name service listens).
    pub const INSTANCES_ONLY: u32 = 4;
}

/// `LAYOUT` key: a map's name, NUL-padded (as the kernel limits names to 15 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    pub name: [u8; 16],
}

impl Layout {
    /// The key of the map called `name` (cut at 15 bytes).
    pub fn of(name: &str) -> Layout {
        let mut key = Layout::default();
        let n = name.len().min(15);
        key.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        key
    }

    /// The map name this key stands for.
    pub fn as_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// A node's next hop as the FIB last gave it (`HOPS`, per CPU: no torn MACs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedHop {
    pub ifindex: u32,
    /// Conntrack tick of the lookup: entries older than a tick are redone.
    pub tick: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// `FLOW_CACHE` key: a flow's 5-tuple as it arrived, and which way it came.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`flow_cache::FROM_INSTANCE`] or [`flow_cache::FROM_PEER`].
    pub way: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of the 5-tuple `t` coming `way`.
    #[inline(always)]
    pub const fn new(t: CtKey, way: u8) -> FlowKey {
        FlowKey {
            saddr: t.saddr,
            daddr: t.daddr,
            sport: t.sport,
            dport: t.dport,
            proto: t.proto,
            way,
            _pad: [0; 2],
        }
    }

    /// Its 5-tuple, as conntrack keys it.
    #[inline(always)]
    pub const fn tuple(&self) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// `FLOW_CACHE` value: what the full path decided for a packet of an
/// established flow, so that the flow's next packets in the same tick
/// skip its lookups. Written whole (never changed in place), so a reader
/// never sees half of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow {
    /// `EPOCH` when it was written: any change of the maps ends it.
    pub epoch: u32,
    /// Conntrack tick when it was written: it serves in that tick only, so
    /// that the full path (which refreshes the conntrack entry) runs at
    /// least once per tick.
    pub tick: u32,
    /// Where the packets must come from: the sender's veth (from an
    /// instance), or the sending node's address (from the uplink; 0: only
    /// for packets the uplink's XDP program already checked).
    pub from: u32,
    /// The address written in: the backend (destination) going out, the
    /// ServIP (source) coming back.
    pub nat_addr: u32,
    /// The port written in (network order; 0: none): the client's
    /// translated source port going out, its own port coming back.
    pub nat_port: u16,
    /// The node's tunnel port (network order) when tunnelled.
    pub node_port: u16,
    /// The backend's node id when tunnelled (for the path MTU); 0: delivered
    /// to a local instance.
    pub node: u32,
    /// The node's tunnel address (network order) when tunnelled.
    pub node_ip: u32,
    /// The overlay MTU toward the node when the decision was made: a
    /// larger packet takes the full path (which answers it). The programs
    /// raise `EPOCH` when they learn a lower path MTU.
    pub mtu: u16,
    pub _pad: u16,
    /// Out of this interface (the uplink's next hop, or the instance's
    /// veth) with these MACs.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// `EPOCH[0]`: what the flow cache's decisions depend on beyond the maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    /// Raised by the agent with every change to a map a cached decision
    /// read, and by the programs when they learn a lower path MTU; a
    /// decision keeps its low 32 bits.
    pub value: u64,
    /// The ServIP pool (network order, and its mask): every ServIP and
    /// fixed IP is in it, so a packet to any other address skips the cache.
    pub servips: u32,
    pub servips_mask: u32,
}

/// The flow cache (`FLOW_CACHE`, `EPOCH`).
pub mod flow_cache {
    /// An instance's packet to a ServIP (key: as the instance sent it).
    pub const FROM_INSTANCE: u8 = 1;
    /// A node's tunnel packet with a reply to a ServIP flow (key: the inner
    /// packet as it arrived).
    pub const FROM_PEER: u8 = 2;
}

/// Per-CPU scratch space for building packets off the stack (`SCRATCH`).
pub type Scratch = [u64; 12];

/// One `STATS` slot (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = {
    assert!(core::mem::size_of::<Config>() == 20);
    assert!(core::mem::size_of::<ServIp>() == 8);
    assert!(core::mem::size_of::<PortKey>() == 8);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<Endpoint>() == 24);
    assert!(core::mem::size_of::<Node>() == 8);
    assert!(core::mem::size_of::<PathMtu>() == 8);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 20);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<NeedKey>() == 8);
    assert!(core::mem::size_of::<ExposeKey>() == 4);
    assert!(core::mem::size_of::<Exposed>() == 8);
    assert!(core::mem::size_of::<Layout>() == 16);
    assert!(core::mem::size_of::<InfraKey>() == 8);
    assert!(core::mem::size_of::<CachedHop>() == 20);
    assert!(core::mem::size_of::<FlowKey>() == 16);
    assert!(core::mem::size_of::<Epoch>() == 16);
    assert!(core::mem::size_of::<CachedFlow>() == 48);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` plain data with explicit padding.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ServIp {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for Node {}
    unsafe impl aya::Pod for PathMtu {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Epoch {}
    unsafe impl aya::Pod for CachedFlow {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for InfraKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for NeedKey {}
    unsafe impl aya::Pod for ExposeKey {}
    unsafe impl aya::Pod for Exposed {}
    unsafe impl aya::Pod for Layout {}
}

/// Conversions between `core::net` types and the wire-order integers in maps.
pub mod ip {
    use core::net::Ipv4Addr;

    pub fn to_wire(ip: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(ip.octets())
    }

    pub fn from_wire(raw: u32) -> Ipv4Addr {
        Ipv4Addr::from(raw.to_ne_bytes())
    }

    pub fn port_to_wire(port: u16) -> u16 {
        port.to_be()
    }

    pub fn port_from_wire(raw: u16) -> u16 {
        u16::from_be(raw)
    }
}
