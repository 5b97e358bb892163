//! A Multicast DNS responder (RFC 6762) for the names of the scheme, on the
//! instance links.
//!
//! One UDP socket on `0.0.0.0:5353` (SO_REUSEADDR and SO_REUSEPORT, so an
//! Avahi on the node can share the port) joins 224.0.0.251 on each
//! configured interface by index. `IP_PKTINFO` tells which interface a query
//! came in on; queries from other interfaces are ignored. Replies leave
//! through that interface with the interface's configured source address
//! (which may be the instances' gateway address held on the node's loopback).
//!
//! * one-shot (legacy) queries, source port != 5353: a unicast reply to the
//!   querier's address and port, with the query's ID and questions, no
//!   cache-flush bit and TTLs of at most 10 s (section 6.7);
//! * questions with the QU bit: a unicast reply to the querier (section 5.4);
//! * other questions: a multicast reply to 224.0.0.251:5353 on that link.
//!
//! Only names of the scheme that exist are answered (A, or ANY with the A
//! record); for other types of an existing name the reply is an NSEC record
//! saying the name has only an A record (section 6.1). Known answers in the
//! query with at least half our TTL suppress the answer (section 7.1). Names
//! that are not ours, malformed or unknown, get no reply at all.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::wire::{NameText, a_record, nsec_a_only};
use super::{DnsError, Result, lookup};
use crate::model::ClusterState;
use overlay_common::names;

/// The mDNS IPv4 group.
pub const MDNS_ADDR: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// The mDNS port.
pub const MDNS_PORT: u16 = 5353;
/// Longest TTL in a reply to a one-shot query (RFC 6762 section 6.7).
const LEGACY_TTL_MAX: u32 = 10;

/// A running responder; dropping it stops it.
pub struct Mdns {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    socket: UdpSocket,
    /// Interface index -> (name, source address of replies).
    ifaces: Mutex<HashMap<u32, (String, Ipv4Addr)>>,
    state: watch::Receiver<ClusterState>,
    ttl: u32,
}

impl Mdns {
    /// Starts answering on `ifaces` (interface name, source address for
    /// replies on it) with answers from `state` and the given TTL. Must be
    /// called inside a Tokio runtime, in the network namespace of the
    /// interfaces. The list can change later through
    /// [`Mdns::add_interface`] and [`Mdns::remove_interface`], as instance
    /// links come and go.
    pub fn start(
        ifaces: Vec<(String, Ipv4Addr)>,
        state: watch::Receiver<ClusterState>,
        ttl: u32,
    ) -> Result<Mdns> {
        let socket = open_socket().map_err(|source| DnsError::MdnsSocket { source })?;
        let socket = UdpSocket::from_std(socket.into()).map_err(|source| DnsError::Runtime {
            what: "Mdns::start",
            source,
        })?;
        let shared = Arc::new(Shared {
            socket,
            ifaces: Mutex::new(HashMap::new()),
            state,
            ttl,
        });
        let mdns = Mdns {
            task: tokio::spawn(run(shared.clone())),
            shared,
        };
        for (name, src) in ifaces {
            mdns.add_interface(&name, src)?;
        }
        Ok(mdns)
    }

    /// Joins 224.0.0.251 on `ifname` and answers queries from it, from
    /// `src`. Adding an interface again replaces its source address; a link
    /// deleted and created again under the same name is followed to its new
    /// index.
    pub fn add_interface(&self, ifname: &str, src: Ipv4Addr) -> Result<()> {
        let index =
            nix::net::if_::if_nametoindex(ifname).map_err(|source| DnsError::NoInterface {
                ifname: ifname.to_owned(),
                source,
            })?;
        let mut ifaces = self.ifaces();
        // The same name under an old index: that link is gone.
        ifaces.retain(|&i, (name, _)| i == index || name != ifname);
        if ifaces.insert(index, (ifname.to_owned(), src)).is_none() {
            let joined = SockRef::from(&self.shared.socket)
                .join_multicast_v4_n(&MDNS_ADDR, &InterfaceIndexOrAddress::Index(index));
            if let Err(e) = joined {
                ifaces.remove(&index);
                return Err(DnsError::Join {
                    ifname: ifname.to_owned(),
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// Stops answering on `ifname` and leaves the group there (nothing to
    /// leave if the interface is already gone).
    pub fn remove_interface(&self, ifname: &str) -> Result<()> {
        let mut ifaces = self.ifaces();
        let Some(&index) = ifaces
            .iter()
            .find_map(|(index, (name, _))| (name == ifname).then_some(index))
        else {
            return Err(DnsError::NotAnswering {
                ifname: ifname.to_owned(),
            });
        };
        ifaces.remove(&index);
        // Fails when the link was deleted, which dropped the membership.
        let _ = SockRef::from(&self.shared.socket)
            .leave_multicast_v4_n(&MDNS_ADDR, &InterfaceIndexOrAddress::Index(index));
        Ok(())
    }

    /// The interfaces answered on, with their source addresses.
    pub fn interfaces(&self) -> Vec<(String, Ipv4Addr)> {
        let mut list: Vec<_> = self.ifaces().values().cloned().collect();
        list.sort();
        list
    }

    fn ifaces(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (String, Ipv4Addr)>> {
        self.shared.ifaces.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("interfaces", &self.interfaces())
            .finish()
    }
}

fn open_socket() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // RFC 6762 section 11: replies go out with IP TTL 255.
    socket.set_multicast_ttl_v4(255)?;
    socket.set_ttl_v4(255)?;
    socket.set_multicast_loop_v4(false)?;
    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT).into())?;
    Ok(socket)
}

async fn run(shared: Arc<Shared>) {
    let fd = shared.socket.as_raw_fd();
    let mut buf = vec![0u8; 9000];
    loop {
        let received = shared
            .socket
            .async_io(Interest::READABLE, || recv_with_ifindex(fd, &mut buf))
            .await;
        let (len, from, ifindex) = match received {
            Ok(Some(got)) => got,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("mDNS: receiving: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let src = {
            let ifaces = shared.ifaces.lock().unwrap_or_else(|e| e.into_inner());
            match ifaces.get(&ifindex) {
                Some((_, src)) => *src,
                None => continue,
            }
        };
        let replies = respond(&shared.state.borrow(), shared.ttl, &buf[..len], from);
        for (dst, bytes) in replies {
            let sent = shared
                .socket
                .async_io(Interest::WRITABLE, || {
                    send_from(fd, &bytes, dst, ifindex, src)
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!("mDNS: replying to {dst}: {e}");
            }
        }
    }
}

/// One datagram: its length, sender and arrival interface; `None` for one
/// without IPv4 packet info.
fn recv_with_ifindex(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddrV4, u32)>> {
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let Some(from) = msg.address else {
        return Ok(None);
    };
    let ifindex = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::Ipv4PacketInfo(info) => u32::try_from(info.ipi_ifindex).ok(),
            _ => None,
        })
    });
    Ok(ifindex.map(|i| (msg.bytes, SocketAddrV4::from(from), i)))
}

/// Sends `bytes` to `dst` out of interface `ifindex` with source `src`.
fn send_from(
    fd: RawFd,
    bytes: &[u8],
    dst: SocketAddrV4,
    ifindex: u32,
    src: Ipv4Addr,
) -> io::Result<usize> {
    let info = libc::in_pktinfo {
        ipi_ifindex: ifindex as libc::c_int,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::MSG_DONTWAIT,
        Some(&SockaddrIn::from(dst)),
    )
    .map_err(io::Error::from)
}

/// The replies (destination, datagram) to one received datagram; empty when
/// it asks for nothing we own. Pure, for the tests.
pub(crate) fn respond(
    state: &ClusterState,
    ttl: u32,
    packet: &[u8],
    from: SocketAddrV4,
) -> Vec<(SocketAddrV4, Vec<u8>)> {
    let Ok(query) = Message::from_vec(packet) else {
        return Vec::new();
    };
    // Section 18: only standard queries with rcode 0; never answer answers.
    if query.metadata.message_type != MessageType::Query
        || query.metadata.op_code != OpCode::Query
        || query.metadata.response_code != ResponseCode::NoError
        || from.port() == 0
    {
        return Vec::new();
    }
    let legacy = from.port() != MDNS_PORT;
    let ttl = if legacy { ttl.min(LEGACY_TTL_MAX) } else { ttl };
    let mut multicast = Response::default();
    let mut unicast = Response::default();
    for q in &query.queries {
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            continue;
        }
        let text = NameText::new(q.name());
        let Some(ip) = names::parse(text.as_str())
            .ok()
            .and_then(|name| lookup(state, &name))
        else {
            continue;
        };
        let out = if legacy || q.mdns_unicast_response() {
            &mut unicast
        } else {
            &mut multicast
        };
        match q.query_type() {
            RecordType::A | RecordType::ANY => {
                let known = query.answers.iter().any(|r| {
                    r.name == q.name && r.data == RData::A(A(ip)) && r.ttl.saturating_mul(2) >= ttl
                });
                if !known {
                    out.add(a_record(&q.name, ttl, ip), !legacy);
                    if !legacy {
                        out.additional(nsec_a_only(&q.name, ttl));
                    }
                }
            }
            _ => out.add(nsec_a_only(&q.name, ttl), !legacy),
        }
    }
    let mut replies = Vec::new();
    if legacy {
        if let Some(bytes) = unicast.encode(query.metadata.id, &query.queries) {
            replies.push((from, bytes));
        }
        return replies;
    }
    if let Some(bytes) = unicast.encode(0, &[]) {
        replies.push((from, bytes));
    }
    if let Some(bytes) = multicast.encode(0, &[]) {
        replies.push((SocketAddrV4::new(MDNS_ADDR, MDNS_PORT), bytes));
    }
    replies
}

#[derive(Default)]
struct Response {
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

impl Response {
    fn add(&mut self, mut record: Record, cache_flush: bool) {
        record.mdns_cache_flush = cache_flush;
        if !self.answers.contains(&record) {
            self.answers.push(record);
        }
    }

    fn additional(&mut self, mut record: Record) {
        record.mdns_cache_flush = true;
        if !self.additionals.contains(&record) {
            self.additionals.push(record);
        }
    }

    fn encode(self, id: u16, questions: &[hickory_proto::op::Query]) -> Option<Vec<u8>> {
        if self.answers.is_empty() {
            return None;
        }
        let mut message = Message::new(id, MessageType::Response, OpCode::Query);
        message.metadata.authoritative = true;
        message.add_queries(questions.iter().cloned());
        // An additional record that repeats an answer adds nothing.
        let additionals = self
            .additionals
            .into_iter()
            .filter(|r| !self.answers.contains(r));
        message.add_additionals(additionals.collect::<Vec<_>>());
        message.add_answers(self.answers);
        message.to_vec().ok()
    }
}
