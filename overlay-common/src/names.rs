//! The service name scheme (`docs/names.md`), parsed and printed without
//! allocating:
//!
//! ```text
//! appname.appns.servicename.servicens.instance.policy.local
//! ```
//!
//! * `instance` is `any` or an instance number `1..=4294967295` (no leading
//!   zeros, so every address has exactly one name);
//! * `policy` is `closest`, `roundrobin`, `fastest` or `fixed`; a number goes
//!   only with `fixed` and `fixed` only with a number;
//! * the four service labels follow the descriptor's label rule: 1-63
//!   characters out of letters, digits and `-`, not starting or ending with
//!   `-`;
//! * every label is case-insensitive, a single trailing dot is accepted, and
//!   the whole name is at most 253 characters (the DNS limit).
//!
//! [`parse`] checks, in this order: the `.local` suffix ([`NameError::NotLocal`]),
//! the label count, the total length, each label from left to right, and last
//! the instance/policy combination. [`Name::write_to`] prints the canonical,
//! lower-case form, which [`parse`] reads back to the same [`Name`].

use core::fmt;

/// The top-level label every name of the scheme ends with.
pub const SUFFIX: &str = "local";
/// Labels in a name of the scheme, `local` included.
pub const LABELS: usize = 7;
/// Longest name (without the trailing dot), as in DNS.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label, as in DNS.
pub const MAX_LABEL_LEN: usize = 63;

/// Which instance(s) a name selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instance {
    /// `any`: the policy picks one.
    Any,
    /// One instance by its number (never 0).
    Number(u32),
}

pub use crate::policy::Policy;

/// The label positions of a name, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    App,
    AppNs,
    Service,
    ServiceNs,
    Instance,
    Policy,
}

impl Label {
    /// The position's name, as the descriptor calls the field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Label::App => "appname",
            Label::AppNs => "appns",
            Label::Service => "servicename",
            Label::ServiceNs => "servicens",
            Label::Instance => "instance",
            Label::Policy => "policy",
        }
    }
}

/// Why a string is not a name of the scheme. [`NameError::reason`] gives a
/// fixed sentence; `Display` adds the label position where there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameError {
    /// The last label is not `local` (or the name is empty): not ours at all.
    NotLocal,
    /// Under `.local`, but not seven labels.
    WrongLabelCount,
    /// Longer than 253 characters.
    NameTooLong,
    /// A label is empty (`a..b`).
    EmptyLabel(Label),
    /// A label is longer than 63 characters.
    LabelTooLong(Label),
    /// A service label holds something other than letters, digits and `-`.
    BadCharacter(Label),
    /// A service label starts or ends with `-`.
    HyphenAtEdge(Label),
    /// The instance is neither `any` nor a number 1..=4294967295 without
    /// leading zeros.
    BadInstance,
    /// The instance number is 0 (instances count from 1).
    InstanceZero,
    /// The policy label is not one of the four policies.
    UnknownPolicy,
    /// An instance number with a policy other than `fixed`.
    NumberWithoutFixed,
    /// `fixed` with `any` instead of an instance number.
    FixedWithoutNumber,
}

impl NameError {
    /// One fixed sentence per kind of error.
    pub const fn reason(&self) -> &'static str {
        match self {
            NameError::NotLocal => "the name does not end in `.local`",
            NameError::WrongLabelCount => {
                "a name has 7 labels: app.appns.service.servicens.instance.policy.local"
            }
            NameError::NameTooLong => "the name is longer than 253 characters",
            NameError::EmptyLabel(_) => "a label is empty",
            NameError::LabelTooLong(_) => "a label is longer than 63 characters",
            NameError::BadCharacter(_) => "a label may hold only letters, digits and '-'",
            NameError::HyphenAtEdge(_) => "a label may not start or end with '-'",
            NameError::BadInstance => {
                "the instance is `any` or a number from 1 to 4294967295 without leading zeros"
            }
            NameError::InstanceZero => "instance numbers start at 1",
            NameError::UnknownPolicy => "the policy is one of closest, roundrobin, fastest, fixed",
            NameError::NumberWithoutFixed => "an instance number goes only with policy `fixed`",
            NameError::FixedWithoutNumber => "policy `fixed` needs an instance number, not `any`",
        }
    }

    /// The label the error is about, if it is about one.
    pub const fn label(&self) -> Option<Label> {
        match self {
            NameError::EmptyLabel(l)
            | NameError::LabelTooLong(l)
            | NameError::BadCharacter(l)
            | NameError::HyphenAtEdge(l) => Some(*l),
            NameError::BadInstance | NameError::InstanceZero => Some(Label::Instance),
            NameError::UnknownPolicy => Some(Label::Policy),
            _ => None,
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.label() {
            Some(label) => write!(f, "{} label: {}", label.as_str(), self.reason()),
            None => f.write_str(self.reason()),
        }
    }
}

impl core::error::Error for NameError {}

/// A parsed name. The service labels borrow from the parsed string and keep
/// its case; [`Name::write_to`] lower-cases them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Name<'a> {
    pub app: &'a str,
    pub appns: &'a str,
    pub service: &'a str,
    pub servicens: &'a str,
    pub instance: Instance,
    pub policy: Policy,
}

impl Name<'_> {
    /// Writes the canonical form: lower case, no trailing dot.
    pub fn write_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        self.write_service_to(out)?;
        match self.instance {
            Instance::Any => out.write_str(".any.")?,
            Instance::Number(n) => write!(out, ".{n}.")?,
        }
        out.write_str(self.policy.as_str())?;
        out.write_str(".local")
    }

    /// Writes the service part `app.appns.service.servicens`, lower case.
    pub fn write_service_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        for (i, label) in self.service_labels().into_iter().enumerate() {
            if i > 0 {
                out.write_char('.')?;
            }
            for c in label.chars() {
                out.write_char(c.to_ascii_lowercase())?;
            }
        }
        Ok(())
    }

    /// `[app, appns, service, servicens]`.
    pub fn service_labels(&self) -> [&str; 4] {
        [self.app, self.appns, self.service, self.servicens]
    }

    /// Whether `full` (`app.appns.svc.svcns`, as the cluster state names a
    /// service) names this name's service, ignoring case.
    pub fn is_service(&self, full: &str) -> bool {
        let labels = self.service_labels();
        // Four labels plus three dots.
        let len = labels.iter().map(|l| l.len()).sum::<usize>() + 3;
        if full.len() != len {
            return false;
        }
        let mut parts = full.split('.');
        labels
            .iter()
            .all(|l| parts.next().is_some_and(|p| p.eq_ignore_ascii_case(l)))
            && parts.next().is_none()
    }
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// Parses a name of the scheme; see the [module docs](self) for the rules
/// and the order in which they are checked.
pub fn parse(name: &str) -> Result<Name<'_>, NameError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let (rest, last) = match name.rsplit_once('.') {
        Some((rest, last)) => (Some(rest), last),
        None => (None, name),
    };
    if !last.eq_ignore_ascii_case(SUFFIX) {
        return Err(NameError::NotLocal);
    }
    let rest = rest.ok_or(NameError::WrongLabelCount)?;
    let mut labels = [""; LABELS - 1];
    let mut count = 0;
    for label in rest.split('.') {
        if count == labels.len() {
            return Err(NameError::WrongLabelCount);
        }
        labels[count] = label;
        count += 1;
    }
    if count != labels.len() {
        return Err(NameError::WrongLabelCount);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::NameTooLong);
    }
    let [app, appns, service, servicens, instance, policy] = labels;
    for (label, which) in [
        (app, Label::App),
        (appns, Label::AppNs),
        (service, Label::Service),
        (servicens, Label::ServiceNs),
    ] {
        check_label(label, which)?;
    }
    for (label, which) in [(instance, Label::Instance), (policy, Label::Policy)] {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(which));
        }
    }
    let instance = parse_instance(instance)?;
    let policy = Policy::from_label(policy).ok_or(NameError::UnknownPolicy)?;
    match (instance, policy) {
        (Instance::Number(_), Policy::Closest | Policy::Roundrobin | Policy::Fastest) => {
            Err(NameError::NumberWithoutFixed)
        }
        (Instance::Any, Policy::Fixed) => Err(NameError::FixedWithoutNumber),
        _ => Ok(Name {
            app,
            appns,
            service,
            servicens,
            instance,
            policy,
        }),
    }
}

/// The descriptor's label rule: 1-63 characters out of `[A-Za-z0-9-]`, not
/// starting or ending with `-`.
pub fn check_label(label: &str, which: Label) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel(which));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong(which));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(NameError::BadCharacter(which));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge(which));
    }
    Ok(())
}

fn parse_instance(label: &str) -> Result<Instance, NameError> {
    if label.eq_ignore_ascii_case("any") {
        return Ok(Instance::Any);
    }
    if !label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::BadInstance);
    }
    if label == "0" {
        return Err(NameError::InstanceZero);
    }
    if label.starts_with('0') {
        return Err(NameError::BadInstance);
    }
    label
        .parse()
        .map(Instance::Number)
        .map_err(|_| NameError::BadInstance)
}

#[cfg(test)]
mod tests;
