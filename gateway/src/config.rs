//! Configuration of `flashsale serve`.
//!
//! Parsed raw by clap into [`ServeArgs`] (every flag has an environment
//! fallback and a documented default), then validated once into a
//! [`Config`] that the server takes explicitly. Nothing below the binary
//! reads the environment: a [`Config`] built with [`Config::new`] (as the
//! tests and `flashsale demo` do) sees neither `DATABASE_URL` nor
//! `REDIS_URL` unless told.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use flashsale_engine::Money;
use flashsale_journal::Durability;

use url::Url;

use crate::error::Error;
pub use crate::idp::{IdpSettings, JwksSource};
pub use flashsale_redis::{RedisArgs, RedisSettings, RedisTarget, ReplicaAckSettings};

/// Shortest `--secret` accepted, in bytes: shorter keys are guessable.
pub const SECRET_BYTES_MIN: usize = 16;
/// Shortest `--admin-token` accepted, in bytes, for the same reason.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 16;
/// What `--addr` takes, said in every refusal of one.
const ADDR_HINT: &str = "expected HOST:PORT, e.g. 127.0.0.1:8080";
/// Largest `--body-bytes-max` accepted.
pub const BODY_BYTES_MAX_LIMIT: usize = 1024 * 1024;
/// Longest `--public-url` accepted, in bytes: a deal's link (this plus
/// `?deal=<id>`) stays a small QR code that a phone reads at arm's length
/// (`crate::qr`).
pub const PUBLIC_URL_BYTES_MAX: usize = 200;
/// Longest `--currency-symbol` accepted, in characters.
pub const CURRENCY_SYMBOL_CHARS_MAX: usize = 8;
/// What the pages put before an amount unless told otherwise.
pub const CURRENCY_SYMBOL_DEFAULT: &str = "¥";

/// `flashsale serve`: the HTTP gateway on the embedded engine and journal.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (a host name such as localhost is
    /// resolved once, at start); port 0 picks a free port (printed at start).
    #[arg(long, env = "FLASHSALE_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Directory for the journal, snapshots and the generated token secret.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The admin bearer token (at least 16 bytes; with --idp-jwks not
    /// shaped like a JWT, `eyJ…` with two dots). If unset: generated
    /// once into `<data-dir>/admin-token` (mode 0600), printed when made, and
    /// read from there at every later start.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Key that signs tokens (at least 16 bytes); every node of one
    /// deployment shares it. Generated and kept in `<data-dir>/secret`
    /// (mode 0600) if unset.
    #[arg(long, env = "FLASHSALE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// `sync`: answer a change after its journal record is fsynced;
    /// `async`: answer at once (faster, may lose the last moments on a crash).
    #[arg(long, env = "FLASHSALE_DURABILITY", default_value = "sync", value_parser = ["sync", "async"])]
    pub durability: String,

    /// Postgres URL for the order sink (the journal's, or in multi-node
    /// mode the Redis books streams'); unset: no books in Postgres.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = flashsale_books::parse_database_url
    )]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub redis: RedisArgs,

    /// Milliseconds to wait for a Redis reply; past it the request is
    /// answered 503 unavailable and its outcome is unknown until the client
    /// retries with the same Idempotency-Key.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_RESPONSE_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub redis_response_timeout_ms: u64,

    /// Redis mode with --database-url: books entries not yet in Postgres
    /// past which buys and hold payments answer 503 unavailable rather
    /// than grow Redis without bound (Postgres down); split evenly over the
    /// shards' streams, each refusing past its share.
    #[arg(long, env = "FLASHSALE_BOOKS_BACKLOG_MAX", default_value_t = 1_000_000)]
    pub books_backlog_max: u64,

    /// Multi-node mode: this node's buy and hold calls to Redis in flight
    /// at most, all shards and deals together (1 to 4096). Redis runs a
    /// primary's calls one after another, so fewer calls in flight carry
    /// more buys each and cost Redis and the node less per buy; a request
    /// finding none free waits for one with what else arrives.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_RESERVE_CALLS_IN_FLIGHT",
        default_value_t = flashsale_redis::RESERVE_CALLS_IN_FLIGHT_DEFAULT
    )]
    pub redis_reserve_calls_in_flight: usize,

    /// Multi-node mode: answer a change (buy, hold, payment, release,
    /// credit, deal creation or change) only once at least this many
    /// replicas of the Redis primary that ran it acknowledged it (WAIT, in
    /// groups); past --redis-replica-ack-timeout-ms the answer is 503
    /// unavailable, an unknown outcome that a retry with the same
    /// Idempotency-Key resolves. 0: answer once the primary applied it.
    #[arg(long, env = "FLASHSALE_REDIS_REPLICA_ACKS", default_value_t = 0)]
    pub redis_replica_acks: u32,

    /// Milliseconds a change waits for its replicas' acknowledgments
    /// (--redis-replica-acks) before answering 503 unavailable.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_REPLICA_ACK_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub redis_replica_ack_timeout_ms: u64,

    /// Milliseconds to wait for a connection to Redis.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub redis_connect_timeout_ms: u64,

    /// Serve multi-node mode even on a Redis that persists nothing
    /// (appendonly no, appendfsync no, or settings it will not tell):
    /// a restart of that Redis loses every acknowledged order. Without
    /// this flag such a Redis is refused at start, and a node whose Redis
    /// stops persisting at runtime is not ready (README, "What a 201
    /// promises").
    /// The variable takes 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        env = "FLASHSALE_ALLOW_VOLATILE_REDIS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_volatile_redis: bool,

    /// Open connections at most; further clients wait in the listen backlog.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Milliseconds a client may take to send a request's headers before the
    /// connection is closed (slowloris guard); a connection that sends
    /// nothing for that long is closed too.
    #[arg(
        long,
        env = "FLASHSALE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub header_read_timeout_ms: u64,

    /// Milliseconds a request body may take to arrive, plus the time its
    /// bytes earn at --body-rate-min-bytes-per-second; a body that stops
    /// arriving (or drips slower) is answered 408 request_timeout and its
    /// connection closed.
    #[arg(long, env = "FLASHSALE_BODY_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_read_timeout_ms: u64,

    /// Slowest average rate a request body may arrive at, in bytes per
    /// second: each byte received extends the body's deadline by
    /// 1/rate seconds.
    #[arg(
        long,
        env = "FLASHSALE_BODY_RATE_MIN_BYTES_PER_SECOND",
        default_value_t = 4_096
    )]
    pub body_rate_min_bytes_per_second: u64,

    /// Request bodies arriving at once at most (a request counts in flight
    /// only once its body has arrived); beyond it 503 overloaded with
    /// Retry-After, so slow clients cannot fill --in-flight-max.
    #[arg(long, env = "FLASHSALE_BODY_READS_MAX", default_value_t = 1_024)]
    pub body_reads_max: usize,

    /// Milliseconds one request may take from its headers to its answer,
    /// body included; past it 503 overloaded with Retry-After.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Largest request body in bytes; larger ones get 413 payload_too_large.
    #[arg(long, env = "FLASHSALE_BODY_BYTES_MAX", default_value_t = 16_384)]
    pub body_bytes_max: usize,

    /// Requests per second per token (shopper or merchant); 0 = off.
    /// Above it: 429 rate_limited with Retry-After.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_SHOPPER", default_value_t = 20)]
    pub rate_limit_shopper: u32,

    /// Signups (POST /v1/shoppers) per minute per client address; 0 = off.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_ADDRESS", default_value_t = 10)]
    pub rate_limit_address: u32,

    /// Requests being served at once at most; beyond it the gateway sheds
    /// with 503 overloaded and Retry-After instead of queueing.
    #[arg(long, env = "FLASHSALE_IN_FLIGHT_MAX", default_value_t = 4_096)]
    pub in_flight_max: usize,

    /// Seconds to finish requests in flight after SIGTERM or ctrl-c.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Hours a merchant's or shopper's token stays valid.
    #[arg(long, env = "FLASHSALE_TOKEN_TTL_HOURS", default_value_t = 720)]
    pub token_ttl_hours: u64,

    /// Amount credited to every wallet created by POST /v1/shoppers (a
    /// decimal like "5000" or "5000.00"), with the reference "signup", so a
    /// demo can buy without an admin step; 0 = none.
    #[arg(
        long,
        env = "FLASHSALE_SIGNUP_CREDIT",
        default_value = "0",
        value_name = "AMOUNT"
    )]
    pub signup_credit: String,

    /// Clients of GET /v1/feed/stream at once at most; beyond it the stream
    /// answers 503 overloaded with Retry-After.
    #[arg(long, env = "FLASHSALE_FEED_SUBSCRIBERS_MAX", default_value_t = 10_000)]
    pub feed_subscribers_max: usize,

    /// The reverse proxies and load balancers in front, as addresses or
    /// CIDR networks, comma-separated (e.g. 10.0.0.0/8,192.0.2.7). A
    /// connection from one of them names its client in Forwarded (RFC 7239)
    /// or X-Forwarded-For, and the signup limit counts that client; from
    /// any other address those headers are ignored. Default: none.
    #[arg(long, env = "FLASHSALE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network, value_name = "CIDR")]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Origins whose pages may call the API from a browser (CORS), e.g.
    /// `https://shop.example.com`, comma-separated: preflights are answered
    /// and answers carry Access-Control-Allow-Origin for these origins
    /// only. Default: none (a browser allows same-origin calls only).
    #[arg(long, env = "FLASHSALE_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin, value_name = "ORIGIN")]
    pub cors_origins: Vec<hyper::header::HeaderValue>,
    /// The storefront's address as shoppers reach it: an absolute http or
    /// https URL without query, fragment or credentials (at most 200
    /// bytes), e.g. `https://shop.example/`. A deal's QR code links to it
    /// with `?deal=<id>`. Unset: `http://<the address listened on>/`, with
    /// `127.0.0.1` (or `[::1]`) for an unspecified address such as `0.0.0.0`.
    #[arg(long, env = "FLASHSALE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// What the storefront and the dashboard print before an amount (1 to
    /// 8 characters, no control character), e.g. € or US$.
    #[arg(long, env = "FLASHSALE_CURRENCY_SYMBOL", default_value = CURRENCY_SYMBOL_DEFAULT)]
    pub currency_symbol: String,

    /// The platform's identity provider: its signing keys as a JWKS (RFC
    /// 7517), a file or an http(s):// URL. With it (and --idp-issuer,
    /// --idp-audience) bearer tokens may be the platform's JWTs: `sub` is
    /// the platform's user id, whose shopper or merchant is made at its
    /// first request and is the same account ever after. Unset: only the
    /// engine's own tokens.
    #[arg(long, env = "FLASHSALE_IDP_JWKS", value_name = "FILE_OR_URL")]
    pub idp_jwks: Option<String>,

    /// The `iss` every platform token must carry (with --idp-jwks).
    #[arg(long, env = "FLASHSALE_IDP_ISSUER", value_name = "ISS")]
    pub idp_issuer: Option<String>,

    /// An `aud` every platform token must carry (with --idp-jwks).
    #[arg(long, env = "FLASHSALE_IDP_AUDIENCE", value_name = "AUD")]
    pub idp_audience: Option<String>,

    /// The claim of a platform token that says `shopper` or `merchant`; a
    /// token without it is a shopper's.
    #[arg(long, env = "FLASHSALE_IDP_ROLE_CLAIM", default_value = crate::idp::ROLE_CLAIM_DEFAULT)]
    pub idp_role_claim: String,

    /// Clock skew allowed on a platform token's `exp` and `nbf`, in
    /// seconds (at most 300).
    #[arg(long, env = "FLASHSALE_IDP_LEEWAY_SECONDS", default_value_t = 30)]
    pub idp_leeway_seconds: u64,
}

/// The validated configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: read or generate `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    /// `None`: read or generate `<data_dir>/secret`.
    pub secret: Option<Vec<u8>>,
    pub durability: Durability,
    pub database_url: Option<String>,
    /// Multi-node mode: where the sale's state lives. `None`: in this
    /// process (engine and journal).
    pub redis: Option<RedisSettings>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_bytes_max: usize,
    /// A body's time to arrive, before what its bytes earn.
    pub body_read_timeout: Duration,
    /// Slowest average body rate, bytes per second (at least 1).
    pub body_rate_min_bytes_per_second: u64,
    /// Bodies arriving at once.
    pub body_reads_max: usize,
    /// One request's whole time, headers to answer.
    pub request_timeout: Duration,
    /// Requests per second per token; 0 = off.
    pub rate_limit_shopper: u32,
    /// Signups per minute per address; 0 = off.
    pub rate_limit_address: u32,
    pub in_flight_max: usize,
    pub shutdown_grace: Duration,
    pub token_ttl: Duration,
    /// How often the housekeeping task expires holds.
    pub expiry_interval: Duration,
    /// Credited to each wallet created by `POST /v1/shoppers`; zero: none.
    pub signup_credit: Money,
    /// Subscribers of the feed's stream at once.
    pub feed_subscribers_max: usize,
    /// Peers whose `Forwarded`/`X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins allowed to call from a browser (`Origin` header values).
    pub cors_origins: Vec<hyper::header::HeaderValue>,
    /// The storefront's address as shoppers reach it, the base of every
    /// deal's QR link; `None`: derived from the address listened on
    /// ([`listen_url`]).
    pub public_url: Option<Url>,
    /// Printed before every amount on the pages.
    pub currency_symbol: String,
    /// The platform's identity provider, whose JWTs are accepted; `None`:
    /// only the engine's own tokens.
    pub idp: Option<IdpSettings>,
}

impl Config {
    /// The defaults of `flashsale serve --help`, on `data_dir`, listening on
    /// `127.0.0.1:0`, with the admin token and secret kept in `data_dir` and
    /// no external stores. Reads no environment.
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            admin_token: None,
            secret: None,
            durability: Durability::Sync,
            database_url: None,
            redis: None,
            max_connections: 10_000,
            header_read_timeout: Duration::from_millis(5_000),
            body_bytes_max: 16_384,
            body_read_timeout: Duration::from_millis(5_000),
            body_rate_min_bytes_per_second: 4_096,
            body_reads_max: 1_024,
            request_timeout: Duration::from_millis(30_000),
            rate_limit_shopper: 20,
            rate_limit_address: 10,
            in_flight_max: 4_096,
            shutdown_grace: Duration::from_secs(10),
            token_ttl: Duration::from_secs(720 * 3600),
            expiry_interval: Duration::from_millis(250),
            signup_credit: Money::ZERO,
            feed_subscribers_max: 10_000,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            public_url: None,
            currency_symbol: CURRENCY_SYMBOL_DEFAULT.to_owned(),
            idp: None,
        }
    }

    /// Validates raw arguments into a configuration. Errors:
    /// [`Error::Config`], naming the flag and its environment variable
    /// (either may have given the value).
    pub fn from_args(args: ServeArgs) -> Result<Config, Error> {
        let durability = match args.durability.as_str() {
            "sync" => Durability::Sync,
            "async" => Durability::Async,
            other => {
                return Err(Error::Config(format!(
                    "{} must be sync or async, not {other:?}",
                    setting("durability")
                )));
            }
        };
        let mut config = Config::new(args.data_dir.clone());
        config.redis = redis_settings(&args)?;
        config.idp = idp_settings(&args)?;
        config.addr = args.addr;
        if let Some(token) = args.admin_token {
            if token.trim().len() < ADMIN_TOKEN_BYTES_MIN {
                return Err(Error::Config(format!(
                    "{} must be at least {ADMIN_TOKEN_BYTES_MIN} bytes",
                    setting("admin-token")
                )));
            }
            if config.idp.is_some() && crate::idp::is_jwt(&token) {
                return Err(Error::Config(format!(
                    "{} must not look like a JWT (`eyJ…` with two dots) with {}: \
                     such a bearer token is checked as the platform's, and the admin \
                     would be refused",
                    setting("admin-token"),
                    setting("idp-jwks")
                )));
            }
            config.admin_token = Some(token);
        }
        if let Some(secret) = args.secret {
            if secret.len() < SECRET_BYTES_MIN {
                return Err(Error::Config(format!(
                    "{} must be at least {SECRET_BYTES_MIN} bytes",
                    setting("secret")
                )));
            }
            config.secret = Some(secret.into_bytes());
        }
        if config.redis.is_some() && (config.secret.is_none() || config.admin_token.is_none()) {
            return Err(Error::Config(
                "multi-node mode (--redis-url or --redis-cluster) needs --secret and --admin-token, \
                 the same on every node, so that a token one node issues works on all"
                    .into(),
            ));
        }
        config.durability = durability;
        config.database_url = args.database_url;
        config.max_connections = at_least_one(args.max_connections, "max-connections")?;
        config.header_read_timeout = Duration::from_millis(at_least_one(
            args.header_read_timeout_ms,
            "header-read-timeout-ms",
        )?);
        if args.body_bytes_max == 0 || args.body_bytes_max > BODY_BYTES_MAX_LIMIT {
            return Err(Error::Config(format!(
                "{} must be from 1 to {BODY_BYTES_MAX_LIMIT}",
                setting("body-bytes-max")
            )));
        }
        config.body_bytes_max = args.body_bytes_max;
        config.body_read_timeout = Duration::from_millis(at_least_one(
            args.body_read_timeout_ms,
            "body-read-timeout-ms",
        )?);
        config.body_rate_min_bytes_per_second = at_least_one(
            args.body_rate_min_bytes_per_second,
            "body-rate-min-bytes-per-second",
        )?;
        config.body_reads_max = at_least_one(args.body_reads_max, "body-reads-max")?;
        config.request_timeout =
            Duration::from_millis(at_least_one(args.request_timeout_ms, "request-timeout-ms")?);
        let revocation_wait = flashsale_redis::REVOCATION_PROPAGATION
            .saturating_add(flashsale_redis::REVOCATION_MARGIN);
        if config.redis.is_some() && config.request_timeout <= revocation_wait {
            return Err(Error::Config(format!(
                "{} must be above {} in multi-node mode: revoking a token answers only once \
                 every node refuses it, that long after Redis has the revocation",
                setting("request-timeout-ms"),
                revocation_wait.as_millis()
            )));
        }
        config.rate_limit_shopper = args.rate_limit_shopper;
        config.rate_limit_address = args.rate_limit_address;
        config.in_flight_max = at_least_one(args.in_flight_max, "in-flight-max")?;
        config.shutdown_grace = Duration::from_secs(args.shutdown_grace_seconds);
        let hours = at_least_one(args.token_ttl_hours, "token-ttl-hours")?;
        config.token_ttl = Duration::from_secs(hours.saturating_mul(3600));
        config.signup_credit = parse_signup_credit(&args.signup_credit)?;
        config.feed_subscribers_max =
            at_least_one(args.feed_subscribers_max, "feed-subscribers-max")?;
        config.trusted_proxies = args.trusted_proxies;
        config.cors_origins = args.cors_origins;
        config.public_url = args
            .public_url
            .as_deref()
            .map(parse_public_url)
            .transpose()?;
        config.currency_symbol = parse_currency_symbol(&args.currency_symbol)?;
        Ok(config)
    }
}

/// `--public-url`: an absolute `http` or `https` URL with a host, no
/// query, fragment or credentials, at most [`PUBLIC_URL_BYTES_MAX`] bytes.
fn parse_public_url(text: &str) -> Result<Url, Error> {
    let refuse = |why: &str| {
        Error::Config(format!(
            "{} must be an absolute http or https URL such as https://shop.example/ \
             ({why}), not {text:?}",
            setting("public-url")
        ))
    };
    if text.len() > PUBLIC_URL_BYTES_MAX {
        return Err(refuse(&format!("at most {PUBLIC_URL_BYTES_MAX} bytes")));
    }
    let url = Url::parse(text).map_err(|error| refuse(&error.to_string()))?;
    // Parsing may lengthen it (punycode, percent-encoding).
    if url.as_str().len() > PUBLIC_URL_BYTES_MAX {
        return Err(refuse(&format!(
            "at most {PUBLIC_URL_BYTES_MAX} bytes as a URL"
        )));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("the scheme is not http or https"));
    }
    if url.host().is_none() {
        return Err(refuse("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("a deal's link adds its own query"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("credentials do not belong in a printed link"));
    }
    Ok(url)
}

/// The default public URL: `http://<addr>/`, the loopback address of the
/// same family for an unspecified one (`0.0.0.0`, `[::]`).
pub fn listen_url(addr: SocketAddr) -> Result<Url, Error> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let text = format!("http://{}/", SocketAddr::new(ip, addr.port()));
    Url::parse(&text).map_err(|error| Error::Config(format!("{text} is no URL: {error}")))
}

/// `--currency-symbol`: 1 to [`CURRENCY_SYMBOL_CHARS_MAX`] characters, no
/// control character, not blank.
fn parse_currency_symbol(text: &str) -> Result<String, Error> {
    let chars = text.chars().count();
    if chars == 0
        || chars > CURRENCY_SYMBOL_CHARS_MAX
        || text.trim().is_empty()
        || text.chars().any(char::is_control)
    {
        return Err(Error::Config(format!(
            "{} must be 1 to {CURRENCY_SYMBOL_CHARS_MAX} characters, not blank, no control \
             character, not {text:?}",
            setting("currency-symbol")
        )));
    }
    Ok(text.to_owned())
}

/// Longest `--idp-leeway-seconds` accepted: more would keep expired tokens
/// alive for minutes.
pub const IDP_LEEWAY_SECONDS_MAX: u64 = 300;

/// The identity provider's settings: `--idp-jwks`, `--idp-issuer` and
/// `--idp-audience` all or none.
fn idp_settings(args: &ServeArgs) -> Result<Option<IdpSettings>, Error> {
    fn given(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|text| !text.is_empty())
    }
    let (jwks, issuer, audience) = (
        given(&args.idp_jwks),
        given(&args.idp_issuer),
        given(&args.idp_audience),
    );
    let (Some(jwks), Some(issuer), Some(audience)) = (jwks, issuer, audience) else {
        if jwks.is_some() || issuer.is_some() || audience.is_some() {
            return Err(Error::Config(format!(
                "{}, {} and {} go together: a platform token is checked against all three",
                setting("idp-jwks"),
                setting("idp-issuer"),
                setting("idp-audience")
            )));
        }
        return Ok(None);
    };
    let jwks = JwksSource::parse(jwks)
        .map_err(|why| Error::Config(format!("{} {why}, not {jwks:?}", setting("idp-jwks"))))?;
    if args.idp_role_claim.is_empty() {
        return Err(Error::Config(format!(
            "{} must name a claim",
            setting("idp-role-claim")
        )));
    }
    if args.idp_leeway_seconds > IDP_LEEWAY_SECONDS_MAX {
        return Err(Error::Config(format!(
            "{} must be at most {IDP_LEEWAY_SECONDS_MAX}",
            setting("idp-leeway-seconds")
        )));
    }
    Ok(Some(IdpSettings {
        jwks,
        issuer: issuer.to_owned(),
        audience: audience.to_owned(),
        role_claim: args.idp_role_claim.clone(),
        leeway_seconds: args.idp_leeway_seconds,
    }))
}

/// Multi-node mode's settings from `--redis-url` or `--redis-cluster`.
fn redis_settings(args: &ServeArgs) -> Result<Option<RedisSettings>, Error> {
    let Some((target, namespace, shards)) = args.redis.deployment()? else {
        if args.redis_replica_acks > 0 {
            return Err(Error::Config(format!(
                "{} asks for Redis replicas, but no Redis is configured (--redis-url or --redis-cluster)",
                setting("redis-replica-acks")
            )));
        }
        return Ok(None);
    };
    Ok(Some(RedisSettings {
        target,
        namespace,
        shards,
        response_timeout: Duration::from_millis(at_least_one(
            args.redis_response_timeout_ms,
            "redis-response-timeout-ms",
        )?),
        connect_timeout: Duration::from_millis(at_least_one(
            args.redis_connect_timeout_ms,
            "redis-connect-timeout-ms",
        )?),
        allow_volatile: args.allow_volatile_redis,
        books_backlog_per_stream_max: match &args.database_url {
            Some(_) => {
                at_least_one(args.books_backlog_max, "books-backlog-max")?.div_ceil(shards as u64)
            }
            _ => 0,
        },
        reserve_calls_in_flight: match args.redis_reserve_calls_in_flight {
            calls @ 1..=flashsale_redis::RESERVE_CALLS_IN_FLIGHT_MAX => calls,
            _ => {
                return Err(Error::Config(format!(
                    "{} must be 1 to {}",
                    setting("redis-reserve-calls-in-flight"),
                    flashsale_redis::RESERVE_CALLS_IN_FLIGHT_MAX
                )));
            }
        },
        clock: None,
        replica_acks: match args.redis_replica_acks {
            0 => None,
            required => Some(ReplicaAckSettings {
                required,
                timeout: Duration::from_millis(at_least_one(
                    args.redis_replica_ack_timeout_ms,
                    "redis-replica-ack-timeout-ms",
                )?),
            }),
        },
    }))
}

/// `--signup-credit`: money in the API's one grammar ([`Money::parse`]).
fn parse_signup_credit(text: &str) -> Result<Money, Error> {
    Money::parse(text, "--signup-credit")
        .map_err(|error| Error::Config(format!("{error}, not {text:?}")))
}

fn at_least_one<T: PartialEq + Default>(value: T, long: &str) -> Result<T, Error> {
    if value == T::default() {
        return Err(Error::Config(format!(
            "{} must be at least 1",
            setting(long)
        )));
    }
    Ok(value)
}

/// The environment variable `flashsale serve --<long>` reads, from the
/// flags' own declaration; `None` for an unknown flag.
pub fn environment_variable(long: &str) -> Option<String> {
    use clap::Args as _;
    ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|variable| variable.to_string_lossy().into_owned())
}

/// How a refusal names a setting: `--long (VARIABLE)`, since either the
/// flag or its environment variable may have given the value.
fn setting(long: &str) -> String {
    match environment_variable(long) {
        Some(variable) => format!("--{long} ({variable})"),
        None => format!("--{long}"),
    }
}

/// `--trusted-proxies`: one address (a network of one) or CIDR network.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or CIDR network, e.g. 10.0.0.0/8"))
}

/// `--cors-origins`: one origin, `scheme://host[:port]` with an http or
/// https scheme and nothing after the authority (the WHATWG Fetch
/// standard's serialized origin, which browsers send in `Origin`); kept
/// lowercase. `*` is refused: origins are listed.
pub fn parse_origin(text: &str) -> Result<hyper::header::HeaderValue, String> {
    let text = text.trim();
    let refuse =
        |why: &str| format!("{text:?} is not an origin like https://shop.example.com: {why}");
    let uri: hyper::Uri = text.parse().map_err(|_| refuse("it does not parse"))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(refuse("the scheme must be http or https"));
    }
    let Some(authority) = uri.authority() else {
        return Err(refuse("it names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(refuse("an origin has no user name"));
    }
    let bare = uri
        .path_and_query()
        .is_none_or(|rest| rest.as_str().is_empty() || rest.as_str() == "/");
    if !bare || text.ends_with('/') {
        return Err(refuse("an origin has no path, query or trailing slash"));
    }
    let origin = format!("{scheme}://{}", authority.as_str().to_ascii_lowercase());
    hyper::header::HeaderValue::from_str(&origin).map_err(|_| refuse("it is not a header value"))
}

/// `--addr`: `IP:PORT`, or `HOST:PORT` with a host name resolved now (an
/// IPv4 address preferred, so `localhost:8090` prints as
/// `127.0.0.1:8090`). Anything else is refused with `ADDR_HINT` and, for
/// a bare port or `:PORT`, the address probably meant.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if !port_only.is_empty() && port_only.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "{ADDR_HINT} (127.0.0.1:{port_only} to listen on this machine only, \
             0.0.0.0:{port_only} on every interface)"
        ));
    }
    let resolved: Vec<SocketAddr> = match text.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(error) => return Err(format!("{ADDR_HINT} ({error})")),
    };
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{ADDR_HINT} ({text} resolves to no address)"))
}

/// 32 random bytes, URL-safe base64, with a prefix that says what it is.
pub fn generate_admin_token() -> Result<String, Error> {
    Ok(format!("fsa_{}", random_base64(32)?))
}

/// `bytes` random bytes as URL-safe base64 without padding.
pub(crate) fn random_base64(bytes: usize) -> Result<String, Error> {
    use base64::Engine as _;
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(Error::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults, built by hand: going through clap here would
    /// read `REDIS_URL` and friends from the test's environment.
    fn args() -> ServeArgs {
        ServeArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            secret: None,
            durability: "sync".into(),
            database_url: None,
            redis: RedisArgs {
                redis_url: None,
                redis_cluster: Vec::new(),
                redis_namespace: "fs".into(),
                redis_shards: 64,
            },
            redis_response_timeout_ms: 1_000,
            redis_connect_timeout_ms: 1_000,
            allow_volatile_redis: false,
            books_backlog_max: 1_000_000,
            redis_reserve_calls_in_flight: flashsale_redis::RESERVE_CALLS_IN_FLIGHT_DEFAULT,
            redis_replica_acks: 0,
            redis_replica_ack_timeout_ms: 1_000,
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            body_bytes_max: 16_384,
            body_read_timeout_ms: 5_000,
            body_rate_min_bytes_per_second: 4_096,
            body_reads_max: 1_024,
            request_timeout_ms: 30_000,
            rate_limit_shopper: 20,
            rate_limit_address: 10,
            in_flight_max: 4_096,
            shutdown_grace_seconds: 10,
            token_ttl_hours: 720,
            signup_credit: "0".into(),
            feed_subscribers_max: 10_000,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            public_url: None,
            currency_symbol: CURRENCY_SYMBOL_DEFAULT.to_owned(),
            idp_jwks: None,
            idp_issuer: None,
            idp_audience: None,
            idp_role_claim: crate::idp::ROLE_CLAIM_DEFAULT.to_owned(),
            idp_leeway_seconds: 30,
        }
    }

    #[test]
    fn an_admin_token_shaped_like_a_jwt_is_refused_beside_an_identity_provider() {
        let jwt_shaped = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl";
        let with = |jwks: Option<&str>| {
            Config::from_args(ServeArgs {
                admin_token: Some(jwt_shaped.to_owned()),
                idp_jwks: jwks.map(str::to_owned),
                idp_issuer: jwks.map(|_| "https://id.test".to_owned()),
                idp_audience: jwks.map(|_| "shop".to_owned()),
                ..args()
            })
        };
        assert!(with(None).is_ok(), "without a provider it is only a token");
        let Err(Error::Config(message)) = with(Some("keys.json")) else {
            panic!("a JWT-shaped admin token beside --idp-jwks is refused");
        };
        assert!(
            message.starts_with("--admin-token (FLASHSALE_ADMIN_TOKEN) must not look like a JWT"),
            "{message}"
        );
    }

    #[test]
    fn the_identity_provider_takes_jwks_issuer_and_audience_together() {
        let with = |jwks: Option<&str>, issuer: Option<&str>, audience: Option<&str>| {
            Config::from_args(ServeArgs {
                idp_jwks: jwks.map(str::to_owned),
                idp_issuer: issuer.map(str::to_owned),
                idp_audience: audience.map(str::to_owned),
                ..args()
            })
        };
        assert!(with(None, None, None).unwrap().idp.is_none());
        let idp = with(Some("keys.json"), Some("https://id.test"), Some("shop"))
            .unwrap()
            .idp
            .unwrap();
        assert_eq!(idp.jwks, JwksSource::File(PathBuf::from("keys.json")));
        assert_eq!(idp.role_claim, "flashsale_role");
        for partial in [
            with(Some("keys.json"), None, None),
            with(None, Some("https://id.test"), Some("shop")),
            with(Some("keys.json"), Some("https://id.test"), None),
        ] {
            let Err(Error::Config(message)) = partial else {
                panic!("a partial identity provider is refused");
            };
            assert!(
                message.contains("--idp-jwks (FLASHSALE_IDP_JWKS)"),
                "{message}"
            );
        }
        let Err(Error::Config(message)) = with(Some("ftp://id.test/keys"), Some("i"), Some("a"))
        else {
            panic!("an ftp JWKS is refused");
        };
        assert!(message.contains("http(s)"), "{message}");
        let Err(Error::Config(message)) = Config::from_args(ServeArgs {
            idp_leeway_seconds: 3_600,
            idp_jwks: Some("keys.json".into()),
            idp_issuer: Some("https://id.test".into()),
            idp_audience: Some("shop".into()),
            ..args()
        }) else {
            panic!("an hour of leeway is refused");
        };
        assert!(message.contains("--idp-leeway-seconds"), "{message}");
    }

    #[test]
    fn the_public_url_is_an_absolute_http_url_without_query() {
        let with = |url: &str| {
            Config::from_args(ServeArgs {
                public_url: Some(url.into()),
                ..args()
            })
        };
        let config = with("https://shop.example/flash/").unwrap();
        assert_eq!(
            config.public_url.map(String::from).as_deref(),
            Some("https://shop.example/flash/")
        );
        let long = format!("https://shop.example/{}", "a".repeat(PUBLIC_URL_BYTES_MAX));
        for bad in [
            "shop.example",
            "/flash",
            "ftp://shop.example/",
            "https://shop.example/?a=1",
            "https://shop.example/#top",
            "https://user:pw@shop.example/",
            "mailto:shop@example.com",
            &long,
        ] {
            let Err(Error::Config(message)) = with(bad) else {
                panic!("{bad:?} must be refused");
            };
            assert!(
                message.starts_with("--public-url (FLASHSALE_PUBLIC_URL) must be"),
                "{message}"
            );
        }
        assert_eq!(Config::from_args(args()).unwrap().public_url, None);
        let listen = |addr: &str| listen_url(addr.parse().unwrap()).unwrap().to_string();
        assert_eq!(listen("0.0.0.0:8080"), "http://127.0.0.1:8080/");
        assert_eq!(listen("[::]:8080"), "http://[::1]:8080/");
        assert_eq!(listen("10.1.2.3:80"), "http://10.1.2.3/");
    }

    #[test]
    fn the_currency_symbol_is_a_few_printable_characters() {
        let with = |symbol: &str| {
            Config::from_args(ServeArgs {
                currency_symbol: symbol.into(),
                ..args()
            })
        };
        assert_eq!(with("US$").unwrap().currency_symbol, "US$");
        assert_eq!(Config::from_args(args()).unwrap().currency_symbol, "¥");
        for bad in ["", " ", "a\nb", "123456789"] {
            assert!(matches!(with(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn redis_mode_needs_a_shared_secret_and_admin_token() {
        let redis = || ServeArgs {
            redis: RedisArgs {
                redis_url: Some("redis://127.0.0.1".into()),
                ..args().redis
            },
            ..args()
        };
        assert!(matches!(Config::from_args(redis()), Err(Error::Config(_))));
        let shared = || ServeArgs {
            secret: Some("0123456789abcdef".into()),
            admin_token: Some("an-admin-token-of-the-deployment".into()),
            ..redis()
        };
        let config = Config::from_args(shared()).unwrap();
        let settings = config.redis.expect("Redis mode");
        assert_eq!(
            settings.target,
            RedisTarget::Single("redis://127.0.0.1".into())
        );
        assert_eq!(settings.shards, 64);
        // A token revocation waits out the propagation bound.
        let timeout = |request_timeout_ms| ServeArgs {
            request_timeout_ms,
            ..shared()
        };
        assert!(matches!(
            Config::from_args(timeout(1_050)),
            Err(Error::Config(message)) if message.contains("request-timeout-ms")
        ));
        Config::from_args(timeout(1_051)).unwrap();
        for bad in [
            ServeArgs {
                redis: RedisArgs {
                    redis_shards: 48,
                    ..shared().redis
                },
                ..shared()
            },
            ServeArgs {
                redis: RedisArgs {
                    redis_namespace: "a{b}".into(),
                    ..shared().redis
                },
                ..shared()
            },
        ] {
            assert!(matches!(Config::from_args(bad), Err(Error::Config(_))));
        }
    }

    #[test]
    fn origins_and_proxy_networks_are_checked_at_start() {
        assert_eq!(
            parse_origin("https://Shop.Example.com:8443").unwrap(),
            "https://shop.example.com:8443"
        );
        assert_eq!(
            parse_origin(" http://127.0.0.1:9000 ").unwrap(),
            "http://127.0.0.1:9000"
        );
        for bad in [
            "*",
            "shop.example.com",
            "ftp://shop.example.com",
            "https://shop.example.com/",
            "https://shop.example.com/store",
            "https://shop.example.com?x=1",
            "https://user@shop.example.com",
            "null",
        ] {
            let refused = parse_origin(bad).expect_err(bad);
            assert!(refused.contains("not an origin"), "{bad}: {refused}");
        }
        assert_eq!(
            parse_network("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        for bad in ["10.0.0.0/33", "proxy.local", ""] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_validated() {
        for bad in [
            ServeArgs {
                body_bytes_max: 0,
                ..args()
            },
            ServeArgs {
                in_flight_max: 0,
                ..args()
            },
            ServeArgs {
                secret: Some("short".into()),
                ..args()
            },
            ServeArgs {
                durability: "maybe".into(),
                ..args()
            },
            ServeArgs {
                signup_credit: "-5".into(),
                ..args()
            },
            ServeArgs {
                signup_credit: "5.001".into(),
                ..args()
            },
            ServeArgs {
                signup_credit: "1e3".into(),
                ..args()
            },
            ServeArgs {
                body_read_timeout_ms: 0,
                ..args()
            },
            ServeArgs {
                body_rate_min_bytes_per_second: 0,
                ..args()
            },
            ServeArgs {
                body_reads_max: 0,
                ..args()
            },
            ServeArgs {
                request_timeout_ms: 0,
                ..args()
            },
            ServeArgs {
                feed_subscribers_max: 0,
                ..args()
            },
            ServeArgs {
                admin_token: Some("admin".into()),
                ..args()
            },
            ServeArgs {
                admin_token: Some(" ".repeat(ADMIN_TOKEN_BYTES_MIN)),
                ..args()
            },
        ] {
            assert!(matches!(Config::from_args(bad), Err(Error::Config(_))));
        }
        let config = Config::from_args(ServeArgs {
            rate_limit_shopper: 0,
            durability: "async".into(),
            admin_token: Some("a".repeat(ADMIN_TOKEN_BYTES_MIN)),
            ..args()
        })
        .unwrap();
        assert_eq!(config.rate_limit_shopper, 0);
        assert!(matches!(config.durability, Durability::Async));
        assert_eq!(config.admin_token.as_deref().map(str::len), Some(16));
        assert_eq!(config.signup_credit, Money::ZERO);
        let config = Config::from_args(ServeArgs {
            signup_credit: "5000".into(),
            ..args()
        })
        .unwrap();
        assert_eq!(config.signup_credit.to_string(), "5000.00");
    }

    #[test]
    fn refusals_name_the_flag_and_its_variable() {
        let Err(Error::Config(message)) = Config::from_args(ServeArgs {
            admin_token: Some("short".into()),
            ..args()
        }) else {
            panic!("a short admin token must be refused");
        };
        assert_eq!(
            message,
            "--admin-token (FLASHSALE_ADMIN_TOKEN) must be at least 16 bytes"
        );
        let Err(Error::Config(message)) = Config::from_args(ServeArgs {
            in_flight_max: 0,
            ..args()
        }) else {
            panic!("no in-flight requests must be refused");
        };
        assert!(
            message.starts_with("--in-flight-max (FLASHSALE_IN_FLIGHT_MAX)"),
            "{message}"
        );
        for calls in [0, flashsale_redis::RESERVE_CALLS_IN_FLIGHT_MAX + 1] {
            let Err(Error::Config(message)) = Config::from_args(ServeArgs {
                redis: RedisArgs {
                    redis_url: Some("redis://127.0.0.1:6379".into()),
                    ..args().redis
                },
                redis_reserve_calls_in_flight: calls,
                ..args()
            }) else {
                panic!("{calls} reserve calls in flight must be refused");
            };
            assert_eq!(
                message,
                "--redis-reserve-calls-in-flight (FLASHSALE_REDIS_RESERVE_CALLS_IN_FLIGHT) must be 1 to 4096"
            );
        }
        assert_eq!(environment_variable("nothing"), None);
    }

    #[test]
    fn listen_addresses_take_host_names_or_get_a_hint() {
        assert_eq!(
            parse_addr("127.0.0.1:8090"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8090)))
        );
        assert_eq!(
            parse_addr("localhost:8090"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8090)))
        );
        assert_eq!(
            parse_addr("[::1]:8090").map(|addr| addr.is_ipv6()),
            Ok(true)
        );
        for bad in ["8080", ":8090", "", "localhost", "127.0.0.1:http-alt"] {
            let message = parse_addr(bad).unwrap_err();
            assert!(message.starts_with(ADDR_HINT), "{bad:?}: {message}");
        }
        assert!(parse_addr(":8090").unwrap_err().contains("127.0.0.1:8090"));
    }
}
