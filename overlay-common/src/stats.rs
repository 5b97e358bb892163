//! Counter slots of the per-CPU `STATS` array: one per verdict and drop reason.
//!
//! Every packet a program judges is counted once under its verdict (the
//! value its hook returns with), with its length. Three slots count events
//! besides that verdict, with 0 bytes: `new_flow`, `north_south_in` and
//! `gateway_in`; leave them out and the packets of the other slots add up to
//! the packets judged. Not judged, and not counted: uplink traffic for
//! neither a tunnel port nor an exposed port (the node's own; but traffic for
//! an overlay address is dropped as `drop_outsider`), and what the
//! XDP program passes (the uplink's TC program judges it next; XDP counts
//! only what it drops).

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// Why a program did what it did with a packet.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$doc])* $name,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Stable name used by `overlay-ctl maps stats`.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// Not for the overlay: handed to the kernel unchanged.
    Pass = "pass",
    /// Delivered into a local instance.
    DeliverLocal = "deliver_local",
    /// Encapsulated toward another node.
    Encap = "encap",
    /// Decapsulated from a registered node and delivered.
    Decap = "decap",
    /// North-south: a packet to an exposed port translated toward its backend
    /// (counted besides its delivery verdict).
    NorthSouthIn = "north_south_in",
    /// North-south: a backend's reply translated and sent to the external client.
    NorthSouthOut = "north_south_out",
    /// North-south through a gateway: a packet tunnelled by a registered
    /// gateway to the node's NSP, decapsulated (then counted as `north_south_in`).
    GatewayIn = "gateway_in",
    /// North-south through a gateway: a backend's reply tunnelled back to the
    /// gateway its flow came from.
    GatewayOut = "gateway_out",
    /// An RTT probe or echo from a registered node, passed up to the agent.
    Probe = "probe",
    /// A new flow to a ServIP chose a backend (counted besides the packet's own verdict).
    NewFlow = "new_flow",
    /// Truncated or inconsistent headers.
    DropMalformed = "drop_malformed",
    /// IPv4 with options on the overlay path (unsupported, see docs).
    DropIpOptions = "drop_ip_options",
    /// IPv4 fragment on the overlay path (unsupported, see docs).
    DropFragment = "drop_fragment",
    /// Source address is not the instance's NamespaceIP.
    DropSpoofed = "drop_spoofed",
    /// Tunnel packet from an address that is not a registered node.
    DropUnknownPeer = "drop_unknown_peer",
    /// Packet to the NSP from an address that is not a registered gateway
    /// (and a reply whose gateway was removed since).
    DropUnknownGateway = "drop_unknown_gateway",
    /// ServIP without backends (answered with ICMP host unreachable).
    DropNoBackend = "drop_no_backend",
    /// Port or protocol the service does not forward (ICMP port unreachable);
    /// also what a gateway tunnels to a port the node does not expose.
    DropPort = "drop_port",
    /// Larger than the overlay MTU with DF set (ICMP fragmentation needed).
    DropTooBig = "drop_too_big",
    /// New flow to a service the sender's `needs` does not name (ICMP
    /// administratively prohibited); also counted per sending service.
    DropDenied = "drop_denied",
    /// Decapsulated packet for a NamespaceIP that is not on this node.
    DropNoEndpoint = "drop_no_endpoint",
    /// Slot or backend missing while the agent rewrites a table, or no route.
    DropNoRoute = "drop_no_route",
    /// A kernel helper refused (room adjustment, checksum, redirect).
    DropHelper = "drop_helper",
    /// Tunnel packet whose inner source its sender may not use: on the EWP
    /// an address outside the sending node's subnet, on the NSP an address
    /// of the overlay.
    DropForgedInner = "drop_forged_inner",
    /// From an instance to the infrastructure: a node's tunnel port, the
    /// store, or this node's own addresses (ICMP administratively prohibited).
    DropInfra = "drop_infra",
    /// From outside the overlay (the uplink, not decapsulated) to an address
    /// of the overlay, or to the instances' gateway: only exposed ports and
    /// gateways lead in.
    DropOutsider = "drop_outsider",
    /// From an instance to an overlay address nobody holds (an unknown
    /// ServIP, a subnet no node has): ICMP host unreachable.
    DropUnallocated = "drop_unallocated",
    /// A flow's first reply found the table of confirmed flows full: the
    /// flow is not established (established flows are never evicted).
    DropCtFull = "drop_ct_full",
}

/// Number of slots in `STATS`.
pub const REASONS: u32 = Reason::ALL.len() as u32;

impl Reason {
    pub fn from_index(i: u32) -> Option<Reason> {
        Reason::ALL.get(i as usize).copied()
    }

    pub fn is_drop(self) -> bool {
        self.label().starts_with("drop_")
    }
}
