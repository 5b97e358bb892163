//! The balancing policies: which instances a node's slot table for a ServIP
//! holds, and how often each appears (its weight). Pure functions of the
//! distances and loads the agent knows; `docs/policies.md` gives the formulas.
//!
//! * closest: the local instances if there are any; else the instances
//!   nearest to this node, with near-ties (within the margin) sharing the
//!   table equally.
//! * roundrobin: every live instance once; the programs hand new flows to
//!   the slots in turn.
//! * fastest: every live instance, weight ∝ 1 / (RTT + base + k × load),
//!   laid out as a weighted slot array that new flows pick by flow hash.

use serde::{Deserialize, Serialize};

/// Distance assumed for an instance whose node has neither an RTT nor
/// coordinates: far, but not so far that weights underflow.
pub const UNKNOWN_US: u32 = 100_000;
/// Slots per instance in a fastest table (weight resolution ~6 %).
const SLOTS_PER_INSTANCE: usize = 16;
/// Largest fastest table; larger services get at least one slot each.
const MAX_WEIGHTED_SLOTS: usize = 1024;

/// Tuning of the policies (agent configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// closest: instances within this many µs of the nearest tie.
    pub closest_margin_us: u32,
    /// closest: ... or within this percentage of the nearest distance.
    pub closest_margin_pct: u32,
    /// fastest: µs added to every RTT (serving time; keeps a local, idle
    /// instance from taking every flow at RTT 0).
    pub fastest_base_us: u32,
    /// fastest: µs one active flow weighs (k in 1 / (RTT + base + k × load)).
    pub fastest_load_us: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            closest_margin_us: 500,
            closest_margin_pct: 10,
            fastest_base_us: 500,
            fastest_load_us: 200,
        }
    }
}

/// An instance as the policies see it from one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Backend id (what a slot holds).
    pub id: u32,
    /// On this node.
    pub local: bool,
    /// Round-trip time from this node to the instance's node, µs; 0 when local.
    pub distance: Option<u32>,
    /// Active flows toward the instance, cluster-wide.
    pub load: u32,
}

impl Candidate {
    fn rtt(&self) -> u32 {
        if self.local {
            0
        } else {
            self.distance.unwrap_or(UNKNOWN_US)
        }
    }
}

/// The nearest instances: local ones first, else every instance within the
/// margin of the nearest (sorted by id so that equal inputs give equal tables).
pub fn closest(c: &[Candidate], p: &Params) -> Vec<u32> {
    let mut ids: Vec<u32> = if c.iter().any(|x| x.local) {
        c.iter().filter(|x| x.local).map(|x| x.id).collect()
    } else {
        let nearest = c.iter().map(Candidate::rtt).min().unwrap_or(0) as u64;
        let margin = (p.closest_margin_us as u64).max(nearest * p.closest_margin_pct as u64 / 100);
        c.iter()
            .filter(|x| x.rtt() as u64 <= nearest + margin)
            .map(|x| x.id)
            .collect()
    };
    ids.sort_unstable();
    ids
}

/// Every instance once.
pub fn roundrobin(c: &[Candidate]) -> Vec<u32> {
    let mut ids: Vec<u32> = c.iter().map(|x| x.id).collect();
    ids.sort_unstable();
    ids
}

/// The relative weight of each instance under fastest (summing to 1).
pub fn fastest_weights(c: &[Candidate], p: &Params) -> Vec<(u32, f64)> {
    let raw: Vec<(u32, f64)> = c
        .iter()
        .map(|x| {
            let cost = x.rtt() as f64
                + p.fastest_base_us.max(1) as f64
                + p.fastest_load_us as f64 * x.load as f64;
            (x.id, 1.0 / cost)
        })
        .collect();
    let total: f64 = raw.iter().map(|(_, w)| w).sum();
    raw.into_iter().map(|(id, w)| (id, w / total)).collect()
}

/// The fastest table: a weighted slot array.
pub fn fastest(c: &[Candidate], p: &Params) -> Vec<u32> {
    let mut weights = fastest_weights(c, p);
    weights.sort_by_key(|(id, _)| *id);
    let size = (c.len() * SLOTS_PER_INSTANCE)
        .min(MAX_WEIGHTED_SLOTS)
        .max(c.len());
    apportion(&weights, size)
}

/// Lays `weights` out over `size` slots by largest remainder (Hamilton's
/// method), every instance getting at least one slot (so that it keeps being
/// measured), and interleaves them (smooth weighted round robin) so that the
/// table reads as the mix it stands for.
pub fn apportion(weights: &[(u32, f64)], size: usize) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let size = size.max(n);
    let total: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|(_, w)| match total > 0.0 {
            true => w.max(0.0) / total * size as f64,
            false => size as f64 / n as f64,
        })
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| (e.floor() as usize).max(1)).collect();
    // Remainders; an instance raised to its one slot has none left.
    let rest: Vec<f64> = exact
        .iter()
        .zip(&counts)
        .map(|(e, &c)| e - c as f64)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| rest[b].total_cmp(&rest[a]));
    let left = size.saturating_sub(counts.iter().sum());
    for &i in order.iter().take(left) {
        counts[i] += 1;
    }
    // Equal shares need no more than one slot each: divide out the common
    // factor so that tables (and SLOTS memory) stay as small as the mix allows.
    let common = counts.iter().copied().fold(0, gcd).max(1);
    counts.iter_mut().for_each(|c| *c /= common);
    interleave(weights, &counts)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Smooth weighted round robin (as in nginx): each step the instance with
/// the largest running credit takes the slot.
fn interleave(weights: &[(u32, f64)], counts: &[usize]) -> Vec<u32> {
    let total: usize = counts.iter().sum();
    let mut credit = vec![0i64; counts.len()];
    let mut table = Vec::with_capacity(total);
    for _ in 0..total {
        for (c, &k) in credit.iter_mut().zip(counts) {
            *c += k as i64;
        }
        let best = (0..counts.len())
            .max_by_key(|&i| (credit[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        credit[best] -= total as i64;
        table.push(weights[best].0);
    }
    table
}

/// Round-trip estimate from coordinates: light in fibre covers about
/// 200 km per ms, so 2 × great-circle distance / (200 km/ms) = 10 µs per km.
pub fn geo_rtt_us(a: Location, b: Location) -> u32 {
    const EARTH_KM: f64 = 6371.0;
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dla = la2 - la1;
    let dlo = (b.lon - a.lon).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    let km = 2.0 * EARTH_KM * h.sqrt().min(1.0).asin();
    (km * 10.0).round() as u32
}

/// A node's position (degrees), registered for the distance fallback.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

// Locations are validated finite when read, so equality is total.
impl Eq for Location {}

impl Location {
    /// Checks the ranges; the error names the bad coordinate.
    pub fn check(&self) -> Result<(), String> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(format!("latitude {} is not within -90..=90", self.lat));
        }
        if !(self.lon.is_finite() && (-180.0..=180.0).contains(&self.lon)) {
            return Err(format!("longitude {} is not within -180..=180", self.lon));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: u32, distance: Option<u32>, load: u32) -> Candidate {
        Candidate {
            id,
            local: false,
            distance,
            load,
        }
    }

    fn local(id: u32, load: u32) -> Candidate {
        Candidate {
            id,
            local: true,
            distance: Some(0),
            load,
        }
    }

    #[test]
    fn closest_prefers_local_then_nearest_with_ties() {
        let p = Params::default();
        let near = at(3, Some(400), 0);
        let tie = at(1, Some(700), 0);
        let far = at(2, Some(30_000), 0);
        assert_eq!(closest(&[far, near, local(9, 50)], &p), [9]);
        assert_eq!(
            closest(&[far, near, tie], &p),
            [1, 3],
            "400 and 700 µs tie (500 µs margin)"
        );
        assert_eq!(closest(&[far, tie], &p), [1]);
        assert_eq!(
            closest(&[far], &p),
            [2],
            "the next closest when the others are gone"
        );
        // 10 % of 30 ms beats the 500 µs margin far away.
        let far2 = at(4, Some(32_000), 0);
        assert_eq!(closest(&[far, far2], &p), [2, 4]);
        // Unknown distances all tie (and lose to any known one).
        assert_eq!(closest(&[at(5, None, 0), at(6, None, 0)], &p), [5, 6]);
        assert_eq!(closest(&[at(5, None, 0), far], &p), [2]);
        assert!(closest(&[], &p).is_empty());
    }

    #[test]
    fn fastest_weighs_latency_and_load() {
        let p = Params::default();
        let w = fastest_weights(&[at(1, Some(500), 0), at(2, Some(500), 0)], &p);
        assert_eq!(w, [(1, 0.5), (2, 0.5)]);
        assert_eq!(
            fastest(&[at(1, Some(500), 0), at(2, Some(500), 0)], &p),
            [1, 2]
        );
        // 1/(500+500) vs 1/(500+500+200*20): 5 to 1.
        let w = fastest_weights(&[at(1, Some(500), 0), at(2, Some(500), 20)], &p);
        assert!((w[0].1 - 5.0 / 6.0).abs() < 1e-9, "{w:?}");
        let table = fastest(&[at(1, Some(500), 0), at(2, Some(500), 20)], &p);
        assert_eq!(table.len(), 32);
        assert_eq!(table.iter().filter(|&&id| id == 2).count(), 5, "{table:?}");
        // Far away: a sliver, but never nothing.
        let table = fastest(&[at(1, Some(300), 0), at(2, Some(30_000), 0)], &p);
        assert_eq!(table.iter().filter(|&&id| id == 2).count(), 1);
    }

    #[test]
    fn apportion_is_exact_and_interleaved() {
        let t = apportion(&[(7, 1.0), (8, 1.0), (9, 2.0)], 8);
        assert_eq!(t, [9, 7, 8, 9], "1:1:2 needs four slots, not eight");
        let t = apportion(&[(7, 1.0), (8, 1.0), (9, 2.5)], 9);
        let count = |id| t.iter().filter(|&&x| x == id).count();
        assert_eq!((count(7), count(8), count(9)), (2, 2, 5));
        assert!(
            t.windows(3).all(|w| w.iter().any(|&x| x != 9)),
            "interleaved: {t:?}"
        );
        // Every instance keeps a slot, even with weight 0 or too few slots.
        let t = apportion(&[(1, 1.0), (2, 0.0), (3, 5.0)], 2);
        assert!([1, 2, 3].iter().all(|id| t.contains(id)), "{t:?}");
        assert!(apportion(&[], 16).is_empty());
        // Zero weights everywhere still give every instance a slot.
        assert_eq!(apportion(&[(1, 0.0), (2, 0.0)], 4), [1, 2]);
    }

    #[test]
    fn roundrobin_is_every_instance_once() {
        assert_eq!(
            roundrobin(&[at(3, None, 9), local(1, 0), at(2, Some(1), 0)]),
            [1, 2, 3]
        );
    }

    #[test]
    fn coordinates_give_fibre_rtt() {
        let munich = Location {
            lat: 48.14,
            lon: 11.58,
        };
        let berlin = Location {
            lat: 52.52,
            lon: 13.40,
        };
        let rtt = geo_rtt_us(munich, berlin);
        // ~504 km great circle: ~5 ms round trip in fibre.
        assert!((4_900..5_200).contains(&rtt), "{rtt}");
        assert_eq!(geo_rtt_us(munich, munich), 0);
        assert!(
            Location {
                lat: 91.0,
                lon: 0.0
            }
            .check()
            .unwrap_err()
            .contains("latitude")
        );
        assert!(
            Location {
                lat: 0.0,
                lon: f64::NAN
            }
            .check()
            .unwrap_err()
            .contains("longitude")
        );
    }
}
