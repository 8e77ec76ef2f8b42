//! A backend that stops answering: its server sits in a network namespace of its own and its
//! packets are dropped there (`iptables -j DROP`), so connections neither fail nor answer,
//! which is what a partition or a dead host looks like. Needs root (namespaces, iptables);
//! CI runs as root.

use std::time::Duration;

use qrpool::Parts;
use tests::servers::{Netns, OwnServer, is_root};
use tests::{Backends, TestApp, TestDatabase, unique};

use super::{
    Load, SERIAL, assert_answers_kept_the_rules, assert_durable, assert_refused_between, limit_of,
    postgres_settings, readiness_becomes, summary,
};

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
    let settings = postgres_settings(dir.path(), &database, None);
    let limit = limit_of(&settings);
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
    assert_refused_between(&answers, cut_at, lifted_at);
    assert_durable(&bound, &database).await;
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
    let prefix = format!("{}:", unique("qrpool-test"));
    let settings = postgres_settings(dir.path(), &database, Some((redis.url(), &prefix)));
    let limit = limit_of(&settings);
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
    assert_durable(&bound, &database).await;
    app.stop().await;
    database.drop_now().await;
}
