//! The threads the store's heavy work runs on — queries and merges — below the threads that
//! answer scans and binds (the `background` crate says how).
//!
//! A dashboard's question reads millions of rows and a merge rewrites today's partition;
//! both can wait, a bind at peak cannot. They wait differently, though:
//!
//! - **Merges** run under Linux's `SCHED_IDLE`: nobody waits on a merge; when the cores stay
//!   busy the ingest waits for it and new scans become queryable later
//!   (`analytics_lag_seconds`), never lost. At nice 10 the merges of today's partition took
//!   14-21 % of a core in the soak's slowest minutes on a machine 85 % busy.
//! - **Queries** run at nice 10 above the process: a person is waiting on each, within a time
//!   limit. Under `SCHED_IDLE` too, on a machine kept full by scans and binds, dashboard
//!   questions ran out of their 5 s (docs/performance.md, run J); at nice 10 they keep a
//!   tenth of a nice-0 thread's share, which is what they take anyway (2-7 % of a core in
//!   the soak's run M).

use background::Lowered;

static QUERIES: Lowered = Lowered::nicer("analytics-query");
static MERGES: Lowered = Lowered::idle("analytics-merge");

/// Runs a query's `work` on the query threads (nice 10 above the process); rayon's parallel
/// iterators inside it stay on them. Blocking: call it off the async runtime.
pub fn query<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    QUERIES.install(work)
}

/// Runs a merge's (or any maintenance's) `work` on the merge threads (`SCHED_IDLE`).
/// Blocking: call it off the async runtime.
pub fn merge<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    MERGES.install(work)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use background::{Standing, standing_of_this_thread};
    use rayon::prelude::*;

    fn here() -> Standing {
        standing_of_this_thread().expect("this thread's scheduling")
    }

    fn parts() -> Vec<Standing> {
        (0..64).into_par_iter().map(|_| here()).collect()
    }

    #[test]
    fn merges_run_under_sched_idle_and_their_parallel_parts_too() {
        let (outer, inner) = merge(|| (here(), parts()));
        assert!(outer.idle);
        assert!(inner.iter().all(|part| part.idle), "{inner:?}");
    }

    /// Queries under `SCHED_IDLE` starved past their time limit in the soak (run K).
    #[test]
    fn queries_run_nicer_than_the_caller_not_idle_and_their_parallel_parts_too() {
        let expected = here().nicer();
        let (outer, inner) = query(|| (here(), parts()));
        assert_eq!(outer, expected);
        assert!(!outer.idle);
        assert!(inner.iter().all(|part| *part == expected), "{inner:?}");
    }
}
