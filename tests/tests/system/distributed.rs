//! The whole flow on the distributed backends: the pool on a Kafka-protocol broker, bindings
//! in PostgreSQL with Redis in front. Real connections on loopback; each test has its own
//! database, topic, consumer group and Redis prefix.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use qrpool::Parts;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, unique};

/// Deletes every binding's hot copy under `prefix` (`<prefix>b:<id>`): the hot tier forgets
/// every binding (and only bindings: API keys' rate schedules live beside them).
async fn evict_redis(backends: &Backends, prefix: &str) -> usize {
    let client = redis::Client::open(backends.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}b:*"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_binders_in_one_group_never_bind_a_code_twice_across_a_rebalance() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("qrpool-pool");
    let prefix = format!("{}:", unique("qrpool-test"));
    let settings = || {
        let mut settings = distributed_settings(&backends, &database, &topic, &prefix);
        // Far more codes than binds: a lane's partitions are not evenly filled (keys hash),
        // and a binder left with the emptier half must not run dry for that reason. Also
        // more than a binder prefetches (512): a binder with a full buffer must still serve
        // the rebalance, or the second one waits for partitions until it times out.
        settings.pregen.target_depth = 1_200;
        settings
    };

    // The first binder (with pregen) starts binding; the second joins the group mid-load,
    // which rebalances the partitions between them while binds are in flight.
    let first = TestApp::spawn(settings(), Parts::ALL).await;
    let (early, (second, late_first)) = tokio::join!(first.bind_many(60, 8), async {
        let second = TestApp::spawn(settings(), Parts::BINDER).await;
        let late_first = first.bind_many(60, 8).await;
        (second, late_first)
    });
    let (from_second, more_from_first) =
        tokio::join!(second.bind_many(80, 8), first.bind_many(60, 8));

    let all: Vec<&Value> = early
        .iter()
        .chain(&late_first)
        .chain(&from_second)
        .chain(&more_from_first)
        .collect();
    let ids: HashSet<&str> = all
        .iter()
        .map(|b| b["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), all.len(), "a code was handed out twice");
    assert_eq!(
        database.count_bindings().await,
        all.len() as i64,
        "one durable row per 201"
    );
    second.stop().await;
    first.stop().await;
    evict_redis(&backends, &prefix).await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_events_reach_the_events_topic() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;

    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("qrpool-pool");
    let prefix = format!("{}:", unique("qrpool-test"));
    let mut settings = distributed_settings(&backends, &database, &topic, &prefix);
    let events_topic = unique("qrpool-scans");
    settings.kafka.events_topic = events_topic.clone();
    settings.pregen.target_depth = 5;
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let code: Value = app
        .bind(&serde_json::json!({"params": {}}))
        .await
        .json()
        .await
        .unwrap();
    let id = code["request_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/m/{id}?qr=1")).await.status(), 200);
    }
    app.stop().await; // flushes the producer

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &backends.kafka_brokers)
        .set("group.id", unique("scan-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&events_topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("scan events arrive within 30 s")
            .unwrap();
        assert_eq!(
            message.key(),
            Some(id.as_bytes()),
            "keyed by the scanned id"
        );
        let event: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        seen.push(event);
    }
    assert!(
        seen.iter()
            .all(|event| event["outcome"] == "bound" && event["via_qr"] == true)
    );
    evict_redis(&backends, &prefix).await;
    database.drop_now().await;
}

/// Pool settings for a lane of its own on the test broker, with `partitions` and a prefetch
/// of 16 codes.
fn lane_of_its_own(partitions: i32) -> config::KafkaSettings {
    let topic = unique("qrpool-pool");
    config::KafkaSettings {
        brokers: Backends::from_env().kafka_brokers,
        group_id: format!("{topic}-binders"),
        pool_topic: topic,
        partitions,
        session_timeout_ms: 6_000,
        prefetch: 16,
        ..config::KafkaSettings::default()
    }
}

/// `count` local codes without their pictures: a reader never looks at them.
fn unrendered_codes(count: usize) -> Vec<records::PoolRecord> {
    (0..count)
        .map(|_| {
            let request_id = records::RequestId::generate();
            records::PoolRecord {
                request_id,
                issuer: config::LOCAL_ISSUER.into(),
                content: format!("https://qr.example.com/m/{request_id}"),
                image: None,
                created_at: chrono::Utc::now(),
            }
        })
        .collect()
}

/// The reader as the binder uses it, on a lane written in multi-record batches (production's
/// producer settings) through a prefetch far smaller than the lane: every code arrives, once.
/// The reader that paused full partitions stopped delivering here (17,386 of 20,000 in the
/// pool-drain bench) and was slow before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_takes_every_code_of_a_batched_lane_through_a_small_prefetch() {
    use pool::{KafkaReader, KafkaWriter, PoolReader, PoolWriter};
    use records::RequestId;

    let settings = lane_of_its_own(4);
    let writer = PoolWriter::Kafka(KafkaWriter::connect(&settings).await.unwrap());
    let written = unrendered_codes(2_000);
    writer.push(&written).await.unwrap();
    writer.flush().await.unwrap();

    let reader = PoolReader::Kafka(
        KafkaReader::connect(&settings, config::LOCAL_ISSUER)
            .await
            .unwrap(),
    );
    let mut taken = HashSet::new();
    // The first take waits for the consumer group to form.
    let mut wait = Duration::from_secs(25);
    while taken.len() < written.len() {
        let Some(delivery) = reader.take(wait).await.unwrap() else {
            panic!(
                "no code for {wait:?} after {} of {}",
                taken.len(),
                written.len()
            );
        };
        assert!(
            taken.insert(delivery.record.request_id),
            "a code was delivered twice"
        );
        reader.ack(&delivery);
        wait = Duration::from_secs(10);
    }
    let expected: HashSet<RequestId> = written.iter().map(|record| record.request_id).collect();
    assert_eq!(taken, expected);
    assert!(
        reader
            .take(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "a code beyond those written"
    );
    reader.close().await.unwrap();
}

/// A binder left without partitions while its lane has codes takes none of them (every bind
/// draws on demand and still succeeds): after three session timeouts its reader says so
/// (`/readyz`'s optional `pool partitions` line), and stops saying so once it holds one.
/// Here a group has more binders than its lane has partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binder_without_partitions_of_a_lane_with_codes_says_so_until_it_gets_one() {
    use pool::{KafkaReader, KafkaWriter, PoolReader, PoolWriter};

    let settings = lane_of_its_own(1);
    let topic = settings.pool_topic.clone();
    let writer = PoolWriter::Kafka(KafkaWriter::connect(&settings).await.unwrap());
    let codes = unrendered_codes(50);
    // One at a time: tansu 0.6 answers a partition's end as the last batch's first offset
    // plus one, so a lane written in one batch of 50 would read as 1 code deep.
    for code in &codes {
        writer.push(std::slice::from_ref(code)).await.unwrap();
    }
    writer.flush().await.unwrap();

    let connect = || async {
        PoolReader::Kafka(
            KafkaReader::connect(&settings, config::LOCAL_ISSUER)
                .await
                .unwrap(),
        )
    };
    // Before connecting: each reader counts from its own start, which comes after this.
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(connect(), connect());
    // Neither takes a code, so the lane keeps all 50 whoever holds its one partition.
    let starved_after = Duration::from_millis(u64::from(settings.session_timeout_ms))
        * pool::kafka::STARVED_AFTER_SESSIONS;
    let (holder, idle, problem) = loop {
        match (first.holding_check(), second.holding_check()) {
            (Ok(()), Err(problem)) => break (first, second, problem),
            (Err(problem), Ok(())) => break (second, first, problem),
            (Err(a), Err(b)) => panic!("both binders say they hold nothing: {a}; {b}"),
            (Ok(()), Ok(())) => {
                assert!(
                    started.elapsed() < starved_after + Duration::from_secs(30),
                    "neither binder said it holds no partition in {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert!(
        started.elapsed() >= starved_after,
        "said after {:?}, before three session timeouts",
        started.elapsed()
    );
    let said = problem.to_string();
    assert!(
        said.contains(&format!("`{topic}.local`")) && said.contains("50 codes"),
        "the warning names the lane and its depth: {said}"
    );

    // The holder leaves; the group gives the partition to the idle binder, which says no more.
    holder.close().await.unwrap();
    drop(holder);
    let left = std::time::Instant::now();
    while let Err(problem) = idle.holding_check() {
        assert!(
            left.elapsed() < Duration::from_secs(30),
            "still starved {:?} after the holder left: {problem}",
            left.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivery = idle
        .take(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the binder that got the partition takes its codes");
    idle.ack(&delivery);
    idle.close().await.unwrap();
}
