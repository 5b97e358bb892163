//! The name service: `app.appns.svc.svcns.instance.policy.local` names
//! (scheme and answers: `docs/names.md`) answered from the live cluster state.
//!
//! * [`resolve`]: one name to an [`Answer`], the rule every front end shares
//!   (unicast DNS, mDNS, `overlay-ctl resolve`).
//! * [`DnsServer`]: unicast DNS over UDP and TCP (hickory-server), the
//!   resolver that instances find in their `resolv.conf`.
//! * [`Mdns`]: an RFC 6762 responder on 224.0.0.251:5353 on the instance
//!   links; it answers only for names of the scheme that exist.
//! * [`write_resolv_conf`] / [`remove_resolv_conf`]: `/etc/netns/NAME/resolv.conf`
//!   for `ip netns exec` and for runtimes that bind-mount it.
//!
//! Answers (and their DNS response codes):
//!
//! | query | answer |
//! | --- | --- |
//! | `any.closest` / `any.roundrobin` / `any.fastest` of a known, stateless service | that ServIP (A, NOERROR) |
//! | `N.fixed` of a known service whose instance `N` has a fixed IP (claimed in the store, running or not) | that fixed IP |
//! | a well-formed name of an unknown service, instance or policy | NXDOMAIN |
//! | a known name, type other than A (AAAA, MX, ...) | NOERROR, no records |
//! | a malformed name under `.local` | FORMERR |
//! | a name outside `.local` | REFUSED, or forwarded to the configured upstream |
//!
//! A stateful service has only `N.fixed` names: its `any.*` names are
//! NXDOMAIN even if the state carries ServIPs for it.

mod error;
mod fast;
mod mdns;
mod resolv_conf;
mod server;
mod tcp;
mod udp;
mod wire;

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod mdns_tests;
#[cfg(test)]
mod proptests;

use std::fmt;
use std::net::Ipv4Addr;

use overlay_common::names::{self, Instance, Name, NameError};

use crate::model::{ClusterState, Policy};

pub use error::{DnsError, Result};
pub use mdns::{MDNS_ADDR, MDNS_PORT, Mdns};
pub use resolv_conf::{remove_resolv_conf, resolv_conf_path, write_resolv_conf};
pub use server::{DnsCounts, DnsOptions, DnsServer};

/// TTL of every answer, in seconds, unless configured otherwise: short, as
/// ServIPs and instances come and go.
pub const DEFAULT_TTL: u32 = 5;

/// The address the agent serves DNS on for its instances: their gateway
/// (169.254.1.1), which the agent adds to the node's loopback.
pub const DEFAULT_LISTEN: Ipv4Addr = crate::netns::DEFAULT_GATEWAY;

/// What a name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists and has this address.
    Address(Ipv4Addr),
    /// A well-formed name that names no existing service, instance or policy.
    NxDomain,
    /// Under `.local` but not a name of the scheme; the reason says why.
    Malformed(&'static str),
    /// Not under `.local`: someone else's name.
    NotLocal,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Address(ip) => write!(f, "{ip}"),
            Answer::NxDomain => f.write_str("no such name (NXDOMAIN)"),
            Answer::Malformed(why) => write!(f, "malformed name: {why}"),
            Answer::NotLocal => f.write_str("not a .local name"),
        }
    }
}

/// Resolves `qname` (any case, optional trailing dot) against `state`.
pub fn resolve(state: &ClusterState, qname: &str) -> Answer {
    match names::parse(qname) {
        Ok(name) => lookup(state, &name).map_or(Answer::NxDomain, Answer::Address),
        Err(NameError::NotLocal) => Answer::NotLocal,
        Err(e) => Answer::Malformed(e.reason()),
    }
}

/// The address of a parsed name, if it exists in `state`.
pub fn lookup(state: &ClusterState, name: &Name<'_>) -> Option<Ipv4Addr> {
    let service = state.services.iter().find(|s| name.is_service(&s.name))?;
    if name.policy == Policy::Fixed {
        let Instance::Number(n) = name.instance else {
            return None;
        };
        // The orchestrator's claim first: the name stays while instance N
        // is down (connections then fail fast instead of the name vanishing).
        let claim = state
            .fixed
            .iter()
            .find(|f| f.instance == n && f.service.eq_ignore_ascii_case(&service.name));
        if let Some(f) = claim {
            return Some(f.ip);
        }
        return state
            .instances
            .iter()
            .find(|i| i.instance == n && i.service.eq_ignore_ascii_case(&service.name))?
            .fixed_ip;
    }
    if service.stateful || name.instance != Instance::Any {
        return None;
    }
    service.servips.get(&name.policy).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{InstanceSpec, ServiceSpec};

    /// A service through serde, so that fields added to `ServiceSpec` with a
    /// default do not break these tests.
    pub(crate) fn service_spec(
        name: &str,
        stateful: bool,
        servips: BTreeMap<Policy, Ipv4Addr>,
    ) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "id": 1,
            "ports": [80],
            "stateful": stateful,
            "servips": servips,
        }))
        .expect("a valid service")
    }

    pub(crate) fn sample_state() -> ClusterState {
        let ip = |d| Ipv4Addr::new(172, 30, 0, d);
        let mut servips = BTreeMap::new();
        servips.insert(Policy::Closest, ip(1));
        servips.insert(Policy::Roundrobin, ip(2));
        servips.insert(Policy::Fastest, ip(3));
        let mut only_closest = BTreeMap::new();
        only_closest.insert(Policy::Closest, ip(9));
        let service = |name: &str, stateful, servips| service_spec(name, stateful, servips);
        let instance = |service: &str, n, fixed_ip| InstanceSpec {
            service: service.into(),
            instance: n,
            node: "n1".into(),
            nsip: Ipv4Addr::new(10, 30, 1, n as u8 + 1),
            fixed_ip,
            health: Default::default(),
        };
        ClusterState {
            nodes: vec![],
            services: vec![
                service("shop.prod.cart.team1", false, servips.clone()),
                // Stateful, and (wrongly) with ServIPs: they must not answer.
                service("shop.prod.db.team1", true, servips),
                service("Shop.Prod.Lonely.Team1", false, only_closest),
            ],
            instances: vec![
                instance("shop.prod.cart.team1", 1, Some(ip(11))),
                instance("shop.prod.cart.team1", 2, None),
                instance("shop.prod.db.team1", 1, Some(ip(21))),
                instance("shop.prod.db.team1", 2, Some(ip(22))),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn resolution_table() {
        let s = sample_state();
        let a = |d| Answer::Address(Ipv4Addr::new(172, 30, 0, d));
        for (name, want) in [
            ("shop.prod.cart.team1.any.closest.local", a(1)),
            ("shop.prod.cart.team1.any.roundrobin.local", a(2)),
            ("SHOP.prod.Cart.team1.ANY.Fastest.LOCAL.", a(3)),
            ("shop.prod.cart.team1.1.fixed.local", a(11)),
            // Instance 2 has no fixed IP, instance 3 does not exist.
            ("shop.prod.cart.team1.2.fixed.local", Answer::NxDomain),
            ("shop.prod.cart.team1.3.fixed.local", Answer::NxDomain),
            ("shop.prod.db.team1.1.fixed.local", a(21)),
            ("shop.prod.db.team1.2.fixed.local", a(22)),
            ("shop.prod.db.team1.any.closest.local", Answer::NxDomain),
            ("shop.prod.db.team1.any.fastest.local", Answer::NxDomain),
            ("shop.prod.lonely.team1.any.closest.local", a(9)),
            (
                "shop.prod.lonely.team1.any.roundrobin.local",
                Answer::NxDomain,
            ),
            ("shop.prod.nope.team1.any.closest.local", Answer::NxDomain),
            (
                "shop.prod.cart.team1.any.fixed.local",
                Answer::Malformed(NameError::FixedWithoutNumber.reason()),
            ),
            (
                "cart.local",
                Answer::Malformed(NameError::WrongLabelCount.reason()),
            ),
            ("example.com", Answer::NotLocal),
            ("", Answer::NotLocal),
        ] {
            assert_eq!(resolve(&s, name), want, "{name}");
        }
    }

    /// A claimed fixed IP keeps its name while the instance is not running.
    #[test]
    fn claimed_fixed_ip_outlives_its_instance() {
        let mut s = sample_state();
        let name = "shop.prod.db.team1.3.fixed.local";
        assert_eq!(resolve(&s, name), Answer::NxDomain);
        s.fixed.push(crate::model::FixedIp {
            service: "shop.prod.db.team1".into(),
            instance: 3,
            ip: Ipv4Addr::new(172, 30, 0, 23),
        });
        assert_eq!(
            resolve(&s, name),
            Answer::Address(Ipv4Addr::new(172, 30, 0, 23))
        );
    }

    #[test]
    fn answers_print() {
        assert_eq!(
            Answer::Address(Ipv4Addr::LOCALHOST).to_string(),
            "127.0.0.1"
        );
        assert_eq!(Answer::NxDomain.to_string(), "no such name (NXDOMAIN)");
        assert!(Answer::Malformed("x").to_string().ends_with(": x"));
    }
}
