//! Pregen against a remote issuer: the stand-in WeChat-style API (the one stand-in we allow),
//! real Redis for the shared budget and token, the embedded pool in a temporary folder.
//! Quota windows are shortened to two seconds so that several fit in a test; the guard of 2 %
//! a window (40 ms) is then the most a call's arrival may be delayed, which a loaded test
//! machine must keep to.
#![allow(clippy::unwrap_used)]

use qrpool::Parts;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use config::{IssuerSettings, QuotaSettings, Settings, WechatIssuerSettings};
use pool::{EmbeddedPool, PoolReader, PoolWriter};
use pregen::{IssueError, Pregen, PregenError};
use tests::wechat_api::{APP_ID, APP_SECRET, Behaviour, Counts, PAGE, WechatApi, WindowKind};
use tests::{Backends, TestApp, decode_qr, embedded_settings, unique};

const QUOTA: u32 = 80;
const WINDOW_MS: u64 = 2_000;

fn settings_for(
    api: &WechatApi,
    data_dir: &std::path::Path,
    shared_redis: Option<&str>,
) -> Settings {
    let mut settings = embedded_settings(data_dir);
    settings.pregen.batch = 50;
    settings.pregen.issuer = "wx".into();
    settings.pregen.issuers.insert(
        "wx".into(),
        IssuerSettings::Wechat(WechatIssuerSettings {
            endpoint: api.endpoint(),
            app_id: APP_ID.into(),
            app_secret: Some(SecretString::from(APP_SECRET)),
            page: PAGE.into(),
            quota: QuotaSettings {
                calls: QUOTA,
                window_ms: WINDOW_MS,
            },
            concurrency: 8,
            ..WechatIssuerSettings::default()
        }),
    );
    if let Some(prefix) = shared_redis {
        settings.redis.url = Some(SecretString::from(Backends::from_env().redis_url));
        settings.redis.key_prefix = prefix.to_owned();
    }
    settings.validate().unwrap();
    settings
}

/// The bars of issue 18, as the stand-in saw the calls: none refused for quota, at most the
/// quota in any window (sliding, which covers aligned), and at least 95 % of `share` of the
/// quota used between the first call and the last.
fn assert_quota_kept_and_used(counts: &Counts, share: f64) {
    assert_eq!(counts.over_quota, 0, "no call over quota: {counts:?}");
    let allowed = (f64::from(QUOTA) * share).floor() as usize;
    assert!(
        counts.most_in_any_window(WINDOW_MS) <= allowed,
        "at most {allowed} calls in any window: {counts:?}"
    );
    let (Some(first), Some(last)) = (counts.call_times_ms.first(), counts.call_times_ms.last())
    else {
        panic!("no calls: {counts:?}");
    };
    let span = (last - first) as f64;
    assert!(
        span >= 2.0 * WINDOW_MS as f64,
        "the run spans windows: {counts:?}"
    );
    // n calls at the allowed rate span (n - 1) intervals.
    let used = (counts.call_times_ms.len() - 1) as f64 / (span / WINDOW_MS as f64 * allowed as f64);
    assert!(
        used >= 0.95,
        "{:.1} % of the quota used, not at least 95 %: {counts:?}",
        used * 100.0
    );
}

/// The stand-in at the tests' quota, with `window`.
async fn stand_in(window: WindowKind) -> WechatApi {
    WechatApi::start(Behaviour {
        quota: QUOTA,
        window_ms: WINDOW_MS,
        window,
        ..Behaviour::default()
    })
    .await
}

async fn pooled_codes(pool: EmbeddedPool) -> Vec<records::PoolRecord> {
    let reader = PoolReader::Embedded(pool.lane("wx"));
    let mut records = Vec::new();
    while let Some(delivery) = reader.take(std::time::Duration::ZERO).await.unwrap() {
        records.push(delivery.record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_to_an_aligned_quota_and_uses_it() {
    one_worker_keeps_to_the_quota_and_uses_it(WindowKind::Aligned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_to_a_sliding_quota_and_uses_it() {
    one_worker_keeps_to_the_quota_and_uses_it(WindowKind::Sliding).await;
}

async fn one_worker_keeps_to_the_quota_and_uses_it(window: WindowKind) {
    let api = stand_in(window).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let landed = pregen
        .fill(200, 1.0, &CancellationToken::new())
        .await
        .unwrap();

    let counts = api.counts();
    assert_eq!(landed, 200, "{counts:?}");
    assert_eq!(counts.images, 200);
    assert_eq!(counts.token_fetches, 1);
    assert_quota_kept_and_used(&counts, 1.0);

    // What landed is what the API drew: a PNG of the scene, and the scene is the request id.
    let records = pooled_codes(pool).await;
    assert_eq!(records.len(), 200);
    for record in records.iter().take(5) {
        assert_eq!(record.issuer, "wx");
        assert_eq!(record.content, record.request_id.to_string());
        let image = record.image.as_ref().unwrap();
        assert_eq!(image.media_type, "image/png");
        assert_eq!(tests::decode_qr(&image.bytes), record.content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_and_never_pooled() {
    let api = WechatApi::start(Behaviour {
        busy_every: 4,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let landed = pregen
        .fill(30, 1.0, &CancellationToken::new())
        .await
        .unwrap();

    let counts = api.counts();
    assert!(
        counts.busy >= 7,
        "a quarter of the calls answered busy: {counts:?}"
    );
    assert_eq!(
        landed, 30,
        "every busy code was retried until it was drawn: {counts:?}"
    );
    assert_eq!(counts.code_calls, counts.images + counts.busy);
    let records = pooled_codes(pool).await;
    assert_eq!(records.len(), 30);
    assert!(records.iter().all(|r| {
        r.image
            .as_ref()
            .is_some_and(|i| i.bytes.starts_with(b"\x89PNG"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_aligned_quota_and_one_token_through_redis() {
    three_workers_share_one_quota_and_one_token(WindowKind::Aligned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_sliding_quota_and_one_token_through_redis() {
    three_workers_share_one_quota_and_one_token(WindowKind::Sliding).await;
}

async fn three_workers_share_one_quota_and_one_token(window: WindowKind) {
    let api = stand_in(window).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("quota"));
    let settings = settings_for(&api, dir.path(), Some(&prefix));
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    // Three workers, each with its own quota, pacing and token holder, as three processes.
    let workers: Vec<Pregen> = (0..3)
        .map(|_| Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap())
        .collect();

    let never = CancellationToken::new();
    let fills = workers.iter().map(|worker| worker.fill(80, 1.0, &never));
    let landed: u64 = futures::future::try_join_all(fills)
        .await
        .unwrap()
        .iter()
        .sum();

    let counts = api.counts();
    assert_eq!(landed, 240, "{counts:?}");
    assert_eq!(
        counts.token_fetches, 1,
        "one holder fetched the token: {counts:?}"
    );
    assert_quota_kept_and_used(&counts, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_join_and_die_mid_run_leave_no_quota_unused() {
    let api = stand_in(WindowKind::Sliding).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("quota"));
    let settings = settings_for(&api, dir.path(), Some(&prefix));
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let worker = || {
        let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();
        move |codes: u64| async move { pregen.fill(codes, 1.0, &CancellationToken::new()).await }
    };
    let second = std::time::Duration::from_secs(1);

    // The first worker has far more to do than it will live for.
    let dies = tokio::spawn(worker()(1_000));
    tokio::time::sleep(second).await;
    let joins_early = tokio::spawn(worker()(60));
    tokio::time::sleep(second).await;
    // Killed mid-window, holding whatever slots it had reserved: nothing of it runs again.
    dies.abort();
    let calls_when_it_died = api.counts().code_calls;
    tokio::time::sleep(second / 2).await;
    let joins_late = tokio::spawn(worker()(80));
    let joined_at = api.counts().code_calls;
    let early = joins_early.await.unwrap().unwrap();
    let late = joins_late.await.unwrap().unwrap();

    let counts = api.counts();
    assert_eq!((early, late), (60, 80), "{counts:?}");
    assert!(
        calls_when_it_died > 60,
        "the first worker was busy: {counts:?}"
    );
    assert!(joined_at > calls_when_it_died, "{counts:?}");
    assert_quota_kept_and_used(&counts, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_a_quota_stop_calling_while_redis_is_cut_off_and_resume_by_themselves() {
    let api = stand_in(WindowKind::Sliding).await;
    let link = tests::FaultyLink::to(Backends::from_env().redis_address()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("quota-cut"));
    let mut settings = settings_for(&api, dir.path(), Some(&prefix));
    settings.redis.url = Some(SecretString::from(format!("redis://{}", link.address)));
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let fills: Vec<_> = (0..2)
        .map(|_| {
            let pregen =
                Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();
            tokio::spawn(async move { pregen.fill(60, 1.0, &CancellationToken::new()).await })
        })
        .collect();
    let second = std::time::Duration::from_secs(1);

    tokio::time::sleep(second).await;
    link.cut();
    // Slots reserved before the cut (at most two a worker) are still used.
    tokio::time::sleep(second / 4).await;
    let calls_when_cut = api.counts().code_calls;
    tokio::time::sleep(second * 2).await;
    let calls_while_cut = api.counts().code_calls - calls_when_cut;
    link.restore();
    let mut landed = 0;
    for fill in fills {
        landed += fill.await.unwrap().unwrap();
    }

    let counts = api.counts();
    assert!(calls_when_cut > 10, "the workers were busy: {counts:?}");
    assert_eq!(
        calls_while_cut, 0,
        "no worker calls on a schedule it cannot see: {counts:?}"
    );
    assert_eq!(
        landed, 120,
        "the fills finished once Redis was back: {counts:?}"
    );
    assert_eq!(counts.over_quota, 0, "{counts:?}");
    assert!(
        counts.most_in_any_window(WINDOW_MS) <= QUOTA as usize,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_at_peak_takes_no_more_than_its_share_of_the_quota() {
    let api = stand_in(WindowKind::Sliding).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool), &settings).unwrap();

    let landed = pregen
        .fill(45, 0.25, &CancellationToken::new())
        .await
        .unwrap();

    let counts = api.counts();
    assert_eq!(landed, 45, "{counts:?}");
    assert_quota_kept_and_used(&counts, 0.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_run_is_recovered_with_one_refresh() {
    let api = WechatApi::start(Behaviour {
        quota: 100,
        window_ms: WINDOW_MS,
        token_expires_after: 60,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("token"));
    let mut settings = settings_for(&api, dir.path(), Some(&prefix));
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.quota.calls = 100;
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let workers: Vec<Pregen> = (0..3)
        .map(|_| Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap())
        .collect();

    let never = CancellationToken::new();
    let fills = workers.iter().map(|worker| worker.fill(50, 1.0, &never));
    let landed: u64 = futures::future::try_join_all(fills)
        .await
        .unwrap()
        .iter()
        .sum();

    let counts = api.counts();
    assert_eq!(landed, 150, "{counts:?}");
    assert!(
        counts.token_rejected > 0,
        "the token did expire mid-run: {counts:?}"
    );
    assert_eq!(
        counts.token_fetches, 2,
        "the first token and one refresh: {counts:?}"
    );
    assert_eq!(counts.forced_token_fetches, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_stops_the_issuer_without_a_retry_storm() {
    let api = WechatApi::start(Behaviour {
        published_page: "pages/another/index".into(),
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let error = pregen
        .fill(200, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Misconfigured { code: 41030, .. })
        ),
        "{error:?}"
    );
    let calls = api.counts().code_calls;
    assert!(calls <= 8, "at most the calls already in flight: {calls}");

    // Stopped: asking again makes no call at all.
    assert!(
        pregen
            .fill(10, 1.0, &CancellationToken::new())
            .await
            .is_err()
    );
    assert_eq!(api.counts().code_calls, calls);
    assert!(
        pooled_codes(pool).await.is_empty(),
        "no error was pooled as an image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_stop_the_issuer_at_the_token() {
    let api = WechatApi::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.app_secret = Some(SecretString::from("not-the-secret"));
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool), &settings).unwrap();

    let error = pregen
        .fill(50, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Misconfigured { code: 40125, .. })
        ),
        "{error:?}"
    );
    let counts = api.counts();
    assert_eq!(counts.code_calls, 0);
    assert!(counts.token_fetches <= 8, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_against_an_api_that_keeps_failing_ends_with_an_error() {
    let api = WechatApi::start(Behaviour {
        busy_every: 1,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    settings.pregen.batch = 4;
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.max_retries = 1;
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let error = pregen
        .fill(1_000, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Failing { batches: 3, .. })
        ),
        "{error:?}"
    );
    let counts = api.counts();
    assert_eq!(
        counts.code_calls,
        3 * 4 * 2,
        "three batches of four codes, each tried twice: {counts:?}"
    );
    assert!(pooled_codes(pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_app_binds_a_mini_program_code_from_that_issuers_lane() {
    let api = WechatApi::start(Behaviour {
        quota: 1_000,
        window_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    settings.pregen.target_depth = 5;
    settings.pregen.low_water = 0;
    settings.binder.claim_wait_ms = 200;
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.quota = QuotaSettings {
            calls: 1_000,
            window_ms: 60_000,
        };
    }
    let app = TestApp::spawn(settings, Parts::ALL).await;

    // No issuer named: the default lane, which is the one pregen fills (`wx`).
    let response = app.bind(&json!({"params": {"listing": 7}})).await;
    assert_eq!(response.status(), 201);
    let code: Value = response.json().await.unwrap();
    assert_eq!(code["issuer"], "wx");
    assert!(code["image"].get("svg").is_none(), "{code}");
    let id = code["request_id"].as_str().unwrap();
    let png = app.get(&format!("/v1/codes/{id}/qr.png")).await;
    assert_eq!(png.status(), 200);
    assert_eq!(
        decode_qr(&png.bytes().await.unwrap()),
        id,
        "the PNG is the one the API made, carrying scene = request id"
    );
    let redrawn = app.get(&format!("/v1/codes/{id}/qr.png?scale=3")).await;
    assert_eq!(
        redrawn.status(),
        422,
        "a mini-program code cannot be redrawn"
    );
    let svg = app.get(&format!("/v1/codes/{id}/qr.svg")).await;
    assert_eq!(svg.status(), 404);
    assert_eq!(svg.headers()["content-type"], "application/problem+json");

    let named = app.bind(&json!({"params": {}, "issuer": "wx"})).await;
    assert_eq!(named.status(), 201);
    // The local lane holds nothing: a plain code is not handed out in place of it.
    let local = app.bind(&json!({"params": {}, "issuer": "local"})).await;
    assert_eq!(local.status(), 503);
    let unknown = app.bind(&json!({"params": {}, "issuer": "alipay"})).await;
    assert_eq!(unknown.status(), 422);
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["type"], "urn:qrpool:problem:unknown-issuer");

    assert_eq!(
        api.counts().images,
        5,
        "the API was called only to fill the lane"
    );

    // The operator's view: the console's pool page shows the quota this process used.
    let cookie = app.console_sign_in(app.key.as_deref().unwrap()).await;
    let page = tests::no_redirects()
        .get(app.url("/console/pool"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("1,000 calls per 60 s"), "{page}");
    assert!(page.contains("0.5 % (5 calls)"), "{page}");
    app.stop().await;
}
