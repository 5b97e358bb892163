//! Dataplane events for `overlay-ctl monitor`: what the programs write into
//! a ring buffer while a monitor runs.
//!
//! Up to [`MONITORS`] monitors run at once, each in a slot of its own: its
//! entry in `MONITOR` (a deadline and a rate), its ring buffer `EVENTS_<slot>`
//! and its per-CPU token bucket in `LIMITER`. The programs write an event
//! into a slot only while the coarse monotonic clock is before the slot's
//! deadline, which the monitor pushes forward every second: a monitor that
//! dies, however, stops its events within [`LEASE_NS`]. With no monitor the
//! cost is one array lookup on the paths that emit (drops, new flows,
//! denied flows), never on an established flow's packets.

/// Monitors that may run at once (one ring buffer each).
pub const MONITORS: u32 = 4;
/// Bytes of each monitor's ring buffer: room for 5,000 events.
pub const RING_BYTES: u32 = 256 * 1024;
/// How far ahead of the clock a monitor sets its deadline; it renews it
/// every second, so only a dead monitor lets it pass.
pub const LEASE_NS: u64 = 3_000_000_000;
/// Events a monitor receives per second and CPU, by default; a CPU may
/// send one second's worth at once after a quiet spell.
pub const DEFAULT_RATE: u64 = 4_000;
/// Nanoseconds in a second.
pub const NS_PER_S: u64 = 1_000_000_000;

/// What an event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A packet dropped (`reason` says why).
    Drop = 1,
    /// A new flow to a ServIP chose a backend.
    NewFlow = 2,
    /// A new flow refused by the sender's `needs` (reason `drop_denied`).
    Denied = 3,
}

impl Kind {
    pub const fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Drop),
            2 => Some(Kind::NewFlow),
            3 => Some(Kind::Denied),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::NewFlow => "new_flow",
            Kind::Denied => "denied",
        }
    }
}

/// The program that saw the event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FromInstance = 1,
    Uplink = 2,
    UplinkXdp = 3,
}

impl Hook {
    pub const fn from_code(code: u8) -> Option<Hook> {
        match code {
            1 => Some(Hook::FromInstance),
            2 => Some(Hook::Uplink),
            3 => Some(Hook::UplinkXdp),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Hook::FromInstance => "from_instance",
            Hook::Uplink => "uplink",
            Hook::UplinkXdp => "uplink_xdp",
        }
    }
}

/// One event in a ring buffer. Addresses and ports in network order, as
/// in the maps; 0 where the program does not know a field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_MONOTONIC_COARSE`, ns.
    pub time_ns: u64,
    /// [`Kind`] code.
    pub kind: u8,
    /// [`Hook`] code.
    pub hook: u8,
    /// IP protocol.
    pub proto: u8,
    /// `Policy::code` of a new flow's ServIP.
    pub policy: u8,
    /// `Reason` index: the drop reason, `new_flow` for a new flow.
    pub reason: u32,
    /// The packet's 5-tuple as the program saw it (for a drop on the
    /// uplink: the outer header of a tunnel packet).
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// The sending instance's service.
    pub src_service: u32,
    /// The service the flow goes to.
    pub dst_service: u32,
    /// A new flow's backend: NamespaceIP and node id.
    pub backend: u32,
    pub node: u32,
    /// The packet's length.
    pub len: u32,
}

/// `MONITOR[0]`: every slot's switch and rate, in one value so that the
/// programs see whether any monitor runs with one lookup. A monitor
/// rewrites the whole value to change its slot; two doing so at once may
/// put another slot's previous deadline back, which is at most one renewal
/// old (still ahead) or, for a monitor that just closed its slot, lapses
/// within [`LEASE_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Monitors {
    pub slots: [Monitor; MONITORS as usize],
}

impl Monitors {
    /// Whether any slot was switched on and not closed since (a lapsed
    /// deadline still counts: the clock decides then).
    #[inline(always)]
    pub fn any(&self) -> bool {
        let mut any = 0;
        let mut i = 0;
        while i < MONITORS as usize {
            any |= self.slots[i].deadline_ns;
            i += 1;
        }
        any != 0
    }
}

/// One monitor's switch and rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Monitor {
    /// Events go to the slot while `CLOCK_MONOTONIC_COARSE` is before this (ns).
    pub deadline_ns: u64,
    /// Credit one event costs (`NS_PER_S / rate`; 0: no limit).
    pub cost_ns: u64,
    /// Most credit a CPU saves up (`burst * cost_ns`).
    pub burst_ns: u64,
}

impl Monitor {
    /// A slot open until `deadline_ns`, passing `rate` events per second
    /// and CPU (0: every event) with bursts of `burst`.
    pub const fn new(deadline_ns: u64, rate: u64, burst: u64) -> Monitor {
        let cost_ns = match NS_PER_S.checked_div(rate) {
            Some(ns) => ns,
            None => 0,
        };
        Monitor {
            deadline_ns,
            cost_ns,
            burst_ns: cost_ns * burst,
        }
    }
}

/// `LIMITER[slot]`, per CPU: the slot's token bucket and what it held back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limiter {
    /// Saved credit, ns (see [`Monitor::cost_ns`]).
    pub credit_ns: u64,
    /// When credit was last added.
    pub last_ns: u64,
    /// Events this CPU did not send to the slot: over the rate, or the ring full.
    pub suppressed: u64,
}

/// Takes the credit for one event from a bucket at `now_ns`; false when
/// there is not enough (the event is suppressed). The programs' rule, here
/// so that it is tested.
#[inline(always)]
pub fn take_credit(lim: &mut Limiter, m: &Monitor, now_ns: u64) -> bool {
    if m.cost_ns == 0 {
        return true;
    }
    let earned = now_ns.saturating_sub(lim.last_ns);
    lim.last_ns = now_ns;
    let credit = lim.credit_ns.saturating_add(earned);
    lim.credit_ns = if credit > m.burst_ns {
        m.burst_ns
    } else {
        credit
    };
    if lim.credit_ns < m.cost_ns {
        return false;
    }
    lim.credit_ns -= m.cost_ns;
    true
}

const _: () = {
    assert!(core::mem::size_of::<Event>() == 48);
    assert!(core::mem::size_of::<Monitor>() == 24);
    assert!(core::mem::size_of::<Monitors>() == 24 * MONITORS as usize);
    assert!(core::mem::size_of::<Limiter>() == 24);
    // The kernel wants a power-of-two ring of whole pages.
    assert!(RING_BYTES.is_power_of_two() && RING_BYTES.is_multiple_of(4096));
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, every field an integer, no implicit padding
    // (checked by the size asserts above).
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Monitor {}
    // SAFETY: as above (an array of `Monitor`).
    unsafe impl aya::Pod for Monitors {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Limiter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_passes_the_burst_then_the_rate() {
        let m = Monitor::new(u64::MAX, 1_000, 10);
        let mut lim = Limiter {
            last_ns: 0,
            ..Default::default()
        };
        // After a quiet second, the full burst and no more.
        let now = NS_PER_S;
        let passed = (0..100).filter(|_| take_credit(&mut lim, &m, now)).count();
        assert_eq!(passed, 10);
        // Then one event per millisecond.
        let later = (1..=50).filter(|i| take_credit(&mut lim, &m, now + i * 1_000_000));
        assert_eq!(later.count(), 50);
        assert!(!take_credit(&mut lim, &m, now + 50 * 1_000_000));
    }

    #[test]
    fn any_slot_counts() {
        let mut m = Monitors::default();
        assert!(!m.any());
        m.slots[3] = Monitor::new(1, 0, 0);
        assert!(m.any());
    }

    #[test]
    fn no_rate_passes_everything() {
        let m = Monitor::new(u64::MAX, 0, 0);
        let mut lim = Limiter::default();
        assert!((0..1000).all(|_| take_credit(&mut lim, &m, 5)));
    }
}
