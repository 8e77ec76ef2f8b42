//! What a failing dependency does to the service, and that it recovers by itself.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};

use config::StoreBackend;
use qrpool::Parts;
use tests::{
    Backends, FaultyLink, TestApp, TestDatabase, distributed_settings, embedded_settings, unique,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_fail_cleanly_while_postgres_is_unreachable_and_recover_after() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let link = FaultyLink::to(database.server_address()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url_through(&link)));
    // A small pool that is never refilled, so that every code can be accounted for.
    settings.pregen.target_depth = 6;
    settings.pregen.low_water = 0;
    let made = settings.pregen.target_depth;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    let bound: Value = app
        .bind(&json!({"params": {"listing": 1}}))
        .await
        .json()
        .await
        .unwrap();
    let bound_id = bound["request_id"].as_str().unwrap().to_owned();

    link.cut();
    let started = Instant::now();
    let refused = app.bind(&json!({"params": {"listing": 2}})).await;
    assert_eq!(refused.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before the request limit"
    );
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["detail"], "the binding store is unavailable",
        "the store said so, not the time limit"
    );
    assert_eq!(app.get("/readyz").await.status(), 503);
    // A code already bound still resolves from the in-process cache.
    assert_eq!(app.get(&format!("/m/{bound_id}")).await.status(), 200);
    // One unknown to the caches gets the friendly "try again" page.
    let unknown = app.get("/m/0000000000000000000001").await;
    assert_eq!(unknown.status(), 503);
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("scan again in a moment")
    );

    link.restore();
    let mut recovered = None;
    for _ in 0..50 {
        let response = app.bind(&json!({"params": {"listing": 3}})).await;
        if response.status() == 201 {
            recovered = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered.is_some(),
        "binds work again once PostgreSQL is back"
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(
        database.count_bindings().await,
        2,
        "the refused bind wrote nothing"
    );

    // The refused bind's code went back to the takers: binding until the pool is dry uses
    // every code that was made, that one included.
    let mut bound = 2;
    while app.bind(&json!({"params": {"listing": 4}})).await.status() == 201 {
        bound += 1;
    }
    assert_eq!(
        bound, made,
        "every code made was bound, none stranded by the failure"
    );
    app.stop().await;
    assert_eq!(database.count_bindings().await, made as i64);
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_and_scans_go_on_while_redis_is_unreachable_and_use_it_again_after() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let redis_server: std::net::SocketAddr = backends
        .redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let link = FaultyLink::to(redis_server).await;
    let prefix = format!("{}:", unique("qrpool-test"));
    let topic = unique("qrpool-pool");
    let mut settings = distributed_settings(&backends, &database, &topic, &prefix);
    settings.pregen.target_depth = 100;
    settings.redis.url = Some(SecretString::from(format!("redis://{}", link.address)));

    link.cut();
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let bound = app.bind_many(10, 4).await;
    for body in &bound {
        let response = app
            .get(&format!(
                "/v1/scene/{}",
                body["request_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        app.get("/readyz").await.status(),
        200,
        "Redis is optional for readiness"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("bindings_redis_errors_total"),
        "the degradation is counted"
    );

    // A change is refused while Redis's copy cannot be removed: it would outlive the change.
    let changed_path = format!("/v1/codes/{}", bound[0]["request_id"].as_str().unwrap());
    let change = || {
        app.client
            .patch(app.url(&changed_path))
            .json(&serde_json::json!({"params": {"listing": "changed"}}))
            .send()
    };
    let refused = change().await.unwrap();
    assert_eq!(refused.status(), 503);
    let unchanged: serde_json::Value = app.get(&changed_path).await.json().await.unwrap();
    assert_eq!(unchanged["version"], 1, "nothing was changed");

    // Redis comes back: after its one-second rest the tier is used again, with no restart.
    link.restore();
    assert!(
        binds_reach_redis(&app, &backends, &prefix).await,
        "binds write to Redis once it is up"
    );
    let accepted = change().await.unwrap();
    assert_eq!(accepted.status(), 200, "changes go through again");

    // Redis goes away while connected, then returns: the connection is re-made by itself.
    link.cut();
    let during = app.bind_many(5, 2).await;
    assert_eq!(
        during.len(),
        5,
        "binds go on while the connection is broken"
    );
    link.restore();
    assert!(
        binds_reach_redis(&app, &backends, &prefix).await,
        "binds write to Redis again"
    );
    app.stop().await;
    assert!(database.count_bindings().await >= 17);
    database.drop_now().await;
}

/// Binds until one of them is found in Redis (or gives up after a few seconds).
async fn binds_reach_redis(app: &TestApp, backends: &Backends, prefix: &str) -> bool {
    let client = redis::Client::open(backends.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..30 {
        let body: Value = app
            .bind(&json!({"params": {"probe": true}}))
            .await
            .json()
            .await
            .unwrap();
        let key = format!("{prefix}b:{}", body["request_id"].as_str().unwrap());
        if redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<i64>(&mut redis)
            .await
            .unwrap()
            == 1
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
