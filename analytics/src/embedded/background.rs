//! The threads the store's heavy work runs on — queries and merges — below the threads that
//! answer scans and binds.
//!
//! A dashboard's question reads millions of rows and a merge rewrites today's partition;
//! both can wait, a bind at peak cannot. These threads run under Linux's `SCHED_IDLE`: they
//! get what the other threads leave, and a woken request thread preempts them at once. While
//! cores are free it changes nothing; when they are all busy the dashboards slow down and the
//! ingest waits for a merge, so new scans become queryable later (`analytics_lag_seconds`),
//! never lost. At nice 10 these threads took 14-21 % of a core in the soak's slowest minutes
//! on a machine 85 % busy, under SCHED_IDLE 3-6 %; on a machine that stays full, a dashboard
//! question can then run out of its time limit (docs/performance.md, runs I and J).
//! Databases do the same: ClickHouse has `os_thread_priority`, RocksDB lowers its compaction
//! threads. Where `SCHED_IDLE` is refused (a sandbox that filters the call) they fall back to
//! nice 10 above the process.
//!
//! A thread's priority can be lowered but not raised again without privileges, so these are
//! threads of their own (a rayon pool of one per core), never the runtime's blocking threads
//! nor rayon's global pool, which renders the codes that keep the pool filled.

use std::sync::LazyLock;

/// How much nicer than the process these threads are (added to its nice value, up to 19).
const NICER_BY: i32 = 10;
/// The highest nice value Linux knows.
const NICEST: i32 = 19;

static THREADS: LazyLock<Option<rayon::ThreadPool>> = LazyLock::new(|| {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|index| format!("analytics-{index}"))
        .start_handler(|_| lower_this_thread())
        .build()
        .inspect_err(|error| {
            tracing::warn!(%error, "no threads of lower priority for analytics queries and merges; they run beside the rest");
        })
        .ok()
});

/// Runs `work` on the lower-priority threads; rayon's parallel iterators inside it stay on
/// them. Blocking: call it off the async runtime.
pub fn run<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match THREADS.as_ref() {
        Some(threads) => threads.install(work),
        None => work(),
    }
}

/// Puts the calling thread under `SCHED_IDLE`, or makes it nicer where that is refused (on
/// Linux both are a thread's, not the process's).
fn lower_this_thread() {
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
        let thread = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|now| {
            rustix::process::setpriority_process(Some(thread), (now + NICER_BY).min(NICEST))
        });
        match lowered {
            Ok(()) => {
                tracing::info!(%refused, "SCHED_IDLE refused: analytics threads run at nice +10 instead");
            }
            Err(error) => {
                tracing::warn!(%refused, %error, "could not lower the priority of an analytics thread");
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy,
    };

    fn policy_of_this_thread() -> ThreadSchedulePolicy {
        thread_schedule_policy().expect("the thread's scheduling policy")
    }

    #[test]
    fn work_runs_under_sched_idle_and_its_parallel_parts_too() {
        use rayon::prelude::*;
        let caller = policy_of_this_thread();
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        assert_ne!(caller, idle, "the test thread starts as any thread does");
        let (outer, inner) = run(|| {
            let outer = policy_of_this_thread();
            let inner: Vec<ThreadSchedulePolicy> = (0..64)
                .into_par_iter()
                .map(|_| policy_of_this_thread())
                .collect();
            (outer, inner)
        });
        assert_eq!(outer, idle);
        assert!(inner.iter().all(|policy| *policy == idle), "{inner:?}");
        // The caller itself is left as it was.
        assert_eq!(policy_of_this_thread(), caller);
    }
}
