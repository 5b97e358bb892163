//! Tiny servers that say who answered, and a paced download with a
//! checkable pattern, run inside instance namespaces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::Netns;

/// TCP: for each line "who" answers "<name>\n"; "bulk N" answers N bytes.
pub fn tcp(ns: &Netns, port: u16, name: &'static str) {
    listen(ns, port, move |conn| serve(conn, name));
}

/// Accepts TCP connections on `port` inside `ns`, each served by `serve` on a thread of its own.
fn listen(ns: &Netns, port: u16, serve: impl Fn(TcpStream) + Copy + Send + 'static) {
    let listener = ns
        .enter(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("enter")
        .expect("bind tcp");
    ns.thread(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
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

/// Period of the download pattern: byte `i` of a download is `i % 251`. A
/// prime period, so a lost, repeated or misplaced block of any power-of-two
/// size breaks the pattern.
const PERIOD: usize = 251;

/// The pattern from offset 0, `len` bytes long.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PERIOD) as u8).collect()
}

/// TCP: for the line "pattern N SECS" sends N bytes of the download pattern,
/// paced evenly over SECS seconds, then closes the connection.
pub fn paced(ns: &Netns, port: u16) {
    listen(ns, port, |conn| drop(serve_pattern(conn)));
}

fn serve_pattern(conn: TcpStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut words = line.split_whitespace().skip(1).map(str::parse::<u64>);
    let (Some(Ok(total)), Some(Ok(secs))) = (words.next(), words.next()) else {
        return Ok(());
    };
    // Whole periods, so every block continues the pattern where the last ended.
    let block = pattern(PERIOD * 256);
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    let mut w = &conn;
    while sent < total {
        let len = block.len().min((total - sent) as usize);
        w.write_all(&block[..len])?;
        sent += len as u64;
        let due = Duration::from_secs(secs).mul_f64(sent as f64 / total as f64);
        if let Some(early) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(early);
        }
    }
    Ok(())
}

/// Downloads `total` bytes over `secs` seconds from a [`paced`] server over
/// an open connection, checking every byte against the pattern; `progress`
/// follows the count received. Returns the count at the end of the stream.
pub fn download(
    s: &mut TcpStream,
    total: u64,
    secs: u64,
    progress: &std::sync::atomic::AtomicU64,
) -> std::io::Result<u64> {
    s.write_all(format!("pattern {total} {secs}\n").as_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    let expected = pattern(PERIOD + buf.len());
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        let at = (got % PERIOD as u64) as usize;
        // Slice comparison (memcmp) first: a byte loop is slow in test builds.
        if buf[..n] != expected[at..at + n] {
            let i = (0..n).find(|&i| buf[i] != expected[at + i]).unwrap_or(0);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("download corrupted at byte {}", got + i as u64),
            ));
        }
        got += n as u64;
        progress.store(got, std::sync::atomic::Ordering::Relaxed);
    }
}
