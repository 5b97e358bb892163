//! The deployment descriptor (every field: `docs/descriptor.md`) and the
//! service record the store keeps for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Policy, Readiness, ServiceSpec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("descriptor: {0}")]
    Syntax(String),
    #[error("descriptor field `{field}`: {why}")]
    Field { field: &'static str, why: String },
}

/// What the orchestrator hands over for one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub appname: String,
    pub appns: String,
    pub servicename: String,
    pub servicens: String,
    #[serde(default)]
    pub exposed: bool,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default, alias = "statefull")]
    pub stateful: bool,
    /// When an instance is ready for new flows: `none` (at once) or
    /// `{port: N}` (TCP port N accepts); absent: any of `ports` accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
}

fn syntax(path: String, why: String) -> DescriptorError {
    if path == "." {
        DescriptorError::Syntax(why)
    } else {
        DescriptorError::Syntax(format!("field `{path}`: {why}"))
    }
}

/// A DNS-style label of the naming scheme: 1-63 ASCII letters, digits and
/// `-`, not starting or ending with `-` (case is kept; names compare
/// case-insensitively).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err("must be 1-63 characters".into());
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("`{label}` may hold only letters, digits and '-'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("`{label}` may not start or end with '-'"));
    }
    Ok(())
}

impl Descriptor {
    /// Parses a JSON or YAML descriptor and validates every field; errors
    /// name the field (`ports[0]: invalid value ...`).
    pub fn parse(text: &str) -> Result<Descriptor, DescriptorError> {
        let d: Descriptor = if text.trim_start().starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| syntax(e.path().to_string(), e.inner().to_string()))?
        } else {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| syntax(e.path().to_string(), e.inner().to_string()))?
        };
        d.validate()?;
        Ok(d)
    }

    pub fn validate(&self) -> Result<(), DescriptorError> {
        let field = |field, why: String| DescriptorError::Field { field, why };
        for (name, value) in [
            ("appname", &self.appname),
            ("appns", &self.appns),
            ("servicename", &self.servicename),
            ("servicens", &self.servicens),
        ] {
            check_label(value).map_err(|why| field(name, why))?;
        }
        use overlay_common::registry::limits;
        let too_many = |what: &str, n: usize, max: usize| {
            format!("{n} {what}, more than the {max} a service may have")
        };
        if self.ports.len() > limits::PORTS_PER_SERVICE {
            let why = too_many("ports", self.ports.len(), limits::PORTS_PER_SERVICE);
            return Err(field("ports", why));
        }
        if self.needs.len() > limits::NEEDS_PER_SERVICE {
            let why = too_many("needs", self.needs.len(), limits::NEEDS_PER_SERVICE);
            return Err(field("needs", why));
        }
        let mut seen = BTreeSet::new();
        for &p in &self.ports {
            if p == 0 {
                return Err(field("ports", "port 0 is not a port".into()));
            }
            if !seen.insert(p) {
                return Err(field("ports", format!("port {p} is listed twice")));
            }
        }
        if self.exposed && self.ports.is_empty() {
            return Err(field(
                "exposed",
                "an exposed service needs at least one port".into(),
            ));
        }
        for need in &self.needs {
            needed_service(need).map_err(|why| field("needs", why))?;
        }
        if self.readiness == Some(Readiness::Port(0)) {
            return Err(field("readiness", "port 0 is not a port".into()));
        }
        Ok(())
    }

    /// `app.appns.svc.svcns`, lower case.
    pub fn name(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.appname, self.appns, self.servicename, self.servicens
        )
        .to_ascii_lowercase()
    }
}

/// The service a `needs` entry names: four labels, or a full name of the
/// scheme (`app.appns.svc.svcns.instance.policy.local`).
pub fn needed_service(entry: &str) -> Result<String, String> {
    let labels: Vec<&str> = entry.split('.').collect();
    let service = match labels.len() {
        4 => &labels[..],
        7 if labels[6].eq_ignore_ascii_case("local") => &labels[..4],
        _ => {
            return Err(format!(
                "`{entry}` is neither app.appns.svc.svcns nor a full .local name"
            ));
        }
    };
    for l in service {
        check_label(l).map_err(|why| format!("`{entry}`: {why}"))?;
    }
    Ok(service.join(".").to_ascii_lowercase())
}

/// A deployed service as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub id: u32,
    #[serde(flatten)]
    pub descriptor: Descriptor,
    /// One per policy; empty for a stateful service.
    pub servips: BTreeMap<Policy, Ipv4Addr>,
}

impl ServiceRecord {
    pub fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            name: self.name.clone(),
            id: self.id,
            ports: self.descriptor.ports.clone(),
            stateful: self.descriptor.stateful,
            servips: self.servips.clone(),
            exposed: self.descriptor.exposed,
            // Validated at deploy: every entry names a service.
            needs: self
                .descriptor
                .needs
                .iter()
                .filter_map(|n| needed_service(n).ok())
                .collect(),
            readiness: self.descriptor.readiness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"appname":"shop","appns":"prod","servicename":"cart","servicens":"v1",
        "exposed":false,"needs":["shop.prod.db.v1","shop.prod.web.v1.any.closest.local"],"ports":[8080],"statefull":false}"#;

    #[test]
    fn accepts_every_field() {
        let d = Descriptor::parse(GOOD).unwrap();
        assert_eq!(d.name(), "shop.prod.cart.v1");
        assert_eq!(needed_service(&d.needs[1]).unwrap(), "shop.prod.web.v1");
    }

    #[test]
    fn each_bad_field_is_named() {
        let list: Vec<String> = (1..=257).map(|p| p.to_string()).collect();
        let many_ports = format!("\"ports\":[{}]", list.join(","));
        let cases = [
            ("\"appname\":\"shop\"", "\"appname\":\"sh op\"", "appname"),
            ("\"appns\":\"prod\"", "\"appns\":\"\"", "appns"),
            (
                "\"servicename\":\"cart\"",
                "\"servicename\":\"-cart\"",
                "servicename",
            ),
            ("\"servicens\":\"v1\"", "\"servicens\":\"v.1\"", "servicens"),
            ("\"ports\":[8080]", "\"ports\":[0]", "ports"),
            ("\"ports\":[8080]", "\"ports\":[70000]", "ports"),
            ("\"needs\":[", "\"needs\":[\"nope\",", "needs"),
            ("\"ports\":[8080]", &many_ports, "257 ports"),
            ("\"exposed\":false", "\"exposed\":\"yes\"", "exposed"),
            ("\"statefull\":false", "\"statefull\":1", "statefull"),
        ];
        for (from, to, name) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let err = Descriptor::parse(&text).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        let exposed = GOOD
            .replace("\"exposed\":false", "\"exposed\":true")
            .replace("\"ports\":[8080]", "\"ports\":[]");
        assert!(
            Descriptor::parse(&exposed)
                .unwrap_err()
                .to_string()
                .contains("exposed")
        );
        assert!(
            Descriptor::parse(r#"{"appname":"a"}"#)
                .unwrap_err()
                .to_string()
                .contains("appns")
        );
        for bad in [r#""sometimes""#, r#"{"port":0}"#, r#"{"port":1,"x":2}"#] {
            let text = GOOD.replace(
                "\"ports\":[8080]",
                &format!("\"ports\":[8080],\"readiness\":{bad}"),
            );
            let err = Descriptor::parse(&text).unwrap_err().to_string();
            assert!(err.contains("readiness"), "{bad}: {err}");
        }
        let yaml = "appname: shop\nappns: prod\nservicename: db\nservicens: v1\nports: [5432]\nstateful: true\n";
        assert!(Descriptor::parse(yaml).unwrap().stateful);
        let none = Descriptor::parse(&format!("{yaml}readiness: none\n")).unwrap();
        assert_eq!(none.readiness, Some(Readiness::None));
        let port = Descriptor::parse(&format!("{yaml}readiness: {{port: 9000}}\n")).unwrap();
        assert_eq!(port.readiness, Some(Readiness::Port(9000)));
        assert!(
            Descriptor::parse(&yaml.replace("5432", "x"))
                .unwrap_err()
                .to_string()
                .contains("ports")
        );
    }
}
