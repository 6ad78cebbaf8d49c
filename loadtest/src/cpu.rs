//! The load generator's own runtime, and the CPU it burns.
//!
//! A scenario runs on a dedicated multi-thread tokio runtime in its own OS
//! thread, not on the caller's. That keeps it apart from a server embedded
//! in the same process (`flashsale demo`), and it lets the tool measure its
//! *own* CPU: every thread of that runtime registers its CPU clock
//! (`pthread_getcpuclockid`), and [`CpuMeter::sample`] sums those clocks
//! (`clock_gettime`: user and system time together, to the nanosecond on
//! Linux) over exactly those threads. Where a thread's clock is not
//! available it falls back to `getrusage(RUSAGE_SELF)`, the whole process.
//! (The per-thread `utime`/`stime` of `/proc` count whole scheduler ticks,
//! 10 ms each: too coarse for a per-request figure.)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::LoadtestError;

/// Most worker threads the load runtime may use.
pub const LOAD_THREADS_MAX: usize = 256;

/// CPU used by the load runtime's threads.
#[derive(Debug, Default)]
pub struct CpuMeter {
    threads: Mutex<Threads>,
}

#[derive(Debug, Default)]
struct Threads {
    /// CPU clocks of live runtime threads.
    live: Vec<libc::clockid_t>,
    /// CPU of runtime threads that have exited.
    exited: Duration,
    /// Set when a thread's clock could not be had: use the process total.
    unreadable: bool,
}

impl CpuMeter {
    /// Called on each runtime thread when it starts.
    fn thread_started(&self) {
        let mut threads = self.threads.lock();
        match own_clock() {
            Some(clock) => threads.live.push(clock),
            None => threads.unreadable = true,
        }
    }

    /// Called on each runtime thread just before it exits.
    fn thread_stopping(&self) {
        let mut threads = self.threads.lock();
        let Some(clock) = own_clock() else {
            return;
        };
        threads.live.retain(|live| *live != clock);
        match clock_time(clock) {
            Some(used) => threads.exited += used,
            None => threads.unreadable = true,
        }
    }

    /// CPU used so far by the runtime's threads (or the whole process),
    /// user and system time together.
    pub fn sample(&self) -> Duration {
        let threads = self.threads.lock();
        if !threads.unreadable {
            let mut total = threads.exited;
            let mut all_read = true;
            for clock in &threads.live {
                match clock_time(*clock) {
                    Some(used) => total += used,
                    None => all_read = false,
                }
            }
            if all_read {
                return total;
            }
        }
        process_time()
    }
}

/// The calling thread's CPU clock.
#[cfg(target_os = "linux")]
fn own_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` names the calling thread, which is alive
    // for the call, and `clock` is a valid, writable clockid_t.
    let status = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (status == 0).then_some(clock)
}

#[cfg(not(target_os = "linux"))]
fn own_clock() -> Option<libc::clockid_t> {
    None
}

/// The time on a CPU clock of this process.
fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; an invalid clock (a
    // thread that has exited) makes the call fail, not misbehave.
    let status = unsafe { libc::clock_gettime(clock, &mut now) };
    if status != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// The whole process's CPU (user plus system) from `getrusage`.
fn process_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if status != 0 {
        return Duration::ZERO;
    }
    let duration = |time: libc::timeval| {
        Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
    };
    duration(usage.ru_utime) + duration(usage.ru_stime)
}

/// Runs the future that `make` builds on a fresh multi-thread runtime of
/// `threads` workers, in its own OS thread, and awaits its result from the
/// caller's runtime. The future is built inside that thread, so it need not
/// be `Send`; its result must be.
pub async fn on_load_runtime<T, F, Fut>(threads: usize, make: F) -> Result<T, LoadtestError>
where
    T: Send + 'static,
    F: FnOnce(Arc<CpuMeter>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, LoadtestError>>,
{
    let meter = Arc::new(CpuMeter::default());
    let (on_start, on_stop) = (meter.clone(), meter.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, LOAD_THREADS_MAX))
        .thread_name("flashsale-loadtest")
        .enable_all()
        .on_thread_start(move || on_start.thread_started())
        .on_thread_stop(move || on_stop.thread_stopping())
        .build()
        .map_err(LoadtestError::Runtime)?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flashsale-loadtest-main".to_owned())
        .spawn(move || {
            // `block_on` polls the scenario's own future on this thread, so
            // it is measured too.
            meter.thread_started();
            let result = runtime.block_on(make(meter.clone()));
            meter.thread_stopping();
            // Shut the runtime down (and stop its spawned tasks) on this
            // thread, never inside the caller's async context.
            drop(runtime);
            let _ = done.send(result);
        })
        .map_err(LoadtestError::Runtime)?;
    result
        .await
        .map_err(|_| LoadtestError::LoadThreadPanicked)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `amount` of the calling thread's own CPU, however long that
    /// takes on a busy machine.
    fn burn(amount: Duration) {
        let clock = own_clock().expect("a thread CPU clock");
        let start = clock_time(clock).expect("readable");
        let mut x = 0u64;
        while clock_time(clock).expect("readable") - start < amount {
            for _ in 0..1_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    async fn measured_on_load_runtime(amount: Duration) -> Duration {
        on_load_runtime(2, move |meter| async move {
            let before = meter.sample();
            let busy = tokio::spawn(async move { burn(amount) });
            let _ = busy.await;
            Ok(meter.sample() - before)
        })
        .await
        .expect("runtime starts")
    }

    #[tokio::test]
    async fn measures_the_load_runtime_not_the_caller() {
        let used = measured_on_load_runtime(Duration::from_millis(200)).await;
        assert!(used >= Duration::from_millis(200), "{used:?}");
        assert!(used <= Duration::from_millis(300), "{used:?}");
    }

    /// Regression: the meter read `/proc`'s per-thread tick counts, 10 ms
    /// each, so a short load phase read 0 or 10 ms (a burst of 500 taps
    /// always showed 40.0 µs per request).
    #[tokio::test]
    async fn measures_a_few_milliseconds_to_the_millisecond() {
        let used = measured_on_load_runtime(Duration::from_millis(3)).await;
        assert!(used >= Duration::from_millis(3), "{used:?}");
        assert!(used < Duration::from_millis(7), "{used:?}");
    }
}
