//! A small etcd v3 client over tonic: the unary KV and lease calls, one-shot
//! lease keepalives and watch streams, with per-call timeouts and errors that
//! name the operation.

use std::time::Duration;

use futures::channel::mpsc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Streaming};

use super::StoreError;
use super::proto;

/// How long connecting to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one unary call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a dead connection under an idle watch.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// Large enough for a full range over a big cluster's keys.
const MAX_MESSAGE: usize = 64 << 20;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// A connection to an etcd cluster; cheap to clone (the HTTP/2 connections
/// are shared by all clones). Calls are spread over every configured
/// endpoint that answers: a member that stops answering is left out until
/// it is back (tonic re-connects in the background), so a client outlives
/// any one member.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    endpoint: String,
    /// How many endpoints there are: a call that could not reach one is
    /// tried that many times more.
    members: usize,
}

impl Client {
    /// Connects to every endpoint of a comma-separated list, once at least
    /// one of them answers.
    pub async fn connect(access: &super::Access) -> Result<Client, StoreError> {
        let endpoints = access.endpoints.as_str();
        let list: Vec<&str> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if list.is_empty() {
            return Err(StoreError::Endpoint(format!(
                "`{endpoints}`: no endpoint given"
            )));
        }
        let all = list
            .iter()
            .map(|url| endpoint(url, access))
            .collect::<Result<Vec<_>, _>>()?;
        let mut failures = Vec::new();
        for (url, endpoint) in list.iter().zip(&all) {
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(_)) => {
                    return Ok(Client {
                        members: all.len(),
                        channel: Channel::balance_list(all.into_iter()),
                        endpoint: list.join(","),
                    });
                }
                Ok(Err(e)) => failures.push((url, error_chain(&e))),
                Err(_) => failures.push((url, format!("no answer within {CONNECT_TIMEOUT:?}"))),
            }
        }
        Err(StoreError::Connect {
            endpoints: endpoints.to_owned(),
            reason: match failures.as_slice() {
                [(_, only)] => only.clone(),
                all => all
                    .iter()
                    .map(|(url, e)| format!("{url}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }

    /// The endpoints this client speaks to (comma-separated).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    async fn unary<Q, A>(
        &self,
        op: &'static str,
        path: &'static str,
        req: Q,
    ) -> Result<A, StoreError>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.unary_within(op, path, req, CALL_TIMEOUT).await
    }

    /// [`Client::unary`] with a deadline of `limit`.
    async fn unary_within<Q, A>(
        &self,
        op: &'static str,
        path: &'static str,
        req: Q,
        limit: Duration,
    ) -> Result<A, StoreError>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc();
        let call = async {
            let mut retries = self.members;
            loop {
                grpc.ready()
                    .await
                    .map_err(|e| self.rpc_error(op, error_chain(&e)))?;
                let answer = grpc
                    .unary(
                        Request::new(req.clone()),
                        PathAndQuery::from_static(path),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await;
                match answer {
                    Ok(a) => return Ok(a.into_inner()),
                    // Never sent: another member may take it.
                    Err(s) if retries > 0 && not_connected(&s) => retries -= 1,
                    Err(s) => return Err(self.status_error(op, s)),
                }
            }
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                op,
                endpoint: self.endpoint.clone(),
                after: limit,
            }),
        }
    }

    fn rpc_error(&self, op: &'static str, reason: String) -> StoreError {
        StoreError::Rpc {
            op,
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn status_error(&self, op: &'static str, status: tonic::Status) -> StoreError {
        if status.message().contains("requested lease not found") {
            return StoreError::LeaseNotFound;
        }
        if status
            .message()
            .contains("required revision has been compacted")
        {
            return StoreError::Compacted;
        }
        if status.code() == tonic::Code::PermissionDenied
            || status.message().contains("user name not found")
        {
            return StoreError::PermissionDenied {
                op,
                reason: status.message().to_owned(),
            };
        }
        let reason = match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                // The transport error's chain, without repeating the message.
                let message = status.message();
                let chain = std::error::Error::source(&status)
                    .map(error_chain)
                    .unwrap_or_default();
                let detail = chain
                    .strip_prefix(message)
                    .unwrap_or(&chain)
                    .trim_start_matches(": ");
                if detail.is_empty() {
                    message.to_owned()
                } else {
                    format!("{message}: {detail}")
                }
            }
            code => format!("{code:?}: {}", status.message()),
        };
        self.rpc_error(op, reason)
    }

    pub async fn range(
        &self,
        req: proto::RangeRequest,
    ) -> Result<proto::RangeResponse, StoreError> {
        self.unary("range", "/etcdserverpb.KV/Range", req).await
    }

    /// [`Client::range`] with a deadline of `limit` instead of the usual
    /// [`CALL_TIMEOUT`].
    pub async fn range_within(
        &self,
        req: proto::RangeRequest,
        limit: Duration,
    ) -> Result<proto::RangeResponse, StoreError> {
        self.unary_within("range", "/etcdserverpb.KV/Range", req, limit)
            .await
    }

    pub async fn txn(&self, req: proto::TxnRequest) -> Result<proto::TxnResponse, StoreError> {
        self.unary("transaction", "/etcdserverpb.KV/Txn", req).await
    }

    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let req = proto::CompactionRequest {
            revision,
            physical: true,
        };
        let _: proto::CompactionResponse = self
            .unary("compact", "/etcdserverpb.KV/Compact", req)
            .await?;
        Ok(())
    }

    /// One call of etcd's `Auth` service. Adding a user or role that
    /// exists already, or granting what is granted, is not an error: setting
    /// up the store may be repeated.
    pub async fn auth<Q>(
        &self,
        op: &'static str,
        path: &'static str,
        req: Q,
    ) -> Result<(), StoreError>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
    {
        match self.unary::<Q, proto::AuthResponse>(op, path, req).await {
            Err(StoreError::Rpc { reason, .. }) if reason.contains("already exists") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let req = proto::LeaseGrantRequest { ttl, id: 0 };
        let resp: proto::LeaseGrantResponse = self
            .unary("lease grant", "/etcdserverpb.Lease/LeaseGrant", req)
            .await?;
        if !resp.error.is_empty() {
            return Err(self.rpc_error("lease grant", resp.error));
        }
        Ok(resp.id)
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        let req = proto::LeaseRevokeRequest { id };
        let _: proto::LeaseRevokeResponse = self
            .unary("lease revoke", "/etcdserverpb.Lease/LeaseRevoke", req)
            .await?;
        Ok(())
    }

    /// Renews a lease once; returns its new TTL, 0 if the lease is gone.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64, StoreError> {
        const OP: &str = "lease keepalive";
        let mut grpc = self.grpc();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| self.rpc_error(OP, error_chain(&e)))?;
            let requests = futures::stream::iter([proto::LeaseKeepAliveRequest { id }]);
            let mut stream: Streaming<proto::LeaseKeepAliveResponse> = grpc
                .streaming(
                    Request::new(requests),
                    PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive"),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .map_err(|s| self.status_error(OP, s))?
                .into_inner();
            match stream
                .message()
                .await
                .map_err(|s| self.status_error(OP, s))?
            {
                Some(resp) => Ok(resp.ttl),
                None => Err(self.rpc_error(OP, "the stream ended without an answer".into())),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Timeout {
                    op: OP,
                    endpoint: self.endpoint.clone(),
                    after: CALL_TIMEOUT,
                })
            })
    }

    /// Opens a watch stream with one create request. The returned sender keeps
    /// the request side open: drop it together with the stream.
    pub async fn watch(
        &self,
        create: proto::WatchCreateRequest,
    ) -> Result<
        (
            mpsc::UnboundedSender<proto::WatchRequest>,
            Streaming<proto::WatchResponse>,
        ),
        StoreError,
    > {
        const OP: &str = "watch";
        let (tx, rx) = mpsc::unbounded();
        let first = proto::WatchRequest {
            request_union: Some(proto::watch_request::RequestUnion::CreateRequest(create)),
        };
        tx.unbounded_send(first).expect("receiver is alive");
        let mut grpc = self.grpc();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| self.rpc_error(OP, error_chain(&e)))?;
            grpc.streaming(
                Request::new(rx),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|s| self.status_error(OP, s))
        };
        let stream = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Timeout {
                    op: OP,
                    endpoint: self.endpoint.clone(),
                    after: CALL_TIMEOUT,
                })
            })?;
        Ok((tx, stream.into_inner()))
    }

    /// Maps a stream error of a watch to a [`StoreError`].
    pub fn watch_error(&self, status: tonic::Status) -> StoreError {
        self.status_error("watch", status)
    }
}

/// An error and its sources, `: `-separated, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// One etcd endpoint, with the connection settings every endpoint shares.
fn endpoint(url: &str, access: &super::Access) -> Result<Endpoint, StoreError> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(StoreError::Endpoint(format!(
            "`{url}`: expected http://HOST:PORT or https://HOST:PORT"
        )));
    }
    let mut e = Endpoint::from_shared(url.to_owned())
        .map_err(|e| StoreError::Endpoint(format!("`{url}`: {e}")))?;
    if let Some(tls) = access.client_tls(url)? {
        e = e
            .tls_config(tls)
            .map_err(|e| StoreError::Tls(format!("`{url}`: {}", error_chain(&e))))?;
    }
    Ok(e.connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true))
}

/// Whether a call failed before it reached any server (so that trying it
/// again cannot apply it twice): the connection to the member was refused
/// or could not be made.
fn not_connected(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && std::error::Error::source(status)
            .map(error_chain)
            .is_some_and(|chain| chain.contains("connect error"))
}
