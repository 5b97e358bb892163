//! The TCP side of [`super::DnsServer`]: length-prefixed queries (RFC 1035
//! 4.2.2) answered by the same handler as UDP, with the connections bounded:
//! at most `max_connections` at once (a connection beyond is closed at
//! once), each closed after `idle` without a query, and only from the
//! allowed sources.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Record;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::{NetError, xfer::Protocol};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};

use super::server::Handler;

/// Serves `listener` until the task is aborted.
pub(super) async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    max_connections: usize,
    idle: Duration,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("DNS: accepting a TCP connection: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !handler.allows(src) {
            continue;
        }
        // Over the bound: the connection is dropped (closed) unanswered.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            connection(stream, src, &handler, idle).await;
            drop(slot);
        });
    }
}

/// Answers the queries of one connection in order until it closes, idles
/// or sends something that is not a query.
async fn connection(stream: TcpStream, src: SocketAddr, handler: &Handler, idle: Duration) {
    let (mut read, write) = stream.into_split();
    let reply = TcpReply {
        write: Arc::new(Mutex::new(write)),
    };
    loop {
        let mut len = [0u8; 2];
        let message = async {
            read.read_exact(&mut len).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            read.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let Ok(Ok(buf)) = tokio::time::timeout(idle, message).await else {
            return;
        };
        let Ok(request) = Request::from_bytes(buf, src, Protocol::Tcp) else {
            return;
        };
        handler
            .handle_request::<_, TokioTime>(&request, reply.clone())
            .await;
    }
}

/// Encodes a response with its length prefix and writes it back.
#[derive(Clone)]
struct TcpReply {
    write: Arc<Mutex<OwnedWriteHalf>>,
}

#[async_trait::async_trait]
impl ResponseHandler for TcpReply {
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
        let (bytes, info) = super::udp::encode(response, u16::MAX)?;
        // The encoder writes at most 65535 bytes.
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        self.write.lock().await.write_all(&framed).await?;
        Ok(info)
    }
}
