use super::*;

#[test]
fn getent_resolves_through_the_written_resolv_conf() {
    let lab = Lab::new();
    let netns = lab.client.name().to_owned();
    dns::write_resolv_conf(&netns, GW).unwrap();
    let path = dns::resolv_conf_path(&netns).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("nameserver {GW}\n")), "{text}");
    assert!(
        text.contains("options ndots:1 timeout:1 attempts:2\n"),
        "{text}"
    );

    for (name, want) in expected().iter().step_by(5) {
        let (out, took) = lab.getent(name);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {out:?}");
        let mut fields = stdout.split_whitespace();
        assert_eq!(fields.next(), Some(want.to_string().as_str()), "{stdout}");
        assert_eq!(fields.next(), Some(name.as_str()), "{stdout}");
        assert!(took < QUICK, "{name} took {took:?}");
    }
    for bad in [
        "shop.prod.nope.team1.any.closest.local",
        "shop.prod.db.team1.any.closest.local",
        "shop.prod.cart.team1.any.fixed.local",
        "cart.local",
    ] {
        let (out, took) = lab.getent(bad);
        // getent's exit code 2: not found.
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(took < Duration::from_secs(2), "{bad} took {took:?}");
    }

    dns::remove_resolv_conf(&netns).unwrap();
    assert!(!path.exists());
    assert!(!path.parent().unwrap().exists());
    dns::remove_resolv_conf(&netns).unwrap();
}
