//! Property tests of the name scheme (`overlay_common::names`) and of
//! [`resolve`]: canonical form round trips, case-insensitivity, and every
//! invalid combination rejected with its own reason.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use overlay_common::names::{self, Instance, Label, NameError, Policy};
use proptest::prelude::*;

use super::tests::service_spec;
use super::{Answer, resolve};
use crate::model::{self, ClusterState, InstanceSpec};

/// A valid service label, kept short so that no name reaches 253 characters.
fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,18}[a-zA-Z0-9])?"
}

fn instance_policy() -> impl Strategy<Value = (Instance, Policy)> {
    prop_oneof![
        prop::sample::select(vec![Policy::Closest, Policy::Roundrobin, Policy::Fastest])
            .prop_map(|p| (Instance::Any, p)),
        (1..=u32::MAX).prop_map(|n| (Instance::Number(n), Policy::Fixed)),
    ]
}

/// The six labels of a valid name (without `local`), any case.
fn valid_labels() -> impl Strategy<Value = Vec<String>> {
    (prop::collection::vec(label(), 4), instance_policy()).prop_map(|(mut labels, (i, p))| {
        labels.push(match i {
            Instance::Any => "any".into(),
            Instance::Number(n) => n.to_string(),
        });
        labels.push(p.as_str().into());
        labels
    })
}

fn join(labels: &[String], suffix: &str) -> String {
    let mut s = labels.join(".");
    s.push('.');
    s.push_str(suffix);
    s
}

fn canonical(name: &str) -> String {
    let mut out = String::new();
    names::parse(name).unwrap().write_to(&mut out).unwrap();
    out
}

/// Flips the case of the characters selected by `mask`.
fn recase(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &up)| {
            if up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

const SERVICE_LABELS: [Label; 4] = [Label::App, Label::AppNs, Label::Service, Label::ServiceNs];

/// How to break a valid name, and the error that must follow.
#[derive(Clone, Debug)]
enum Breakage {
    EmptyServiceLabel(usize),
    LongServiceLabel(usize, usize),
    BadChar(usize, char),
    Hyphen(usize, bool),
    BadInstance(String),
    Zero,
    LeadingZero(u32),
    Overflow(u64),
    UnknownPolicy(String),
    NumberWithout(Policy, u32),
    FixedWithAny,
    DropLabel(usize),
    ExtraLabel(usize, String),
    NotLocal(String),
}

fn breakage() -> impl Strategy<Value = Breakage> {
    prop_oneof![
        (0..4usize).prop_map(Breakage::EmptyServiceLabel),
        (0..4usize, 64..80usize).prop_map(|(i, n)| Breakage::LongServiceLabel(i, n)),
        (
            0..4usize,
            prop::sample::select(vec!['_', ' ', '*', '!', '/', 'é', '?', '@'])
        )
            .prop_map(|(i, c)| Breakage::BadChar(i, c)),
        (0..4usize, any::<bool>()).prop_map(|(i, front)| Breakage::Hyphen(i, front)),
        "[a-z]{1,8}"
            .prop_filter("not any", |s| s != "any")
            .prop_map(Breakage::BadInstance),
        Just(Breakage::Zero),
        (1..=u32::MAX).prop_map(Breakage::LeadingZero),
        (u32::MAX as u64 + 1..=u64::MAX).prop_map(Breakage::Overflow),
        "[a-z]{1,12}"
            .prop_filter("not a policy", |s| Policy::from_label(s).is_none())
            .prop_map(Breakage::UnknownPolicy),
        (
            prop::sample::select(vec![Policy::Closest, Policy::Roundrobin, Policy::Fastest]),
            1..=u32::MAX
        )
            .prop_map(|(p, n)| Breakage::NumberWithout(p, n)),
        Just(Breakage::FixedWithAny),
        (0..6usize).prop_map(Breakage::DropLabel),
        (0..7usize, label()).prop_map(|(i, l)| Breakage::ExtraLabel(i, l)),
        "[a-z]{1,8}"
            .prop_filter("not local", |s| s != "local")
            .prop_map(Breakage::NotLocal),
    ]
}

/// Applies `b` to valid `labels`; returns the name and the expected error.
fn broken(mut labels: Vec<String>, b: Breakage) -> (String, NameError) {
    let mut suffix = "local".to_owned();
    let err = match b {
        Breakage::EmptyServiceLabel(i) => {
            labels[i].clear();
            NameError::EmptyLabel(SERVICE_LABELS[i])
        }
        Breakage::LongServiceLabel(i, n) => {
            labels[i] = "x".repeat(n);
            NameError::LabelTooLong(SERVICE_LABELS[i])
        }
        Breakage::BadChar(i, c) => {
            let mid = labels[i].len() / 2;
            labels[i].insert(mid, c);
            NameError::BadCharacter(SERVICE_LABELS[i])
        }
        Breakage::Hyphen(i, front) => {
            if front {
                labels[i].insert(0, '-');
            } else {
                labels[i].push('-');
            }
            NameError::HyphenAtEdge(SERVICE_LABELS[i])
        }
        Breakage::BadInstance(s) => {
            labels[4] = s;
            NameError::BadInstance
        }
        Breakage::Zero => {
            labels[4] = "0".into();
            NameError::InstanceZero
        }
        Breakage::LeadingZero(n) => {
            labels[4] = format!("0{n}");
            labels[5] = "fixed".into();
            NameError::BadInstance
        }
        Breakage::Overflow(n) => {
            labels[4] = n.to_string();
            labels[5] = "fixed".into();
            NameError::BadInstance
        }
        Breakage::UnknownPolicy(p) => {
            labels[5] = p;
            NameError::UnknownPolicy
        }
        Breakage::NumberWithout(p, n) => {
            labels[4] = n.to_string();
            labels[5] = p.as_str().into();
            NameError::NumberWithoutFixed
        }
        Breakage::FixedWithAny => {
            labels[4] = "any".into();
            labels[5] = "fixed".into();
            NameError::FixedWithoutNumber
        }
        Breakage::DropLabel(i) => {
            labels.remove(i);
            NameError::WrongLabelCount
        }
        Breakage::ExtraLabel(i, l) => {
            labels.insert(i, l);
            NameError::WrongLabelCount
        }
        Breakage::NotLocal(s) => {
            suffix = s;
            NameError::NotLocal
        }
    };
    (join(&labels, &suffix), err)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn canonical_form_round_trips(labels in valid_labels(), dot in any::<bool>()) {
        let mut name = join(&labels, "local");
        if dot {
            name.push('.');
        }
        let parsed = names::parse(&name).unwrap();
        let text = canonical(&name);
        prop_assert_eq!(&text, &join(&labels, "local").to_ascii_lowercase());
        prop_assert_eq!(names::parse(&text).unwrap().policy, parsed.policy);
        prop_assert_eq!(names::parse(&text).unwrap().instance, parsed.instance);
        prop_assert_eq!(canonical(&text), text.clone());
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn case_does_not_matter(labels in valid_labels(), mask in prop::collection::vec(any::<bool>(), 1..16)) {
        let name = join(&labels, "local");
        let other = recase(&name, &mask);
        prop_assert_eq!(canonical(&other), canonical(&name));
    }

    #[test]
    fn every_breakage_has_its_reason(labels in valid_labels(), b in breakage()) {
        let (name, want) = broken(labels, b);
        let got = names::parse(&name);
        prop_assert_eq!(got, Err(want), "{}", name);
        prop_assert!(!want.reason().is_empty());
        prop_assert!(want.to_string().ends_with(want.reason()));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,300}") {
        if let Ok(n) = names::parse(&s) {
            let text = n.to_string();
            prop_assert_eq!(canonical(&text), text);
        }
    }

    #[test]
    fn resolve_finds_every_service(
        services in prop::collection::btree_map(prop::collection::vec(label(), 4), any::<bool>(), 1..20),
        mask in prop::collection::vec(any::<bool>(), 1..16),
    ) {
        let mut state = ClusterState::default();
        // Lower-cased names may collide; keep the first.
        let mut seen = std::collections::HashSet::new();
        for (i, (labels, stateful)) in services.iter().enumerate() {
            let name = labels.join(".");
            if !seen.insert(name.to_ascii_lowercase()) {
                continue;
            }
            let i = i as u8;
            let servips: BTreeMap<_, _> = if *stateful {
                BTreeMap::new()
            } else {
                model::Policy::SERVIPS
                    .into_iter()
                    .enumerate()
                    .map(|(k, p)| (p, Ipv4Addr::new(172, 30, i, k as u8 + 1)))
                    .collect()
            };
            state.services.push(service_spec(&name, *stateful, servips));
            state.instances.push(InstanceSpec {
                service: name,
                instance: 1,
                node: "n".into(),
                nsip: Ipv4Addr::new(10, 30, 0, i),
                fixed_ip: Some(Ipv4Addr::new(172, 30, 200, i)),
                health: Default::default(),
            });
        }
        for s in &state.services {
            let q = |tail: &str| recase(&format!("{}.{tail}", s.name), &mask);
            for p in model::Policy::SERVIPS {
                let tail = format!("any.{}.local", p.as_str());
                let want = s.servips.get(&p).map_or(Answer::NxDomain, |ip| Answer::Address(*ip));
                prop_assert_eq!(resolve(&state, &q(&tail)), want);
            }
            let fixed = state.instances.iter().find(|i| i.service == s.name).unwrap().fixed_ip.unwrap();
            prop_assert_eq!(resolve(&state, &q("1.fixed.local.")), Answer::Address(fixed));
            prop_assert_eq!(resolve(&state, &q("2.fixed.local")), Answer::NxDomain);
        }
    }
}
