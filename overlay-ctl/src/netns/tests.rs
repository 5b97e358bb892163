//! Parsing and validation; no privileges or namespaces needed.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;

#[test]
fn netns_values_parse_as_path_pid_or_name() {
    assert_eq!(
        "/run/netns/x".parse::<NetnsRef>().unwrap(),
        NetnsRef::Path(PathBuf::from("/run/netns/x"))
    );
    assert_eq!("1234".parse::<NetnsRef>().unwrap(), NetnsRef::Pid(1234));
    assert_eq!(
        "inst-1".parse::<NetnsRef>().unwrap(),
        NetnsRef::Name("inst-1".into())
    );
    assert_eq!(
        "12a".parse::<NetnsRef>().unwrap(),
        NetnsRef::Name("12a".into())
    );
    assert_eq!(
        NetnsRef::Name("a".into()).path().unwrap(),
        PathBuf::from("/run/netns/a")
    );
    assert_eq!(
        NetnsRef::Pid(7).path().unwrap(),
        PathBuf::from("/proc/7/ns/net")
    );
}

#[test]
fn bad_netns_values_are_rejected_with_the_value() {
    for bad in ["", "a/b", "..", ".", "0", "99999999999", &"n".repeat(65)] {
        let err = bad.parse::<NetnsRef>().unwrap_err();
        assert!(matches!(err, Error::InvalidNetns { .. }), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
    }
    assert!("n".repeat(64).parse::<NetnsRef>().is_ok());
    let rel = NetnsRef::Path(PathBuf::from("run/netns/x"));
    assert!(rel.path().is_err());
    assert!(NetnsRef::Name("x/y".into()).open().is_err());
}

#[test]
fn opening_a_missing_namespace_names_it() {
    let err = NetnsRef::Name("ovl-no-such-ns".into()).open().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ovl-no-such-ns"), "{msg}");
    assert!(msg.contains("/run/netns/ovl-no-such-ns"), "{msg}");
    let err = NetnsRef::Path("/etc/hostname".into()).open();
    if let Err(err) = err {
        let msg = err.to_string();
        assert!(msg.contains("/etc/hostname"), "{msg}");
    }
}

#[test]
fn interface_names_are_checked() {
    for ok in ["vh1x2", "a", "abcdefghijklmno"] {
        validate_ifname(ok).unwrap();
    }
    for bad in ["", "abcdefghijklmnop", "a/b", "a:b", "a b", ".", ".."] {
        let err = validate_ifname(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
    }
}

#[test]
fn specs_are_checked() {
    let spec = LinkSpec::new(
        NetnsRef::Name("i".into()),
        "vh1",
        Ipv4Addr::new(10, 30, 1, 2),
        1450,
    );
    assert_eq!(spec.gateway, DEFAULT_GATEWAY);
    spec.validate().unwrap();
    let with = |f: &dyn Fn(&mut LinkSpec)| {
        let mut s = spec.clone();
        f(&mut s);
        s.validate()
    };
    assert!(with(&|s| s.host_if = "x".repeat(16)).is_err());
    assert!(with(&|s| s.nsip = Ipv4Addr::UNSPECIFIED).is_err());
    assert!(with(&|s| s.nsip = Ipv4Addr::new(224, 0, 0, 1)).is_err());
    assert!(with(&|s| s.gateway = Ipv4Addr::new(10, 0, 0, 1)).is_err());
    assert!(with(&|s| s.mtu = 67).is_err());
    assert!(with(&|s| s.netns = NetnsRef::Name(String::new())).is_err());
}

#[test]
fn temp_names_fit_and_differ() {
    let a = temp_name();
    let b = temp_name();
    assert_ne!(a, b);
    validate_ifname(&a).unwrap();
    assert!(a.len() <= MAX_IFNAME);
}
