//! A bad night in production, each fault against real servers of the test's own
//! (`tests::servers`), under a steady load of binds:
//!
//! - `restarts`: Redis, PostgreSQL and the Kafka broker restarted mid-load.
//! - `network_cut`: a backend whose packets are dropped (not refused), in a network namespace.
//! - `disk_full`: the embedded data folder's file system runs out of space.
//!
//! What every fault must keep: no 2xx without a durable write, no code bound twice, no request
//! past its time limit, and recovery without a restart of qrpool. Each test prints how long
//! recovery took (`cargo test -p tests --test faults -- --nocapture`).
#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

mod disk_full;
mod network_cut;
mod redelivery;
mod restarts;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

use config::{Settings, StoreBackend};
use tests::{TestApp, TestDatabase, embedded_settings};

/// One fault at a time: the process's metrics are shared by its tests, and a fault's timing
/// should not depend on another test's load on the same two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one request of a [`Load`] got.
#[derive(Debug, Clone)]
struct Answer {
    /// When the request was sent and answered, from the start of the load.
    sent: Duration,
    answered: Duration,
    /// The HTTP status; 0 when no answer came (connection lost).
    status: u16,
    problem_json: bool,
    /// Of a 201.
    request_id: Option<String>,
    /// Of a problem.
    detail: Option<String>,
}

impl Answer {
    fn took(&self) -> Duration {
        self.answered.saturating_sub(self.sent)
    }
}

/// Binds from a few clients, each sending its next as soon as the last is answered (with a
/// short pause, so the load stays well under the machine's capacity and a slow answer is the
/// fault's doing).
struct Load {
    started: Instant,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn binds(app: &TestApp, clients: usize) -> Load {
        let started = Instant::now();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let clients = (0..clients)
            .map(|client| {
                let (http, url) = (app.client.clone(), app.url("/v1/codes"));
                let (answers, stop) = (Arc::clone(&answers), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0_u64;
                    while !stop.is_cancelled() {
                        n += 1;
                        let sent = started.elapsed();
                        let body = json!({"params": {"client": client, "n": n}});
                        let answer = match http.post(&url).json(&body).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let problem_json = response
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|value| value == "application/problem+json");
                                let body: Value = response.json().await.unwrap_or(Value::Null);
                                Answer {
                                    sent,
                                    answered: started.elapsed(),
                                    status,
                                    problem_json,
                                    request_id: body["request_id"].as_str().map(str::to_owned),
                                    detail: body["detail"].as_str().map(str::to_owned),
                                }
                            }
                            Err(_) => Answer {
                                sent,
                                answered: started.elapsed(),
                                status: 0,
                                problem_json: false,
                                request_id: None,
                                detail: None,
                            },
                        };
                        answers.lock().unwrap().push(answer);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load {
            started,
            answers,
            stop,
            clients,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for the first 201 to a request sent at or after `since`; how long after `since`
    /// it was answered. Panics after `limit`.
    async fn first_success_since(&self, since: Duration, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(answer) = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .filter(|answer| answer.status == 201 && answer.sent >= since)
                .min_by_key(|answer| answer.answered)
            {
                return answer.answered - since;
            }
            assert!(
                Instant::now() < deadline,
                "no bind succeeded within {limit:?} of the backend's return"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.cancel();
        for client in self.clients {
            client.await.unwrap();
        }
        Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap()
    }
}

/// The rules every fault keeps: only `allowed` statuses, every refusal a problem document,
/// no request past `limit`, no code handed out twice. Returns the bound request ids.
fn assert_answers_kept_the_rules(
    answers: &[Answer],
    allowed: &[u16],
    limit: Duration,
) -> HashSet<String> {
    assert!(!answers.is_empty(), "the load sent requests");
    for answer in answers {
        assert!(
            allowed.contains(&answer.status),
            "status {} (allowed: {allowed:?}): {answer:?}",
            answer.status
        );
        assert!(
            answer.status < 400 || answer.problem_json,
            "a refusal is a problem document: {answer:?}"
        );
        assert!(
            answer.took() <= limit,
            "answered within {limit:?}: {answer:?}"
        );
    }
    let bound: Vec<&String> = answers
        .iter()
        .filter(|answer| answer.status == 201)
        .map(|answer| answer.request_id.as_ref().expect("a 201 names its code"))
        .collect();
    let distinct: HashSet<String> = bound.iter().map(|id| (*id).clone()).collect();
    assert_eq!(distinct.len(), bound.len(), "no code was handed out twice");
    distinct
}

/// Some bind sent between `from` and `to` was refused: the fault was real.
fn assert_refused_between(answers: &[Answer], from: Duration, to: Duration) {
    assert!(
        answers
            .iter()
            .any(|answer| answer.status == 503 && (from..to).contains(&answer.sent)),
        "binds were refused while the backend was away"
    );
}

/// Every bind answered 201 is in `database`.
async fn assert_durable(bound: &HashSet<String>, database: &TestDatabase) {
    let durable = database.request_ids().await;
    let lost: Vec<_> = bound.difference(&durable).collect();
    assert!(lost.is_empty(), "every 201 is durable; not: {lost:?}");
}

/// Binds on `database` (PostgreSQL), the pool embedded in `dir`, Redis when given; a dry
/// lane draws codes on demand, so that only the fault can refuse a bind.
fn postgres_settings(
    dir: &Path,
    database: &TestDatabase,
    redis: Option<(String, &str)>,
) -> Settings {
    let mut settings = embedded_settings(dir);
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url.clone()));
    if let Some((url, prefix)) = redis {
        settings.redis.url = Some(SecretString::from(url));
        settings.redis.key_prefix = prefix.to_owned();
    }
    settings.binder.on_demand_local = true;
    settings
}

/// Each request's time limit, and a second for the trip.
fn limit_of(settings: &Settings) -> Duration {
    Duration::from_millis(settings.server.request_timeout_ms + 1_000)
}

/// How the answers fell out, for the test's output.
fn summary(answers: &[Answer]) -> String {
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for answer in answers {
        *by_status.entry(answer.status).or_default() += 1;
    }
    let slowest = answers.iter().map(Answer::took).max().unwrap_or_default();
    format!("{by_status:?}, slowest {slowest:?}")
}

/// Waits until `/readyz` answers `status`; its body then.
async fn readiness_becomes(app: &TestApp, status: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let response = app.get("/readyz").await;
        let answered = response.status().as_u16();
        let body = response.text().await.unwrap();
        if answered == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {limit:?} (last: {answered} {body})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
