//! The Oakestra design, reduced to its data path: a TUN device in a node
//! namespace and a userspace loop that reads each IPv4 packet from it and
//! sends it, bare, in a UDP datagram to the node that holds the destination's
//! subnet (port 50103), and writes each datagram received from a known node
//! back into the TUN device. One thread per direction, one packet per system
//! call, no offloads (as `ProxyTunnel.go` does it).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use overlay_common::DEFAULT_EWP;
use overlay_testnet::Netns;

pub const TUN_NAME: &str = "tun0";

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// How often the loops look at their stop flag.
const POLL_MS: libc::c_int = 100;

/// The two forwarding threads of one node; stopped and joined on drop.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Packets forwarded TUN→UDP and UDP→TUN, and packets dropped.
    pub counters: Arc<[AtomicU64; 3]>,
}

/// Opens `/dev/net/tun` and creates `name` in the calling thread's namespace.
fn open_tun(name: &str) -> std::io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: the name, then the flags (a short) at offset 16.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is big enough for.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Waits up to [`POLL_MS`] for `fd` to become readable.
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, POLL_MS) > 0 }
}

impl Forwarder {
    /// Creates [`TUN_NAME`] in `ns` and a UDP socket on `local`:50103, and
    /// starts forwarding. `peers` maps each remote /24 to its node address.
    /// The caller brings the device up and routes into it.
    pub fn start(
        ns: &Netns,
        local: Ipv4Addr,
        peers: Vec<(Ipv4Addr, Ipv4Addr)>,
    ) -> anyhow::Result<Forwarder> {
        let (tun, sock) = ns.enter(|| -> anyhow::Result<(File, UdpSocket)> {
            let tun = open_tun(TUN_NAME).context("creating the TUN device")?;
            let sock = UdpSocket::bind((local, DEFAULT_EWP)).context("binding the tunnel port")?;
            Ok((tun, sock))
        })??;
        sock.set_read_timeout(Some(Duration::from_millis(POLL_MS as u64)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let peers = Arc::new(peers);

        let (mut tun_rx, sock_tx) = (tun.try_clone()?, sock.try_clone()?);
        let (flag, c, table) = (stop.clone(), counters.clone(), peers.clone());
        let to_udp = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let fd = tun_rx.as_raw_fd();
            while !flag.load(Ordering::Relaxed) {
                if !readable(fd) {
                    continue;
                }
                let Ok(n) = tun_rx.read(&mut buf) else {
                    continue;
                };
                let Some(node) = next_hop(&buf[..n], &table) else {
                    c[2].fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if sock_tx.send_to(&buf[..n], (node, DEFAULT_EWP)).is_ok() {
                    c[0].fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        let mut tun_tx = tun;
        let (flag, c) = (stop.clone(), counters.clone());
        let to_tun = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                // Only registered nodes may inject packets.
                let known =
                    matches!(from, SocketAddr::V4(a) if peers.iter().any(|p| p.1 == *a.ip()));
                if !known || n < 20 {
                    c[2].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if tun_tx.write(&buf[..n]).is_ok() {
                    c[1].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Forwarder {
            stop,
            threads: vec![to_udp, to_tun],
            counters,
        })
    }

    /// Packets forwarded (to UDP, to TUN) and dropped so far.
    pub fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.counters[i].load(Ordering::Relaxed))
    }
}

/// The node that holds the destination's /24, for an IPv4 packet.
pub fn next_hop(packet: &[u8], peers: &[(Ipv4Addr, Ipv4Addr)]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], 0);
    peers.iter().find(|p| p.0 == dst).map(|p| p.1)
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                eprintln!("overlay-bench: a TUN forwarder thread panicked");
            }
        }
    }
}

/// Fails unless `/dev/net/tun` exists (the kernel has TUN support).
pub fn check_available() -> anyhow::Result<()> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: the TUN forwarder path needs the tun module");
    }
    Ok(())
}
