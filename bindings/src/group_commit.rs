//! Group commit: binds that arrive together become durable together.
//!
//! A durable bind costs one commit, and a commit costs one flush to disk, whatever it holds.
//! So concurrent binds queue here and a writer takes everything queued (up to a batch limit)
//! into one transaction: under load, one flush makes a whole batch durable; alone, a bind
//! waits for nobody. Each bind still gets its own answer — inserted, or already bound — only
//! after the commit that holds it, so "a 2xx means durable" and "bound at most once" keep
//! their meaning.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use records::{Binding, CodeImage};

use crate::StoreError;

/// One bind waiting for its commit.
pub(crate) struct Pending {
    pub(crate) binding: Binding,
    pub(crate) image: Option<CodeImage>,
    pub(crate) idempotency_key: Option<String>,
    reply: oneshot::Sender<Result<bool, Arc<StoreError>>>,
}

/// A backend that writes a batch of binds in one transaction. Returns, in order, whether
/// each one was inserted (`false`: its request id was bound already). The batch holds no
/// request id twice.
pub(crate) trait WriteBatch: Clone + Send + Sync + 'static {
    fn write_batch(
        &self,
        batch: &[Pending],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
}

/// Binds waiting that are worth a commit of their own while another is in flight: about
/// 40 ms of binds at 1,700 a second, where a commit of a few binds takes 2 ms. Fewer, and
/// they wait for the commit in flight to take them all at once.
const BACKLOG: usize = 64;

/// How often the writer looks at the queue while commits are in flight.
const BACKLOG_CHECK: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the writer, committing up to `max_batch` binds at a time, with up to
    /// `max_in_flight` commits at once.
    ///
    /// One commit at a time while commits keep up: the binds that arrive during one all go in
    /// the next, so batches grow with the load. Four writers taking turns on PostgreSQL did
    /// worse: an idle writer took whatever single bind had just arrived, half of all commits
    /// held one bind, and the database spent ~1.8× the CPU per bind (`benches/bind-load.sh`'s
    /// Kafka stage prints the commits: 4,348 for 30,000 binds with four writers, 1,255 with
    /// one). But one writer busy nine tenths of the time (the 36-minute soak, as PostgreSQL's
    /// table grew) turns each slow commit into a queue that drains slowly, so when at least
    /// [`BACKLOG`] binds wait behind a commit in flight they are committed beside it, on
    /// another connection, up to `max_in_flight` at once (1 for SQLite, which has one writer).
    pub(crate) fn start(backend: impl WriteBatch, max_batch: usize, max_in_flight: usize) -> Self {
        let (queue, receiver) = mpsc::channel(max_batch * 2);
        tokio::spawn(write_batches(
            backend,
            receiver,
            max_batch,
            max_in_flight.max(1),
        ));
        GroupCommit { queue }
    }

    /// Makes one bind durable; `Ok(false)` when its request id was bound already, or its
    /// idempotency key names another bind of the tenant.
    pub(crate) async fn insert(
        &self,
        binding: Binding,
        image: Option<CodeImage>,
        idempotency_key: Option<String>,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                binding,
                image,
                idempotency_key,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        match answer.await {
            Ok(Ok(inserted)) => Ok(inserted),
            Ok(Err(error)) => Err(StoreError::Shared(error)),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

async fn write_batches(
    backend: impl WriteBatch,
    mut queue: mpsc::Receiver<Pending>,
    max_batch: usize,
    max_in_flight: usize,
) {
    let mut in_flight = JoinSet::new();
    loop {
        let another =
            in_flight.is_empty() || (in_flight.len() < max_in_flight && queue.len() >= BACKLOG);
        tokio::select! {
            biased;
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
            first = queue.recv(), if another => {
                let Some(first) = first else { break };
                let mut batch = Vec::with_capacity(max_batch);
                batch.push(first);
                while batch.len() < max_batch {
                    match queue.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                in_flight.spawn(commit(backend.clone(), batch));
            }
            // Commits in flight and too few waiting for another: look again shortly.
            () = tokio::time::sleep(BACKLOG_CHECK), if !another => {}
        }
    }
    // Every bind taken gets its answer before the writer ends.
    while in_flight.join_next().await.is_some() {}
}

/// Commits one batch and answers each of its binds.
async fn commit(backend: impl WriteBatch, mut batch: Vec<Pending>) {
    // The same code twice in one batch (a redelivery racing its first delivery): only the
    // first can be inserted; the others are answered "bound already" right away. (Twice in
    // two batches in flight at once, the database's key decides, as between two binders.)
    let mut seen = HashSet::with_capacity(batch.len());
    let (unique, repeats): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .partition(|pending| seen.insert(pending.binding.request_id));
    for repeat in repeats {
        let _ = repeat.reply.send(Ok(false));
    }

    metrics::histogram!("bindings_commit_batch_size").record(unique.len() as f64);
    // How long a batch's commit takes is most of a bind's latency at a steady load.
    let committing = std::time::Instant::now();
    let written = backend.write_batch(&unique).await;
    metrics::histogram!("bindings_commit_seconds").record(committing.elapsed().as_secs_f64());
    match written {
        Ok(inserted) => {
            for (pending, inserted) in unique.into_iter().zip(inserted) {
                let _ = pending.reply.send(Ok(inserted));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for pending in unique {
                let _ = pending.reply.send(Err(Arc::clone(&error)));
            }
        }
    }
}
