//! Flows of an instance that goes away are ended at once: a UDP client that
//! keeps its source port is balanced to a live backend on its next
//! datagram, instead of sending into a black hole.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::store_cluster::*;
use overlay_testnet::{Netns, servers};

/// Field order is drop order: the instances' namespaces before the cluster.
struct Setup {
    _api: [Netns; 2],
    w1: Netns,
    rr: SocketAddr,
    c: Cluster,
}

/// api 2 on n2 and api 3 on n3, each answering with its name through
/// `serve` on port 8080, and a client instance of web on n1.
fn setup(label: &str, serve: fn(&Netns, u16, &'static str)) -> Setup {
    let c = Cluster::new(label);
    let api = c.deploy_service(&descriptor("api", &[8080], false));
    c.deploy_service(&descriptor("web", &[], false));
    let rr = SocketAddr::from((servip(&api, "roundrobin"), 8080));
    let (a2, a3, w1) = (
        Netns::new("a2").unwrap(),
        Netns::new("a3").unwrap(),
        Netns::new("w1").unwrap(),
    );
    c.agents[1].deploy(API, 2, &a2);
    let i3 = c.agents[2].deploy(API, 3, &a3);
    c.agents[0].deploy(WEB, 1, &w1);
    serve(&a2, 8080, "api2");
    serve(&a3, 8080, "api3");
    overlay_testnet::wait_until(Duration::from_secs(5), "api3 everywhere", || {
        c.everywhere(i3.nsip, true)
    })
    .unwrap();
    Setup {
        _api: [a2, a3],
        w1,
        rr,
        c,
    }
}

#[test]
fn a_udp_flow_moves_when_its_backend_leaves() {
    let Setup { c, rr, w1, .. } = setup("deadbe", servers::udp);

    // One client socket, one source port: one flow for its whole life.
    let sock = w1.enter(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let ask = || -> Option<String> {
        w1.enter(|| sock.send_to(b"who", rr)).unwrap().unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = (0..10).find_map(|_| ask()).expect("the flow is answered");
    let (owner, other, n) = match first.as_str() {
        "api2" => (1, "api3", 2),
        _ => (2, "api2", 3),
    };
    assert_eq!(
        ask().as_deref(),
        Some(first.as_str()),
        "a flow keeps its backend"
    );

    c.agents[owner].ctl_ok(&["instance", "rm", API, "--instance", &n.to_string()]);
    let gone = Instant::now();
    let moved = (0..20).find_map(|_| ask().filter(|who| who == other));
    assert!(
        moved.is_some() && gone.elapsed() < Duration::from_secs(5),
        "the flow found {other} after its backend left (waited {:?})",
        gone.elapsed()
    );
}

/// A TCP connection whose backend leaves gets a reset on its next segment
/// (the new backend knows no such connection), not a long silence.
#[test]
fn a_tcp_connection_is_reset_when_its_backend_leaves() {
    use std::io::{BufRead, BufReader, Write};
    let Setup { c, rr, w1, .. } = setup("deadtcp", servers::tcp);
    let conn = w1
        .enter(|| std::net::TcpStream::connect_timeout(&rr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = || -> std::io::Result<String> {
        (&conn).write_all(b"who\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok(line.trim().to_string())
    };
    let owner = ask().unwrap();
    let (agent, n) = if owner == "api2" { (1, 2) } else { (2, 3) };
    c.agents[agent].ctl_ok(&["instance", "rm", API, "--instance", &n.to_string()]);
    let gone = Instant::now();
    let err = ask().expect_err("the connection ends");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ) || err.to_string().contains("reset"),
        "{err:?}"
    );
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "ended after {:?}",
        gone.elapsed()
    );
}
