//! A burst of redeliveries: codes the pool hands out again that were bound before (after a
//! crash, or a broker that restarted before it stored the group's offsets). In this binary
//! rather than beside the other embedded tests because it draws codes on demand, which
//! `binder_on_demand_codes_total` counts for the whole process.

use serde_json::{Value, json};

use qrpool::Parts;
use tests::{TestApp, embedded_settings};

use crate::SERIAL;

/// After a crash or a broker restart the pool may hand back a burst of codes bound already.
/// A bind skips them, and when a whole request's worth of takes were bound before, a local
/// lane draws a fresh code for it rather than answer 503 while codes are plainly there to draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_codes_bound_already_is_skipped_and_the_bind_still_gets_a_fresh_code() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.binder.on_demand_local = true;
    // No pregen: the pool holds only what this test puts there.
    let parts = Parts {
        pregen: false,
        ..Parts::ALL
    };
    let app = TestApp::spawn(settings, parts).await;
    let bound = app.bind_many(100, 8).await;
    let redelivered: Vec<records::PoolRecord> = bound
        .iter()
        .map(|body| {
            let request_id: records::RequestId =
                body["request_id"].as_str().unwrap().parse().unwrap();
            records::PoolRecord {
                request_id,
                issuer: config::LOCAL_ISSUER.into(),
                content: format!("{}/m/{request_id}", app.base),
                image: None,
                created_at: chrono::Utc::now(),
            }
        })
        .collect();
    let pool = pool::PoolWriter::Embedded(pool::EmbeddedPool::open(dir.path()).await.unwrap());
    pool.push(&redelivered).await.unwrap();
    let skipped_before = app.metric("binder_redelivered_codes_skipped_total").await;

    let response = app
        .bind(&json!({"params": {"listing": "after-redelivery"}}))
        .await;
    assert_eq!(response.status(), 201, "codes can still be drawn");
    let body: Value = response.json().await.unwrap();
    let fresh = body["request_id"].as_str().unwrap();
    assert!(
        bound.iter().all(|earlier| earlier["request_id"] != fresh),
        "the bind got a code nobody had: {fresh}"
    );
    let skipped = app.metric("binder_redelivered_codes_skipped_total").await - skipped_before;
    assert_eq!(skipped, 64.0, "one request skips its limit, then draws");
    let scene = app.get(&format!("/v1/scene/{fresh}")).await;
    assert_eq!(scene.status(), 200, "the fresh code resolves");
    app.stop().await;
    // Counted once the binder has stopped: it deletes acknowledged codes in batches, a
    // moment later.
    let pool = pool::PoolWriter::Embedded(pool::EmbeddedPool::open(dir.path()).await.unwrap());
    assert_eq!(
        pool.depth(config::LOCAL_ISSUER).await.unwrap(),
        100 - 64,
        "the codes skipped left the pool, the rest wait there"
    );
}
