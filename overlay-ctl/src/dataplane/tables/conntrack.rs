//! The flows in conntrack: `CT_NEW` (no reply yet, an LRU) and `CONNTRACK`
//! (confirmed, a hash map that never evicts). The agent reads them to count
//! active flows, ends the flows of removed backends, and ends flows past
//! their lifetime (the GC; the programs only refresh `seen` and `state`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use overlay_common::maps::{CtEntry, CtKey, ct, ip};
use overlay_common::registry::def;
use overlay_common::{IPPROTO_ICMP, IPPROTO_TCP};
use serde::{Deserialize, Serialize};

use super::{Result, Tables, ignore_missing, map_err, read_all, tick_now};

/// One conntrack entry, and whether its flow is confirmed (`CONNTRACK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub key: CtKey,
    pub entry: CtEntry,
    pub confirmed: bool,
}

impl Tracked {
    /// Whether the entry is a flow's forward direction (the one a client sends in).
    pub fn forward(&self) -> bool {
        self.entry.dir == ct::FORWARD || self.entry.dir == ct::NS_FORWARD
    }
}

/// How long a flow lives without a packet, in seconds, by protocol and state
/// (`agent.toml`: `conntrack_*_s`). Defaults as Cilium's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifetimes {
    /// TCP without a reply yet (a SYN unanswered).
    pub tcp_opening: u32,
    /// TCP confirmed by a reply.
    pub tcp_established: u32,
    /// TCP after a FIN or RST in either direction.
    pub tcp_closing: u32,
    pub udp: u32,
    /// ICMP echo (and any other protocol).
    pub icmp: u32,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            tcp_opening: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            udp: 60,
            icmp: 30,
        }
    }
}

impl Lifetimes {
    /// The lifetime in seconds of a flow of `proto`.
    pub fn of(&self, proto: u8, confirmed: bool, closing: bool) -> u32 {
        match proto {
            IPPROTO_TCP if closing => self.tcp_closing,
            IPPROTO_TCP if confirmed => self.tcp_established,
            IPPROTO_TCP => self.tcp_opening,
            IPPROTO_ICMP => self.icmp,
            _ => self.udp,
        }
    }
}

/// Seconds as conntrack ticks (2^30 ns), rounded up.
pub fn ticks(secs: u32) -> u32 {
    ((u64::from(secs) * 1_000_000_000).div_ceil(ct::TICK_NS)) as u32
}

impl Tables {
    /// Every conntrack entry, new and confirmed.
    pub fn tracked(&self) -> Vec<Tracked> {
        let new = read_all(&self.ct_new)
            .into_iter()
            .map(|(key, entry)| Tracked {
                key,
                entry,
                confirmed: false,
            });
        read_all(&self.conntrack)
            .into_iter()
            .map(|(key, entry)| Tracked {
                key,
                entry,
                confirmed: true,
            })
            .chain(new)
            .collect()
    }

    /// Every conntrack entry, new and confirmed, without the distinction.
    pub fn conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        self.tracked()
            .into_iter()
            .map(|t| (t.key, t.entry))
            .collect()
    }

    /// Active flows this node has open toward each backend (by NamespaceIP):
    /// forward entries that carried a packet within the last `window` ticks.
    pub fn active_flows(&self, window: u32) -> BTreeMap<Ipv4Addr, u32> {
        let now = tick_now();
        let mut out = BTreeMap::new();
        for t in self.tracked().iter().filter(|t| t.forward()) {
            if now.wrapping_sub(t.entry.seen) <= window {
                *out.entry(ip::from_wire(t.entry.nat_addr)).or_insert(0) += 1;
            }
        }
        out
    }

    /// Ends the flows of backends that are gone (their instance left): both
    /// directions' entries, so that the client's next packet is a new flow,
    /// balanced to a live backend (a TCP client then gets a reset from it, a
    /// UDP flow simply moves; a fixed IP without its instance fails fast).
    /// Gives the number of entries removed.
    pub fn end_flows_of(&mut self, backends: &BTreeSet<Ipv4Addr>) -> Result<usize> {
        if backends.is_empty() {
            return Ok(0);
        }
        let gone: BTreeSet<u32> = backends.iter().map(|b| ip::to_wire(*b)).collect();
        let dead: Vec<Tracked> = self
            .tracked()
            .into_iter()
            .filter(|t| match t.entry.dir {
                ct::FORWARD | ct::NS_FORWARD => gone.contains(&t.entry.nat_addr),
                _ => gone.contains(&t.key.saddr),
            })
            .collect();
        self.forget_all(&dead)
    }

    /// Ends the flows idle longer than their lifetime (`snat`: this node's
    /// north-south source address, `node_ip`: its own): a flow's two entries
    /// go together, judged by the later `seen` of the two and closing if
    /// either saw a FIN or RST. Gives the number of entries removed.
    pub fn expire(&mut self, lifetimes: &Lifetimes, node_ip: u32, snat: u32) -> Result<usize> {
        let now = tick_now();
        let all = self.tracked();
        let index: HashMap<CtKey, &Tracked> = all.iter().map(|t| (t.key, t)).collect();
        let mut gone = Vec::new();
        for t in &all {
            let (fwd, rev) = if t.forward() {
                (
                    Some(t),
                    index.get(&ct::reverse_key(&t.key, &t.entry, snat)).copied(),
                )
            } else {
                let fwd = index
                    .get(&ct::forward_key(&t.key, &t.entry, node_ip))
                    .copied();
                if fwd.is_some() {
                    continue; // judged with its forward entry
                }
                (None, Some(t))
            };
            let pair: Vec<&Tracked> = [fwd, rev].into_iter().flatten().collect();
            // Idle since the later packet of the two directions.
            let idle = pair.iter().map(|t| now.wrapping_sub(t.entry.seen)).min();
            let closing = pair.iter().any(|t| t.entry.state & ct::CLOSING != 0);
            let life = ticks(lifetimes.of(t.key.proto, t.confirmed, closing));
            if idle.is_some_and(|idle| idle > life) {
                gone.extend(pair.into_iter().copied());
            }
        }
        self.forget_all(&gone)
    }

    /// Puts a flow's entry into the confirmed table (an upgrade carrying
    /// the flows of an older layout).
    pub(crate) fn carry_confirmed(&mut self, k: CtKey, v: CtEntry) -> Result<()> {
        self.conntrack
            .insert(k, v, 0)
            .map_err(map_err(&def::CONNTRACK))
    }

    /// Deletes the entries, then ends the decisions the programs cached
    /// for them; gives how many there were.
    fn forget_all(&mut self, entries: &[Tracked]) -> Result<usize> {
        for t in entries {
            self.forget(t)?;
        }
        if !entries.is_empty() {
            self.bump_epoch()?;
        }
        Ok(entries.len())
    }

    /// Deletes one entry from the map it is in.
    fn forget(&mut self, t: &Tracked) -> Result<()> {
        if t.confirmed {
            ignore_missing(self.conntrack.remove(&t.key)).map_err(map_err(&def::CONNTRACK))
        } else {
            ignore_missing(self.ct_new.remove(&t.key)).map_err(map_err(&def::CT_NEW))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_follow_protocol_and_state() {
        let l = Lifetimes::default();
        assert_eq!(l.of(IPPROTO_TCP, false, false), 60);
        assert_eq!(l.of(IPPROTO_TCP, true, false), 21_600);
        assert_eq!(l.of(IPPROTO_TCP, true, true), 10);
        assert_eq!(l.of(17, true, false), 60);
        assert_eq!(l.of(IPPROTO_ICMP, false, false), 30);
        assert_eq!(ticks(0), 0);
        assert_eq!(ticks(1), 1);
        assert_eq!(ticks(10), 10);
    }
}
