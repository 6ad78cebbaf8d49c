//! The feed's live stream: `GET /v1/feed/stream` as Server-Sent Events.
//!
//! A flash sale changes a card's numbers up to 100,000 times a second; a
//! phone wants a few updates a second. So the stream does not follow the
//! engine's events. One background task, the **sampler** ([`sample`]),
//! reads every tracked deal's numbers every [`FEED_SAMPLE_INTERVAL`]
//! (lock-free loads in the engine: the deal table, its atomics, the
//! merchant's rating), compares them with the last sample, and for each
//! card that changed renders its SSE frame once (`event: deal`, or `draw` when a raffle has just been drawn, `id`, `data:
//! <card JSON>`). It then publishes an immutable [`FeedSnapshot`] (every
//! tracked card and the sequence number at which it last changed) through a
//! `tokio::sync::watch` channel. Changes are therefore coalesced to at most
//! one event per deal per sample, whatever the burst.
//!
//! Each subscriber is a small task ([`subscribe`]) and a bounded channel
//! body ([`FeedBody`], [`FEED_SUBSCRIBER_BUFFER_FRAMES`] frames). The task
//! keeps one cursor, the `(changed, deal)` key of the last card it handed
//! on; the snapshot's cards are sorted by that key, so "what is new for
//! me" is a binary search. A `watch` keeps only the latest snapshot, so a
//! subscriber that falls behind (a slow phone, a stalled socket) skips
//! straight to the latest numbers when it catches up: nothing queues per
//! subscriber beyond its bounded buffer, the sampler never waits for a
//! subscriber, and the engine never sees one. A subscriber that cannot
//! take a frame for [`FEED_SUBSCRIBER_STALL_MAX`] is dropped; its client
//! reconnects and gets the current numbers.
//!
//! An event's `id` is `<run>.<sample>.<deal>`: the process's random run
//! tag (hex) and the card's `(changed, deal)` key. A reconnect whose
//! `Last-Event-ID` (the header, or a `lastEventId` query parameter, which
//! some EventSource libraries send instead) names a key of this run resumes
//! after it: the cards changed since, in order (the WHATWG HTML standard,
//! "Server-sent events"). Any other reconnect (no id, a malformed one, one
//! from before a restart) first gets the current card of every live and
//! upcoming deal, bounded by [`FEED_DEALS_MAX`] cards. Frames are shared
//! (`Bytes`), so a replay to many subscribers copies no card.
//!
//! Bounds: subscribers at once (`--feed-subscribers-max`, past it `503
//! overloaded`), the deals tracked ([`FEED_DEALS_MAX`], newest first), each
//! subscriber's buffer, and how long a card of an ended deal is kept
//! ([`FEED_ENDED_RETENTION`]) so that connected subscribers learn it ended.
//! A heartbeat comment (`: ping`) every [`FEED_HEARTBEAT_INTERVAL`] keeps
//! proxies from closing an idle stream. [`FeedHub::close`] ends every
//! stream, so graceful shutdown does not wait on them.
//!
//! Back of the envelope: a sample copies up to 1,000 deal views (about
//! 150 bytes each) five times a second, and renders only the cards that
//! changed; a deal sold at 100k buys/s costs one ~700-byte frame per sample,
//! shared by every subscriber.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flashsale_engine::{DealId, DealStatus, DealView, MerchantId, Rating, StockCounts};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::error::Error;
use crate::wire::CardJson;
use flashsale_store::{FeedSource, Store};

/// How often the sampler reads the deals' numbers: at most this many
/// events per deal per second is `1 s / FEED_SAMPLE_INTERVAL`.
pub const FEED_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Deals the sampler tracks, newest first.
pub use flashsale_store::FEED_DEALS_MAX;
/// Frames a subscriber's body buffers before its task waits.
pub const FEED_SUBSCRIBER_BUFFER_FRAMES: usize = 64;
/// A subscriber that cannot take a frame for this long is dropped.
pub const FEED_SUBSCRIBER_STALL_MAX: Duration = Duration::from_secs(60);
/// Interval of the `: ping` comment on an idle stream.
pub const FEED_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How long the card of a deal that ended stays in the snapshot.
pub const FEED_ENDED_RETENTION: Duration = Duration::from_secs(60);
/// What an EventSource waits before reconnecting, sent as `retry:`.
const FEED_RETRY_MILLIS: u64 = 2_000;

const HEARTBEAT: &[u8] = b": ping\n\n";

/// One card as the stream sends it.
#[derive(Debug, Clone)]
struct CardFrame {
    deal: DealId,
    /// Sequence number of the sample that last changed this card.
    changed: u64,
    /// Live or upcoming (not ended): part of a new subscriber's replay.
    open: bool,
    /// `event: deal\nid: …\ndata: …\n\n`.
    frame: Bytes,
}

impl CardFrame {
    fn key(&self) -> (u64, u64) {
        (self.changed, self.deal.0)
    }
}

/// What the sampler publishes: every tracked card, sorted by
/// `(changed, deal)`.
#[derive(Debug, Default)]
pub(crate) struct FeedSnapshot {
    seq: u64,
    cards: Vec<CardFrame>,
}

/// The stream's shared state: the latest snapshot, the subscriber bound
/// and the closing flag.
pub(crate) struct FeedHub {
    /// This process's run tag, the first part of every event id.
    run: u64,
    latest: watch::Sender<Arc<FeedSnapshot>>,
    closing: watch::Sender<bool>,
    subscribers: Arc<Semaphore>,
    subscribers_max: usize,
    /// Times a subscriber's buffer was full: how often clients fall behind.
    buffers_full: Arc<AtomicU64>,
}

impl FeedHub {
    /// A hub for at most `subscribers_max` streams; `run` tags this
    /// process's event ids (random, so ids of an earlier run never match).
    pub(crate) fn new(subscribers_max: usize, run: u64) -> FeedHub {
        FeedHub {
            run,
            latest: watch::Sender::new(Arc::new(FeedSnapshot::default())),
            closing: watch::Sender::new(false),
            subscribers: Arc::new(Semaphore::new(subscribers_max)),
            subscribers_max,
            buffers_full: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Times, since start, that a subscriber could not take a frame at once.
    pub(crate) fn buffers_full(&self) -> u64 {
        self.buffers_full.load(Ordering::Relaxed)
    }

    /// Subscribers connected now.
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers_max
            .saturating_sub(self.subscribers.available_permits())
    }

    /// Ends every stream and refuses new ones: at shutdown, so open streams
    /// do not hold their connections past the drain.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
        self.subscribers.close();
    }

    /// Where a reconnect with `last_event_id` resumes: the `(changed,
    /// deal)` key it names, when the id is one of this run's and not past
    /// the latest sample; `None` (a whole replay) otherwise.
    fn resume_after(&self, last_event_id: &str) -> Option<(u64, u64)> {
        let mut parts = last_event_id.split('.');
        let run = u64::from_str_radix(parts.next()?, 16).ok()?;
        let changed: u64 = parts.next()?.parse().ok()?;
        let deal: u64 = parts.next()?.parse().ok()?;
        let known =
            parts.next().is_none() && run == self.run && changed <= self.latest.borrow().seq;
        known.then_some((changed, deal))
    }

    /// A new subscriber: its body, fed by a task of its own; `503
    /// overloaded` past the bound. `last_event_id`: what the client saw
    /// last (see the module's doc), if it says.
    pub(crate) fn subscribe(&self, last_event_id: Option<&str>) -> Result<FeedBody, Error> {
        let permit = self
            .subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded)?;
        let (sender, receiver) = mpsc::channel(FEED_SUBSCRIBER_BUFFER_FRAMES);
        let subscriber = Subscriber {
            resume: last_event_id.and_then(|id| self.resume_after(id)),
            latest: self.latest.subscribe(),
            closing: self.closing.subscribe(),
            sender,
            buffers_full: self.buffers_full.clone(),
            _permit: permit,
        };
        tokio::spawn(subscriber.run());
        Ok(FeedBody { frames: receiver })
    }
}

/// The body of one stream: frames from the subscriber's task. Ends when
/// the task ends (shutdown, stall); dropping it (the client went away)
/// ends the task.
pub(crate) struct FeedBody {
    frames: mpsc::Receiver<Bytes>,
}

impl Body for FeedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

struct Subscriber {
    /// The key after which this reconnect resumes, if it named one.
    resume: Option<(u64, u64)>,
    latest: watch::Receiver<Arc<FeedSnapshot>>,
    closing: watch::Receiver<bool>,
    sender: mpsc::Sender<Bytes>,
    buffers_full: Arc<AtomicU64>,
    /// Counts this subscriber against `--feed-subscribers-max` until done.
    _permit: OwnedSemaphorePermit,
}

/// Why a subscriber's task stops.
enum Stop {
    Closing,
    Gone,
    Stalled,
}

impl Subscriber {
    async fn run(mut self) {
        match self.stream().await {
            Stop::Stalled => tracing::debug!("a feed subscriber stalled; dropped"),
            Stop::Closing | Stop::Gone => {}
        }
    }

    async fn stream(&mut self) -> Stop {
        let retry = Bytes::from(format!("retry: {FEED_RETRY_MILLIS}\n\n"));
        if let Err(stop) = self.send(retry).await {
            return stop;
        }
        // Cards changed after `joined` are news to this subscriber, even
        // when their deal has ended; before it, only open cards are sent. A
        // resumed stream continues after the key it names, and a card of
        // that sample it had not reached yet is news.
        let (joined, mut cursor) = match self.resume {
            Some((changed, deal)) => (changed.saturating_sub(1), (changed, deal)),
            None => (self.latest.borrow().seq, (0, 0)),
        };
        let mut heartbeat = tokio::time::interval(FEED_HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        'snapshots: loop {
            let snapshot = self.latest.borrow_and_update().clone();
            let start = snapshot.cards.partition_point(|card| card.key() <= cursor);
            for card in &snapshot.cards[start..] {
                if card.open || card.changed > joined {
                    match self.sender.try_send(card.frame.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return Stop::Gone,
                        Err(mpsc::error::TrySendError::Full(frame)) => {
                            self.buffers_full.fetch_add(1, Ordering::Relaxed);
                            if let Err(stop) = self.send(frame).await {
                                return stop;
                            }
                            cursor = card.key();
                            // Behind: continue from the latest numbers.
                            if self.latest.has_changed().unwrap_or(false) {
                                continue 'snapshots;
                            }
                            continue;
                        }
                    }
                }
                cursor = card.key();
            }
            tokio::select! {
                biased;
                _ = self.closing.wait_for(|closing| *closing) => return Stop::Closing,
                () = self.sender.closed() => return Stop::Gone,
                changed = self.latest.changed() => {
                    if changed.is_err() {
                        return Stop::Closing;
                    }
                }
                _ = heartbeat.tick() => {
                    // A full buffer is a client behind anyway: no ping needed.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.sender.try_send(Bytes::from_static(HEARTBEAT))
                    {
                        return Stop::Gone;
                    }
                }
            }
        }
    }

    /// Sends one frame, waiting for room at most [`FEED_SUBSCRIBER_STALL_MAX`].
    async fn send(&mut self, frame: Bytes) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = self.closing.wait_for(|closing| *closing) => Err(Stop::Closing),
            sent = tokio::time::timeout(FEED_SUBSCRIBER_STALL_MAX, self.sender.send(frame)) => {
                match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Stop::Gone),
                    Err(_) => Err(Stop::Stalled),
                }
            }
        }
    }
}

// ----- the sampler -----------------------------------------------------------

/// The numbers of a card that, when they change, make an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Numbers {
    counts: StockCounts,
    buyers: u64,
    registrations: u64,
    shares: u64,
    status: DealStatus,
    ends_at: i64,
    rating: Option<Rating>,
    /// A raffle whose draw has run (its seed is revealed).
    drawn: bool,
}

impl Numbers {
    fn of(deal: &DealView, rating: Option<Rating>) -> Numbers {
        Numbers {
            counts: deal.counts,
            buyers: deal.buyers,
            registrations: deal.registrations,
            shares: deal.shares,
            status: deal.status,
            ends_at: deal.ends_at.millis(),
            rating,
            drawn: deal.raffle.is_some_and(|raffle| raffle.seed.is_some()),
        }
    }
}

struct Tracked {
    numbers: Numbers,
    card: CardFrame,
    /// When the sampler first saw the deal ended.
    ended_at: Option<Instant>,
}

/// The sampler's memory between samples: owned by its task alone.
pub(crate) struct Sampler {
    /// The hub's run tag, for the event ids.
    run: u64,
    seq: u64,
    tracked: HashMap<DealId, Tracked>,
    /// Merchant names never change: read once.
    names: HashMap<MerchantId, Arc<str>>,
}

impl Sampler {
    pub(crate) fn new(run: u64) -> Sampler {
        Sampler {
            run,
            seq: 0,
            tracked: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// Reads every tracked deal once; the new snapshot if a card changed.
    pub(crate) fn sample(&mut self, source: &dyn FeedSource, now: Instant) -> Option<FeedSnapshot> {
        let seq = self.seq + 1;
        let mut changed = false;
        let deals = source.deals(FEED_DEALS_MAX);
        let mut present = Vec::with_capacity(deals.len());
        for deal in &deals {
            let open = deal.status != DealStatus::Ended;
            let known = self.tracked.get(&deal.id);
            match known {
                // Ended before it was ever shown, or already told.
                None if !open => continue,
                Some(tracked) if !open && tracked.ended_at.is_some() => {
                    present.push(deal.id);
                    continue;
                }
                _ => {}
            }
            present.push(deal.id);
            let rating = source.rating(deal.merchant);
            let numbers = Numbers::of(deal, rating);
            if known.is_some_and(|tracked| tracked.numbers == numbers) {
                continue;
            }
            let name = self
                .names
                .entry(deal.merchant)
                .or_insert_with(|| {
                    source
                        .merchant_name(deal.merchant)
                        .map_or_else(|| Arc::from(""), Arc::from)
                })
                .clone();
            // The sample that first sees a raffle drawn says so with a `draw`
            // event (the card then carries the revealed seed); any other
            // change is a `deal` event.
            let event = if numbers.drawn && known.is_none_or(|tracked| !tracked.numbers.drawn) {
                "draw"
            } else {
                "deal"
            };
            let id = format!("{:x}.{seq}.{}", self.run, deal.id.0);
            let Some(frame) = render(&id, event, &CardJson::new(deal, &name, rating)) else {
                continue;
            };
            let ended_at = (!open).then_some(now);
            self.tracked.insert(
                deal.id,
                Tracked {
                    numbers,
                    card: CardFrame {
                        deal: deal.id,
                        changed: seq,
                        open,
                        frame,
                    },
                    ended_at,
                },
            );
            changed = true;
        }
        let before = self.tracked.len();
        present.sort_unstable();
        self.tracked.retain(|id, tracked| {
            present.binary_search(id).is_ok()
                && tracked
                    .ended_at
                    .is_none_or(|ended| now.duration_since(ended) < FEED_ENDED_RETENTION)
        });
        changed |= self.tracked.len() != before;
        if !changed {
            return None;
        }
        self.seq = seq;
        let mut cards: Vec<CardFrame> = self
            .tracked
            .values()
            .map(|tracked| tracked.card.clone())
            .collect();
        cards.sort_unstable_by_key(CardFrame::key);
        Some(FeedSnapshot { seq, cards })
    }
}

/// One `deal` or `draw` event with its `id`; `None` (logged) if the card
/// fails to serialize.
fn render(id: &str, event: &str, card: &CardJson<'_>) -> Option<Bytes> {
    let mut frame = format!("event: {event}\nid: {id}\ndata: ").into_bytes();
    if let Err(error) = serde_json::to_writer(&mut frame, card) {
        // invariant: cards hold strings, numbers and bools only.
        tracing::error!(%error, "a feed card failed to serialize");
        return None;
    }
    // JSON has no raw newline, so one `data:` line carries it whole.
    frame.extend_from_slice(b"\n\n");
    Some(Bytes::from(frame))
}

/// The sampler's task: samples every [`FEED_SAMPLE_INTERVAL`] and publishes
/// what changed, until the hub closes.
pub(crate) async fn sample(store: Arc<Store>, hub: Arc<FeedHub>) {
    let mut sampler = Sampler::new(hub.run);
    let mut ticker = tokio::time::interval(FEED_SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = hub.closing.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = closing.wait_for(|closing| *closing) => return,
            _ = ticker.tick() => {}
        }
        if let Some(snapshot) = sampler.sample(store.feed_source(), Instant::now()) {
            hub.latest.send_replace(Arc::new(snapshot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_engine::{
        DiscardEvents, Engine, EngineConfig, ManualClock, Money, NewDeal, Timestamp,
    };

    fn engine() -> (Arc<ManualClock>, Engine) {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
        let engine = Engine::new(
            EngineConfig::default(),
            clock.clone(),
            Arc::new(DiscardEvents),
        );
        (clock, engine)
    }

    fn deal(engine: &Engine, merchant: MerchantId, ends_at: i64) -> DealId {
        engine
            .create_deal(
                merchant,
                NewDeal {
                    title: "Phone X".into(),
                    price: Money::from_fen(100).unwrap(),
                    stock: 10,
                    per_user_limit: Some(10),
                    starts_at: Timestamp::from_millis(0),
                    ends_at: Timestamp::from_millis(ends_at),
                    requires_registration: false,
                    hold_seconds: None,
                    allocation: flashsale_engine::Allocation::FirstCome,
                },
            )
            .unwrap()
            .id
    }

    #[test]
    fn only_changed_cards_make_a_new_snapshot() {
        let (_clock, engine) = engine();
        let merchant = engine.create_merchant("acme").unwrap().id;
        let first = deal(&engine, merchant, 2_000_000);
        let mut sampler = Sampler::new(0xab);
        let now = Instant::now();
        let snapshot = sampler.sample(&engine, now).expect("a first snapshot");
        assert_eq!((snapshot.seq, snapshot.cards.len()), (1, 1));
        assert!(sampler.sample(&engine, now).is_none(), "nothing changed");

        let second = deal(&engine, merchant, 2_000_000);
        let snapshot = sampler.sample(&engine, now).expect("a new deal");
        let keys: Vec<_> = snapshot.cards.iter().map(CardFrame::key).collect();
        assert_eq!(keys, vec![(1, first.0), (2, second.0)]);
        let frame = std::str::from_utf8(&snapshot.cards[1].frame).unwrap();
        let id = format!("event: deal\nid: ab.2.{}\ndata: {{", second.0);
        assert!(frame.starts_with(&id), "{frame}");
        assert!(frame.ends_with("}\n\n"), "{frame}");
    }

    #[test]
    fn a_raffle_just_drawn_is_a_draw_event_then_deal_events_again() {
        let (clock, engine) = engine();
        let merchant = engine.create_merchant("acme").unwrap().id;
        let raffle = engine
            .create_deal(
                merchant,
                NewDeal {
                    title: "Raffle".into(),
                    price: Money::from_fen(100).unwrap(),
                    stock: 1,
                    per_user_limit: None,
                    starts_at: Timestamp::from_millis(2_000_000),
                    ends_at: Timestamp::from_millis(9_000_000),
                    requires_registration: true,
                    hold_seconds: None,
                    allocation: flashsale_engine::Allocation::Raffle(flashsale_engine::DrawSeed(
                        [1; 32],
                    )),
                },
            )
            .unwrap()
            .id;
        let shopper = engine
            .create_shoppers(1, Money::from_fen(100).unwrap())
            .unwrap()[0];
        engine.register(shopper, raffle).unwrap();
        let mut sampler = Sampler::new(0xab);
        let now = Instant::now();
        let frame =
            |snapshot: &FeedSnapshot| String::from_utf8(snapshot.cards[0].frame.to_vec()).unwrap();
        let before = sampler.sample(&engine, now).expect("a first snapshot");
        assert!(frame(&before).starts_with("event: deal\n"));
        assert!(!frame(&before).contains("\"seed\""), "the seed is secret");
        clock.advance_millis(1_000_000);
        assert!(engine.run_draws() > 0);
        let drawn = sampler.sample(&engine, now).expect("the draw ran");
        assert!(
            frame(&drawn).starts_with("event: draw\n"),
            "{}",
            frame(&drawn)
        );
        assert!(
            frame(&drawn).contains("\"seed\":\"0101"),
            "{}",
            frame(&drawn)
        );
        let hold = engine.draw_standing(shopper, raffle).unwrap();
        let flashsale_engine::DrawStanding::Won { hold, .. } = hold else {
            panic!("the only registrant wins: {hold:?}");
        };
        engine.pay_hold(shopper, hold.id).unwrap();
        let paid = sampler.sample(&engine, now).expect("the numbers moved");
        assert!(
            frame(&paid).starts_with("event: deal\n"),
            "{}",
            frame(&paid)
        );
    }

    #[test]
    fn an_ended_deal_is_told_once_then_forgotten() {
        let (clock, engine) = engine();
        let merchant = engine.create_merchant("acme").unwrap().id;
        deal(&engine, merchant, 1_500_000);
        let mut sampler = Sampler::new(0xab);
        let now = Instant::now();
        sampler.sample(&engine, now).expect("a first snapshot");
        clock.advance_millis(600_000);
        let snapshot = sampler.sample(&engine, now).expect("the deal ended");
        assert!(!snapshot.cards[0].open);
        assert!(sampler.sample(&engine, now).is_none(), "told once");
        let later = now + FEED_ENDED_RETENTION;
        let snapshot = sampler.sample(&engine, later).expect("forgotten");
        assert!(snapshot.cards.is_empty());
    }
}
