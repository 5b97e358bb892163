//! Tiny servers that say who answered, run inside instance namespaces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::Netns;

/// TCP: for each line "who" answers "<name>\n"; "bulk N" answers N bytes.
pub fn tcp(ns: &Netns, port: u16, name: &'static str) {
    let listener = ns
        .enter(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("enter")
        .expect("bind tcp");
    ns.thread(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn, name));
        }
    })
    .expect("server thread");
}

fn serve(conn: TcpStream, name: &str) {
    let mut w = conn.try_clone().expect("clone");
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let reply = match line.strip_prefix("bulk ") {
            Some(n) => vec![b'x'; n.parse().unwrap_or(0)],
            None => format!("{name}\n").into_bytes(),
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

/// UDP: every datagram gets "<name>" back.
pub fn udp(ns: &Netns, port: u16, name: &'static str) {
    let sock = ns
        .enter(|| UdpSocket::bind(("0.0.0.0", port)))
        .expect("enter")
        .expect("bind udp");
    ns.thread(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    })
    .expect("server thread");
}

/// One TCP exchange from inside `ns`: who answered, and the peer address seen.
pub fn tcp_who(ns: &Netns, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"who\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        Ok((line.trim().to_string(), s.peer_addr()?))
    })
    .expect("enter")
}

/// One UDP exchange from a fresh socket inside `ns`: who answered, and from where.
pub fn udp_who(ns: &Netns, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    ns.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"who", to)?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .expect("enter")
}

/// Reads exactly `n` bulk bytes over an open connection.
pub fn bulk(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    s.write_all(format!("bulk {n}\n").as_bytes())?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    assert!(buf.iter().all(|&b| b == b'x'), "bulk data corrupted");
    Ok(())
}
