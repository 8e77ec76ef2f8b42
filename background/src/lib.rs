//! Threads that stand below the ones answering scans and binds: a rayon pool per kind of
//! work, its threads made nicer or put under Linux's `SCHED_IDLE` as they start.
//!
//! A bind at peak cannot wait; a refill of the pool, a merge of today's scans or a
//! dashboard's question can, each in its own way, and the callers say which:
//!
//! - [`Lowered::nicer`]: nice 10 above the process. The thread still gets a tenth of a nice-0
//!   thread's share of a busy core, so work someone waits on within a time limit (a
//!   dashboard's question) or that must keep up (pregen's refills) goes on at a busy peak.
//! - [`Lowered::idle`]: `SCHED_IDLE`, only what the other threads leave; a woken request
//!   thread preempts it at once. For work nobody waits on (merges). Where `SCHED_IDLE` is
//!   refused (a sandbox that filters the call) the threads fall back to nice 10, with a line
//!   in the log.
//!
//! Databases do the same: ClickHouse has `os_thread_priority`, RocksDB lowers its compaction
//! threads. A thread's priority can be lowered but not raised again without privileges, so
//! these are threads of their own, never the async runtime's blocking threads nor rayon's
//! global pool. A pool's threads start on first use; where they cannot be made at all the
//! work runs on the caller's thread, at its priority, with a warning.

use std::sync::OnceLock;

/// How much nicer than the process the threads are (added to its nice value, up to 19).
pub const NICER_BY: i32 = 10;
/// The highest nice value Linux knows.
const NICEST: i32 = 19;

/// A pool of lowered threads, one per core, made on first use; meant for a `static`.
#[derive(Debug)]
pub struct Lowered {
    name: &'static str,
    how: How,
    threads: OnceLock<Option<rayon::ThreadPool>>,
}

#[derive(Debug, Clone, Copy)]
enum How {
    Nicer,
    Idle,
}

impl Lowered {
    /// Threads named `<name>-<n>`, at nice 10 above the process.
    pub const fn nicer(name: &'static str) -> Self {
        Lowered {
            name,
            how: How::Nicer,
            threads: OnceLock::new(),
        }
    }

    /// Threads named `<name>-<n>`, under `SCHED_IDLE` (or nice 10 above the process where
    /// that is refused).
    pub const fn idle(name: &'static str) -> Self {
        Lowered {
            name,
            how: How::Idle,
            threads: OnceLock::new(),
        }
    }

    /// Runs `work` on these threads; rayon's parallel iterators inside it stay on them.
    /// Blocking: call it off the async runtime.
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match self.threads.get_or_init(|| self.build()) {
            Some(threads) => threads.install(work),
            None => work(),
        }
    }

    fn build(&self) -> Option<rayon::ThreadPool> {
        let (name, how) = (self.name, self.how);
        rayon::ThreadPoolBuilder::new()
            .thread_name(move |index| format!("{name}-{index}"))
            .start_handler(move |_| match how {
                How::Nicer => nicer_this_thread(name, None),
                How::Idle => idle_this_thread(name),
            })
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, name, "no threads of lower priority; the work runs beside requests");
            })
            .ok()
    }
}

/// Puts the calling thread under `SCHED_IDLE`, or makes it nicer where that is refused (on
/// Linux both are a thread's, not the process's).
fn idle_this_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };

        let idle = set_thread_priority_and_policy(
            thread_native_id(),
            // The only priority SCHED_IDLE has.
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        let Err(refused) = idle else { return };
        // The call sets the policy, then a niceness of 0, which an unprivileged process
        // already nicer than 0 may not: the policy holds all the same.
        let policy = thread_priority::unix::thread_schedule_policy();
        if policy.is_ok_and(|policy| {
            policy == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        }) {
            return;
        }
        nicer_this_thread(name, Some(refused.to_string()));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Adds [`NICER_BY`] to the calling thread's nice value (a new thread starts with its
/// creator's). `idle_refused`: why this stands in for `SCHED_IDLE`, to say so in the log.
fn nicer_this_thread(name: &str, idle_refused: Option<String>) {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|now| {
            rustix::process::setpriority_process(Some(thread), (now + NICER_BY).min(NICEST))
        });
        match (lowered, idle_refused) {
            (Ok(()), None) => {}
            (Ok(()), Some(refused)) => {
                tracing::info!(%refused, name, "SCHED_IDLE refused: these threads run at nice +10 instead");
            }
            (Err(error), refused) => {
                tracing::warn!(?refused, %error, name, "could not lower the priority of a background thread");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (name, idle_refused);
}

/// Where the calling thread stands: whether it is under `SCHED_IDLE`, and its nice value.
/// `None` where that cannot be read (or off Linux).
pub fn standing_of_this_thread() -> Option<Standing> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy,
        };
        let policy = thread_schedule_policy().ok()?;
        let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()?;
        Some(Standing {
            idle: policy == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            nice,
        })
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// A thread's scheduling, as [`standing_of_this_thread`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub idle: bool,
    pub nice: i32,
}

impl Standing {
    /// Where a thread made nicer from this one stands.
    pub fn nicer(self) -> Standing {
        Standing {
            idle: self.idle,
            nice: (self.nice + NICER_BY).min(NICEST),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn here() -> Standing {
        standing_of_this_thread().expect("this thread's scheduling")
    }

    /// The standing of the thread `work` starts on and of 64 parallel parts of it.
    fn inside(threads: &Lowered) -> (Standing, Vec<Standing>) {
        threads.install(|| {
            let parts = (0..64).into_par_iter().map(|_| here()).collect();
            (here(), parts)
        })
    }

    #[test]
    fn idle_threads_run_under_sched_idle_and_their_parallel_parts_too() {
        static IDLE: Lowered = Lowered::idle("test-idle");
        let caller = here();
        assert!(!caller.idle, "the test thread starts as any thread does");
        let (outer, parts) = inside(&IDLE);
        assert!(outer.idle);
        assert!(parts.iter().all(|part| part.idle), "{parts:?}");
        assert_eq!(here(), caller, "the caller is left as it was");
    }

    #[test]
    fn nicer_threads_run_nicer_than_the_caller_not_idle_and_their_parallel_parts_too() {
        static NICER: Lowered = Lowered::nicer("test-nicer");
        let caller = here();
        let expected = caller.nicer();
        assert_ne!(
            caller, expected,
            "the test thread starts as any thread does"
        );
        let (outer, parts) = inside(&NICER);
        assert_eq!(outer, expected);
        assert!(parts.iter().all(|part| *part == expected), "{parts:?}");
        assert_eq!(here(), caller, "the caller is left as it was");
    }
}
