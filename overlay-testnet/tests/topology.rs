//! End-to-end checks of the test-network support. They need root and fail
//! (never skip) without it.

use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use overlay_testnet::{
    Error, Netns, NsChild, Result, Topology, cleanup_stale, require_root, veth, wait_until,
};

/// `ip netns list`, names only.
fn netns_list() -> HashSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_gone(names: &[String]) {
    let listed = netns_list();
    for name in names {
        assert!(!listed.contains(name), "namespace {name} still exists");
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} file left"
        );
    }
}

fn ping(from: &Netns, to: Ipv4Addr) -> Result<String> {
    from.run("ping", ["-c1", "-W1", &to.to_string()])
}

#[test]
fn nodes_ping_each_other_over_the_bridge() -> Result<()> {
    require_root()?;
    let topo = Topology::new(3)?;
    assert_eq!(topo.nodes().len(), 3);
    let n1 = topo.node(1);
    assert_eq!(n1.ip, Ipv4Addr::new(192, 0, 2, 11));
    assert_eq!(topo.node(3).ip(), Ipv4Addr::new(192, 0, 2, 13));
    assert_eq!(n1.uplink, "eth0");
    assert_eq!(topo.node(2).index, 2);

    for target in [topo.node(2), topo.node(3)] {
        let out = ping(n1.ns(), target.ip)?;
        assert!(out.contains("1 received"), "{out}");
    }
    let out = ping(topo.node(3).ns(), n1.ip)?;
    assert!(out.contains("1 received"), "{out}");

    // An unused address on the same (isolated) LAN does not answer, and the
    // error says which command failed.
    let err = ping(n1.ns(), Ipv4Addr::new(192, 0, 2, 200)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Command { .. }), "{msg}");
    assert!(msg.contains("ping -c1 -W1 192.0.2.200"), "{msg}");
    assert!(msg.contains(n1.ns().name()), "{msg}");

    // Ports are enslaved to the bridge in the switch namespace.
    let ports = topo.switch().ip(["-o", "link", "show", "master", "br0"])?;
    for port in ["p1", "p2", "p3"] {
        assert!(ports.contains(&format!(" {port}@")), "{ports}");
    }
    // IPv6 is off.
    let v6 = n1
        .ns()
        .run("cat", ["/proc/sys/net/ipv6/conf/all/disable_ipv6"])?;
    assert_eq!(v6.trim(), "1");
    Ok(())
}

#[test]
fn extra_host_reaches_nodes() -> Result<()> {
    require_root()?;
    let mut topo = Topology::new(1)?;
    let ip = Ipv4Addr::new(192, 0, 2, 100);
    let host_name = topo.add_host("client", ip)?.name().to_owned();
    assert!(host_name.ends_with("-client"), "{host_name}");
    assert_eq!(topo.hosts().len(), 1);
    let out = ping(&topo.hosts()[0], topo.node(1).ip)?;
    assert!(out.contains("1 received"), "{out}");
    let out = ping(topo.node(1).ns(), ip)?;
    assert!(out.contains("1 received"), "{out}");

    for bad in [
        Ipv4Addr::new(192, 0, 2, 11),  // n1's
        Ipv4Addr::new(192, 0, 2, 100), // taken just now
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(192, 0, 2, 255),
    ] {
        let err = topo.add_host("bad", bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
    }
    let names = topo.netns_names();
    assert_eq!(names.len(), 3);
    drop(topo);
    assert_gone(&names);
    Ok(())
}

#[test]
fn enter_sees_the_namespace_and_leaves_the_caller_alone() -> Result<()> {
    require_root()?;
    let topo = Topology::new(2)?;
    let n2 = topo.node(2);
    let own_ns = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let before = own_ns();

    let (inside, eth0_addrs, dev) = n2.ns().enter(|| {
        let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter(|a| a.interface_name == "eth0")
            .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
            .collect();
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        (own_ns(), addrs, dev)
    })?;

    assert_eq!(eth0_addrs, vec![IpAddr::V4(n2.ip)]);
    assert!(dev.contains("eth0:") && dev.contains("lo:"), "{dev}");
    assert!(!dev.contains("br0"), "{dev}");
    let ns_ino = std::fs::metadata(n2.ns().path()).unwrap().ino();
    assert_eq!(inside.to_string_lossy(), format!("net:[{ns_ino}]"));
    assert_ne!(inside, before);
    assert_eq!(own_ns(), before, "caller thread changed namespace");

    // Panics inside the closure reach the caller.
    let caught = catch_unwind(AssertUnwindSafe(|| n2.ns().enter(|| panic!("inside"))));
    assert!(caught.is_err());
    assert_eq!(own_ns(), before);
    Ok(())
}

#[test]
fn dropping_the_topology_deletes_its_namespaces() -> Result<()> {
    require_root()?;
    let topo = Topology::new(3)?;
    let names = topo.netns_names();
    assert_eq!(names.len(), 4);
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name), "{name} missing while alive");
        assert!(name.len() <= 32, "{name}");
        assert!(
            name.starts_with(&format!("ovt{}n", std::process::id())),
            "{name}"
        );
    }
    // A process left running inside does not keep anything alive.
    let n1 = topo.node(1).ns();
    let mut stray = n1.cmd("sleep", ["600"]).spawn().unwrap();
    let stray_pid = stray.id() as i32;
    wait_until(Duration::from_secs(5), "the stray process to start", || {
        n1.pids().is_ok_and(|p| p.contains(&stray_pid))
    })
    .expect("stray process never entered the namespace");
    // A test may put files in /etc/netns/NAME.
    let etc = topo.node(2).ns().etc_dir();
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();

    drop(topo);
    assert_gone(&names);
    assert!(!etc.exists(), "{} left behind", etc.display());
    let status = stray.wait().unwrap();
    assert!(
        !status.success(),
        "stray process should have been killed: {status}"
    );
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up() -> Result<()> {
    require_root()?;
    let mut names = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::new(2).unwrap();
        names = topo.netns_names();
        assert_eq!(
            netns_list()
                .intersection(&names.iter().cloned().collect())
                .count(),
            3
        );
        panic!("test failure while holding a topology");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3);
    assert_gone(&names);
    Ok(())
}

#[test]
fn ns_child_is_killed_on_drop() -> Result<()> {
    require_root()?;
    let ns = Netns::new("child")?;
    let child = ns.spawn("sleep", ["600"])?;
    let pid = child.id();
    let proc_dir = format!("/proc/{pid}");
    let ns_ino = std::fs::metadata(ns.path()).unwrap().ino();
    // `ip netns exec` execs the program, so once it has switched namespace
    // the child itself is inside.
    wait_until(
        Duration::from_secs(5),
        "the child to enter the namespace",
        || {
            std::fs::read_link(format!("{proc_dir}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == format!("net:[{ns_ino}]"))
        },
    )?;
    wait_until(
        Duration::from_secs(5),
        "ip netns pids to list the child",
        || ns.pids().is_ok_and(|p| p.contains(&(pid as i32))),
    )?;
    assert!(child.command_line().contains("sleep 600"));

    drop(child);
    assert!(
        !Path::new(&proc_dir).exists(),
        "pid {pid} still exists after drop"
    );
    assert!(ns.pids()?.is_empty());

    // A prepared command with a pipe: it sees only the namespace's loopback.
    let mut listing = NsChild::spawn(ns.cmd("ip", ["-o", "link"]).stdout(Stdio::piped()))?;
    let mut out = String::new();
    listing
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(listing.wait().unwrap().success());
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("lo: <LOOPBACK,UP"), "{out}");
    Ok(())
}

#[test]
fn concurrent_topologies_do_not_collide() -> Result<()> {
    require_root()?;
    let build = || -> Result<Vec<String>> {
        let topo = Topology::new(2)?;
        let out = ping(topo.node(1).ns(), topo.node(2).ip)?;
        assert!(out.contains("1 received"), "{out}");
        Ok(topo.netns_names())
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(build);
        let b = s.spawn(build);
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a?, b?);
    let all: HashSet<&String> = a.iter().chain(&b).collect();
    assert_eq!(all.len(), a.len() + b.len(), "names collided: {a:?} {b:?}");
    assert_gone(&a);
    assert_gone(&b);
    Ok(())
}

#[test]
fn veth_links_two_namespaces() -> Result<()> {
    require_root()?;
    let a = Netns::new("va")?;
    let b = Netns::new("vb")?;
    veth(&a, "to-b", &b, "to-a")?;
    a.ip(["addr", "add", "192.0.2.1/30", "dev", "to-b"])?;
    b.ip(["addr", "add", "192.0.2.2/30", "dev", "to-a"])?;
    let out = a.run("ping", ["-c1", "-W1", "192.0.2.2"])?;
    assert!(out.contains("1 received"), "{out}");
    assert!(a.ip(["link", "show", "to-b"])?.contains("state UP"));

    // Errors name the command and carry its stderr.
    let err = a.ip(["link", "show", "nosuchdev"]).unwrap_err().to_string();
    assert!(
        err.contains(&format!("ip -n {} link show nosuchdev", a.name())),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    Ok(())
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes() -> Result<()> {
    require_root()?;
    // A pid that certainly belonged to a process that is gone now.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("ovt{dead_pid}n0-stale");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    let mine = Netns::new("live")?;

    let deleted = cleanup_stale()?;
    assert!(deleted >= 1, "deleted {deleted}");
    let listed = netns_list();
    assert!(!listed.contains(&stale), "{stale} survived");
    assert!(
        listed.contains(mine.name()),
        "a live process's namespace was deleted"
    );
    Ok(())
}
