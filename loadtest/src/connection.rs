//! One keep-alive HTTP/1.1 connection to a target (over TLS for an
//! `https://` one), owned by one task, and a worker's set of them, one per
//! target ([`Connections`]).
//!
//! The load generator must not be the bottleneck, so it skips connection
//! pools and client frameworks: each worker task owns a [`Connection`] that
//! wraps hyper's low-level `client::conn::http1` over a `TcpStream`, sends
//! one request at a time on it, and reconnects on its own after an error.
//! A request costs one header map, one small body and one read of the
//! answer; nothing is shared between tasks.
//!
//! A connection that died while idle (the server closed it) is replaced
//! *before* the request goes out, which is not a failure. A connection that
//! fails or times out *during* an exchange is dropped and the failure is
//! reported: nobody knows whether the server acted on the request, which is
//! what idempotency keys are for.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::TransportError;
use crate::target::Target;

/// Largest answer body read, in bytes. The biggest legitimate answer is a
/// page of 10,000 bulk-created shoppers with their tokens (a few MiB).
pub const RESPONSE_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest `Retry-After` honoured, in seconds; a larger value is clamped.
pub const RETRY_AFTER_SECONDS_MAX: u64 = 60;

/// The `Idempotency-Key` header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// One request to send: built by the caller, sent by [`Connection::send`].
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Method,
    /// Origin-form URI (`/v1/...`), see [`Target::uri`].
    pub uri: Uri,
    /// `Bearer …` value, if the endpoint needs a role.
    pub auth: Option<&'a HeaderValue>,
    pub idempotency_key: Option<HeaderValue>,
    /// JSON body; empty for GET and DELETE.
    pub body: Bytes,
}

/// A complete answer: status, the `Retry-After` hint, and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// A keep-alive connection that reconnects when needed.
#[derive(Debug)]
pub struct Connection {
    target: Arc<Target>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `target`; nothing is opened until the first send.
    /// Every exchange (connect included) must finish within `timeout`.
    pub fn new(target: Arc<Target>, timeout: Duration) -> Connection {
        Connection {
            target,
            timeout,
            sender: None,
        }
    }

    /// The target this connection talks to.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Opens the connection now, so that the first measured request does
    /// not pay for the TCP handshake.
    pub async fn warm_up(&mut self) -> Result<(), TransportError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.ready_sender()).await {
            Ok(ready) => ready.map(drop),
            Err(_elapsed) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, call: Call<'_>) -> Result<Answer, TransportError> {
        let request = self.request(call);
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_elapsed) => {
                // The answer may still arrive on this connection; HTTP/1
                // cannot skip it, so the connection is abandoned.
                self.sender = None;
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    fn request(&self, call: Call<'_>) -> Request<Full<Bytes>> {
        let has_body = !call.body.is_empty();
        let mut request = Request::new(Full::new(call.body));
        *request.method_mut() = call.method;
        *request.uri_mut() = call.uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.target.host.clone());
        if let Some(auth) = call.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if let Some(key) = call.idempotency_key {
            headers.insert(IDEMPOTENCY_KEY.clone(), key);
        }
        if has_body {
            headers.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
        }
        request
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, TransportError> {
        let sender = self.ready_sender().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(TransportError::Http)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds.min(RETRY_AFTER_SECONDS_MAX)));
        let body = Limited::new(response.into_body(), RESPONSE_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(TransportError::Body)?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// A sender whose connection is open and idle, reconnecting if the old
    /// one was closed by the server while idle (no request was lost).
    async fn ready_sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, TransportError> {
        let reusable = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender.ready().await.is_ok(),
            _ => false,
        };
        let sender = match self.sender.take() {
            Some(sender) if reusable => sender,
            _ => self.connect().await?,
        };
        Ok(self.sender.insert(sender))
    }

    /// Opens a TCP connection, over TLS for an `https://` target, and
    /// starts HTTP/1.1 on it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(TransportError::Connect)?;
        stream.set_nodelay(true).map_err(TransportError::Connect)?;
        match &self.target.tls {
            None => handshake(stream).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(TransportError::Tls)?;
                handshake(stream).await
            }
        }
    }
}

/// HTTP/1.1 on an open stream; the connection task ends when the sender is
/// dropped or the peer closes, its error, if any, surfacing through
/// `send_request`.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(TransportError::Http)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await.map_err(TransportError::Http)?;
    Ok(sender)
}

/// One worker's connections: one to each target of the run, in the
/// targets' order, each opened on first use (or by [`Connections::warm_up`]).
#[derive(Debug)]
pub struct Connections {
    per_target: Vec<Connection>,
}

impl Connections {
    /// A connection to each of `targets`; nothing is opened yet.
    pub fn new(targets: &[Arc<Target>], timeout: Duration) -> Connections {
        Connections {
            per_target: targets
                .iter()
                .map(|target| Connection::new(target.clone(), timeout))
                .collect(),
        }
    }

    /// Opens every connection now; one that fails is left to reconnect on
    /// its first request, where the failure is counted.
    pub async fn warm_up(&mut self) {
        for connection in &mut self.per_target {
            let _ = connection.warm_up().await;
        }
    }

    /// The connection to target `index` (see [`crate::target::pick`]);
    /// an index past the last target wraps around.
    pub fn to(&mut self, index: usize) -> &mut Connection {
        let count = self.per_target.len();
        &mut self.per_target[index % count]
    }

    /// How many targets there are.
    pub fn count(&self) -> usize {
        self.per_target.len()
    }
}
