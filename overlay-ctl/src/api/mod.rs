//! The agent's local API: HTTP/1.1 + JSON over a Unix socket (see docs/api.md),
//! and the client the CLI uses.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::agent::{self, AgentError, DeployRequest, Shared, host};

mod socket;

#[derive(Clone)]
struct Ctx {
    agent: Shared,
    changed: Arc<Notify>,
    /// Held by every change in flight; the server's task ends only when all
    /// clones are gone (so a stopping agent waits for them).
    inflight: mpsc::Sender<()>,
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::UnknownService(_) | AgentError::NoSuchInstance(..) => StatusCode::NOT_FOUND,
            AgentError::BadRequest(_)
            | AgentError::Link(
                crate::netns::Error::InvalidNetns { .. } | crate::netns::Error::OpenNetns { .. },
            ) => StatusCode::BAD_REQUEST,
            AgentError::SubnetFull(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Binds the socket (replacing a stale one; owner only, `socket.rs`) and serves until `stop` turns
/// true: then it accepts no more connections, and its task ends once the
/// calls already made have answered and the changes they started are done.
pub async fn serve(
    agent: Shared,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let path = agent.cfg.api_socket.clone();
    let listener = socket::bind_private(&path)
        .map_err(host(format!("binding the API socket {}", path.display())))?;
    let (inflight, mut drained) = mpsc::channel(1);
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/instances", get(list).post(deploy))
        .route("/v1/instances/{service}/{instance}", delete(undeploy))
        .with_state(Ctx {
            agent,
            changed,
            inflight,
        });
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(stopped);
        if let Err(e) = served.await {
            tracing::error!("API server stopped: {e}");
        }
        // `None` once every sender (the router's, each change's) is gone.
        let _ = drained.recv().await;
    }))
}

impl Ctx {
    /// Runs a change in a task of its own, to its end: a client that hangs
    /// up must not cut a deploy halfway (a link without its record).
    async fn change<T, F>(&self, op: impl FnOnce(Shared) -> F) -> Result<T, AgentError>
    where
        F: Future<Output = Result<T, AgentError>> + Send + 'static,
        T: Send + 'static,
    {
        let work = op(self.agent.clone());
        let changed = self.changed.clone();
        let inflight = self.inflight.clone();
        let task = tokio::spawn(async move {
            let result = work.await;
            if result.is_ok() {
                changed.notify_one();
            }
            drop(inflight);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(AgentError::Stopping),
            },
        }
    }
}

async fn status(State(c): State<Ctx>) -> Json<Value> {
    let node = &c.agent.node;
    // Before the state: a reconcile takes the maps, then the state.
    let (failing, failures_total) = c.agent.failures();
    let st = c.agent.state();
    Json(json!({
        "node": node.name, "ip": node.ip, "ewp": node.ewp, "subnet": node.subnet,
        "mtu": node.mtu, "instances": st.instances.len(), "services": st.cluster.services.len(),
        // Map entries the last reconciliation could not apply, and how many
        // failures started since the agent did.
        "reconcile": { "failing": failing, "failures_total": failures_total },
    }))
}

async fn metrics(State(c): State<Ctx>) -> Response {
    scrape(c.agent).await
}

/// The Prometheus exposition of the node, read off the async workers.
pub async fn scrape(agent: Shared) -> Response {
    match tokio::task::spawn_blocking(move || crate::telemetry::render(&agent, &agent.scan)).await {
        Ok(text) => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves `/metrics` alone on `addr` (the `metrics` setting) until `stop`.
pub async fn serve_metrics(
    agent: Shared,
    addr: std::net::SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(host(format!("binding the metrics address {addr}")))?;
    let app = Router::new().route("/metrics", get(move || scrape(agent.clone())));
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!("metrics server stopped: {e}");
        }
    }))
}

async fn list(State(c): State<Ctx>) -> Json<Value> {
    let st = c.agent.state();
    Json(json!(st.instances.values().collect::<Vec<_>>()))
}

async fn deploy(
    State(c): State<Ctx>,
    Json(req): Json<DeployRequest>,
) -> Result<Json<Value>, AgentError> {
    let inst = c
        .change(|agent| async move { agent::instances_deploy(&agent, req).await })
        .await?;
    Ok(Json(json!(inst)))
}

async fn undeploy(
    State(c): State<Ctx>,
    UrlPath((service, instance)): UrlPath<(String, u32)>,
    uri: axum::http::Uri,
) -> Result<StatusCode, AgentError> {
    let name = service.clone();
    let now = skip_drain(uri.query().unwrap_or(""))?;
    let found = c
        .change(
            |agent| async move { agent::instances_undeploy(&agent, &service, instance, now).await },
        )
        .await?;
    match found {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(AgentError::NoSuchInstance(name, instance)),
    }
}

/// `now=true` (or `now`): remove without draining; `now=false` or absent: drain.
fn skip_drain(query: &str) -> Result<bool, AgentError> {
    let mut now = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        now = match pair {
            "now" | "now=true" => true,
            "now=false" => false,
            other => {
                return Err(AgentError::BadRequest(format!(
                    "query `{other}`: only now=true or now=false"
                )));
            }
        };
    }
    Ok(now)
}

/// Client side: errors a CLI user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source} (is `overlay-ctl agent` running? set OVERLAY_API)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Http(String),
    #[error("the agent answered {status}: {message}")]
    Status { status: u16, message: String },
}

/// One request to the agent; returns the JSON body of a 2xx answer.
pub async fn call(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "overlay")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()))
    };
    if status.is_success() {
        return Ok(value);
    }
    let message = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    Err(ClientError::Status {
        status: status.as_u16(),
        message,
    })
}

#[cfg(test)]
mod tests {
    /// `DELETE ...?now=true` skips the drain; no query drains; anything
    /// else is refused rather than read as either.
    #[test]
    fn the_drain_is_skipped_only_when_asked() {
        assert!(!super::skip_drain("").unwrap());
        assert!(!super::skip_drain("now=false").unwrap());
        assert!(super::skip_drain("now=true").unwrap());
        assert!(super::skip_drain("now").unwrap());
        for bad in ["now=yes", "drain=0", "now=true&x"] {
            assert!(super::skip_drain(bad).is_err(), "{bad}");
        }
    }
}
