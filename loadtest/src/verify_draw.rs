//! `flashsale verify-draw --deal URL`: recomputes a raffle's published
//! result from its public record alone (docs/fair-draws.md) and says
//! whether it matches, over `http://` or `https://`.
//!
//! It reads `URL/draw` and `URL/draw/registrants` (every page), then checks:
//! the revealed seed hashes to the commitment; the registrant list is
//! sorted, without repeats, of the published count and hashes to the
//! published `registrants_hash`; and the offered ranks are exactly the
//! first ranks of `HMAC-SHA256(seed, id)` over that list, in ascending
//! order. It uses the engine's own formula functions ([`Ranker`],
//! [`registrants_hash`]), which the engine's tests hold to the `hmac` and
//! `sha2` crates directly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flashsale_engine::{Digest, DrawSeed, Ranker, registrants_hash};
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::api::call;
use crate::connection::Connection;
use crate::error::LoadtestError;
use crate::target::Target;

/// Bound of one request of the verifier.
const VERIFY_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Items asked for per page (the server's largest page).
const VERIFY_PAGE_LIMIT: usize = 10_000;
/// Problems listed at most: one tampered rank shifts all after it.
const VERIFY_PROBLEMS_MAX: usize = 20;
/// Pages read of one listing at most: 10,000 × 1,000 = 10,000,000 items,
/// past the engine's registrant bound.
const VERIFY_PAGES_MAX: usize = 1_000;

/// One page of `GET /v1/deals/{id}/draw` (docs/api.md "Raffles").
#[derive(Deserialize)]
pub(crate) struct DrawPage {
    pub(crate) seed_commitment: String,
    pub(crate) drawn: bool,
    pub(crate) seed: Option<String>,
    pub(crate) registrants: Option<u64>,
    pub(crate) registrants_hash: Option<String>,
    pub(crate) offers_total: Option<u64>,
    pub(crate) offers: Vec<OfferPage>,
    pub(crate) next_cursor: Option<String>,
}

/// One offered rank: hex `rank`, `outcome` `hold` or `passed_over`.
#[derive(Deserialize)]
pub(crate) struct OfferPage {
    pub(crate) rank: String,
    pub(crate) outcome: String,
}

#[derive(Deserialize)]
struct RegistrantsPage {
    registrants: Vec<String>,
    next_cursor: Option<String>,
}

/// What the verifier found: `problems` is empty when the published result
/// matches the recomputed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawVerdict {
    /// Whether the draw has run; before it there is nothing to verify.
    pub drawn: bool,
    pub registrants: u64,
    pub offers: u64,
    pub problems: Vec<String>,
}

fn unhex(text: &str, what: &str, problems: &mut Vec<String>) -> Digest {
    let mut digest = [0; 32];
    if hex_decode(text, &mut digest).is_none() {
        problems.push(format!("{what} is not 64 hex digits: {text:?}"));
    }
    digest
}

/// Decodes 64 hex digits into `out`; `None` if `text` is anything else.
pub(crate) fn hex_decode(text: &str, out: &mut Digest) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    for (index, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[index] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(())
}

/// Reads every page of `path` (relative to the connection's target)
/// through `next`, at most [`VERIFY_PAGES_MAX`] pages.
pub(crate) async fn pages<T: for<'de> Deserialize<'de>>(
    connection: &mut Connection,
    path: &str,
    next: impl Fn(&T) -> Option<String>,
) -> Result<Vec<T>, LoadtestError> {
    let mut all = Vec::new();
    let mut query = format!("limit={VERIFY_PAGE_LIMIT}");
    for _ in 0..VERIFY_PAGES_MAX {
        let page: T = call(
            connection,
            path,
            Method::GET,
            &format!("{path}?{query}"),
            None,
            None,
            &[StatusCode::OK],
        )
        .await?;
        let cursor = next(&page);
        all.push(page);
        match cursor {
            Some(cursor) => query = format!("limit={VERIFY_PAGE_LIMIT}&cursor={cursor}"),
            None => return Ok(all),
        }
    }
    Err(LoadtestError::Config(format!(
        "{path} has more than {VERIFY_PAGES_MAX} pages"
    )))
}

/// Fetches the public record of the raffle at `deal_url`
/// (`http://host:port/v1/deals/d_1`, or `https://…` trusting Mozilla's
/// roots and the PEM certificates of `ca_cert`) and recomputes it. Errors:
/// the URL, the CA file, the network, TLS, or answers that are not the
/// contract's JSON (a `404` among them); a result that does not match is a
/// [`DrawVerdict`] with problems, not an error.
pub async fn verify_draw(
    deal_url: &str,
    ca_cert: Option<&Path>,
) -> Result<DrawVerdict, LoadtestError> {
    let target = Arc::new(Target::resolve(deal_url, ca_cert).await?);
    let mut connection = Connection::new(target, VERIFY_CALL_TIMEOUT);
    let draws = pages(&mut connection, "/draw", |page: &DrawPage| {
        page.next_cursor.clone()
    })
    .await?;
    let mut problems = Vec::new();
    let Some(first) = draws.first() else {
        return Err(LoadtestError::Config("no draw record".to_owned()));
    };
    if !first.drawn {
        return Ok(DrawVerdict {
            drawn: false,
            registrants: 0,
            offers: 0,
            problems,
        });
    }
    let commitment = unhex(&first.seed_commitment, "seed_commitment", &mut problems);
    let seed = DrawSeed(unhex(
        first.seed.as_deref().unwrap_or(""),
        "seed",
        &mut problems,
    ));
    if seed.commitment() != commitment {
        problems.push("SHA-256(seed) is not the published seed_commitment".to_owned());
    }

    let listed: Vec<String> = pages(
        &mut connection,
        "/draw/registrants",
        |page: &RegistrantsPage| page.next_cursor.clone(),
    )
    .await?
    .into_iter()
    .flat_map(|page| page.registrants)
    .collect();
    if listed.windows(2).any(|pair| pair[0] >= pair[1]) {
        problems.push("the registrant list is not sorted ascending without repeats".to_owned());
    }
    if first.registrants != Some(listed.len() as u64) {
        problems.push(format!(
            "{} registrants published, {} listed",
            first.registrants.unwrap_or(0),
            listed.len()
        ));
    }
    let hash = unhex(
        first.registrants_hash.as_deref().unwrap_or(""),
        "registrants_hash",
        &mut problems,
    );
    if registrants_hash(listed.iter().map(|id| id.as_bytes())) != hash {
        problems.push("the registrant list does not hash to registrants_hash".to_owned());
    }

    let ranker = Ranker::new(&seed);
    let mut ranks: Vec<Digest> = listed.iter().map(|id| ranker.rank(id.as_bytes())).collect();
    ranks.sort_unstable();
    let offers: Vec<&OfferPage> = draws.iter().flat_map(|page| &page.offers).collect();
    if first.offers_total != Some(offers.len() as u64) {
        problems.push(format!(
            "{} offers published, {} listed",
            first.offers_total.unwrap_or(0),
            offers.len()
        ));
    }
    for (place, offer) in offers.iter().enumerate() {
        if problems.len() >= VERIFY_PROBLEMS_MAX {
            problems.push("(more problems not listed)".to_owned());
            break;
        }
        let rank = unhex(&offer.rank, "an offered rank", &mut problems);
        if ranks.get(place) != Some(&rank) {
            problems.push(format!(
                "offer {} ({}) is not rank {} of the recomputed ranking",
                place + 1,
                offer.rank,
                place + 1
            ));
        }
        if offer.outcome != "hold" && offer.outcome != "passed_over" {
            problems.push(format!(
                "offer {} has outcome {:?}",
                place + 1,
                offer.outcome
            ));
        }
    }
    Ok(DrawVerdict {
        drawn: true,
        registrants: listed.len() as u64,
        offers: offers.len() as u64,
        problems,
    })
}
