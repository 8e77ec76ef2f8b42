//! The threads the store's heavy work runs on — queries and merges — below the threads that
//! answer scans and binds.
//!
//! A dashboard's question reads millions of rows and a merge rewrites today's partition;
//! both can wait, a bind at peak cannot. They wait differently, though:
//!
//! - **Merges** run under Linux's `SCHED_IDLE`: they get what the other threads leave, and a
//!   woken request thread preempts them at once. Nobody waits on a merge; when the cores stay
//!   busy the ingest waits for it and new scans become queryable later
//!   (`analytics_lag_seconds`), never lost. At nice 10 the merges of today's partition took
//!   14-21 % of a core in the soak's slowest minutes on a machine 85 % busy.
//! - **Queries** run at nice 10 above the process: a person is waiting on each, within a time
//!   limit. Under `SCHED_IDLE` too, on a machine kept full by scans and binds, dashboard
//!   questions ran out of their 5 s (docs/performance.md, run J); at nice 10 they keep a
//!   tenth of a nice-0 thread's share, which is what they take anyway (2-7 % of a core in
//!   the soak's run M).
//!
//! Databases do the same: ClickHouse has `os_thread_priority`, RocksDB lowers its compaction
//! threads. Where `SCHED_IDLE` is refused (a sandbox that filters the call) merges fall back
//! to nice 10 as well, with a line in the log.
//!
//! A thread's priority can be lowered but not raised again without privileges, so these are
//! threads of their own (a rayon pool of one per core for each), never the runtime's blocking
//! threads nor rayon's global pool, which renders the codes that keep the pool filled.

use std::sync::LazyLock;

/// How much nicer than the process these threads are (added to its nice value, up to 19).
const NICER_BY: i32 = 10;
/// The highest nice value Linux knows.
const NICEST: i32 = 19;

/// How a pool's threads stand below the rest.
#[derive(Clone, Copy, Debug)]
enum Lowered {
    /// Nice 10 above the process.
    Nicer,
    /// `SCHED_IDLE`, or nice 10 above the process where that is refused.
    Idle,
}

fn threads(name: &'static str, lowered: Lowered) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(move |index| format!("{name}-{index}"))
        .start_handler(move |_| match lowered {
            Lowered::Nicer => nicer_this_thread(None),
            Lowered::Idle => idle_this_thread(),
        })
        .build()
        .inspect_err(|error| {
            tracing::warn!(%error, name, "no threads of lower priority for analytics; the work runs beside the rest");
        })
        .ok()
}

static QUERIES: LazyLock<Option<rayon::ThreadPool>> =
    LazyLock::new(|| threads("analytics-query", Lowered::Nicer));
static MERGES: LazyLock<Option<rayon::ThreadPool>> =
    LazyLock::new(|| threads("analytics-merge", Lowered::Idle));

/// Runs a query's `work` on the query threads (nice 10 above the process); rayon's parallel
/// iterators inside it stay on them. Blocking: call it off the async runtime.
pub fn query<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    on(&QUERIES, work)
}

/// Runs a merge's (or any maintenance's) `work` on the merge threads (`SCHED_IDLE`).
/// Blocking: call it off the async runtime.
pub fn merge<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    on(&MERGES, work)
}

fn on<R: Send>(
    threads: &LazyLock<Option<rayon::ThreadPool>>,
    work: impl FnOnce() -> R + Send,
) -> R {
    match threads.as_ref() {
        Some(threads) => threads.install(work),
        None => work(),
    }
}

/// Puts the calling thread under `SCHED_IDLE`, or makes it nicer where that is refused (on
/// Linux both are a thread's, not the process's).
fn idle_this_thread() {
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
        nicer_this_thread(Some(&refused));
    }
}

/// Adds [`NICER_BY`] to the calling thread's nice value (a new thread starts with its
/// creator's). `idle_refused`: why this stands in for `SCHED_IDLE`, to say so in the log.
fn nicer_this_thread(idle_refused: Option<&dyn std::fmt::Display>) {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|now| {
            rustix::process::setpriority_process(Some(thread), (now + NICER_BY).min(NICEST))
        });
        match (lowered, idle_refused) {
            (Ok(()), None) => {}
            (Ok(()), Some(refused)) => {
                tracing::info!(%refused, "SCHED_IDLE refused: analytics merges run at nice +10 instead");
            }
            (Err(error), refused) => {
                let refused = refused.map(ToString::to_string);
                tracing::warn!(?refused, %error, "could not lower the priority of an analytics thread");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = idle_refused;
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

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("the thread's nice value")
    }

    #[test]
    fn merges_run_under_sched_idle_and_their_parallel_parts_too() {
        use rayon::prelude::*;
        let caller = policy_of_this_thread();
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        assert_ne!(caller, idle, "the test thread starts as any thread does");
        let (outer, inner) = merge(|| {
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

    #[test]
    fn queries_run_nicer_than_the_caller_not_idle_and_their_parallel_parts_too() {
        use rayon::prelude::*;
        let caller = (policy_of_this_thread(), nice_of_this_thread());
        let expected = (
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
            (caller.1 + NICER_BY).min(NICEST),
        );
        assert_ne!(
            caller, expected,
            "the test thread starts as any thread does"
        );
        let (outer, inner) = query(|| {
            let outer = (policy_of_this_thread(), nice_of_this_thread());
            let inner: Vec<(ThreadSchedulePolicy, i32)> = (0..64)
                .into_par_iter()
                .map(|_| (policy_of_this_thread(), nice_of_this_thread()))
                .collect();
            (outer, inner)
        });
        assert_eq!(outer, expected);
        assert!(inner.iter().all(|each| *each == expected), "{inner:?}");
        assert_eq!((policy_of_this_thread(), nice_of_this_thread()), caller);
    }
}
