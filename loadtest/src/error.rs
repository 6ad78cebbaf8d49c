//! The crate's one error type.
//!
//! A [`LoadtestError`] is anything that stops a load test before it can
//! produce its report: a bad flag, an unreachable target, a setup call the
//! server refused. What happens *during* the run (sold out, limit reached,
//! 503, timeouts) is an outcome that the report counts, never an error.
//! A failed invariant check is not an error either: the report lists it and
//! [`crate::run`] turns it into a non-zero exit status.
//!
//! `Display` says what went wrong at this level only; the cause is the
//! `source()`, so the binary can print the whole chain once.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a load test.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// `--target` (or `verify-draw --deal`) is not an
    /// `http[s]://host[:port][/prefix]` URL, or `--ca-cert` is not a PEM
    /// file of certificates.
    #[error("invalid target URL {url:?}: {reason}")]
    InvalidTarget { url: String, reason: String },

    /// The target's host name did not resolve.
    #[error("cannot resolve {authority}")]
    Resolve {
        authority: String,
        #[source]
        source: io::Error,
    },

    /// A flag is out of its allowed range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No admin token: neither `--admin-token`, `FLASHSALE_ADMIN_TOKEN`
    /// nor `--spawn`.
    #[error("no admin token: pass --admin-token, set FLASHSALE_ADMIN_TOKEN, or use --spawn")]
    MissingAdminToken,

    /// A setup or check request could not be exchanged at all.
    #[error("{what}: no answer from the server")]
    Transport {
        what: String,
        #[source]
        source: TransportError,
    },

    /// A setup or check request got an answer the contract does not allow.
    #[error("{what}: server answered {status} {code}: {message}")]
    Api {
        what: String,
        status: u16,
        code: String,
        message: String,
    },

    /// Reading one target's account of the run for the invariant checks
    /// failed: a node that cannot show the deal the run sold.
    #[error("checking the invariants on {url}")]
    Node {
        url: String,
        #[source]
        source: Box<LoadtestError>,
    },

    /// An answer's body is not the JSON the contract describes.
    #[error("{what}: the answer is not the JSON the contract describes")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// `--spawn` could not start the server process.
    #[error("cannot start the server {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The spawned server exited or stayed silent instead of printing its
    /// `listening on` line.
    #[error("the spawned server did not report its address: {detail}")]
    SpawnNotReady { detail: String },

    /// Registering every shopper took longer than the deal's lead time.
    #[error(
        "registration of {shoppers} shoppers did not finish {margin:?} before the deal starts; \
         raise --start-in"
    )]
    RegistrationTooSlow { shoppers: usize, margin: Duration },

    /// A raffle was still not drawn this long after its `starts_at`.
    #[error("the raffle was not drawn within {waited:?} of its starts_at")]
    DrawNotRun { waited: Duration },

    /// The hello server could not bind its address.
    #[error("cannot bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// Reading or writing a local file (report, plot, temp dir) failed.
    #[error("cannot {action} {path}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The SVG plot could not be drawn.
    #[error("cannot draw the plot {path}: {message}")]
    Plot { path: PathBuf, message: String },

    /// The dedicated load-generator runtime could not be built.
    #[error("cannot start the load generator's runtime")]
    Runtime(#[source] io::Error),

    /// The load generator's thread panicked; the panic message was printed.
    #[error("the load generator's thread panicked")]
    LoadThreadPanicked,

    /// `--database-url` was given but the Postgres check could not run.
    #[error("the Postgres check failed")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why one HTTP exchange produced no usable answer. During a run these are
/// counted (and retried, in a burst); during setup they become
/// [`LoadtestError::Transport`].
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TCP connection could not be opened.
    #[error("cannot connect")]
    Connect(#[source] io::Error),

    /// The TLS handshake of an `https://` target failed (its certificate
    /// is not trusted, or is not for the URL's host).
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),

    /// The HTTP/1 exchange failed (connection reset, closed mid-answer).
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),

    /// No complete answer within `--timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),

    /// The answer body exceeded the named limit or could not be read.
    #[error("cannot read the answer body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl TransportError {
    /// Whether this is a timeout (counted apart from other failures).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TransportError::Timeout(_))
    }
}
