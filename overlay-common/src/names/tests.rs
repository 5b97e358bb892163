use super::*;

/// A fixed-size `fmt::Write` sink: this crate has no allocator.
struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            bytes: [0; 512],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap()
    }
}

impl fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn canonical(name: &Name<'_>) -> Buf {
    let mut buf = Buf::new();
    name.write_to(&mut buf).unwrap();
    buf
}

fn err(name: &str) -> NameError {
    match parse(name) {
        Ok(n) => panic!("`{name}` parsed as {n:?}"),
        Err(e) => e,
    }
}

#[test]
fn parses_every_policy() {
    let n = parse("shop.prod.cart.team1.any.closest.local").unwrap();
    assert_eq!(
        n,
        Name {
            app: "shop",
            appns: "prod",
            service: "cart",
            servicens: "team1",
            instance: Instance::Any,
            policy: Policy::Closest,
        }
    );
    for (label, policy) in [
        ("roundrobin", Policy::Roundrobin),
        ("fastest", Policy::Fastest),
    ] {
        let s = ["shop.prod.cart.team1.any.", label, ".local"];
        let mut buf = Buf::new();
        for part in s {
            fmt::Write::write_str(&mut buf, part).unwrap();
        }
        let n = parse(buf.as_str()).unwrap();
        assert_eq!(n.policy, policy);
        assert_eq!(n.instance, Instance::Any);
    }
    let n = parse("shop.prod.db.team1.3.fixed.local").unwrap();
    assert_eq!((n.instance, n.policy), (Instance::Number(3), Policy::Fixed));
    let n = parse("a.b.c.d.4294967295.fixed.local").unwrap();
    assert_eq!(n.instance, Instance::Number(u32::MAX));
}

#[test]
fn case_and_trailing_dot() {
    let n = parse("Shop.PROD.Cart.Team-1.ANY.RoundRobin.LOCAL.").unwrap();
    assert_eq!(n.app, "Shop");
    assert_eq!(n.instance, Instance::Any);
    assert_eq!(n.policy, Policy::Roundrobin);
    assert_eq!(
        canonical(&n).as_str(),
        "shop.prod.cart.team-1.any.roundrobin.local"
    );
    let n = parse("a.b.c.d.7.FIXED.Local").unwrap();
    assert_eq!(canonical(&n).as_str(), "a.b.c.d.7.fixed.local");
}

#[test]
fn canonical_form_parses_back() {
    for s in [
        "a.b.c.d.any.closest.local",
        "a-1.b2.c-c.d.any.fastest.local",
        "x.y.z.w.12.fixed.local",
    ] {
        let n = parse(s).unwrap();
        let buf = canonical(&n);
        assert_eq!(buf.as_str(), s);
        assert_eq!(parse(buf.as_str()).unwrap(), n);
    }
}

#[test]
fn service_match_ignores_case() {
    let n = parse("Shop.prod.CART.team1.any.closest.local").unwrap();
    assert!(n.is_service("shop.prod.cart.team1"));
    assert!(n.is_service("SHOP.PROD.CART.TEAM1"));
    assert!(!n.is_service("shop.prod.cart.team2"));
    assert!(!n.is_service("shop.prod.cart"));
    assert!(!n.is_service("shop.prod.cart.team1.x"));
    assert!(!n.is_service("shopp.rod.cart.team1"));
    let mut buf = Buf::new();
    n.write_service_to(&mut buf).unwrap();
    assert_eq!(buf.as_str(), "shop.prod.cart.team1");
}

#[test]
fn not_local() {
    for s in [
        "",
        ".",
        "example.com",
        "a.b.c.d.any.closest.com",
        "a.b.c.d.any.closest.locals",
        "a.b.c.d.any.closest.local..",
        "localhost",
    ] {
        assert_eq!(err(s), NameError::NotLocal, "{s}");
    }
}

#[test]
fn wrong_label_count() {
    for s in [
        "local",
        "local.",
        ".local",
        "host.local",
        "a.b.c.any.closest.local",
        "a.b.c.d.e.any.closest.local",
        "a.b.c.d.any.local",
        "a.b.c.d.any.closest.x.local",
    ] {
        assert_eq!(err(s), NameError::WrongLabelCount, "{s}");
    }
}

const L63: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn too_long() {
    let mut buf = Buf::new();
    for _ in 0..4 {
        fmt::Write::write_str(&mut buf, L63).unwrap();
        fmt::Write::write_str(&mut buf, ".").unwrap();
    }
    fmt::Write::write_str(&mut buf, "1.fixed.local").unwrap();
    assert_eq!(buf.as_str().len(), 4 * 64 + 13);
    assert_eq!(err(buf.as_str()), NameError::NameTooLong);
}

#[test]
fn bad_service_labels() {
    let cat = |parts: &[&str]| {
        let mut buf = Buf::new();
        for part in parts {
            fmt::Write::write_str(&mut buf, part).unwrap();
        }
        buf
    };
    let ok63 = cat(&["a.b.c.", L63, ".any.closest.local"]);
    assert_eq!(ok63.as_str().split('.').nth(3).unwrap().len(), 63);
    assert!(parse(ok63.as_str()).is_ok());
    let long = cat(&["a.b.c.", L63, "x.any.closest.local"]);
    assert_eq!(
        err(long.as_str()),
        NameError::LabelTooLong(Label::ServiceNs)
    );
    let long = cat(&[L63, "x.b.c.d.any.closest.local"]);
    assert_eq!(err(long.as_str()), NameError::LabelTooLong(Label::App));
    for (s, e) in [
        (
            ".b.c.d.any.closest.local",
            NameError::EmptyLabel(Label::App),
        ),
        (
            "a..c.d.any.closest.local",
            NameError::EmptyLabel(Label::AppNs),
        ),
        (
            "a.b..d.any.closest.local",
            NameError::EmptyLabel(Label::Service),
        ),
        (
            "a.b.c..any.closest.local",
            NameError::EmptyLabel(Label::ServiceNs),
        ),
        (
            "a.b.c.d..closest.local",
            NameError::EmptyLabel(Label::Instance),
        ),
        ("a.b.c.d.any..local", NameError::EmptyLabel(Label::Policy)),
        (
            "a_x.b.c.d.any.closest.local",
            NameError::BadCharacter(Label::App),
        ),
        (
            "a.b*.c.d.any.closest.local",
            NameError::BadCharacter(Label::AppNs),
        ),
        (
            "a.b.c d.d.any.closest.local",
            NameError::BadCharacter(Label::Service),
        ),
        (
            "a.b.c.dé.any.closest.local",
            NameError::BadCharacter(Label::ServiceNs),
        ),
        (
            "-a.b.c.d.any.closest.local",
            NameError::HyphenAtEdge(Label::App),
        ),
        (
            "a.b-.c.d.any.closest.local",
            NameError::HyphenAtEdge(Label::AppNs),
        ),
        (
            "a.b.-.d.any.closest.local",
            NameError::HyphenAtEdge(Label::Service),
        ),
        (
            "a.b.c.d-.any.closest.local",
            NameError::HyphenAtEdge(Label::ServiceNs),
        ),
        // Leftmost bad label wins.
        ("-a.b_.c.d.x.y.local", NameError::HyphenAtEdge(Label::App)),
    ] {
        assert_eq!(err(s), e, "{s}");
    }
}

#[test]
fn bad_instance_and_policy() {
    for (s, e) in [
        ("a.b.c.d.all.closest.local", NameError::BadInstance),
        ("a.b.c.d.-1.fixed.local", NameError::BadInstance),
        ("a.b.c.d.+1.fixed.local", NameError::BadInstance),
        ("a.b.c.d.01.fixed.local", NameError::BadInstance),
        ("a.b.c.d.1x.fixed.local", NameError::BadInstance),
        ("a.b.c.d.4294967296.fixed.local", NameError::BadInstance),
        (
            "a.b.c.d.99999999999999999999.fixed.local",
            NameError::BadInstance,
        ),
        ("a.b.c.d.0.fixed.local", NameError::InstanceZero),
        ("a.b.c.d.any.nearest.local", NameError::UnknownPolicy),
        ("a.b.c.d.any.fixed1.local", NameError::UnknownPolicy),
        ("a.b.c.d.1.closest.local", NameError::NumberWithoutFixed),
        ("a.b.c.d.2.roundrobin.local", NameError::NumberWithoutFixed),
        ("a.b.c.d.3.fastest.local", NameError::NumberWithoutFixed),
        ("a.b.c.d.any.fixed.local", NameError::FixedWithoutNumber),
        ("a.b.c.d.ANY.Fixed.local", NameError::FixedWithoutNumber),
        // The instance is checked before the policy.
        ("a.b.c.d.0.nearest.local", NameError::InstanceZero),
    ] {
        assert_eq!(err(s), e, "{s}");
    }
}

#[test]
fn every_error_has_a_reason_and_message() {
    let all = [
        NameError::NotLocal,
        NameError::WrongLabelCount,
        NameError::NameTooLong,
        NameError::EmptyLabel(Label::App),
        NameError::LabelTooLong(Label::AppNs),
        NameError::BadCharacter(Label::Service),
        NameError::HyphenAtEdge(Label::ServiceNs),
        NameError::BadInstance,
        NameError::InstanceZero,
        NameError::UnknownPolicy,
        NameError::NumberWithoutFixed,
        NameError::FixedWithoutNumber,
    ];
    for (i, a) in all.iter().enumerate() {
        assert!(!a.reason().is_empty());
        for b in &all[i + 1..] {
            assert_ne!(a.reason(), b.reason(), "{a:?} and {b:?}");
        }
    }
    let mut buf = Buf::new();
    fmt::Write::write_fmt(
        &mut buf,
        format_args!("{}", NameError::BadCharacter(Label::App)),
    )
    .unwrap();
    assert_eq!(
        buf.as_str(),
        "appname label: a label may hold only letters, digits and '-'"
    );
    let mut buf = Buf::new();
    fmt::Write::write_fmt(&mut buf, format_args!("{}", NameError::InstanceZero)).unwrap();
    assert_eq!(buf.as_str(), "instance label: instance numbers start at 1");
}

#[test]
fn policy_labels() {
    for p in Policy::ALL {
        assert_eq!(Policy::from_label(p.as_str()), Some(p));
    }
    assert_eq!(Policy::from_label("ROUNDROBIN"), Some(Policy::Roundrobin));
    assert_eq!(Policy::from_label("round-robin"), None);
}
