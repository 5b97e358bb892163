//! A userspace TUN<->UDP forwarder ([`Forwarder`]): every IPv4 packet the
//! kernel routes into a TUN device is sent, bare, in one UDP datagram to an
//! address the caller picks per packet, and every datagram from an accepted
//! source is written back into the device as a packet.
//!
//! This is the data path of Oakestra's `ProxyTunnel` (one thread per
//! direction, one packet per system call, no offloads), which the benchmark
//! measures, and the shape of a test gateway that tunnels to one node's
//! north-south port ([`Forwarder::point_to_point`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::libc::{self, c_short};
use nix::poll::{PollFd, PollFlags, poll};

use crate::{Error, Netns, Result};

const TUN_DEVICE: &str = "/dev/net/tun";
/// How often the threads look at their stop flag, in milliseconds: the
/// longest a drop waits for them.
const STOP_POLL_MS: u16 = 100;
/// Shorter than an IPv4 header: cannot be a packet, never written to TUN.
const MIN_PACKET: usize = 20;
/// The largest IPv4 packet (and UDP payload).
const BUF_LEN: usize = 65536;

/// Indices into the counters, in the order [`Forwarder::counts`] returns them.
const TO_UDP: usize = 0;
const TO_TUN: usize = 1;
const DROPPED: usize = 2;

/// Sends the socket's datagrams with UDP checksum 0 (`SO_NO_CHECK`).
fn no_udp_checksum(sock: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the
/// union, padded to the union's size on 64-bit targets (the kernel copies
/// `sizeof(struct ifreq)`, which is never more than this).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: c_short,
    _union_rest: [u8; 22],
}

// TUNSETIFF is declared as writing an int but the kernel reads a whole
// ifreq, hence the "bad" variant that takes the request number as is.
nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, IfReq);

/// A TUN device and the two threads forwarding between it and a UDP socket.
/// Dropping it stops and joins the threads, then closes the device (which
/// deletes it) and the socket.
#[derive(Debug)]
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<[AtomicU64; 3]>,
}

impl Forwarder {
    /// Creates the TUN device `tun` (no packet-info header) inside `ns`,
    /// binds a UDP socket to `local` inside `ns`, and starts forwarding:
    ///
    /// * each packet read from `tun` goes to `route(packet)`; packets it
    ///   returns `None` for are counted as dropped;
    /// * each datagram received from a source that `accept` approves is
    ///   written into `tun`; other datagrams, and any shorter than an IPv4
    ///   header, are counted as dropped.
    ///
    /// The device starts down and without addresses: the caller brings it up
    /// and routes into it (e.g. `ns.ip(["link", "set", tun, "up"])`).
    pub fn start(
        ns: &Netns,
        tun: &str,
        local: SocketAddrV4,
        route: impl Fn(&[u8]) -> Option<SocketAddrV4> + Send + 'static,
        accept: impl Fn(SocketAddrV4) -> bool + Send + 'static,
    ) -> Result<Forwarder> {
        Forwarder::launch(ns, tun, local, route, accept, false)
    }

    /// [`Forwarder::start`], optionally sending UDP without a checksum.
    fn launch(
        ns: &Netns,
        tun: &str,
        local: SocketAddrV4,
        route: impl Fn(&[u8]) -> Option<SocketAddrV4> + Send + 'static,
        accept: impl Fn(SocketAddrV4) -> bool + Send + 'static,
        no_checksum: bool,
    ) -> Result<Forwarder> {
        let req = if_req(tun)?;
        // Both are created inside `ns` and stay there; the threads below can
        // run anywhere.
        let (device, sock) = ns.enter(|| -> Result<(File, UdpSocket)> {
            let device = open_tun(tun, &req)?;
            let sock = UdpSocket::bind(local).map_err(|source| Error::Io {
                what: format!("binding UDP {local} for TUN device {tun}"),
                source,
            })?;
            if no_checksum {
                no_udp_checksum(&sock).map_err(|source| Error::Io {
                    what: format!("turning the UDP checksum off on {local}"),
                    source,
                })?;
            }
            Ok((device, sock))
        })??;
        let io_err = |what: &str| {
            let what = format!("{what} for TUN device {tun} in {}", ns.name());
            move |source| Error::Io { what, source }
        };
        sock.set_read_timeout(Some(Duration::from_millis(STOP_POLL_MS.into())))
            .map_err(io_err("setting the UDP read timeout"))?;
        let tun_rx = device.try_clone().map_err(io_err("duplicating the fd"))?;
        let sock_tx = sock.try_clone().map_err(io_err("duplicating the socket"))?;

        // Built before the threads so that a failed spawn stops the other.
        let mut fwd = Forwarder {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(2),
            counters: Arc::default(),
        };
        let (stop, counters) = (fwd.stop.clone(), fwd.counters.clone());
        fwd.spawn(format!("{tun}-to-udp"), move || {
            tun_to_udp(tun_rx, sock_tx, route, &stop, &counters)
        })
        .map_err(io_err("starting the TUN-to-UDP thread"))?;
        let (stop, counters) = (fwd.stop.clone(), fwd.counters.clone());
        fwd.spawn(format!("udp-to-{tun}"), move || {
            udp_to_tun(sock, device, accept, &stop, &counters)
        })
        .map_err(io_err("starting the UDP-to-TUN thread"))?;
        Ok(fwd)
    }

    /// A tunnel to one peer in the overlay's framing: every packet read from
    /// `tun` goes to `remote` with UDP checksum 0 (like the nodes' own tunnel
    /// packets), and only datagrams whose source IP is `remote`'s (any port)
    /// are written into `tun`. Otherwise as [`Forwarder::start`].
    pub fn point_to_point(
        ns: &Netns,
        tun: &str,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Forwarder> {
        Forwarder::launch(
            ns,
            tun,
            local,
            move |_| Some(remote),
            move |from| from.ip() == remote.ip(),
            true,
        )
    }

    /// Packets forwarded from TUN to UDP, from UDP to TUN, and dropped
    /// (either direction) so far. A packet whose send or write fails is in
    /// none of them.
    pub fn counts(&self) -> [u64; 3] {
        [TO_UDP, TO_TUN, DROPPED].map(|i| self.counters[i].load(Ordering::Relaxed))
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.threads
            .push(std::thread::Builder::new().name(name).spawn(f)?);
        Ok(())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("overlay-testnet: a TUN forwarder thread panicked");
            }
        }
    }
}

/// The client [`gateway_for`] puts behind a gateway, and the gateway's
/// address on the client's link (its default route).
pub const GATEWAY_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 7);
pub const GATEWAY_ON_CLIENT_LINK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 1);

/// Makes `gw` a north-south gateway for `client`: the client gets
/// [`GATEWAY_CLIENT`]/24 on `eth0`, routed through `gw`; every packet it sends
/// is tunnelled from `local` to `node` (a node's NSP) through `tun0`, and what
/// comes back from `node` is routed back to it. The gateway's own traffic is
/// not tunnelled.
pub fn gateway_for(
    gw: &Netns,
    client: &Netns,
    local: SocketAddrV4,
    node: SocketAddrV4,
) -> Result<Forwarder> {
    crate::veth(client, "eth0", gw, "cli0")?;
    let on_link = GATEWAY_ON_CLIENT_LINK.to_string();
    client.ip([
        "addr",
        "add",
        &format!("{GATEWAY_CLIENT}/24"),
        "dev",
        "eth0",
    ])?;
    client.ip(["link", "set", "eth0", "up"])?;
    client.ip(["route", "add", "default", "via", &on_link])?;
    gw.ip(["addr", "add", &format!("{on_link}/24"), "dev", "cli0"])?;
    gw.ip(["link", "set", "cli0", "up"])?;
    gw.set_sysctl("net.ipv4.conf.all.forwarding", "1")?;
    // Replies from the node come out of tun0 although the node is routed
    // via the gateway's own link.
    gw.set_sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    gw.set_sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    let fwd = Forwarder::point_to_point(gw, "tun0", local, node)?;
    // Room for the 28 bytes of tunnel framing on a 1500-byte link.
    gw.ip(["link", "set", "tun0", "mtu", "1472", "up"])?;
    gw.ip(["rule", "add", "iif", "cli0", "lookup", "100"])?;
    gw.ip(["route", "add", "default", "dev", "tun0", "table", "100"])?;
    Ok(fwd)
}

/// Fails unless TUN devices can be created: `/dev/net/tun` opens (the node
/// exists and the kernel has the tun module).
pub fn check_available() -> Result<()> {
    open_device().map(drop)
}

fn open_device() -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|source| Error::Io {
            what: format!("opening {TUN_DEVICE} (TUN forwarding needs the kernel's tun module)"),
            source,
        })
}

/// Checks the device name before any namespace work, so that a bad one
/// fails as an invalid argument rather than an ioctl error.
fn if_req(name: &str) -> Result<IfReq> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "TUN device name {name:?}: 1 to {} bytes, no '/', NUL or whitespace",
            libc::IFNAMSIZ - 1
        )));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as c_short,
        _union_rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(req)
}

/// Creates the device in the calling thread's network namespace; it lives
/// as long as the returned file (and its clones).
fn open_tun(name: &str, req: &IfReq) -> Result<File> {
    let file = open_device()?;
    // SAFETY: the fd is open and `req` is a live ifreq-sized struct that the
    // kernel only reads and writes within.
    unsafe { tun_set_iff(file.as_raw_fd(), req) }.map_err(|source| Error::Sys {
        what: format!("creating TUN device {name} (TUNSETIFF)"),
        source,
    })?;
    Ok(file)
}

/// Waits up to [`STOP_POLL_MS`] for `file` to have something to read; errors
/// and hang-ups count as readable so that the read reports them.
fn readable(file: &File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, STOP_POLL_MS), Ok(n) if n > 0)
}

fn tun_to_udp(
    mut tun: File,
    sock: UdpSocket,
    route: impl Fn(&[u8]) -> Option<SocketAddrV4>,
    stop: &AtomicBool,
    counters: &[AtomicU64; 3],
) {
    let mut buf = vec![0u8; BUF_LEN];
    while !stop.load(Ordering::Relaxed) {
        // The read blocks, so it only happens once poll says it will not.
        if !readable(&tun) {
            continue;
        }
        let Ok(n) = tun.read(&mut buf) else {
            continue;
        };
        let Some(to) = route(&buf[..n]) else {
            counters[DROPPED].fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if sock.send_to(&buf[..n], to).is_ok() {
            counters[TO_UDP].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn udp_to_tun(
    sock: UdpSocket,
    mut tun: File,
    accept: impl Fn(SocketAddrV4) -> bool,
    stop: &AtomicBool,
    counters: &[AtomicU64; 3],
) {
    let mut buf = vec![0u8; BUF_LEN];
    while !stop.load(Ordering::Relaxed) {
        // Times out after STOP_POLL_MS (set in `start`) to look at `stop`.
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // The socket is IPv4, so `from` always is; the match only unwraps it.
        let accepted = matches!(from, SocketAddr::V4(from) if accept(from));
        if !accepted || n < MIN_PACKET {
            counters[DROPPED].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if tun.write(&buf[..n]).is_ok() {
            counters[TO_TUN].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
        let req = if_req("tun0").unwrap();
        assert_eq!(&req.name[..5], b"tun0\0");
        assert_eq!(req.flags, 0x1001);
    }

    #[test]
    fn bad_device_names_are_invalid_arguments() {
        for name in ["", "a/b", "a b", "sixteen-letters!"] {
            let err = if_req(name).err().expect(name);
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
        }
        assert!(if_req("fifteen-letters").is_ok());
    }
}
