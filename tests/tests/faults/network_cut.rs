//! A backend that stops answering: its server sits in a network namespace of its own and its
//! packets are dropped there (`iptables -j DROP`), so connections neither fail nor answer,
//! which is what a partition or a dead host looks like. Needs root (namespaces, iptables);
//! CI runs as root.

use std::time::Duration;

use secrecy::SecretString;

use config::StoreBackend;
use qrpool::Parts;
use tests::servers::{Netns, OwnServer, is_root};
use tests::{Backends, TestApp, TestDatabase, embedded_settings, unique};

use super::{Load, SERIAL, assert_answers_kept_the_rules, readiness_becomes, summary};

/// How long the backend's packets are dropped: longer than any request's time limit.
const CUT_FOR: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_requests_end_in_time_readyz_names_it_and_all_resumes() {
    if !is_root() {
        eprintln!("skipped: a network namespace needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let netns = Netns::create();
    let postgres = OwnServer::postgres(Some(&netns)).await;
    let backends = Backends {
        postgres_url: postgres.url(),
        ..Backends::from_env()
    };
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url.clone()));
    settings.binder.on_demand_local = true;
    let limit = Duration::from_millis(settings.server.request_timeout_ms + 1_000);
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let scanned = app.bind_many(10, 2).await;

    let load = Load::binds(&app, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    netns.drop_traffic_to(postgres.port);
    let cut_at = load.now();
    let started = tokio::time::Instant::now();
    let while_cut = readiness_becomes(&app, 503, CUT_FOR).await;
    assert!(
        while_cut.contains("bindings: unavailable"),
        "/readyz names the store: {while_cut}"
    );
    // Codes already bound still resolve from the caches.
    for body in &scanned {
        let path = format!("/m/{}", body["request_id"].as_str().unwrap());
        let scan = tokio::time::timeout(limit, app.get(&path)).await;
        assert_eq!(
            scan.expect("a scan ends within its limit").status(),
            200,
            "a bound code scans while the store is cut off"
        );
    }
    tokio::time::sleep(CUT_FOR.saturating_sub(started.elapsed())).await;
    netns.lift_drop(postgres.port);
    let lifted_at = load.now();
    let recovered_in = load
        .first_success_since(lifted_at, Duration::from_secs(60))
        .await;
    readiness_becomes(&app, 200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.finish().await;
    println!(
        "PostgreSQL cut off ({:?}): binds succeeded again {recovered_in:?} after the drop was lifted; {}",
        lifted_at - cut_at,
        summary(&answers)
    );

    let bound = assert_answers_kept_the_rules(&answers, &[201, 503], limit);
    assert!(
        answers
            .iter()
            .any(|answer| answer.status == 503 && (cut_at..lifted_at).contains(&answer.sent)),
        "binds were refused while cut off"
    );
    let durable = database.request_ids().await;
    let lost: Vec<_> = bound.difference(&durable).collect();
    assert!(lost.is_empty(), "every 201 is durable; not: {lost:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_binds_and_scans_go_on_in_time_readyz_says_so_and_redis_is_used_again() {
    if !is_root() {
        eprintln!("skipped: a network namespace needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let netns = Netns::create();
    let redis = OwnServer::redis(Some(&netns)).await;
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url.clone()));
    settings.redis.url = Some(SecretString::from(redis.url()));
    let prefix = format!("{}:", unique("qrpool-test"));
    settings.redis.key_prefix = prefix.clone();
    settings.binder.on_demand_local = true;
    let limit = Duration::from_millis(settings.server.request_timeout_ms + 1_000);
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let scanned = app.bind_many(10, 2).await;

    let load = Load::binds(&app, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    netns.drop_traffic_to(redis.port);
    let cut_at = load.now();
    let started = tokio::time::Instant::now();
    // Redis is optional: ready all along, and the answer says what is degraded.
    let while_cut = readiness_becomes(&app, 200, limit).await;
    let mut named = while_cut.contains("redis: unavailable");
    while !named && started.elapsed() < CUT_FOR {
        tokio::time::sleep(Duration::from_millis(200)).await;
        named = readiness_becomes(&app, 200, limit)
            .await
            .contains("redis: unavailable");
    }
    assert!(named, "/readyz names Redis while it is cut off");
    for body in &scanned {
        let path = format!("/m/{}", body["request_id"].as_str().unwrap());
        let scan = tokio::time::timeout(limit, app.get(&path)).await;
        assert_eq!(scan.expect("a scan ends within its limit").status(), 200);
    }
    tokio::time::sleep(CUT_FOR.saturating_sub(started.elapsed())).await;
    netns.lift_drop(redis.port);
    let lifted_at = load.now();
    let clean = readiness_becomes(&app, 200, limit).await;
    let mut back = !clean.contains("redis: unavailable");
    while !back {
        assert!(
            load.now() - lifted_at < Duration::from_secs(60),
            "/readyz stops naming Redis within 60 s of the drop being lifted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        back = !readiness_becomes(&app, 200, limit)
            .await
            .contains("redis: unavailable");
    }
    let recovered_in = load.now() - lifted_at;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.finish().await;
    println!(
        "Redis cut off ({:?}): Redis in use again {recovered_in:?} after the drop was lifted; {}",
        lifted_at - cut_at,
        summary(&answers)
    );

    let bound = assert_answers_kept_the_rules(&answers, &[201], limit);
    let durable = database.request_ids().await;
    assert!(bound.is_subset(&durable), "every 201 is durable");
    app.stop().await;
    database.drop_now().await;
}
