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

#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the writer, committing up to `max_batch` binds at a time.
    ///
    /// One writer: while its commit is in flight the binds that arrive queue here and all go
    /// in the next, so batches grow with the load. Four writers on PostgreSQL did worse: an
    /// idle writer took whatever single bind had just arrived, half of all commits held one
    /// bind, and the database spent ~1.8× the CPU per bind (`benches/bind-load.sh`'s Kafka
    /// stage prints the commits: 4,348 for 30,000 binds with four writers, 1,255 with one).
    pub(crate) fn start(backend: impl WriteBatch, max_batch: usize) -> Self {
        let (queue, receiver) = mpsc::channel(max_batch * 2);
        tokio::spawn(write_batches(backend, receiver, max_batch));
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
) {
    loop {
        let mut batch = {
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = Vec::with_capacity(max_batch);
            batch.push(first);
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            batch
        };

        // The same code twice in one batch (a redelivery racing its first delivery): only
        // the first can be inserted; the others are answered "bound already" right away.
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
}
