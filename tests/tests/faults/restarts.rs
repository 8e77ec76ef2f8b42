//! Each backend restarted mid-load, as an operator's restart (or an upgrade) does it.

use std::collections::HashSet;
use std::time::Duration;

use qrpool::Parts;
use tests::servers::OwnServer;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, unique};

use super::{
    Load, SERIAL, assert_answers_kept_the_rules, assert_durable, assert_refused_between, limit_of,
    postgres_settings, readiness_becomes, summary,
};

/// How long each backend stays down.
const DOWN_FOR: Duration = Duration::from_secs(3);

async fn stop(server: &mut OwnServer) {
    tokio::task::block_in_place(|| server.stop());
}

/// Binds that took their code from the pool (not drawn on demand).
async fn pooled_binds(app: &TestApp) -> f64 {
    app.metric("binder_binds_total").await - app.metric("binder_on_demand_codes_total").await
}

/// The local lane's committed offset and watermarks by partition, as the broker answers them
/// to a client outside the binders' group: what a failure needs to say whether the group's
/// position is behind the codes (a reader not fetching) or past them (a log that lost its
/// end).
fn lane_positions(kafka: &config::KafkaSettings) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let topic = kafka.lane_topic(config::LOCAL_ISSUER);
    let outsider: BaseConsumer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", kafka.lane_group(config::LOCAL_ISSUER))
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(consumer) => consumer,
        Err(error) => return format!("no client: {error}"),
    };
    let timeout = Duration::from_secs(5);
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        list.add_partition(&topic, partition);
    }
    let committed = match outsider.committed_offsets(list, timeout) {
        Ok(committed) => committed,
        Err(error) => return format!("committed offsets unreadable: {error}"),
    };
    committed
        .elements()
        .iter()
        .map(|element| {
            let watermarks = outsider.fetch_watermarks(&topic, element.partition(), timeout);
            format!(
                "{}: {:?} {watermarks:?}",
                element.partition(),
                element.offset()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_load_refuses_binds_cleanly_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let mut postgres = OwnServer::postgres(None).await;
    let backends = Backends {
        postgres_url: postgres.url(),
        ..Backends::from_env()
    };
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = postgres_settings(dir.path(), &database, None);
    let limit = limit_of(&settings);
    let app = TestApp::spawn(settings, Parts::ALL).await;

    let load = Load::binds(&app, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut postgres).await;
    let down_at = load.now();
    tokio::time::sleep(DOWN_FOR).await;
    let refused_while_down = readiness_becomes(&app, 503, Duration::from_secs(5)).await;
    assert!(
        refused_while_down.contains("bindings: unavailable"),
        "/readyz names the store: {refused_while_down}"
    );
    postgres.start().await;
    let back_at = load.now();
    let recovered_in = load
        .first_success_since(back_at, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.finish().await;
    println!(
        "PostgreSQL restarted (down {:?}): binds succeeded again {recovered_in:?} after it was back; {}",
        back_at - down_at,
        summary(&answers)
    );

    let bound = assert_answers_kept_the_rules(&answers, &[201, 503], limit);
    assert_refused_between(&answers, down_at, back_at);
    assert_durable(&bound, &database).await;
    readiness_becomes(&app, 200, Duration::from_secs(5)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_load_loses_no_bind_and_scan_and_is_used_again() {
    let _serial = SERIAL.lock().await;
    let mut redis = OwnServer::redis(None).await;
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("qrpool-test"));
    let settings = postgres_settings(dir.path(), &database, Some((redis.url(), &prefix)));
    let limit = limit_of(&settings);
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let scanned = app.bind_many(20, 4).await;

    let load = Load::binds(&app, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut redis).await;
    let down_at = load.now();
    for body in &scanned {
        let path = format!("/v1/scene/{}", body["request_id"].as_str().unwrap());
        assert_eq!(
            app.get(&path).await.status(),
            200,
            "scans resolve while Redis is down"
        );
    }
    tokio::time::sleep(DOWN_FOR).await;
    redis.start().await;
    let back_at = load.now();
    // Used again: a bind after the restart finds its way into the new, empty Redis.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let recovered_in = loop {
        let since = load.now();
        let fresh: Vec<String> = load
            .answers
            .lock()
            .unwrap()
            .iter()
            .filter(|answer| answer.status == 201 && answer.sent >= back_at)
            .filter_map(|answer| answer.request_id.clone())
            .collect();
        let mut found = None;
        for id in fresh {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(format!("{prefix}b:{id}"))
                .query_async(&mut connection)
                .await
                .unwrap();
            if exists == 1 {
                found = Some(since - back_at);
                break;
            }
        }
        if let Some(recovered_in) = found {
            break recovered_in;
        }
        assert!(
            load.now() - back_at < Duration::from_secs(30),
            "binds reach Redis again within 30 s of its return"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = load.finish().await;
    println!(
        "Redis restarted (down {:?}): binds reached it again within {recovered_in:?}; {}",
        back_at - down_at,
        summary(&answers)
    );

    let bound = assert_answers_kept_the_rules(&answers, &[201], limit);
    assert_durable(&bound, &database).await;
    for body in &scanned {
        let path = format!("/v1/scene/{}", body["request_id"].as_str().unwrap());
        assert_eq!(app.get(&path).await.status(), 200);
    }
    readiness_becomes(&app, 200, Duration::from_secs(5)).await;
    app.stop().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restarted_mid_load_binds_go_on_and_the_pool_resumes_with_its_depth_exact() {
    let _serial = SERIAL.lock().await;
    let mut broker = OwnServer::kafka(None).await;
    let backends = Backends {
        kafka_brokers: broker.url(),
        ..Backends::from_env()
    };
    let database = TestDatabase::create(&backends).await;
    let topic = unique("qrpool-pool");
    let prefix = format!("{}:", unique("qrpool-test"));
    let settings = || {
        let mut settings = distributed_settings(&backends, &database, &topic, &prefix);
        settings.pregen.target_depth = 300;
        settings.pregen.low_water = 150;
        settings.binder.on_demand_local = true;
        settings.binder.claim_wait_ms = 500;
        settings.server.request_timeout_ms = 5_000;
        settings
    };
    let limit = limit_of(&settings());
    let app = TestApp::spawn(settings(), Parts::ALL).await;
    let joined = tokio::time::Instant::now();
    while app.metric("pool_rebalances_total").await < 1.0 {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "the binder joined its group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let load = Load::binds(&app, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let assignments_before = app.metric("pool_rebalances_total").await;
    stop(&mut broker).await;
    let down_at = load.now();
    tokio::time::sleep(DOWN_FOR).await;
    let while_down = readiness_becomes(&app, 503, Duration::from_secs(10)).await;
    assert!(
        while_down.contains("pool: unavailable"),
        "/readyz names the pool: {while_down}"
    );
    broker.start().await;
    let back_at = load.now();
    readiness_becomes(&app, 200, Duration::from_secs(60)).await;
    let ready_in = load.now() - back_at;
    // Back on the pool: the group gives the binder its partitions again and binds take pooled
    // codes from them. Not "no code drawn on demand any more": two clients can bind faster than
    // a debug build's pregen refills a pool of 300 once a second (a CI run's binder took 12,404
    // pooled codes and drew 4,353 on demand, the outage's included, and never had two seconds
    // without one), and a bind that finds the pool dry for a moment draws its code on demand,
    // as the local lane should.
    let resumed_in = loop {
        if app.metric("pool_rebalances_total").await > assignments_before {
            let before = pooled_binds(&app).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if pooled_binds(&app).await > before {
                break load.now() - back_at - Duration::from_secs(1);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if load.now() - back_at > Duration::from_secs(90) {
            // Which side did not come back: the binder's group (no assignment since), pregen's
            // refills (the producer), or both.
            let mut state = String::new();
            for metric in [
                "pool_rebalances_total",
                "pool_partitions_held",
                "pool_reader_starved_total",
                "pool_stale_deliveries_dropped_total",
                "pool_depth_codes",
                "pool_fetch_errors_total",
                "pool_producers_renewed_total",
                "pregen_codes_enqueued_total",
                "pregen_failures_total",
                "binder_binds_total",
                "binder_on_demand_codes_total",
                "binder_redelivered_codes_skipped_total",
            ] {
                state += &format!(" {metric}={}", app.metric(metric).await);
            }
            let partitions = tokio::task::block_in_place(|| lane_positions(&settings().kafka));
            panic!(
                "binds take codes from Kafka again within 90 s; now:{state}; the binders' group \
                 by partition (committed offset, low and high watermarks): {partitions}"
            );
        }
    };
    let answers = load.finish().await;
    println!(
        "Kafka broker restarted (down {:?}): ready again {ready_in:?} after, binds from the pool again within {resumed_in:?}; {}",
        back_at - down_at,
        summary(&answers)
    );

    let bound = assert_answers_kept_the_rules(&answers, &[201], limit);
    assert_durable(&bound, &database).await;

    // The depth the pool reports is what is really left in it: a binder of its own drains
    // exactly that many codes. Those bound already (taken before the restart, their offsets
    // not committed yet, and not redelivered and skipped by the time the load stopped) are
    // skipped again; every other is fresh.
    // One recorder per process: the drainer's counts add to the app's.
    let skipped_before = app.metric("binder_redelivered_codes_skipped_total").await;
    app.stop().await;
    let writer = pool::KafkaWriter::connect(&settings().kafka).await.unwrap();
    let reported = pool::PoolWriter::Kafka(writer)
        .depth(config::LOCAL_ISSUER)
        .await
        .unwrap();
    let mut drain_settings = settings();
    drain_settings.binder.on_demand_local = false;
    drain_settings.binder.claim_wait_ms = 8_000;
    drain_settings.server.request_timeout_ms = 30_000;
    let drainer = TestApp::spawn(drain_settings, Parts::BINDER).await;
    let mut drained = HashSet::new();
    let mut skipped_so_far = skipped_before;
    loop {
        let response = drainer.bind(&serde_json::json!({"params": {}})).await;
        if response.status() != 201 {
            assert_eq!(response.status(), 503, "dry at last");
            // A request that met 64 codes bound already in a row is answered 503 too; the
            // lane is dry only when a request skipped none.
            let skipped_now = drainer
                .metric("binder_redelivered_codes_skipped_total")
                .await;
            if skipped_now > skipped_so_far {
                skipped_so_far = skipped_now;
                continue;
            }
            break;
        }
        let body: serde_json::Value = response.json().await.unwrap();
        let id = body["request_id"].as_str().unwrap().to_owned();
        assert!(
            !bound.contains(&id),
            "a code bound under load came again: {id}"
        );
        assert!(drained.insert(id.clone()), "a code came twice: {id}");
    }
    // The last 503 skipped none, so the count it read is the drain's whole.
    let skipped = skipped_so_far - skipped_before;
    drainer.stop().await;
    assert_eq!(
        drained.len() as u64 + skipped as u64,
        reported,
        "the reported depth is what was left: {} fresh codes and {skipped} bound before",
        drained.len()
    );
    database.drop_now().await;
}
