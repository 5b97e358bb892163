//! The peer table: where to send probes, which probes await their echo, and
//! the smoothed RTT per peer. Time is passed in, so that the rules are
//! tested without sockets or sleeping.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::{Peer, Rtt};

/// A probe without an echo after this long is given up on; its echo, should
/// it still come, is not used.
pub(super) const OUTSTANDING_TTL: Duration = Duration::from_secs(5);

/// Every peer, by node id (the id an echo names its sender by).
#[derive(Debug, Default)]
pub(super) struct Peers {
    by_id: HashMap<u32, PeerState>,
}

#[derive(Debug)]
struct PeerState {
    name: String,
    addr: SocketAddrV4,
    next_seq: u32,
    /// Sequence number -> send time, of the probes awaiting their echo.
    outstanding: BTreeMap<u32, Instant>,
    rtt: Option<Rtt>,
    /// Probes sent to the peer and echoes taken from it (the loss is
    /// the difference), since it became a peer.
    counts: ProbeCounts,
}

/// Probes sent to one peer, and their echoes that came back in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounts {
    pub sent: u64,
    pub answered: u64,
}

/// Why an echo was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unused {
    #[error("echo from a node that is not a peer")]
    UnknownPeer,
    #[error("echo from another address than the peer's")]
    WrongSource,
    #[error("echo of a probe not awaiting one (replayed, duplicated or too late)")]
    NotOutstanding,
}

impl Peers {
    /// Replaces the peer set. A peer that keeps its id and address keeps its
    /// measurements and sequence numbers; any other change starts afresh,
    /// as the distance may have changed with the address.
    pub(super) fn set(&mut self, peers: Vec<Peer>) {
        let mut old = std::mem::take(&mut self.by_id);
        for peer in peers {
            let state = match old.remove(&peer.node_id) {
                Some(state) if state.addr == peer.addr => PeerState {
                    name: peer.name,
                    ..state
                },
                _ => PeerState::new(peer.name, peer.addr),
            };
            self.by_id.insert(peer.node_id, state);
        }
    }

    /// Takes the next sequence number of every peer for a probe sent at
    /// `now`, and forgets probes that have waited too long.
    pub(super) fn next_round(&mut self, now: Instant) -> Vec<(SocketAddrV4, u32)> {
        self.by_id
            .values_mut()
            .map(|peer| {
                peer.outstanding
                    .retain(|_, sent| now.saturating_duration_since(*sent) < OUTSTANDING_TTL);
                let seq = peer.next_seq;
                peer.next_seq = seq.wrapping_add(1);
                peer.counts.sent += 1;
                peer.outstanding.insert(seq, now);
                (peer.addr, seq)
            })
            .collect()
    }

    /// Takes in an authenticated echo received at `now`. Each probe is
    /// answered at most once, so a replayed echo is not counted again.
    pub(super) fn echo(
        &mut self,
        sender: u32,
        from: SocketAddrV4,
        seq: u32,
        now: Instant,
    ) -> Result<Rtt, Unused> {
        let peer = self.by_id.get_mut(&sender).ok_or(Unused::UnknownPeer)?;
        if peer.addr != from {
            return Err(Unused::WrongSource);
        }
        let sent = peer
            .outstanding
            .remove(&seq)
            .ok_or(Unused::NotOutstanding)?;
        let elapsed = now.saturating_duration_since(sent);
        if elapsed >= OUTSTANDING_TTL {
            return Err(Unused::NotOutstanding);
        }
        let rtt = add_sample(peer.rtt, micros(elapsed), now);
        peer.rtt = Some(rtt);
        peer.counts.answered += 1;
        Ok(rtt)
    }

    /// Every peer's probe counts, by name.
    pub(super) fn counts(&self) -> BTreeMap<String, ProbeCounts> {
        self.by_id
            .values()
            .map(|p| (p.name.clone(), p.counts))
            .collect()
    }

    /// The RTTs of peers that answered within `max_age` of `now`, by name.
    pub(super) fn fresh(&self, now: Instant, max_age: Duration) -> BTreeMap<String, Rtt> {
        self.by_id
            .values()
            .filter_map(|peer| Some((peer.name.clone(), peer.rtt?)))
            .filter(|(_, rtt)| now.saturating_duration_since(rtt.last_sample) <= max_age)
            .collect()
    }
}

impl PeerState {
    fn new(name: String, addr: SocketAddrV4) -> PeerState {
        PeerState {
            name,
            addr,
            // A random start: echoes recorded before a restart of this
            // prober cannot be replayed against its new sequence numbers.
            next_seq: random_seq(),
            outstanding: BTreeMap::new(),
            rtt: None,
            counts: ProbeCounts::default(),
        }
    }
}

fn random_seq() -> u32 {
    let mut b = [0u8; 4];
    // A failing RNG leaves 0: replay protection within one run still holds.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_ne_bytes(b)
}

/// The EWMA of RFC 6298 with gain 1/4: quick to follow a changed path, yet
/// one outlier moves it by only a quarter of its distance.
fn add_sample(rtt: Option<Rtt>, sample_us: u32, now: Instant) -> Rtt {
    let Some(rtt) = rtt else {
        return Rtt {
            srtt_us: sample_us,
            samples: 1,
            last_sample: now,
        };
    };
    let srtt = i64::from(rtt.srtt_us);
    let smoothed = srtt + (i64::from(sample_us) - srtt) / 4;
    Rtt {
        srtt_us: u32::try_from(smoothed).expect("between two u32 values"),
        samples: rtt.samples.saturating_add(1),
        last_sample: now,
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn addr(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, last), 50103)
    }

    fn peer(name: &str, node_id: u32, last: u8) -> Peer {
        Peer {
            name: name.into(),
            node_id,
            addr: addr(last),
        }
    }

    fn one_peer() -> (Peers, Instant) {
        let mut peers = Peers::default();
        peers.set(vec![peer("b", 2, 12)]);
        (peers, Instant::now())
    }

    /// The sequence number of a one-peer round.
    fn seq(round: Vec<(SocketAddrV4, u32)>) -> u32 {
        round[0].1
    }

    #[test]
    fn first_sample_sets_then_ewma_smooths() {
        let (mut peers, t0) = one_peer();
        let s0 = seq(peers.next_round(t0));
        let rtt = peers.echo(2, addr(12), s0, t0 + 8 * MS).unwrap();
        assert_eq!((rtt.srtt_us, rtt.samples), (8000, 1));
        let t1 = t0 + 100 * MS;
        assert_eq!(peers.next_round(t1), [(addr(12), s0.wrapping_add(1))]);
        let rtt = peers
            .echo(2, addr(12), s0.wrapping_add(1), t1 + 4 * MS)
            .unwrap();
        assert_eq!((rtt.srtt_us, rtt.samples), (7000, 2));
        assert_eq!(rtt.last_sample, t1 + 4 * MS);
    }

    #[test]
    fn each_probe_is_answered_once_and_only_from_the_peer() {
        let (mut peers, t0) = one_peer();
        let s0 = seq(peers.next_round(t0));
        assert_eq!(peers.echo(3, addr(12), s0, t0), Err(Unused::UnknownPeer));
        assert_eq!(peers.echo(2, addr(13), s0, t0), Err(Unused::WrongSource));
        assert_eq!(
            peers.echo(2, addr(12), s0 ^ 7, t0),
            Err(Unused::NotOutstanding)
        );
        peers.echo(2, addr(12), s0, t0 + MS).unwrap();
        assert_eq!(
            peers.echo(2, addr(12), s0, t0 + MS),
            Err(Unused::NotOutstanding)
        );
    }

    /// Probe loss shows as sent minus answered; a rejected echo counts as none.
    #[test]
    fn probes_sent_and_answered_are_counted() {
        let (mut peers, t0) = one_peer();
        let s0 = seq(peers.next_round(t0));
        peers.next_round(t0 + 100 * MS);
        peers.echo(2, addr(12), s0, t0 + MS).unwrap();
        let _ = peers.echo(2, addr(13), s0.wrapping_add(1), t0 + MS);
        let counts = peers.counts();
        let c = counts.values().next().unwrap();
        assert_eq!((c.sent, c.answered), (2, 1));
    }

    #[test]
    fn old_probes_are_forgotten() {
        let (mut peers, t0) = one_peer();
        let s0 = seq(peers.next_round(t0));
        peers.next_round(t0 + 4 * OUTSTANDING_TTL / 5);
        let late = t0 + OUTSTANDING_TTL;
        assert_eq!(
            peers.echo(2, addr(12), s0, late),
            Err(Unused::NotOutstanding)
        );
        peers.next_round(late + OUTSTANDING_TTL);
        assert_eq!(
            peers.echo(2, addr(12), s0.wrapping_add(1), late + OUTSTANDING_TTL),
            Err(Unused::NotOutstanding)
        );
    }

    #[test]
    fn stale_peers_are_hidden_until_a_late_echo() {
        let (mut peers, t0) = one_peer();
        let max_age = 500 * MS;
        let s0 = seq(peers.next_round(t0));
        peers.echo(2, addr(12), s0, t0 + 2 * MS).unwrap();
        assert!(peers.fresh(t0 + max_age, max_age).contains_key("b"));
        let t1 = t0 + 2 * max_age;
        peers.next_round(t1);
        assert!(peers.fresh(t1, max_age).is_empty());
        let rtt = peers
            .echo(2, addr(12), s0.wrapping_add(1), t1 + 6 * MS)
            .unwrap();
        assert_eq!((rtt.srtt_us, rtt.samples), (3000, 2));
        assert_eq!(peers.fresh(t1 + 6 * MS, max_age)["b"], rtt);
    }

    #[test]
    fn set_keeps_unchanged_peers_and_forgets_the_rest() {
        let (mut peers, t0) = one_peer();
        peers.set(vec![peer("b", 2, 12), peer("c", 3, 13)]);
        let round = peers.next_round(t0);
        let seq_of = |a| round.iter().find(|(x, _)| *x == a).unwrap().1;
        let (sb, sc) = (seq_of(addr(12)), seq_of(addr(13)));
        peers.echo(2, addr(12), sb, t0 + MS).unwrap();
        peers.echo(3, addr(13), sc, t0 + MS).unwrap();
        peers.set(vec![peer("b-renamed", 2, 12), peer("c", 3, 99)]);
        let fresh = peers.fresh(t0 + MS, MS);
        assert_eq!(fresh.keys().collect::<Vec<_>>(), ["b-renamed"]);
        assert_eq!(peers.next_round(t0 + MS).len(), 2);
        peers.set(Vec::new());
        assert!(peers.fresh(t0 + MS, MS).is_empty());
        assert_eq!(
            peers.echo(2, addr(12), sb.wrapping_add(1), t0 + MS),
            Err(Unused::UnknownPeer)
        );
    }
}
