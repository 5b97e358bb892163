//! Unicast DNS over UDP and TCP: a hickory-server [`RequestHandler`] that
//! answers from the live cluster state.
//!
//! The handler reads the state through `watch::Receiver::borrow` (a shared
//! read of the newest value, never held across an `.await`), turns the query
//! name into text on the stack, and allocates only the answer record. Names
//! outside `.local` are refused, or relayed over UDP to the configured
//! upstream resolver. UDP runs on the lean loop in `udp.rs`, TCP on the
//! bounded one in `tcp.rs`, with the same handler; both answer the allowed
//! sources only (the node's instances).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use overlay_common::names::{self, NameError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::wire::{NameText, a_record, soa_record};
use super::{Answer, DEFAULT_TTL, DnsError, Result, resolve};
use crate::model::ClusterState;

/// How the unicast server behaves.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// TTL of answers and of negative answers (through the SOA), seconds.
    pub ttl: u32,
    /// Where queries for names outside `.local` go; `None` refuses them.
    pub upstream: Option<SocketAddr>,
    /// How long to wait for the upstream's answer before SERVFAIL.
    pub upstream_timeout: Duration,
    /// Idle time after which a TCP connection is closed.
    pub tcp_timeout: Duration,
    /// Only queries from these networks are answered (the node's instances);
    /// empty: from anywhere. Others are dropped unanswered.
    pub allowed: Vec<crate::model::Subnet>,
    /// TCP connections served at once; one more is closed at once.
    pub max_tcp: usize,
    /// Queries relayed upstream at once; one more is dropped unanswered.
    pub max_relayed: usize,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            ttl: DEFAULT_TTL,
            upstream: None,
            upstream_timeout: Duration::from_secs(2),
            tcp_timeout: Duration::from_secs(5),
            allowed: Vec::new(),
            max_tcp: 64,
            max_relayed: 256,
        }
    }
}

/// A running DNS server (UDP and TCP on the same address). Dropping it stops
/// it; [`DnsServer::shutdown`] stops it and waits.
pub struct DnsServer {
    /// TCP (`tcp.rs`), with bounded connections.
    tcp: JoinHandle<()>,
    /// UDP (`udp.rs`).
    udp: JoinHandle<()>,
    addr: SocketAddr,
    counts: Arc<DnsCounts>,
}

impl DnsServer {
    /// Serves `addr` (UDP and TCP) with answers from `state` and the given
    /// TTL, refusing names outside `.local`. Must be called inside a Tokio
    /// runtime: the sockets are bound in the calling thread's network
    /// namespace and the serving tasks are spawned on the current runtime.
    pub fn start(
        addr: SocketAddr,
        state: watch::Receiver<ClusterState>,
        ttl: u32,
    ) -> Result<DnsServer> {
        Self::start_with(
            addr,
            state,
            DnsOptions {
                ttl,
                ..DnsOptions::default()
            },
        )
    }

    /// [`DnsServer::start`] with every option. With port 0, TCP takes the
    /// port that UDP was given.
    pub fn start_with(
        addr: SocketAddr,
        state: watch::Receiver<ClusterState>,
        options: DnsOptions,
    ) -> Result<DnsServer> {
        let (udp, tcp, addr) = bind(addr)?;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let handler = Handler {
            state,
            ttl: options.ttl,
            soa: soa_record(options.ttl),
            edns,
            upstream: options.upstream,
            upstream_timeout: options.upstream_timeout,
            counts: Arc::default(),
            allowed: options.allowed,
            relays: Arc::new(tokio::sync::Semaphore::new(options.max_relayed)),
        };
        let counts = handler.counts.clone();
        let handler = Arc::new(handler);
        let tcp = tokio::spawn(super::tcp::serve(
            tcp,
            handler.clone(),
            options.max_tcp,
            options.tcp_timeout,
        ));
        let udp = tokio::spawn(super::udp::serve(Arc::new(udp), handler));
        Ok(DnsServer {
            tcp,
            udp,
            addr,
            counts,
        })
    }

    /// Replies sent so far, by result.
    pub fn counts(&self) -> Arc<DnsCounts> {
        self.counts.clone()
    }

    /// The address served (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits until the sockets are closed.
    pub async fn shutdown(mut self) -> Result<()> {
        for task in [&mut self.tcp, &mut self.udp] {
            task.abort();
            // Cancelled: the task and its socket are gone.
            let _ = task.await;
        }
        Ok(())
    }
}

/// The UDP socket and TCP listener on `addr` (with port 0, both on the port
/// UDP was given), registered with the current Tokio runtime.
fn bind(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr)> {
    let bind_error = |proto, addr| {
        move |source| DnsError::Bind {
            proto,
            addr,
            source,
        }
    };
    let setup_error = |proto, addr| {
        move |source| DnsError::Socket {
            proto,
            addr,
            source,
        }
    };
    let no_runtime = |source| DnsError::Runtime {
        what: "DnsServer::start",
        source,
    };
    let udp = std::net::UdpSocket::bind(addr).map_err(bind_error("UDP", addr))?;
    let addr = udp.local_addr().map_err(setup_error("UDP", addr))?;
    udp.set_nonblocking(true)
        .map_err(setup_error("UDP", addr))?;
    let tcp = std::net::TcpListener::bind(addr).map_err(bind_error("TCP", addr))?;
    tcp.set_nonblocking(true)
        .map_err(setup_error("TCP", addr))?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(no_runtime)?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(no_runtime)?;
    Ok((udp, tcp, addr))
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.tcp.abort();
        self.udp.abort();
    }
}

#[derive(Clone)]
pub(super) struct Handler {
    state: watch::Receiver<ClusterState>,
    ttl: u32,
    /// Sent with NXDOMAIN and empty answers, for negative caching.
    soa: Record,
    /// Our OPT record, sent when the query had one (FORMERR included, so
    /// that clients do not take FORMERR for missing EDNS support).
    edns: Edns,
    upstream: Option<SocketAddr>,
    upstream_timeout: Duration,
    /// Replies sent, by result (shared by the UDP and TCP paths).
    pub(super) counts: Arc<DnsCounts>,
    /// Who is answered ([`DnsOptions::allowed`]).
    allowed: Vec<crate::model::Subnet>,
    /// Permits for relayed queries in flight.
    pub(super) relays: Arc<tokio::sync::Semaphore>,
}

/// Replies of one DNS server by result code (`/metrics`).
#[derive(Debug, Default)]
pub struct DnsCounts {
    by_code: [std::sync::atomic::AtomicU64; 16],
}

impl DnsCounts {
    /// Counts a reply with response code `code` (its low four bits).
    pub fn count(&self, code: u16) {
        self.by_code[(code & 0xf) as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replies so far by result name (`noerror`, `nxdomain`, ...), those seen.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.by_code
            .iter()
            .enumerate()
            .map(|(code, n)| (code, n.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(code, n)| {
                let name = match code {
                    0 => "noerror".to_string(),
                    1 => "formerr".into(),
                    2 => "servfail".into(),
                    3 => "nxdomain".into(),
                    4 => "notimp".into(),
                    5 => "refused".into(),
                    other => format!("rcode{other}"),
                };
                (name, n)
            })
            .collect()
    }
}

/// What the handler decided, before any record is built.
enum Decision {
    Reply {
        rcode: ResponseCode,
        /// The address of the A record to answer with (for the question).
        answer: Option<Ipv4Addr>,
        /// Whether this is our zone's answer (AA bit, SOA on negatives).
        ours: bool,
    },
    Forward,
}

impl Handler {
    /// The reply to a plain positive query, written into `out` without
    /// allocating (`fast.rs`); `None` for everything else.
    pub(super) fn fast_answer(
        &self,
        query: &[u8],
        out: &mut [u8; super::fast::MAX_REPLY],
    ) -> Option<usize> {
        super::fast::answer(
            query,
            &self.state.borrow(),
            self.ttl,
            self.upstream.is_some(),
            out,
        )
    }

    /// Whether the request goes to the upstream (which may take a while).
    /// Whether queries from `src` are answered.
    pub(super) fn allows(&self, src: SocketAddr) -> bool {
        match src.ip() {
            _ if self.allowed.is_empty() => true,
            std::net::IpAddr::V4(ip) => self.allowed.iter().any(|net| net.contains(ip)),
            std::net::IpAddr::V6(_) => false,
        }
    }

    pub(super) fn forwards(&self, request: &Request) -> bool {
        self.upstream.is_some()
            && request.metadata.op_code == OpCode::Query
            && matches!(
                request.queries.queries(),
                [q] if names::parse(NameText::new(q.name()).as_str()) == Err(NameError::NotLocal)
            )
    }

    fn decide(&self, request: &Request) -> Decision {
        let refuse = |rcode| Decision::Reply {
            rcode,
            answer: None,
            ours: false,
        };
        if request.metadata.op_code != OpCode::Query {
            return refuse(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return refuse(ResponseCode::FormErr);
        };
        let name = NameText::new(query.name());
        let answer = resolve(&self.state.borrow(), name.as_str());
        let class_ok = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
        let reply = |rcode, answer| Decision::Reply {
            rcode,
            answer,
            ours: true,
        };
        match answer {
            Answer::NotLocal if self.upstream.is_some() => Decision::Forward,
            Answer::NotLocal => refuse(ResponseCode::Refused),
            _ if !class_ok => refuse(ResponseCode::Refused),
            Answer::Malformed(_) => refuse(ResponseCode::FormErr),
            Answer::NxDomain => reply(ResponseCode::NXDomain, None),
            Answer::Address(ip) => match query.query_type() {
                RecordType::A | RecordType::ANY => reply(ResponseCode::NoError, Some(ip)),
                _ => reply(ResponseCode::NoError, None),
            },
        }
    }

    /// Relays the raw query to the upstream over UDP and returns its answer.
    async fn forward(&self, upstream: SocketAddr, query: &[u8]) -> Result<Message> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let io = |source| DnsError::Forward { upstream, source };
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(upstream).await.map_err(io)?;
        socket.send(query).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        let id = u16::from_be_bytes([query[0], query[1]]);
        let after = self.upstream_timeout;
        loop {
            let len = tokio::time::timeout(after, socket.recv(&mut buf))
                .await
                .map_err(|_| DnsError::UpstreamTimeout { upstream, after })?
                .map_err(io)?;
            match Message::from_vec(&buf[..len]) {
                Ok(m) if m.metadata.id == id => return Ok(m),
                // A stray or mangled datagram: keep waiting for ours.
                _ => continue,
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|_| &self.edns);
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.upstream.is_some();

        let sent = match self.decide(request) {
            Decision::Reply {
                rcode,
                answer,
                ours,
            } => {
                metadata.response_code = rcode;
                metadata.authoritative = ours;
                let negative = ours && answer.is_none();
                let soa = negative.then_some(&self.soa);
                // `decide` answers only a request with exactly one question.
                let record = answer
                    .zip(request.queries.queries().first())
                    .map(|(ip, q)| a_record(&q.original().name, self.ttl, ip));
                let response = builder.build(metadata, record.as_ref(), soa, None, None);
                response_handle.send_response(response).await
            }
            Decision::Forward => {
                let upstream = self.upstream.expect("forwarding has an upstream");
                match self.forward(upstream, request.as_slice()).await {
                    Ok(reply) => {
                        metadata.response_code = reply.metadata.response_code;
                        metadata.authoritative = reply.metadata.authoritative;
                        metadata.truncation = reply.metadata.truncation;
                        let response = builder.build(
                            metadata,
                            &reply.answers,
                            &reply.authorities,
                            None,
                            &reply.additionals,
                        );
                        response_handle.send_response(response).await
                    }
                    Err(e) => {
                        tracing::debug!("{e}");
                        metadata.response_code = ResponseCode::ServFail;
                        let response = builder.build_no_records(metadata);
                        response_handle.send_response(response).await
                    }
                }
            }
        };
        let info = sent.unwrap_or_else(|e| {
            tracing::debug!("sending a DNS response: {e}");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        });
        self.counts.count(u16::from(info.response_code));
        info
    }
}
