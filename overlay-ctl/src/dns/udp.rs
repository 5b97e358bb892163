//! The UDP side of [`super::DnsServer`]: one receive loop that runs the
//! hickory-server [`RequestHandler`] in place and writes the reply straight
//! to the socket.
//!
//! hickory-server's own UDP driver spawns a task per datagram and passes the
//! reply through a channel to the socket's task: three task wake-ups and
//! several allocations per query, which made it slower than dnsmasq. Here a
//! burst of datagrams is drained per wake-up and each query is answered
//! before the next is read; plain positive queries are answered from the
//! datagram's bytes (`fast.rs`) and the rest through the handler. Only relayed (non-`.local`) queries get a task of
//! their own, so a slow upstream never holds up local answers. TCP stays on
//! hickory-server's driver.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::{NetError, xfer::Protocol};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;

use super::fast;
use super::server::Handler;

/// Largest datagram read (EDNS payloads above this are not expected).
const MAX_DATAGRAM: usize = 4096;

/// Answers the queries arriving on `socket` until the task is aborted.
pub(super) async fn serve(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = [0u8; fast::MAX_REPLY];
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!("DNS: waiting for UDP queries: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        // Drain what is queued, then wait again.
        loop {
            let (len, src) = match socket.try_recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // E.g. ICMP errors from an earlier reply: nothing to do.
                Err(_) => continue,
            };
            if src.port() == 0 || !handler.allows(src) {
                continue;
            }
            if let Some(n) = handler.fast_answer(&buf[..len], &mut out) {
                // The reply's RCODE: the low bits of header byte 3.
                handler.counts.count(u16::from(out[3] & 0xf));
                if let Err(e) = socket.send_to(&out[..n], src).await {
                    tracing::debug!("DNS: replying to {src}: {e}");
                }
                continue;
            }
            let request = match Request::from_bytes(buf[..len].to_vec(), src, Protocol::Udp) {
                Ok(request) => request,
                Err(_) => {
                    handler.counts.count(u16::from(ResponseCode::FormErr));
                    form_error(&socket, &buf[..len], src).await;
                    continue;
                }
            };
            if request.metadata.message_type == MessageType::Response {
                continue;
            }
            let reply = UdpReply {
                socket: socket.clone(),
                dst: src,
                max_payload: request.max_payload(),
            };
            if handler.forwards(&request) {
                // Bounded: beyond the relays in flight a query goes
                // unanswered, and its client asks again.
                let Ok(permit) = handler.relays.clone().try_acquire_owned() else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    handler
                        .handle_request::<_, TokioTime>(&request, reply)
                        .await;
                    drop(permit);
                });
            } else {
                handler
                    .handle_request::<_, TokioTime>(&request, reply)
                    .await;
            }
        }
    }
}

/// A query whose header reads but whose body does not: FORMERR, as
/// hickory-server answers it. Shorter than a header: no reply.
async fn form_error(socket: &UdpSocket, packet: &[u8], dst: SocketAddr) {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let mut bytes = Vec::with_capacity(12);
    let reply = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    if reply.emit(&mut BinEncoder::new(&mut bytes)).is_ok() {
        let _ = socket.send_to(&bytes, dst).await;
    }
}

/// Encodes the handler's response and sends it to the querier.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    max_payload: u16,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (bytes, info) = encode(response, self.max_payload)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

/// A response's wire bytes, at most `max_size` long; a response that cannot
/// be encoded becomes a bare SERVFAIL of the same id. Shared with `tcp.rs`.
pub(super) fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    max_size: u16,
) -> Result<(Vec<u8>, ResponseInfo), NetError> {
    let id = response.metadata().id;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    let info = match response.destructive_emit(&mut encoder) {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("DNS: encoding a response: {e}");
            bytes.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            header.emit(&mut BinEncoder::new(&mut bytes))?;
            ResponseInfo::from(header)
        }
    };
    Ok((bytes, info))
}
