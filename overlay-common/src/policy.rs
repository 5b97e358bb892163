//! The balancing policies: one type for the names (`.closest.local`), the
//! maps (`ServIp::policy` holds [`Policy::code`]) and the cluster model.

/// How a ServIP picks an instance for a new flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Policy {
    /// Local instances first, else the nearest by RTT (near-ties balanced).
    Closest = 1,
    /// Strict turns.
    Roundrobin = 2,
    /// Weighted by latency and load.
    Fastest = 3,
    /// One instance's fixed IP; a name needs an instance number with it.
    Fixed = 4,
}

impl Policy {
    /// Every policy a name may carry.
    pub const ALL: [Policy; 4] = [
        Policy::Closest,
        Policy::Roundrobin,
        Policy::Fastest,
        Policy::Fixed,
    ];

    /// The policies a stateless service gets a ServIP for.
    pub const SERVIPS: [Policy; 3] = [Policy::Closest, Policy::Roundrobin, Policy::Fastest];

    /// The label, lower case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Closest => "closest",
            Policy::Roundrobin => "roundrobin",
            Policy::Fastest => "fastest",
            Policy::Fixed => "fixed",
        }
    }

    /// Reads a policy label, any case.
    pub fn from_label(label: &str) -> Option<Policy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(label))
    }

    /// The policy's code in the maps (`ServIp::policy`).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The policy of a map code.
    pub const fn from_code(code: u8) -> Option<Policy> {
        match code {
            1 => Some(Policy::Closest),
            2 => Some(Policy::Roundrobin),
            3 => Some(Policy::Fastest),
            4 => Some(Policy::Fixed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_labels_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::from_code(p.code()), Some(p));
            assert_eq!(Policy::from_label(&p.as_str().to_uppercase()), Some(p));
        }
        assert_eq!(Policy::from_code(0), None);
        assert!(!Policy::SERVIPS.contains(&Policy::Fixed));
    }
}
