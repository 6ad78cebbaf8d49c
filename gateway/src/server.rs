//! Starting, running and stopping one gateway.
//!
//! [`Gateway::open`] does everything that can fail before serving: the
//! data directory, the token secret, journal recovery (which rebuilds the
//! engine). [`Gateway::serve`] is the accept loop in the style of
//! mini-redis and hyper's `server_graceful` example:
//!
//! - a `Semaphore` of `max_connections` permits is acquired *before*
//!   `accept`, so past the bound new clients wait in the kernel's backlog
//!   instead of costing memory here;
//! - each connection is an HTTP/1.1 keep-alive connection with a header
//!   read timeout (slowloris guard) and a bounded header buffer, watched by
//!   a `GracefulShutdown`;
//! - a housekeeping task expires holds from the real clock every
//!   `expiry_interval`, and every few seconds trims the rate limiters' maps
//!   and drains the metrics histograms.
//!
//! A second task, the feed's sampler ([`crate::feed`]), reads the deals'
//! numbers every 200 ms and publishes the changed cards to the live
//! stream's subscribers.
//!
//! When `shutdown` completes: the listener is dropped (no new
//! connections), the feed's open streams are ended, every connection
//! finishes the request it is serving and closes, racing `shutdown_grace`; then the housekeeping task stops and
//! the journal is closed (flush and final snapshot). [`run`] is the whole
//! of it in one call; [`spawn`] runs it on `127.0.0.1:0` in the
//! background, for tests and `flashsale demo`.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_engine::{Engine, EngineConfig, SystemClock};
use flashsale_journal::{Journal, JournalConfig};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::app::App;
use crate::auth::Signer;
use crate::config::{Config, SECRET_BYTES_MIN, random_base64};
use crate::error::Error;
use crate::feed::{self, FeedHub};
use crate::order_sink;
use crate::pages::Pages;
use crate::router::Router;
use crate::telemetry::Telemetry;

/// Bytes hyper buffers for one request's head; larger heads are refused.
pub const HEADER_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Expiry passes per tick at most; each pass expires a bounded batch per
/// shard, so a backlog drains over a few ticks without starving requests.
const EXPIRY_PASSES_MAX: usize = 16;
/// How often the rate limiters' maps are trimmed and metrics drained.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(5);
/// Name of the generated secret in the data directory.
const SECRET_FILE: &str = "secret";

/// A gateway ready to serve: secret loaded, journal recovered.
pub struct Gateway {
    config: Config,
    app: Arc<App>,
    /// Tells the order sink (if any) to stop.
    sink_stop: oneshot::Sender<()>,
}

impl Gateway {
    /// Prepares the data directory, the secret and the journal.
    pub async fn open(config: Config) -> Result<Gateway, Error> {
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => {
                let dir = config.data_dir.clone();
                tokio::task::spawn_blocking(move || load_or_create_secret(&dir))
                    .await
                    .map_err(Error::Task)??
            }
        };
        let journal_config = JournalConfig::new(config.data_dir.clone(), config.durability);
        let (journal, engine) = tokio::task::spawn_blocking(move || {
            Journal::open(
                journal_config,
                EngineConfig::default(),
                Arc::new(SystemClock),
            )
        })
        .await
        .map_err(Error::Task)?
        .map_err(|source| Error::JournalOpen {
            dir: config.data_dir.clone(),
            source,
        })?;
        // The Postgres order sink follows the journal's committed events in
        // the background; it is stopped after the journal is closed, so it
        // can copy the last batch.
        let (sink_stop, sink_stopped) = oneshot::channel::<()>();
        let order_sink = match &config.database_url {
            Some(url) => {
                let stopped = async move {
                    let _ = sink_stopped.await;
                };
                Some(
                    order_sink::start(url, journal.clone(), stopped)
                        .await
                        .map_err(Error::OrderSink)?,
                )
            }
            None => None,
        };
        let app = App {
            signer: Signer::new(&secret, &config.admin_token),
            admission: Admission::new(
                config.in_flight_max,
                config.body_reads_max,
                config.rate_limit_shopper,
                config.rate_limit_address,
            ),
            telemetry: Telemetry::new(),
            router: Router::new(),
            body_limits: crate::wire::BodyLimits {
                bytes_max: config.body_bytes_max,
                read_timeout: config.body_read_timeout,
                rate_min_bytes_per_second: config.body_rate_min_bytes_per_second,
            },
            request_timeout: config.request_timeout,
            token_ttl_seconds: i64::try_from(config.token_ttl.as_secs()).unwrap_or(i64::MAX),
            signup_credit: config.signup_credit,
            feed: Arc::new(FeedHub::new(config.feed_subscribers_max)),
            pages: Pages::new(),
            engine,
            journal,
            order_sink: std::sync::Mutex::new(order_sink),
        };
        Ok(Gateway {
            config,
            app: Arc::new(app),
            sink_stop,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The engine this gateway serves (for tests and embedding).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.app.engine
    }

    /// Serves `listener` until `shutdown` completes, then drains and closes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future) -> Result<(), Error> {
        let Gateway {
            config,
            app,
            sink_stop,
        } = self;
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(HEADER_BUFFER_BYTES_MAX);
        let housekeeping = tokio::spawn(housekeeping(app.clone(), config.expiry_interval));
        let sampler = tokio::spawn(feed::sample(app.engine.clone(), app.feed.clone()));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed; backing off");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Small answers go out at once rather than waiting for Nagle.
            let _ = stream.set_nodelay(true);
            let peer = peer.ip();
            let app = app.clone();
            let service = service_fn(move |request| app.clone().handle(request, peer));
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        // Open streams never end by themselves: end them, so their
        // connections finish their response and close like the others.
        app.feed.close();
        tracing::info!(
            open_connections = graceful.count(),
            grace_seconds = config.shutdown_grace.as_secs_f64(),
            "shutting down: no new connections; finishing requests in flight"
        );
        let started = Instant::now();
        match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "every connection closed"
            ),
            Err(_) => tracing::warn!("the grace period ended with connections still open"),
        }
        housekeeping.abort();
        let _ = housekeeping.await;
        let _ = sampler.await;
        let engine = app.engine.clone();
        let journal = app.journal.clone();
        tokio::task::spawn_blocking(move || journal.close(&engine))
            .await
            .map_err(Error::Task)?
            .map_err(Error::JournalClose)?;
        tracing::info!("journal closed");
        let _ = sink_stop.send(());
        let sink = app.order_sink.lock().map_or(None, |mut sink| sink.take());
        if let Some(sink) = sink
            && tokio::time::timeout(config.shutdown_grace, sink.join())
                .await
                .is_err()
        {
            tracing::warn!("the order sink did not stop within the grace period");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens a gateway with `config` and serves `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future,
) -> Result<(), Error> {
    Gateway::open(config).await?.serve(listener, shutdown).await
}

/// A gateway serving in the background on `127.0.0.1:<free port>`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl RunningServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts shutting down without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until the journal is closed.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.begin_shutdown();
        self.task.await.map_err(Error::Task)?
    }
}

/// Opens a gateway with `config` and serves it on `127.0.0.1:0` in the
/// background (`config.addr` is not used).
pub async fn spawn(config: Config) -> Result<RunningServer, Error> {
    let admin_token = config.admin_token.clone();
    let gateway = Gateway::open(config).await?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = TcpListener::bind(loopback)
        .await
        .map_err(|source| Error::Bind {
            addr: loopback,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: loopback,
        source,
    })?;
    let engine = gateway.engine().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(listener, async move {
        // A dropped sender stops the server too.
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        admin_token,
        engine,
        stop: Some(stop),
        task,
    })
}

/// Expires holds on the real clock; trims limiter maps; drains metrics.
async fn housekeeping(app: Arc<App>, expiry_interval: Duration) {
    let mut ticker = tokio::time::interval(expiry_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim = Instant::now();
    loop {
        ticker.tick().await;
        for _ in 0..EXPIRY_PASSES_MAX {
            if app.engine.expire_holds() == 0 {
                break;
            }
        }
        if last_trim.elapsed() >= HOUSEKEEPING_PERIOD {
            last_trim = Instant::now();
            app.admission.retain_recent();
            app.telemetry.upkeep();
        }
    }
}

/// Reads `<dir>/secret`, or creates it (mode 0600) with 32 random bytes.
fn load_or_create_secret(dir: &Path) -> Result<Vec<u8>, Error> {
    let path = dir.join(SECRET_FILE);
    let fail = |source| Error::Secret {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            let secret = random_base64(32)?;
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(fail)?;
            tracing::info!(path = %path.display(), "generated the token secret");
            Ok(secret.into_bytes())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let secret = std::fs::read_to_string(&path).map_err(fail)?;
            let secret = secret.trim();
            if secret.len() < SECRET_BYTES_MIN {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the secret must be at least {SECRET_BYTES_MIN} bytes"),
                )));
            }
            Ok(secret.as_bytes().to_vec())
        }
        Err(error) => Err(fail(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_generated_once_and_private() {
        let dir = std::env::temp_dir().join(format!(
            "flashsale-secret-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_secret(&dir).unwrap();
        let second = load_or_create_secret(&dir).unwrap();
        assert_eq!(first, second);
        assert!(first.len() >= SECRET_BYTES_MIN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
