//! Path MTU toward a node: what both the programs (to answer an instance's
//! oversized packet with fragmentation needed) and the agent (to show it)
//! compute the same way.
//!
//! Three limits apply to a tunnel packet toward a node, in outer bytes: this
//! node's uplink MTU, the other node's (each node publishes its own), and
//! whatever an underlay router on the way reported with ICMP fragmentation
//! needed about an earlier tunnel packet (`PATH_MTU`). The overlay MTU is
//! the smallest of them minus the tunnel overhead.

use crate::ENCAP_OVERHEAD;
use crate::maps::PathMtu;

/// The smallest MTU a report may claim: the datagram size every IPv4 host
/// must accept (RFC 791). A forged report cannot push the path below it.
pub const MIN_REPORTED: u16 = 576;

/// How long a report stays in force: about ten minutes of
/// [`crate::maps::ct::tick`]s, as Linux keeps a learned PMTU
/// (`mtu_expires`). Then the path is tried at full size again.
pub const LIFETIME_TICKS: u32 = 560;

/// The overlay MTU toward a node: `node_mtu` (`Node::mtu`, 0 for this
/// node's own `own_mtu`), lowered by a `report` still in force at tick `now`.
#[inline(always)]
pub fn overlay_mtu(own_mtu: u16, node_mtu: u16, report: Option<&PathMtu>, now: u32) -> u16 {
    let base = if node_mtu == 0 { own_mtu } else { node_mtu };
    match report {
        Some(r) if in_force(r, now) => base.min(r.mtu.saturating_sub(ENCAP_OVERHEAD)),
        _ => base,
    }
}

/// Whether `report` still applies at tick `now`.
#[inline(always)]
pub fn in_force(report: &PathMtu, now: u32) -> bool {
    now.wrapping_sub(report.tick) < LIFETIME_TICKS
}

/// The report to keep when a router reports `mtu` at tick `now` (`old`: the
/// one on record): a lower MTU than the one in force, or any plausible one
/// once the old report has expired. `None`: ignore it (implausible, or no
/// news).
#[inline(always)]
pub fn accept(old: Option<&PathMtu>, mtu: u16, uplink_mtu: u16, now: u32) -> Option<PathMtu> {
    if mtu < MIN_REPORTED || mtu >= uplink_mtu {
        return None;
    }
    if let Some(o) = old.filter(|o| in_force(o, now))
        && o.mtu <= mtu
    {
        return None;
    }
    Some(PathMtu {
        mtu,
        _pad: 0,
        tick: now,
    })
}

/// `NODES[..].mtu` for a node whose uplink has `peer_mtu` (0: unknown),
/// from a node whose uplink has `uplink_mtu`.
pub fn between(uplink_mtu: u16, peer_mtu: u16) -> u16 {
    let outer = if peer_mtu == 0 {
        uplink_mtu
    } else {
        uplink_mtu.min(peer_mtu)
    };
    outer.saturating_sub(ENCAP_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mtu: u16, tick: u32) -> PathMtu {
        PathMtu { mtu, _pad: 0, tick }
    }

    #[test]
    fn the_smallest_limit_wins_while_the_report_lasts() {
        assert_eq!(overlay_mtu(1472, 0, None, 5), 1472);
        assert_eq!(overlay_mtu(1472, 1372, None, 5), 1372);
        let r = report(1400, 10);
        assert_eq!(overlay_mtu(1472, 0, Some(&r), 10), 1372);
        assert_eq!(overlay_mtu(1472, 1300, Some(&r), 10), 1300);
        assert_eq!(overlay_mtu(1472, 0, Some(&r), 10 + LIFETIME_TICKS), 1472);
    }

    #[test]
    fn reports_only_ever_lower_the_path_until_they_expire() {
        assert_eq!(accept(None, 1400, 1500, 3), Some(report(1400, 3)));
        let old = report(1400, 3);
        assert_eq!(accept(Some(&old), 1450, 1500, 4), None);
        assert_eq!(accept(Some(&old), 1400, 1500, 4), None);
        assert_eq!(accept(Some(&old), 1300, 1500, 4), Some(report(1300, 4)));
        let later = 3 + LIFETIME_TICKS;
        assert_eq!(
            accept(Some(&old), 1450, 1500, later),
            Some(report(1450, later))
        );
    }

    #[test]
    fn implausible_reports_are_ignored() {
        assert_eq!(accept(None, 68, 1500, 1), None);
        assert_eq!(accept(None, 575, 1500, 1), None);
        assert_eq!(accept(None, 1500, 1500, 1), None);
        assert_eq!(accept(None, 9000, 1500, 1), None);
        assert!(accept(None, 576, 1500, 1).is_some());
    }

    #[test]
    fn both_uplinks_count() {
        assert_eq!(between(1500, 0), 1472);
        assert_eq!(between(1500, 1400), 1372);
        assert_eq!(between(1400, 9000), 1372);
    }
}
