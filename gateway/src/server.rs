//! Starting, running and stopping one gateway.
//!
//! [`Gateway::open`] does everything that can fail before serving: the
//! data directory (created, and checked to be a writable directory), the
//! token secret and the admin token (each given, or kept in a file of the
//! data directory made on first start, mode 0600), journal recovery (which
//! rebuilds the engine). The binary binds its listener before calling it,
//! so a taken port fails before anything is written to the data directory. [`Gateway::serve`] is the accept loop in the style of
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
//! A second task, the feed's sampler (`feed.rs`), reads the deals'
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_engine::{Engine, EngineConfig, SystemClock};
use flashsale_journal::{DirLock, Journal, JournalConfig};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::app::App;
use crate::auth::Signer;
use crate::config::{
    ADMIN_TOKEN_BYTES_MIN, Config, SECRET_BYTES_MIN, generate_admin_token, random_base64,
};
use crate::error::Error;
use crate::feed::{self, FeedHub};
use crate::openapi::OpenApi;
use crate::order_sink::{self, OrderSinkHandle};
use crate::pages::Pages;
use crate::proxies::TrustedProxies;
use crate::router::Router;
use crate::telemetry::Telemetry;
use flashsale_redis::{DurabilityMode, RedisSettings, RedisTarget};
use flashsale_store::{MemoryStore, RedisStore, Store};

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
/// Name of the generated admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The node's id in Redis mode, kept in the data directory (random, made
/// once): the books sink's consumer name, so a restarted node reads its
/// own pending entries first.
const NODE_ID_FILE: &str = "node-id";
/// Bytes of a kept node id, at least.
const NODE_ID_BYTES_MIN: usize = 16;

/// A value kept in a file of the data directory: read at every start,
/// generated on the first.
#[derive(Debug, Clone)]
struct Kept {
    value: String,
    /// The file, when this start made it (the value is new).
    made: Option<PathBuf>,
}

/// A gateway ready to serve: secret loaded, journal recovered.
pub struct Gateway {
    config: Config,
    /// The admin token in force: configured, or kept in the data directory.
    admin_token: Kept,
    app: Arc<App>,
    /// Tells the order sink (if any) to stop.
    sink_stop: oneshot::Sender<()>,
    /// The data directory's lock in multi-node mode (in one-node mode the
    /// journal holds it).
    _dir_lock: Option<DirLock>,
}

impl Gateway {
    /// Prepares the data directory, the secret, the admin token and the
    /// store: the journal, or in multi-node mode the connection to Redis.
    /// Errors: [`Error::DataDir`] naming the directory and why it cannot be
    /// used, [`Error::DataFile`] naming a kept file, [`Error::JournalOpen`],
    /// [`Error::OrderSink`], [`Error::RedisConnect`], [`Error::RedisLayout`],
    /// [`Error::RedisVolatile`].
    pub async fn open(config: Config) -> Result<Gateway, Error> {
        // The process's recorder first: the journal and the order sink
        // register their series in it when they start.
        crate::telemetry::recorder();
        let (secret, admin_token, dir_lock) = {
            let dir = config.data_dir.clone();
            let secret = config.secret.clone();
            let admin_token = config.admin_token.clone();
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                check_data_dir(&dir)?;
                // The lock first: a second process on a directory in use
                // is refused before it writes anything there.
                let dir_lock = DirLock::take(&dir).map_err(|source| Error::JournalOpen {
                    dir: dir.clone(),
                    source,
                })?;
                let secret = match secret {
                    Some(secret) => secret,
                    None => keep(&dir, SECRET_FILE, SECRET_BYTES_MIN, || random_base64(32))?
                        .value
                        .into_bytes(),
                };
                let admin_token = match admin_token {
                    Some(value) => Kept { value, made: None },
                    None => keep(
                        &dir,
                        ADMIN_TOKEN_FILE,
                        ADMIN_TOKEN_BYTES_MIN,
                        generate_admin_token,
                    )?,
                };
                Ok((secret, admin_token, dir_lock))
            })
            .await
            .map_err(Error::Task)??
        };
        let signer = Signer::new(&secret, &admin_token.value);
        let idp = match &config.idp {
            Some(settings) => Some(Arc::new(
                crate::idp::Idp::start(settings.clone(), unix_seconds()).await?,
            )),
            None => None,
        };
        let (sink_stop, sink_stopped) = oneshot::channel::<()>();
        let (store, order_sink, dir_lock) = match &config.redis {
            Some(settings) => {
                let (store, sink) =
                    open_redis(&config, settings, &signer.fingerprint(), sink_stopped).await?;
                (store, sink, Some(dir_lock))
            }
            None => {
                let (store, sink) = open_memory(&config, dir_lock, sink_stopped).await?;
                (store, sink, None)
            }
        };
        let openapi = OpenApi::new()?;
        let app = App {
            signer,
            admission: Admission::new(
                config.in_flight_max,
                config.body_reads_max,
                config.rate_limit_shopper,
                config.rate_limit_address,
            ),
            telemetry: Telemetry::new(&openapi),
            router: Router::new(),
            body_limits: crate::wire::BodyLimits {
                bytes_max: config.body_bytes_max,
                read_timeout: config.body_read_timeout,
                rate_min_bytes_per_second: config.body_rate_min_bytes_per_second,
            },
            request_timeout: config.request_timeout,
            token_ttl_seconds: i64::try_from(config.token_ttl.as_secs()).unwrap_or(i64::MAX),
            signup_credit: config.signup_credit,
            feed: Arc::new(FeedHub::new(
                config.feed_subscribers_max,
                getrandom::u64().map_err(Error::Random)?,
            )),
            pages: Pages::new(&config.currency_symbol),
            public_url: match &config.public_url {
                Some(url) => std::sync::OnceLock::from(url.clone()),
                None => std::sync::OnceLock::new(),
            },
            openapi,
            store: Arc::new(store),
            books: order_sink.as_ref().map(OrderSinkHandle::books),
            order_sink: std::sync::Mutex::new(order_sink),
            proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            idp,
        };
        Ok(Gateway {
            config,
            admin_token,
            app: Arc::new(app),
            sink_stop,
            _dir_lock: dir_lock,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The admin bearer token in force: the configured one, or the one kept
    /// in `<data-dir>/admin-token`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token.value
    }

    /// `<data-dir>/admin-token` when this start generated the admin token
    /// (the first start without one configured): the one time to print it.
    pub fn admin_token_made(&self) -> Option<&Path> {
        self.admin_token.made.as_deref()
    }

    /// The engine this gateway serves (for tests and embedding); `None` in
    /// multi-node mode, where the state is in Redis.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match &*self.app.store {
            Store::Memory(memory) => Some(&memory.engine),
            Store::Redis(_) => None,
        }
    }

    /// Serves `listener` until `shutdown` completes, then drains and closes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future) -> Result<(), Error> {
        let Gateway {
            config,
            app,
            sink_stop,
            ..
        } = self;
        // Without --public-url, the deals' QR links name the address listened on.
        let listening = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let listening = crate::config::listen_url(listening)?;
        app.public_url.get_or_init(|| listening);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let cors = crate::cors::layer(&config.cors_origins);
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(HEADER_BUFFER_BYTES_MAX);
        let housekeeping = tokio::spawn(housekeeping(app.clone(), config.expiry_interval));
        let sampler = tokio::spawn(feed::sample(app.store.clone(), app.feed.clone()));
        let poller = match &*app.store {
            Store::Redis(redis) => Some(tokio::spawn(redis.clone().run_poller())),
            Store::Memory(_) => None,
        };
        let idp_refresh = app.idp.clone().map(|idp| tokio::spawn(refresh_keys(idp)));
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
            let handle = move |request| app.clone().handle(request, peer);
            let stream = TokioIo::new(stream);
            match &cors {
                None => spawn_connection(&http, &graceful, stream, service_fn(handle), permit),
                Some(cors) => {
                    let service = crate::cors::wrap(cors, tower::service_fn(handle));
                    let service = TowerToHyperService::new(service);
                    spawn_connection(&http, &graceful, stream, service, permit);
                }
            }
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
        for task in [poller, idp_refresh].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        if let Store::Memory(memory) = &*app.store {
            let engine = memory.engine.clone();
            let journal = memory.journal.clone();
            tokio::task::spawn_blocking(move || journal.close(&engine))
                .await
                .map_err(Error::Task)?
                .map_err(Error::JournalClose)?;
            tracing::info!("journal closed");
        }
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
    /// The engine, in one-node mode.
    pub engine: Option<Arc<Engine>>,
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
    let gateway = Gateway::open(config).await?;
    let admin_token = gateway.admin_token().to_owned();
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
    let engine = gateway.engine().cloned();
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

/// Draw steps one housekeeping tick runs at most (each at most
/// `DRAW_OFFERS_PER_STEP` offers per deal): 100,000 winners' holds take
/// about 100 steps, so a draw finishes within a tick or two.
const DRAW_STEPS_PER_TICK_MAX: usize = 256;

/// Serves one connection with `service` in a task of its own, watched by
/// `graceful` for the drain; `permit` counts the connection against
/// `--max-connections` until it ends.
fn spawn_connection<S, B>(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    stream: TokioIo<tokio::net::TcpStream>,
    service: S,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = graceful.watch(http.serve_connection(stream, service));
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error");
        }
        drop(permit);
    });
}

/// Expires holds on the real clock; runs due draws and refills raffles;
/// trims limiter maps; drains metrics.
/// Reads the identity provider's keys again every
/// [`JWKS_REFRESH_INTERVAL`](crate::idp::JWKS_REFRESH_INTERVAL); a failed
/// read keeps the keys last read (`Idp::refresh`).
async fn refresh_keys(idp: Arc<crate::idp::Idp>) {
    let mut ticker = tokio::time::interval(crate::idp::JWKS_REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        idp.refresh(unix_seconds()).await;
    }
}

/// Now in Unix seconds, by the system clock.
fn unix_seconds() -> i64 {
    use flashsale_engine::Clock as _;
    SystemClock.now().millis().div_euclid(1000)
}

async fn housekeeping(app: Arc<App>, expiry_interval: Duration) {
    let mut ticker = tokio::time::interval(expiry_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim = Instant::now();
    loop {
        ticker.tick().await;
        for _ in 0..EXPIRY_PASSES_MAX {
            match app.store.expire_holds().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "expiring holds failed; trying again next tick"
                    );
                    break;
                }
            }
        }
        // Raffles: due draws, then units left to the next ranks,
        // one bounded step at a time so other deals' buys never wait long.
        for _ in 0..DRAW_STEPS_PER_TICK_MAX {
            match app.store.run_draws().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "a draw step failed; trying again next tick"
                    );
                    break;
                }
            }
        }
        if last_trim.elapsed() >= HOUSEKEEPING_PERIOD {
            last_trim = Instant::now();
            app.admission.retain_recent();
            app.telemetry.upkeep();
        }
    }
}

/// One-node mode: recovers the engine from the journal in `data_dir` and,
/// with `--database-url`, starts the Postgres order sink, which follows the
/// journal's committed events in the background and stops (after copying
/// the last batch) when `sink_stopped` completes, after the journal closes.
async fn open_memory(
    config: &Config,
    dir_lock: DirLock,
    sink_stopped: oneshot::Receiver<()>,
) -> Result<(Store, Option<OrderSinkHandle>), Error> {
    let journal_config = JournalConfig::new(config.data_dir.clone(), config.durability);
    let (journal, engine) = tokio::task::spawn_blocking(move || {
        Journal::open_locked(
            journal_config,
            EngineConfig::default(),
            Arc::new(SystemClock),
            dir_lock,
        )
    })
    .await
    .map_err(Error::Task)?
    .map_err(|source| Error::JournalOpen {
        dir: config.data_dir.clone(),
        source,
    })?;
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
    Ok((Store::Memory(MemoryStore { engine, journal }), order_sink))
}

/// Multi-node mode: connects to Redis (bounded by the connect timeout),
/// checks that it persists what it acknowledges and, with `--database-url`,
/// starts the books sink (`order_sink::streams`): the deployment's id from
/// Redis, the node's from the data directory. Errors:
/// [`Error::RedisConnect`], [`Error::RedisLayout`] for a node that does not
/// match the deployment already in the namespace, and
/// [`Error::RedisVolatile`] for a Redis that persists nothing without
/// `--allow-volatile-redis`.
async fn open_redis(
    config: &Config,
    settings: &RedisSettings,
    fingerprint: &str,
    sink_stopped: oneshot::Receiver<()>,
) -> Result<(Store, Option<OrderSinkHandle>), Error> {
    let target = match &settings.target {
        RedisTarget::Single(url) => url.clone(),
        RedisTarget::Cluster(urls) => urls.join(","),
    };
    let store = RedisStore::connect_unstarted(settings)
        .await
        .map_err(|source| Error::RedisConnect {
            target: target.clone(),
            source: Box::new(Error::from(source)),
        })?;
    // Every check before the first write: a node refused here leaves
    // nothing in Redis (the layout, the epoch) to refuse the next start.
    let ours = RedisStore::layout_for(settings.shards, fingerprint);
    let layout_refused = |found: String, ours: String| Error::RedisLayout {
        target: target.clone(),
        key: store.layout_key(),
        found,
        ours,
    };
    if let Some(found) = store.layout().await?
        && found != ours
    {
        return Err(layout_refused(found, ours));
    }
    let durability = store.durability();
    if durability.mode == DurabilityMode::Volatile && !settings.allow_volatile {
        return Err(Error::RedisVolatile {
            target,
            found: durability.found,
        });
    }
    if let Err((found, ours)) = store.agree_layout(fingerprint).await? {
        return Err(layout_refused(found, ours));
    }
    store.start().await?;
    tracing::info!(
        shards = settings.shards,
        namespace = %settings.namespace,
        durability = durability.mode.name(),
        found = %durability.found,
        waitaof = durability.waitaof,
        "multi-node mode: the sale's state is in Redis"
    );
    let order_sink = match &config.database_url {
        Some(url) => {
            let dir = config.data_dir.clone();
            let node = tokio::task::spawn_blocking(move || {
                keep(&dir, NODE_ID_FILE, NODE_ID_BYTES_MIN, || random_base64(16))
            })
            .await
            .map_err(Error::Task)??
            .value;
            let deployment = store
                .deployment_id(&format!("redis-{}", random_base64(16)?))
                .await?;
            let sink_config = order_sink::OrderSinkConfig {
                deployment_id: Some(deployment),
                ..order_sink::OrderSinkConfig::new(url)
            };
            let stopped = async move {
                let _ = sink_stopped.await;
            };
            Some(
                order_sink::streams::start(sink_config, store.clone(), node, stopped)
                    .map_err(Error::OrderSink)?,
            )
        }
        None => None,
    };
    Ok((Store::Redis(store), order_sink))
}

/// Creates `dir` if missing and checks that it is a directory this process
/// can write to, so a bad `--data-dir` is named with its reason up front.
fn check_data_dir(dir: &Path) -> Result<(), Error> {
    let fail = |source| Error::DataDir {
        dir: dir.to_owned(),
        source,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "it exists and is not a directory",
        )));
    }
    std::fs::create_dir_all(dir).map_err(fail)?;
    // An unnamed file, gone when dropped: proves the directory is writable.
    tempfile::tempfile_in(dir).map_err(fail)?;
    Ok(())
}

/// Reads `<dir>/<name>` (trimmed; at least `bytes_min` bytes), or creates it
/// (mode 0600) with `generate()`'s value. `create_new` makes two starts
/// racing on one directory agree on one value.
fn keep(
    dir: &Path,
    name: &str,
    bytes_min: usize,
    generate: impl FnOnce() -> Result<String, Error>,
) -> Result<Kept, Error> {
    let path = dir.join(name);
    let fail = |source| Error::DataFile {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            let value = generate()?;
            file.write_all(value.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(fail)?;
            tracing::info!(path = %path.display(), "generated {name}");
            Ok(Kept {
                value,
                made: Some(path),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let value = std::fs::read_to_string(&path).map_err(fail)?;
            let value = value.trim();
            if value.len() < bytes_min {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("it must hold at least {bytes_min} bytes"),
                )));
            }
            Ok(Kept {
                value: value.to_owned(),
                made: None,
            })
        }
        Err(error) => Err(fail(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_values_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        for (name, generate) in [
            (
                SECRET_FILE,
                (|| random_base64(32)) as fn() -> Result<String, Error>,
            ),
            (ADMIN_TOKEN_FILE, generate_admin_token),
        ] {
            let first = keep(dir.path(), name, 16, generate).unwrap();
            let second = keep(dir.path(), name, 16, generate).unwrap();
            assert_eq!(first.value, second.value);
            assert_eq!(first.made.as_deref(), Some(dir.path().join(name).as_path()));
            assert_eq!(second.made, None, "made once, then read");
            assert!(first.value.len() >= 16);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.path().join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let error = keep(dir.path(), "short", 16, generate_admin_token).unwrap_err();
        assert!(matches!(error, Error::DataFile { .. }), "{error}");
    }

    #[test]
    fn an_unusable_data_dir_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        for bad in [file.clone(), file.join("below")] {
            let error = check_data_dir(&bad).unwrap_err();
            let Error::DataDir { dir, source } = &error else {
                panic!("{error:?}");
            };
            assert_eq!(dir, &bad);
            assert!(!source.to_string().is_empty());
            assert!(error.to_string().contains(&bad.display().to_string()));
        }
        check_data_dir(&dir.path().join("new")).unwrap();
        assert!(dir.path().join("new").is_dir());
    }
}
