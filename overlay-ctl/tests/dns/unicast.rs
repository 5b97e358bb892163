use super::*;

#[test]
fn dig_resolves_every_policy_over_udp_and_tcp() {
    let lab = Lab::new();
    for (name, want) in expected().iter().take(7) {
        for transport in ["+notcp", "+tcp"] {
            let (out, took) = lab.dig(&[name, "A", "+short", transport]);
            assert_eq!(out.trim(), want.to_string(), "{name} {transport}");
            assert!(took < QUICK, "{name} took {took:?}");
        }
        // Any case, trailing dot.
        let upper = format!("{}.", name.to_uppercase());
        let (out, _) = lab.dig(&[&upper, "A", "+short"]);
        assert_eq!(out.trim(), want.to_string(), "{upper}");
    }
    // Authoritative answer with the 5 s TTL.
    let (out, _) = lab.dig(&[&format!("{CART}.any.closest.local"), "A"]);
    assert!(out.contains(" aa"), "{out}");
    let want = format!("{CART}.any.closest.local. 5 IN A 172.30.0.1");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
        "{out}"
    );
}

#[test]
fn dig_gets_the_documented_rcodes_quickly() {
    let lab = Lab::new();
    let closest = format!("{CART}.any.closest.local");
    for (name, qtype, want, answers) in [
        (closest.as_str(), "AAAA", "NOERROR", 0),
        (closest.as_str(), "MX", "NOERROR", 0),
        (closest.as_str(), "ANY", "NOERROR", 1),
        ("shop.prod.nope.team1.any.closest.local", "A", "NXDOMAIN", 0),
        (
            "shop.prod.nope.team1.any.closest.local",
            "AAAA",
            "NXDOMAIN",
            0,
        ),
        ("shop.prod.db.team1.any.closest.local", "A", "NXDOMAIN", 0),
        ("shop.prod.db.team1.9.fixed.local", "A", "NXDOMAIN", 0),
        ("shop.prod.cart.team1.2.fixed.local", "A", "NXDOMAIN", 0),
        (
            "shop.prod.lonely.team1.any.roundrobin.local",
            "A",
            "NXDOMAIN",
            0,
        ),
        ("cart.local", "A", "FORMERR", 0),
        ("local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.any.fixed.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.1.closest.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.0.fixed.local", "A", "FORMERR", 0),
        ("shop.prod.cart.team1.any.nearest.local", "A", "FORMERR", 0),
        (
            "shop_x.prod.cart.team1.any.closest.local",
            "A",
            "FORMERR",
            0,
        ),
        ("a.b.c.d.e.any.closest.local", "A", "FORMERR", 0),
        ("example.com", "A", "REFUSED", 0),
        (".", "NS", "REFUSED", 0),
    ] {
        for transport in ["+notcp", "+tcp"] {
            let got = lab.status(name, qtype, &[transport]);
            assert_eq!(
                got,
                (want.to_owned(), answers),
                "{name} {qtype} {transport}"
            );
        }
    }
    // Negative answers carry the SOA for caching.
    let (out, _) = lab.dig(&["shop.prod.nope.team1.any.closest.local", "A"]);
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    assert!(out.contains("SOA"), "{out}");
}

#[test]
fn dig_resolves_all_extra_services_in_one_run() {
    let lab = Lab::new();
    let names = expected();
    let mut args: Vec<&str> = vec!["+noall", "+answer"];
    for (name, _) in &names {
        args.push(name);
        args.push("A");
    }
    let (out, took) = lab.dig(&args);
    assert!(
        took < Duration::from_secs(5),
        "{} names took {took:?}",
        names.len()
    );
    let got: BTreeMap<String, Ipv4Addr> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A")
                .then(|| (f[0].trim_end_matches('.').to_owned(), f[4].parse().unwrap()))
        })
        .collect();
    assert_eq!(got.len(), names.len(), "{out}");
    for (name, want) in &names {
        assert_eq!(got.get(name), Some(want), "{name}");
    }
}

#[test]
fn state_updates_take_effect_at_once() {
    let lab = Lab::new();
    let closest = format!("{CART}.any.closest.local");
    assert_eq!(lab.status(&closest, "A", &[]), ("NOERROR".into(), 1));
    lab.tx
        .send_modify(|s| s.services.retain(|s| s.name != CART));
    assert_eq!(lab.status(&closest, "A", &[]), ("NXDOMAIN".into(), 0));
    assert_eq!(
        lab.status(&format!("{CART}.1.fixed.local"), "A", &[]).0,
        "NXDOMAIN"
    );
    assert!(mdns_one_shot(&lab, &closest, RecordType::A).is_none());
    // Another service still answers; a new one appears.
    let (out, _) = lab.dig(&[&format!("{DB}.2.fixed.local"), "+short"]);
    assert_eq!(out.trim(), "172.30.0.22");
    lab.tx.send_modify(|s| {
        s.services.push(service_spec(
            "new.ns.svc.team",
            false,
            [(Policy::Fastest, ip(7, 7))].into(),
        ))
    });
    let (out, _) = lab.dig(&["new.ns.svc.team.any.fastest.local", "+short"]);
    assert_eq!(out.trim(), "172.30.7.7");
}

#[test]
fn non_local_names_are_forwarded_when_configured() {
    let lab = Lab::with_upstream(Some(UPSTREAM));
    let (out, _) = lab.dig(&["www.example.com", "A", "+short"]);
    assert_eq!(out.trim(), UPSTREAM_IP.to_string());
    let (out, _) = lab.dig(&["www.example.com", "A", "+short", "+tcp"]);
    assert_eq!(out.trim(), UPSTREAM_IP.to_string());
    // .local names are still ours, never forwarded.
    let (out, _) = lab.dig(&[&format!("{CART}.any.fastest.local"), "+short"]);
    assert_eq!(out.trim(), "172.30.0.3");
    assert_eq!(
        lab.status("shop.prod.nope.team1.any.closest.local", "A", &[]),
        ("NXDOMAIN".into(), 0)
    );
    // An upstream that does not answer: SERVFAIL after its timeout.
    assert_eq!(lab.status("dead.example", "A", &[]), ("SERVFAIL".into(), 0));
}

/// The name service answers the node's instances, not hosts of the node's
/// LAN that route to it; and a flood of TCP connections takes no more than
/// the bound, while the instances' queries are answered meanwhile.
#[test]
fn only_instances_are_answered_and_tcp_is_bounded() {
    let lab = Lab::new();
    let name = format!("{CART}.any.closest.local");
    let lan = format!("-b{LAN_HOST}");
    for transport in ["+notcp", "+tcp"] {
        let gw = format!("@{GW}");
        let args = [
            gw.as_str(),
            "+tries=1",
            "+time=1",
            &name,
            "A",
            &lan,
            transport,
        ];
        let out = lab.client.cmd("dig", args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !text.contains("status:"),
            "a LAN host was answered ({transport}):\n{text}"
        );
        let (out, _) = lab.dig(&[&name, "A", "+short", transport]);
        assert_eq!(out.trim(), "172.30.0.1", "the instance ({transport})");
    }

    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let flood = lab
        .client
        .thread(move || {
            let conns: Vec<_> = (0..5 * MAX_TCP)
                .filter_map(|_| std::net::TcpStream::connect((GW, 53)).ok())
                .collect();
            held_tx.send(conns.len()).unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(20));
            drop(conns);
        })
        .unwrap();
    let opened = held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(opened > MAX_TCP, "the flood opened {opened}");
    // Connections beyond the bound are closed by the server at once.
    std::thread::sleep(Duration::from_millis(300));
    let ss = lab
        ._server
        .run("ss", ["-Htn", "state", "established", "( sport = :53 )"])
        .unwrap();
    let served = ss.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(served <= MAX_TCP, "{served} connections served:\n{ss}");
    let (out, _) = lab.dig(&[&name, "A", "+short", "+notcp"]);
    assert_eq!(out.trim(), "172.30.0.1", "answered during the flood");
    done_tx.send(()).unwrap();
    flood.join().unwrap();
}
