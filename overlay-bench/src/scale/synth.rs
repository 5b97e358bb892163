//! Synthetic measurements that move like real ones: RTTs from positions on
//! a plane, sampled with queueing noise and smoothed as the prober smooths
//! them (1/8 gain), with now and then a route change; flow counts toward a
//! few instances that drift by a flow at a time, and now and then move to
//! another instance.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A small deterministic generator (xorshift64*): the simulation needs
/// spread, not quality, and no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.draw() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.draw() % n.max(1) as u64) as usize
    }
}

/// Node `i`'s position on a unit square, the same in every agent.
fn position(i: usize) -> (f64, f64) {
    let mut r = Rng::new(i as u64 + 1);
    (r.unit(), r.unit())
}

/// Base RTT in µs between nodes `a` and `b`: 1 ms plus up to ~110 ms across
/// the square (a continent).
pub fn base_rtt_us(a: usize, b: usize) -> f64 {
    let ((ax, ay), (bx, by)) = (position(a), position(b));
    1000.0 + 80_000.0 * ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt()
}

/// What one node measures to every other.
pub struct Rtts {
    me: usize,
    /// Per peer: (base µs, smoothed µs).
    peers: Vec<(f64, f64)>,
    rng: Rng,
}

impl Rtts {
    pub fn new(me: usize, nodes: usize) -> Rtts {
        let peers = (0..nodes)
            .map(|p| {
                let b = base_rtt_us(me, p);
                (b, b)
            })
            .collect();
        Rtts {
            me,
            peers,
            rng: Rng::new(0xabc ^ me as u64),
        }
    }

    /// One probe round: a sample per peer (up to 30 % above base: queues),
    /// smoothed; a route change once an hour per node on average.
    pub fn round(&mut self, period_s: f64) -> BTreeMap<String, u32> {
        if self.rng.unit() < period_s / 3600.0 {
            let p = self.rng.below(self.peers.len());
            self.peers[p].0 *= 0.7 + 0.7 * self.rng.unit();
        }
        let mut out = BTreeMap::new();
        for (p, (base, srtt)) in self.peers.iter_mut().enumerate() {
            if p == self.me {
                continue;
            }
            let sample = *base * (1.0 + 0.3 * self.rng.unit() * self.rng.unit());
            *srtt += (sample - *srtt) / 8.0;
            out.insert(super::node_name(p), *srtt as u32);
        }
        out
    }
}

/// The flows one node has open toward a few instances.
pub struct Loads {
    flows: BTreeMap<Ipv4Addr, u32>,
    rng: Rng,
}

impl Loads {
    /// `count` instances out of `all`, 0-20 flows each.
    pub fn new(me: usize, all: &[Ipv4Addr], count: usize) -> Loads {
        let mut rng = Rng::new(0x10ad ^ me as u64);
        let flows = (0..count)
            .map(|_| (all[rng.below(all.len())], rng.below(21) as u32))
            .collect();
        Loads { flows, rng }
    }

    /// One period: each count moves by a flow with probability 0.2; once
    /// in ten minutes on average, one instance is left for another.
    pub fn round(&mut self, all: &[Ipv4Addr], period_s: f64) -> BTreeMap<Ipv4Addr, u32> {
        for n in self.flows.values_mut() {
            let u = self.rng.unit();
            if u < 0.1 {
                *n = n.saturating_sub(1);
            } else if u < 0.2 {
                *n += 1;
            }
        }
        if self.rng.unit() < period_s / 600.0 && !self.flows.is_empty() {
            let gone = *self
                .flows
                .keys()
                .nth(self.rng.below(self.flows.len()))
                .unwrap();
            self.flows.remove(&gone);
            let to = all[self.rng.below(all.len())];
            self.flows.insert(to, self.rng.below(21) as u32);
        }
        self.flows.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtts_stay_near_their_base_and_move_a_little() {
        let mut r = Rtts::new(0, 5);
        let first = r.round(1.0);
        assert_eq!(first.len(), 4);
        let later = (0..50).map(|_| r.round(1.0)).last().unwrap();
        for (peer, us) in &later {
            let base = base_rtt_us(0, peer[1..].parse::<usize>().unwrap() - 1);
            assert!(
                (*us as f64) >= base * 0.69 && (*us as f64) <= base * 1.5,
                "{peer} {us}"
            );
        }
    }
}
