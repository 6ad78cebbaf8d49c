//! The load generator's own runtime, and the CPU it burns.
//!
//! A scenario runs on a dedicated multi-thread tokio runtime in its own OS
//! thread, not on the caller's. That keeps it apart from a server embedded
//! in the same process (`flashsale demo`), and it lets the tool measure its
//! *own* CPU: every thread of that runtime registers itself, and
//! [`CpuMeter::sample`] sums user and system time over exactly those
//! threads (Linux: `/proc/self/task/<tid>/stat`). Where that is not
//! available it falls back to `getrusage(RUSAGE_SELF)`, the whole process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::LoadtestError;

/// Most worker threads the load runtime may use.
pub const LOAD_THREADS_MAX: usize = 256;

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    /// Time used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    fn add(&mut self, other: CpuTimes) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// CPU used by the load runtime's threads.
#[derive(Debug, Default)]
pub struct CpuMeter {
    threads: Mutex<Threads>,
}

#[derive(Debug, Default)]
struct Threads {
    /// Kernel thread ids of live runtime threads.
    live: Vec<i32>,
    /// CPU of runtime threads that have exited.
    exited: CpuTimes,
    /// Set when a thread's times could not be read: use the process total.
    unreadable: bool,
}

impl CpuMeter {
    /// Called on each runtime thread when it starts.
    fn thread_started(&self) {
        let mut threads = self.threads.lock();
        match current_thread_id() {
            Some(tid) => threads.live.push(tid),
            None => threads.unreadable = true,
        }
    }

    /// Called on each runtime thread just before it exits.
    fn thread_stopping(&self) {
        let mut threads = self.threads.lock();
        let Some(tid) = current_thread_id() else {
            return;
        };
        threads.live.retain(|live| *live != tid);
        match thread_times(tid) {
            Some(times) => threads.exited.add(times),
            None => threads.unreadable = true,
        }
    }

    /// CPU used so far by the runtime's threads (or the whole process).
    pub fn sample(&self) -> CpuTimes {
        let threads = self.threads.lock();
        if !threads.unreadable {
            let mut total = threads.exited;
            let mut all_read = true;
            for tid in &threads.live {
                match thread_times(*tid) {
                    Some(times) => total.add(times),
                    None => all_read = false,
                }
            }
            if all_read {
                return total;
            }
        }
        process_times()
    }
}

#[cfg(target_os = "linux")]
fn current_thread_id() -> Option<i32> {
    // SAFETY: gettid has no preconditions and cannot fail.
    Some(unsafe { libc::gettid() })
}

#[cfg(not(target_os = "linux"))]
fn current_thread_id() -> Option<i32> {
    None
}

/// A thread's user and system time from `/proc/self/task/<tid>/stat`.
#[cfg(target_os = "linux")]
fn thread_times(tid: i32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat(&stat, clock_ticks_per_second()?)
}

#[cfg(not(target_os = "linux"))]
fn thread_times(_tid: i32) -> Option<CpuTimes> {
    None
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|ticks| *ticks > 0)
}

/// Fields 14 and 15 (utime, stime, in clock ticks) of a `stat` line. The
/// command name (field 2) may hold spaces and parentheses, so counting
/// starts after its closing parenthesis.
fn parse_stat(stat: &str, ticks_per_second: u64) -> Option<CpuTimes> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let to_duration =
        |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second);
    Some(CpuTimes {
        user: to_duration(user),
        system: to_duration(system),
    })
}

/// The whole process's CPU from `getrusage`.
fn process_times() -> CpuTimes {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if status != 0 {
        return CpuTimes::default();
    }
    let duration = |time: libc::timeval| {
        Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
    };
    CpuTimes {
        user: duration(usage.ru_utime),
        system: duration(usage.ru_stime),
    }
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

    #[test]
    fn parses_a_stat_line_with_a_tricky_name() {
        let stat = "1234 (a (weird) name) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let times = parse_stat(stat, 100).expect("well-formed");
        assert_eq!(times.user, Duration::from_millis(2_500));
        assert_eq!(times.system, Duration::from_millis(500));
        assert_eq!(parse_stat("garbage", 100), None);
    }

    #[tokio::test]
    async fn measures_the_load_runtime_not_the_caller() {
        let used = on_load_runtime(2, |meter| async move {
            let before = meter.sample();
            // Burn 200 ms of this thread's own CPU, however long that
            // takes on a busy machine.
            let busy = tokio::spawn(async {
                let mut x = 0u64;
                while thread_cpu() < Duration::from_millis(200) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                x
            });
            let _ = busy.await;
            Ok(meter.sample().since(before))
        })
        .await
        .expect("runtime starts");
        // Tick precision is 10 ms per thread.
        let total = used.user + used.system;
        assert!(total >= Duration::from_millis(170), "{used:?}");
        assert!(total <= Duration::from_millis(400), "{used:?}");
    }

    fn thread_cpu() -> Duration {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    }
}
