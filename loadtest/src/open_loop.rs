//! Open-loop dispatch: requests leave on their schedule, whatever happened
//! to the earlier ones.
//!
//! A closed-loop tester (send, wait, send) slows down when the server does,
//! so a 2-second stall shows up as *one* slow request: coordinated omission.
//! Here a plan fixes when every operation is due. One scheduler task hands
//! due jobs to a bounded queue ([`DISPATCH_QUEUE_CAPACITY`]); one worker
//! task per connection takes the next job, runs it, and reports whether it
//! is done or wants a retry at a later instant. Every job carries the
//! instant it was *scheduled*, and latency is measured from there: time
//! spent waiting for a free connection, or behind a stalled server, counts.
//!
//! Retries go back to the scheduler, into a heap ordered by due time, so a
//! worker never sleeps on a backoff while other jobs wait for its
//! connection. The heap holds at most one entry per unfinished operation,
//! so it is bounded by the plan's length.
//!
//! The run ends when the plan is exhausted and no operation is unfinished.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Jobs due but not yet taken by a worker. When it is full the scheduler
/// waits, which delays dispatch but not the latency origin: each job keeps
/// its scheduled instant.
pub const DISPATCH_QUEUE_CAPACITY: usize = 4_096;

/// One operation on its way, possibly on a retry.
#[derive(Debug)]
pub struct Job<T> {
    /// When the plan said this operation starts: the latency origin, kept
    /// unchanged across retries.
    pub scheduled: Instant,
    /// Attempts made so far (0 on the first dispatch).
    pub attempts: u32,
    pub payload: T,
}

/// What a worker says about a job it ran.
#[derive(Debug)]
pub enum Disposition<T> {
    /// Finished, whatever the outcome.
    Done,
    /// Try again at this instant (the job's `attempts` already counts the
    /// one just made).
    RetryAt(Instant, Job<T>),
}

/// Runs jobs. One worker per connection; it owns its connection and any
/// per-task state, and gets it back at the end of the run.
pub trait Worker: Send + 'static {
    type Payload: Send + 'static;

    fn handle(
        &mut self,
        job: Job<Self::Payload>,
    ) -> impl Future<Output = Disposition<Self::Payload>> + Send;
}

/// A retry waiting for its instant; the heap pops the earliest first.
struct Due<T> {
    at: Instant,
    sequence: u64,
    job: Job<T>,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl<T> Eq for Due<T> {}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Reversed: `BinaryHeap` is a max-heap and we want the earliest.
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

struct Shared<T> {
    retries: Mutex<BinaryHeap<Due<T>>>,
    retry_sequence: AtomicU64,
    /// Operations dispatched and not yet done (retries included).
    unfinished: AtomicUsize,
    /// Wakes the scheduler: a retry was queued or the last job finished.
    wake: Notify,
}

/// Runs `plan` (instants must not decrease) on `workers`, one task each,
/// and returns the workers, in their original order, when every operation
/// is done.
pub async fn run<W, P>(plan: P, workers: Vec<W>) -> Vec<W>
where
    W: Worker,
    P: IntoIterator<Item = (Instant, W::Payload)>,
{
    let (queue, jobs) = async_channel::bounded::<Job<W::Payload>>(DISPATCH_QUEUE_CAPACITY);
    let shared = Arc::new(Shared {
        retries: Mutex::new(BinaryHeap::new()),
        retry_sequence: AtomicU64::new(0),
        unfinished: AtomicUsize::new(0),
        wake: Notify::new(),
    });
    let mut tasks = JoinSet::new();
    for (index, worker) in workers.into_iter().enumerate() {
        let (jobs, shared) = (jobs.clone(), shared.clone());
        tasks.spawn(async move { (index, work(worker, jobs, shared).await) });
    }
    drop(jobs);

    let mut plan = plan.into_iter().peekable();
    loop {
        let planned = plan.peek().map(|(at, _)| *at);
        let retry = shared.retries.lock().peek().map(|due| due.at);
        let (due, from_plan) = match (planned, retry) {
            (Some(planned), Some(retry)) if retry < planned => (retry, false),
            (Some(planned), _) => (planned, true),
            (None, Some(retry)) => (retry, false),
            (None, None) => {
                if shared.unfinished.load(Ordering::Acquire) == 0 || tasks.is_empty() {
                    break;
                }
                tokio::select! {
                    () = shared.wake.notified() => {}
                    Some(joined) = tasks.join_next() => surface_panic(joined),
                }
                continue;
            }
        };
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = shared.wake.notified() => {}
            }
            continue;
        }
        let job = if from_plan {
            let Some((scheduled, payload)) = plan.next() else {
                continue;
            };
            shared.unfinished.fetch_add(1, Ordering::AcqRel);
            Job {
                scheduled,
                attempts: 0,
                payload,
            }
        } else {
            let Some(due) = shared.retries.lock().pop() else {
                continue;
            };
            due.job
        };
        if queue.send(job).await.is_err() {
            // Every worker is gone; joining below surfaces why.
            break;
        }
    }
    queue.close();

    let mut finished: Vec<(usize, W)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(pair) => finished.push(pair),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    finished.sort_by_key(|(index, _)| *index);
    finished.into_iter().map(|(_, worker)| worker).collect()
}

fn surface_panic<W>(joined: Result<(usize, W), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn work<W: Worker>(
    mut worker: W,
    jobs: async_channel::Receiver<Job<W::Payload>>,
    shared: Arc<Shared<W::Payload>>,
) -> W {
    while let Ok(job) = jobs.recv().await {
        match worker.handle(job).await {
            Disposition::Done => {
                if shared.unfinished.fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.wake.notify_one();
                }
            }
            Disposition::RetryAt(at, job) => {
                let sequence = shared.retry_sequence.fetch_add(1, Ordering::Relaxed);
                shared.retries.lock().push(Due { at, sequence, job });
                shared.wake.notify_one();
            }
        }
    }
    worker
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A simulated slow server: every request takes `service` and one
    /// connection serves one request at a time.
    struct SlowServer {
        service: Duration,
        latencies: Vec<Duration>,
        retry_first_attempt: bool,
        attempts_seen: Vec<u32>,
    }

    impl Worker for SlowServer {
        type Payload = usize;

        async fn handle(&mut self, mut job: Job<usize>) -> Disposition<usize> {
            tokio::time::sleep(self.service).await;
            job.attempts += 1;
            if self.retry_first_attempt && job.attempts == 1 {
                return Disposition::RetryAt(Instant::now() + Duration::from_millis(500), job);
            }
            self.attempts_seen.push(job.attempts);
            self.latencies.push(job.scheduled.elapsed());
            Disposition::Done
        }
    }

    fn slow(service: Duration, retry_first_attempt: bool) -> SlowServer {
        SlowServer {
            service,
            latencies: Vec::new(),
            retry_first_attempt,
            attempts_seen: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_counts_from_the_scheduled_instant_not_the_send() {
        // 20 requests/s planned on one connection to a server that needs
        // 100 ms each: it cannot keep up, and the queue shows in latency.
        let start = Instant::now();
        let plan = (0..10).map(|i| (start + Duration::from_millis(50) * i, i as usize));
        let workers = run(plan, vec![slow(Duration::from_millis(100), false)]).await;
        let latencies = &workers[0].latencies;
        assert_eq!(latencies.len(), 10);
        // Request i is due at 50 i ms and answered at 100 (i + 1) ms.
        for (i, latency) in latencies.iter().enumerate() {
            let expected = Duration::from_millis(100 * (i as u64 + 1) - 50 * i as u64);
            assert_eq!(*latency, expected, "request {i}");
        }
        // A closed-loop client would have reported 100 ms for every one.
        assert_eq!(latencies.iter().max(), Some(&Duration::from_millis(550)));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_leave_on_schedule_while_others_are_outstanding() {
        // Two connections, a 1 s stall per request, 4 requests 10 ms apart:
        // the first two leave on time; the last two wait ~1 s for a free
        // connection, and that wait is part of their latency.
        let start = Instant::now();
        let plan = (0..4).map(|i| (start + Duration::from_millis(10) * i, i as usize));
        let workers = run(
            plan,
            vec![
                slow(Duration::from_secs(1), false),
                slow(Duration::from_secs(1), false),
            ],
        )
        .await;
        let mut latencies: Vec<Duration> = workers
            .iter()
            .flat_map(|worker| worker.latencies.iter().copied())
            .collect();
        latencies.sort();
        assert_eq!(
            latencies,
            vec![
                Duration::from_millis(1000),
                Duration::from_millis(1000),
                Duration::from_millis(1980),
                Duration::from_millis(1980),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_keep_their_latency_origin_and_do_not_block_a_connection() {
        let start = Instant::now();
        let plan = (0..3).map(|i| (start + Duration::from_millis(10) * i, i as usize));
        let workers = run(plan, vec![slow(Duration::from_millis(10), true)]).await;
        let worker = &workers[0];
        assert_eq!(worker.attempts_seen, vec![2, 2, 2]);
        // Each: 10 ms first attempt, 500 ms backoff, 10 ms second attempt;
        // the backoffs overlap because the connection is free meanwhile.
        for latency in &worker.latencies {
            assert!(*latency >= Duration::from_millis(520), "{latency:?}");
            assert!(*latency < Duration::from_millis(560), "{latency:?}");
        }
        assert!(start.elapsed() < Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_plan_ends_at_once() {
        let workers = run(
            std::iter::empty(),
            vec![slow(Duration::from_secs(1), false)],
        )
        .await;
        assert!(workers[0].latencies.is_empty());
    }
}
