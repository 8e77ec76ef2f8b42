//! The threads the store's heavy work runs on — queries and merges — a step below the
//! threads that answer scans and binds.
//!
//! A dashboard's question reads millions of rows and a merge rewrites today's partition;
//! both can wait, a bind at peak cannot. While cores are free the priority changes nothing.
//! When they are all busy, the scheduler gives each of these threads about a tenth of the
//! share of one at the default priority (nice 10 against 0), so the API keeps its latency
//! and the dashboards slow down instead; the ingest waits for a merge, so new scans become
//! queryable later (`analytics_lag_seconds`), never lost. Databases do the same: ClickHouse
//! has `os_thread_priority` for queries, RocksDB lowers its compaction threads.
//!
//! A thread's niceness can be raised but not lowered again without privileges, so these are
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

/// Makes the calling thread nicer (on Linux, niceness is a thread's, not the process's).
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|now| {
            rustix::process::setpriority_process(Some(thread), (now + NICER_BY).min(NICEST))
        });
        if let Err(error) = lowered {
            tracing::warn!(%error, "could not lower the priority of an analytics thread");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn niceness_of_this_thread() -> std::io::Result<i32> {
        Ok(rustix::process::getpriority_process(Some(
            rustix::thread::gettid(),
        ))?)
    }

    #[test]
    fn work_runs_nicer_than_its_caller_and_its_parallel_parts_too() {
        use rayon::prelude::*;
        let caller = niceness_of_this_thread().expect("the caller's niceness");
        let (outer, inner) = run(|| {
            let outer = niceness_of_this_thread().expect("niceness inside");
            let inner: Vec<i32> = (0..64)
                .into_par_iter()
                .map(|_| niceness_of_this_thread().expect("niceness of a part"))
                .collect();
            (outer, inner)
        });
        let expected = (caller + NICER_BY).min(NICEST);
        assert_eq!(outer, expected);
        assert!(inner.iter().all(|nice| *nice == expected), "{inner:?}");
        // The caller itself is left as it was.
        assert_eq!(niceness_of_this_thread().expect("again"), caller);
    }
}
