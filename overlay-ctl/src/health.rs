//! Instance health (`docs/health.md`): whether an instance takes new
//! flows, how a service says when its instances are ready, and the rule
//! that turns check results into a health.
//!
//! Only [`Health::Ready`] instances enter the slot tables. The others keep
//! their backend entry, so their established flows go on; only removing the
//! instance ends its flows.

use serde::{Deserialize, Serialize};

/// Failed checks in a row that eject a ready instance.
pub const EJECT_AFTER: u32 = 3;

/// Whether an instance takes new flows, as its node publishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Takes new flows. Records without the field (written by the previous
    /// release) are ready, as every instance was then.
    #[default]
    Ready,
    /// Deployed; its readiness check has not passed yet.
    Starting,
    /// Was ready, then failed [`EJECT_AFTER`] checks in a row: out of the
    /// slot tables until a check passes again.
    Failing,
    /// Being removed: its flows finish, it gets no new ones.
    Draining,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        *self == Health::Ready
    }

    pub fn label(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Starting => "starting",
            Health::Failing => "failing",
            Health::Draining => "draining",
        }
    }
}

/// How a service's instances are checked (descriptor field `readiness`).
/// Absent: any of the service's ports accepting a TCP connection makes an
/// instance ready (a service without ports is ready at once).
/// Written `none` or `{port: N}` in JSON and YAML alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawReadiness", into = "RawReadiness")]
pub enum Readiness {
    /// No check: ready at once (e.g. a UDP-only service).
    None,
    /// Ready while this TCP port accepts connections.
    Port(u16),
}

/// [`Readiness`] as written: YAML has no plain spelling of an externally
/// tagged enum, so the two forms are told apart by shape.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawReadiness {
    Word(String),
    /// Any map, so that a wrong one is told what is expected.
    Check(std::collections::BTreeMap<String, serde_json::Value>),
}

const EXPECTED: &str = "expected `none` or {port: N}";

impl TryFrom<RawReadiness> for Readiness {
    type Error = String;

    fn try_from(raw: RawReadiness) -> Result<Readiness, String> {
        match raw {
            RawReadiness::Word(w) if w == "none" => Ok(Readiness::None),
            RawReadiness::Word(w) => Err(format!("`{w}`: {EXPECTED}")),
            RawReadiness::Check(map) => match map.get("port").and_then(|p| p.as_u64()) {
                Some(port) if map.len() == 1 => u16::try_from(port)
                    .map(Readiness::Port)
                    .map_err(|_| format!("port {port} is not a port")),
                _ => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    Err(format!("{{{}}}: {EXPECTED}", keys.join(", ")))
                }
            },
        }
    }
}

impl From<Readiness> for RawReadiness {
    fn from(r: Readiness) -> RawReadiness {
        match r {
            Readiness::None => RawReadiness::Word("none".into()),
            Readiness::Port(port) => RawReadiness::Check([("port".into(), port.into())].into()),
        }
    }
}

/// The TCP ports to try for an instance of a service with `ports` and
/// `readiness`; empty: no check, the instance is ready at once.
pub fn check_ports(ports: &[u16], readiness: Option<Readiness>) -> Vec<u16> {
    match readiness {
        None => ports.to_vec(),
        Some(Readiness::None) => Vec::new(),
        Some(Readiness::Port(p)) => vec![p],
    }
}

/// One instance's health with its run of failed checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub health: Health,
    failures: u32,
}

impl Tracker {
    pub fn new(health: Health) -> Tracker {
        Tracker {
            health,
            failures: 0,
        }
    }

    /// Takes one check result; gives the new health when it changed. A
    /// draining instance stays draining whatever its checks say.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let before = self.health;
        self.failures = if passed { 0 } else { self.failures + 1 };
        self.health = match (before, passed) {
            (Health::Draining, _) => Health::Draining,
            (_, true) => Health::Ready,
            (Health::Ready, false) if self.failures >= EJECT_AFTER => Health::Failing,
            (h, false) => h,
        };
        (self.health != before).then_some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_becomes_ready_on_its_first_pass() {
        let mut t = Tracker::new(Health::Starting);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None, "never ready: stays starting");
        assert_eq!(t.record(true), Some(Health::Ready));
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn three_failures_in_a_row_eject_and_one_pass_brings_back() {
        let mut t = Tracker::new(Health::Ready);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Failing));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(Health::Ready));
    }

    #[test]
    fn draining_stays_draining() {
        let mut t = Tracker::new(Health::Draining);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.health, Health::Draining);
    }

    #[test]
    fn readiness_reads_as_documented() {
        let parse = |s: &str| serde_json::from_str::<Readiness>(s);
        assert_eq!(parse(r#""none""#).unwrap(), Readiness::None);
        assert_eq!(parse(r#"{"port":8080}"#).unwrap(), Readiness::Port(8080));
        assert!(parse(r#"{"port":8080,"x":1}"#).is_err());
        assert!(parse(r#""sometimes""#).is_err());
        for r in [Readiness::None, Readiness::Port(7)] {
            assert_eq!(parse(&serde_json::to_string(&r).unwrap()).unwrap(), r);
        }
        assert_eq!(check_ports(&[80, 443], None), [80, 443]);
        assert_eq!(check_ports(&[80], Some(Readiness::Port(9))), [9]);
        assert!(check_ports(&[80], Some(Readiness::None)).is_empty());
        assert!(check_ports(&[], None).is_empty());
    }

    /// A record without the field is ready; a ready one is written without
    /// it, as the previous release wrote every instance.
    #[test]
    fn ready_is_the_unwritten_default() {
        let json = serde_json::to_string(&Health::Starting).unwrap();
        assert_eq!(json, r#""starting""#);
        assert_eq!(Health::default(), Health::Ready);
    }
}
