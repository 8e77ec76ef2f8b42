//! Kafka going away under the binder, with a broker of the test's own (a second tansu on its
//! own port, killed mid-run): binds go on from the prefetched codes, then from codes drawn on
//! demand; none waits past its time limit; `/readyz` says the pool is down; the app still
//! stops cleanly. The shared broker is untouched.
//!
//! The broker coming back is `faults`' `kafka_restarted_mid_load…` (a broker that keeps its
//! topics on disk: this one keeps them in memory, and librdkafka once crashed on the metadata
//! of a restarted broker that had lost them).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use qrpool::Parts;
use tests::servers::tansu_binary;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, unique};

async fn start_broker(port: u16) -> Child {
    let address = format!("tcp://127.0.0.1:{port}");
    let mut child = Command::new(tansu_binary())
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args([
            "--listener-url",
            &address,
            "--advertised-listener-url",
            &address,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the private broker did not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_go_on_while_kafka_is_down_and_the_app_still_stops_cleanly() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let port = tests::free_port();
    let mut broker = start_broker(port).await;

    let topic = unique("qrpool-pool");
    let prefix = format!("{}:", unique("qrpool-test"));
    let mut settings = distributed_settings(&backends, &database, &topic, &prefix);
    settings.kafka.brokers = format!("127.0.0.1:{port}");
    settings.pregen.target_depth = 40;
    settings.binder.on_demand_local = true;
    settings.binder.claim_wait_ms = 500;
    settings.server.request_timeout_ms = 5_000;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    // Let the binder join its group and prefetch the pool.
    let joined = Instant::now();
    while app.metric("pool_rebalances_total").await < 1.0 {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "the binder joined its group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    broker.kill().unwrap();
    broker.wait().unwrap();

    let mut ids = HashSet::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let started = Instant::now();
        let response = app.bind(&serde_json::json!({"params": {}})).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 201, "binds go on without Kafka");
        let body: Value = response.json().await.unwrap();
        ids.insert(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 60, "no code twice");
    assert!(
        slowest < Duration::from_secs(5),
        "no bind waited past its limit: {slowest:?}"
    );
    let on_demand = app.metric("binder_on_demand_codes_total").await;
    assert!(
        (20.0..60.0).contains(&on_demand),
        "the prefetched codes first (at most 40), then codes drawn on demand: {on_demand}"
    );
    assert_eq!(
        app.get("/readyz").await.status(),
        503,
        "readiness says the pool is down"
    );

    app.stop().await;
    assert_eq!(database.count_bindings().await, 60, "every 201 is durable");
    database.drop_now().await;
}
