//! `flashsale loadtest hello`: a bare hyper 1.x hello-world server.
//!
//! It is the ceiling baseline: the same client against a server that does
//! no work tells how much of a flashsale number is the engine and how much
//! is HTTP on this machine. It answers `200 Hello, World!` to any request,
//! keeps connections alive, caps them at [`HELLO_CONNECTIONS_MAX`], and on
//! shutdown stops accepting, asks open connections to close after their
//! current answer, and waits for them up to [`HELLO_DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::error::LoadtestError;

/// Most connections served at once; more wait in the listen backlog.
pub const HELLO_CONNECTIONS_MAX: usize = 16_384;

/// How long shutdown waits for open connections.
pub const HELLO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a request's headers on a connection.
pub const HELLO_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const GREETING: &[u8] = b"Hello, World!\n";

/// Binds `addr` (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, LoadtestError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| LoadtestError::Bind { addr, source })
}

/// Serves hello-world on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(HELLO_CONNECTIONS_MAX));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                // Out of file descriptors and the like: keep serving the
                // connections we have.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let mut closing_seen = closing_seen.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HELLO_HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service_fn(hello));
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = closing_seen.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections so the set stays as small as the
        // number of open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = closing.send(true);
    let _ = tokio::time::timeout(HELLO_DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(GREETING)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// The subcommand: bind, print the ready line, serve until ctrl-c.
pub async fn run(addr: SocketAddr) -> Result<(), LoadtestError> {
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| LoadtestError::Bind { addr, source })?;
    println!("flashsale hello listening on http://{local}");
    serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Call, Connection};
    use crate::target::Target;

    #[tokio::test]
    async fn says_hello_over_keep_alive_and_shuts_down() {
        let listener = bind("127.0.0.1:0".parse().expect("valid"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        let target = Arc::new(
            Target::resolve(&format!("http://{addr}"), None)
                .await
                .expect("resolves"),
        );
        let mut connection = Connection::new(target.clone(), Duration::from_secs(5));
        for _ in 0..3 {
            let answer = connection
                .send(Call {
                    method: hyper::Method::GET,
                    uri: target.uri("/").expect("valid"),
                    auth: None,
                    idempotency_key: None,
                    body: Bytes::new(),
                })
                .await
                .expect("answers");
            assert_eq!(answer.status, hyper::StatusCode::OK);
            assert_eq!(&answer.body[..], GREETING);
        }
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("drains in time")
            .expect("no panic");
    }
}
