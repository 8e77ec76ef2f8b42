//! The binder killed with SIGKILL mid-load, against the real broker, Redis and PostgreSQL.
//!
//! Concurrent clients bind as fast as they can; the `qrpool` process is killed with
//! `kill -9` (no shutdown, no offset commit) and started again; the clients keep going. Then
//! every 201 is checked against PostgreSQL: **no acknowledged binding is lost** (its row holds
//! exactly the params the client sent) and **no code is bound twice** (no request id in two
//! 201s). Codes the dead process had fetched and not bound come back from the pool; codes it
//! bound without committing their offsets come back too and are skipped as bound.
//!
//! It runs the `qrpool` binary of this build (`target/debug/qrpool`): `scripts/test` builds it
//! first; with bare `cargo test`, run `cargo build -p qrpool` before.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use records::Tenant;
use tests::{Backends, QrpoolProcess, TestApp, TestDatabase, distributed_settings, unique};

const CLIENTS: usize = 16;

/// One client: binds in a loop until `stop`, retrying through failures; returns its 201s.
async fn client(
    base: String,
    key: String,
    id: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(String, Value)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut seq = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let params = json!({"client": id, "seq": seq});
        let answer = http
            .post(format!("{base}/v1/codes"))
            .bearer_auth(&key)
            .json(&json!({ "params": params }))
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 201 => {
                let body: Value = response.json().await.unwrap();
                acknowledged.push((body["request_id"].as_str().unwrap().to_owned(), params));
            }
            // Killed mid-request, restarting, or the group still forming: try again.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binder_killed_mid_load_loses_no_binding_and_binds_no_code_twice() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("qrpool-crash");
    let prefix = format!("{}:", unique("qrpool-crash"));
    let settings = distributed_settings(&backends, &database, &topic, &prefix);
    let key = TestApp::make_key(&settings, &Tenant::default(), "bind read").await;

    let port = tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kafka.toml");
    std::fs::write(
        &config,
        "[kafka.producer_options]\n\"batch.num.messages\" = \"1\"\n",
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("QRPOOL_CONFIG", config.display().to_string()),
        ("QRPOOL_SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("QRPOOL_SERVER__PUBLIC_URL", base.clone()),
        ("QRPOOL_POOL__BACKEND", "kafka".into()),
        ("QRPOOL_STORE__BACKEND", "postgres".into()),
        ("QRPOOL_POSTGRES__URL", database.url.clone()),
        ("QRPOOL_REDIS__URL", backends.redis_url.clone()),
        ("QRPOOL_REDIS__KEY_PREFIX", prefix.clone()),
        ("QRPOOL_KAFKA__BROKERS", backends.kafka_brokers.clone()),
        ("QRPOOL_KAFKA__POOL_TOPIC", topic.clone()),
        ("QRPOOL_KAFKA__GROUP_ID", format!("{topic}-binders")),
        ("QRPOOL_KAFKA__EVENTS_TOPIC", format!("{topic}.scans")),
        (
            "QRPOOL_EMBEDDED__DATA_DIR",
            database.data_dir.path().display().to_string(),
        ),
        ("QRPOOL_KAFKA__PARTITIONS", "4".into()),
        ("QRPOOL_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        ("QRPOOL_PREGEN__TARGET_DEPTH", "4000".into()),
        ("QRPOOL_PREGEN__LOW_WATER", "0".into()),
        ("QRPOOL_BINDER__CLAIM_WAIT_MS", "25000".into()),
        ("QRPOOL_BINDER__ON_DEMAND_LOCAL", "false".into()),
        ("QRPOOL_SERVER__REQUEST_TIMEOUT_MS", "30000".into()),
        ("QRPOOL_TELEMETRY__FILTER", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let ready = format!("{base}/readyz");
    let mut first = QrpoolProcess::start(&env, &ready, dir.path().join("first.log")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(base.clone(), key.clone(), id, Arc::clone(&stop))))
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill(); // SIGKILL: no shutdown, no commit
    let bound_before_restart = database.count_bindings().await;

    let mut second = QrpoolProcess::start(&env, &ready, dir.path().join("second.log")).await;
    // Keep the load on until the restarted binder has bound a good many codes itself.
    for _ in 0..300 {
        if database.count_bindings().await >= bound_before_restart + 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    second.stop().await;

    assert!(
        bound_before_restart > 100,
        "the kill came mid-load: {bound_before_restart} bound before"
    );
    assert!(
        database.count_bindings().await >= bound_before_restart + 500,
        "the restarted binder served binds too"
    );
    let ids: HashSet<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), acknowledged.len(), "a code was handed out twice");

    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let rows: Vec<(String, sqlx::types::Json<Value>)> =
        sqlx::query_as("SELECT request_id, params FROM bindings")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let stored: HashMap<String, Value> = rows.into_iter().map(|(id, p)| (id, p.0)).collect();
    for (id, params) in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(params),
            "acknowledged binding {id} is durable with its params"
        );
    }
    eprintln!(
        "crash test: {} acknowledged binds ({} before the kill), {} rows",
        acknowledged.len(),
        bound_before_restart,
        stored.len()
    );
    database.drop_now().await;
}
