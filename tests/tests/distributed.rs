//! The whole flow on the distributed backends: the pool on a Kafka-protocol broker, bindings
//! in PostgreSQL with Redis in front. Real connections on loopback; each test has its own
//! database, topic, consumer group and Redis prefix.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use std::collections::HashSet;

use serde_json::Value;

use qrpool::Parts;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, unique};

/// Deletes every Redis key under `prefix`: the hot tier forgets everything.
async fn evict_redis(backends: &Backends, prefix: &str) -> usize {
    let client = redis::Client::open(backends.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    keys.len()
}

async fn redis_has(backends: &Backends, key: &str) -> bool {
    let client = redis::Client::open(backends.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut connection)
        .await
        .unwrap()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_flow_through_kafka_redis_and_postgres_and_resolve_without_redis() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("qrpool-pool");
    let prefix = format!("{}:", unique("qrpool-test"));
    let settings = distributed_settings(&backends, &database, &topic, &prefix);

    // One process with every part: pregen fills the topic with 200 codes at start.
    let app = TestApp::spawn(
        distributed_settings(&backends, &database, &topic, &prefix),
        Parts::ALL,
    )
    .await;
    let bound = app.bind_many(150, 32).await;
    let ids: HashSet<String> = bound
        .iter()
        .map(|b| b["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 150, "no code was handed out twice");
    assert_eq!(
        database.count_bindings().await,
        150,
        "one durable row per 201"
    );
    for id in &ids {
        assert!(
            redis_has(&backends, &format!("{prefix}b:{id}")).await,
            "the bind warmed Redis"
        );
    }
    // The image stored with the binding in PostgreSQL scans back to the code's URL.
    let png = app
        .client
        .get(bound[0]["image"]["png"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(
        tests::decode_qr(&png.bytes().await.unwrap()),
        bound[0]["url"].as_str().unwrap()
    );
    app.stop().await;

    // Redis forgets everything; a fresh middle page (cold in-process cache) still resolves
    // every code from PostgreSQL, and puts it back in Redis.
    assert_eq!(evict_redis(&backends, &prefix).await, 150);
    let scans = TestApp::spawn(
        distributed_settings(&backends, &database, &topic, &prefix),
        Parts::MIDDLE_PAGE,
    )
    .await;
    for body in &bound {
        let id = body["request_id"].as_str().unwrap();
        let scene = scans.get(&format!("/v1/scene/{id}")).await;
        assert_eq!(scene.status(), 200);
        let scene: Value = scene.json().await.unwrap();
        assert_eq!(scene["params"], body["params"]);
        let page = scans.get(&format!("/m/{id}")).await;
        assert_eq!(page.status(), 200);
        assert!(
            redis_has(&backends, &format!("{prefix}b:{id}")).await,
            "the miss refilled Redis"
        );
    }
    scans.stop().await;

    // A second binder joins the same group: it gets only the 50 codes never bound, then the
    // pool is dry. So the first binder's position was committed, and nothing was lost.
    let mut settings = settings;
    settings.binder.claim_wait_ms = 3_000;
    let binder = TestApp::spawn(settings, Parts::BINDER).await;
    let rest = binder.bind_many(50, 8).await;
    for body in &rest {
        assert!(
            !ids.contains(body["request_id"].as_str().unwrap()),
            "a code was bound twice"
        );
    }
    let dry = binder.bind(&serde_json::json!({"params": {}})).await;
    assert_eq!(dry.status(), 503);
    assert_eq!(dry.headers()["retry-after"], "1");
    binder.stop().await;

    assert_eq!(database.count_bindings().await, 200);
    evict_redis(&backends, &prefix).await;
    database.drop_now().await;
}
