//! The binding store under concurrency, on both durable backends: binds that arrive together
//! are committed together, and each request id is still bound exactly once.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use std::collections::HashMap;

use chrono::Utc;
use secrecy::SecretString;

use bindings::{BindError, Bindings};
use config::{Settings, StoreBackend};
use records::{Binding, CodeImage, Params, ParamsLimits, RequestId, Tags, Tenant};
use tests::{Backends, TestDatabase};

fn binding(id: RequestId, n: usize) -> Binding {
    Binding {
        v: Binding::LAYOUT,
        request_id: id,
        tenant: Tenant::default(),
        params: Params::parse(serde_json::json!({"n": n}), &ParamsLimits::default()).unwrap(),
        content: format!("http://x/m/{id}"),
        issuer: "local".into(),
        version: 1,
        created_at: Utc::now(),
        expires_at: n
            .is_multiple_of(2)
            .then(|| Utc::now() + chrono::Duration::days(1)),
        tags: if n.is_multiple_of(5) {
            Tags::parse(vec!["print-run".into(), format!("n{n}")]).unwrap()
        } else {
            Tags::default()
        },
    }
}

/// Settings with the store on the test's own PostgreSQL database.
fn on_postgres(database: &TestDatabase) -> Settings {
    let mut settings = Settings::default();
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url.clone()));
    settings
}

/// 400 concurrent binds over 300 distinct ids (100 ids asked for twice, at the same moment).
async fn each_id_is_bound_once_under_a_concurrent_burst(bindings: Bindings) {
    let ids: Vec<RequestId> = (0..300).map(|_| RequestId::generate()).collect();
    let attempts: Vec<(RequestId, usize)> = ids
        .iter()
        .copied()
        .enumerate()
        .map(|(n, id)| (id, n))
        .chain(ids[..100].iter().copied().map(|id| (id, 999)))
        .collect();
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(id, n)| {
            let bindings = bindings.clone();
            tokio::spawn(async move {
                let image = (!n.is_multiple_of(3)).then(|| CodeImage {
                    media_type: "image/png".into(),
                    bytes: vec![n as u8; 8],
                });
                (
                    id,
                    bindings.bind(binding(id, n), image.as_ref(), None).await,
                )
            })
        })
        .collect();

    let mut wins: HashMap<RequestId, usize> = HashMap::new();
    let mut refusals = 0;
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(_)) => *wins.entry(id).or_default() += 1,
            (_, Err(BindError::AlreadyBound)) => refusals += 1,
            (_, Err(error)) => panic!("a bind failed: {error:#}"),
        }
    }
    assert_eq!(wins.len(), 300, "every id was bound");
    assert!(wins.values().all(|&n| n == 1), "no id was bound twice");
    assert_eq!(
        refusals, 100,
        "every second attempt was told the id is bound"
    );
    assert_eq!(bindings.durable().count().await.unwrap(), 300);

    // What was stored is what the winning bind carried, image included.
    for id in &ids {
        let stored = bindings.resolve(*id).await.unwrap().unwrap();
        let n = stored.params.as_map()["n"].as_u64().unwrap() as usize;
        let image = bindings.image(*id).await.unwrap();
        assert_eq!(
            image.map(|i| i.bytes),
            (!n.is_multiple_of(3)).then(|| vec![n as u8; 8]),
            "image of {id}"
        );
        assert_eq!(stored.expires_at.is_some(), n.is_multiple_of(2));
        // Tags are stored and read back (the durable row, as a cache miss reads it).
        let durable = bindings.durable().get(*id).await.unwrap().unwrap();
        assert_eq!(durable.tags, stored.tags);
        assert_eq!(stored.tags.is_empty(), !n.is_multiple_of(5), "tags of {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_each_request_id_is_bound_once_under_a_concurrent_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.embedded.data_dir = dir.path().to_owned();
    each_id_is_bound_once_under_a_concurrent_burst(Bindings::connect(&settings).await.unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_each_request_id_is_bound_once_under_a_concurrent_burst() {
    let database = TestDatabase::create(&Backends::from_env()).await;
    let settings = on_postgres(&database);
    each_id_is_bound_once_under_a_concurrent_burst(Bindings::connect(&settings).await.unwrap())
        .await;
    database.drop_now().await;
}

/// Connections past `postgres.connection_lifetime_secs` are replaced one at a time: a pool
/// opened together does not reconnect together (sqlx's own lifetime closes them all at once,
/// and every request waits on the reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_connections_past_their_lifetime_are_replaced_one_at_a_time() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let database = TestDatabase::create(&Backends::from_env()).await;
    let mut settings = on_postgres(&database);
    settings.postgres.max_connections = 4;
    // Spacing: a quarter of 2 s over 4 connections is below the floor of one second.
    settings.postgres.connection_lifetime_secs = 2;
    let bindings = Bindings::connect(&settings).await.unwrap();
    let bindings::durable::Database::Postgres(pool) = bindings.durable().database() else {
        panic!("a PostgreSQL store");
    };

    // Four workers each holding a connection for 20 ms at a time keep all four in use; each
    // notes when it first meets a server process.
    let started = Instant::now();
    let first_seen: Arc<Mutex<HashMap<i32, Duration>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, first_seen) = (pool.clone(), first_seen.clone());
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_millis(6_500) {
                    let mut connection = pool.acquire().await.unwrap();
                    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut *connection)
                        .await
                        .unwrap();
                    first_seen
                        .lock()
                        .unwrap()
                        .entry(pid)
                        .or_insert_with(|| started.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let mut births: Vec<Duration> = first_seen.lock().unwrap().values().copied().collect();
    births.sort();
    let replacements: Vec<Duration> = births
        .into_iter()
        .filter(|born| *born > Duration::from_secs(1))
        .collect();
    // Expired at 2 s; one a second after that, up to 6.5 s: about five.
    assert!(
        (3..=6).contains(&replacements.len()),
        "replacements met at {replacements:?}"
    );
    assert!(
        replacements
            .windows(2)
            .all(|pair| pair[1] - pair[0] >= Duration::from_millis(500)),
        "replaced together, not one at a time: {replacements:?}"
    );
    pool.close().await;
    database.drop_now().await;
}

/// A commit that stalls (here: another session holds the table, as a slow disk would hold
/// the flush) does not hold every bind behind it: once a backlog waits, it is committed
/// beside the stalled one, on a connection of its own, and every bind still lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_binds_queued_behind_a_stalled_commit_are_committed_beside_it() {
    use std::time::{Duration, Instant};

    use sqlx::Connection as _;

    let database = TestDatabase::create(&Backends::from_env()).await;
    let settings = on_postgres(&database);
    let bindings = Bindings::connect(&settings).await.unwrap();

    let mut holder = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE bindings IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut watcher = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let mut commits_waiting = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'WITH input AS%'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap()
    };
    let bind = |n: usize| {
        let bindings = bindings.clone();
        tokio::spawn(async move {
            let id = RequestId::generate();
            (id, bindings.bind(binding(id, n), None, None).await)
        })
    };

    // One bind alone: its commit waits on the table.
    let mut binds = vec![bind(0)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while commits_waiting().await < 1 {
        assert!(
            Instant::now() < deadline,
            "the first commit never reached the table"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Then a backlog behind it.
    binds.extend((1..=300).map(bind));
    let mut most = 1;
    while most < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        most = most.max(commits_waiting().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    most = most.max(commits_waiting().await);
    assert!(
        (2..=4).contains(&most),
        "commits waiting on the table at once: {most} (one writer holds every bind behind it)"
    );

    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let mut bound = std::collections::HashSet::new();
    for task in binds {
        let (id, outcome) = task.await.unwrap();
        outcome.unwrap_or_else(|error| panic!("bind of {id} failed: {error:#}"));
        bound.insert(id);
    }
    assert_eq!(bound.len(), 301);
    assert_eq!(bindings.durable().count().await.unwrap(), 301);
    database.drop_now().await;
}
