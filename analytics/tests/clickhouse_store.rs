//! The ClickHouse store on a real ClickHouse engine (chDB behind `scripts/chdb-server`), over
//! the same events and questions as the embedded store, held to the same answers.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use analytics::clickhouse::ClickHouseStore;
use analytics::query::{Dimension, Filter, FilterOn, Granularity, ScansQuery};
use analytics::{reference, synthetic};
use records::{ScanEvent, Tenant};

/// A chDB server for one test; killed when dropped, then its data folder removed.
struct Chdb {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Chdb {
    fn start() -> Chdb {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chdb-server");
        let python = std::env::var("QRPOOL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let data = tempfile::Builder::new()
            .prefix("chdb-")
            .tempdir()
            .expect("a temporary folder");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--path")
            .arg(data.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs scripts/chdb-server (scripts/test installs chdb)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server says where it listens");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("chdb-server did not start: {line:?} (is `chdb` installed?)"))
            .to_owned();
        Chdb {
            child,
            url: format!("http://{address}"),
            _data: data,
        }
    }

    async fn store(&self, database: &str) -> ClickHouseStore {
        let settings = config::ClickHouseSettings {
            url: self.url.clone(),
            database: database.to_owned(),
            ..Default::default()
        };
        ClickHouseStore::connect(&settings)
            .await
            .expect("the schema applies")
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 23).unwrap()
}

fn events(count: usize, seed: u64) -> Vec<ScanEvent> {
    synthetic::events(&synthetic::Shape {
        events: count,
        tenants: 3,
        keys: 40,
        first_day: first_day(),
        days: 4,
        seed,
    })
}

fn random_query(rng: &mut StdRng, events: &[ScanEvent]) -> ScansQuery {
    let zones: [Tz; 4] = [
        Tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::Asia::Kolkata,
        chrono_tz::America::New_York,
    ];
    let start: DateTime<Utc> = first_day().and_hms_opt(0, 0, 0).unwrap().and_utc();
    // Half the ranges on whole hours (the rollup may answer), half anywhere.
    let (from, to) = if rng.random_bool(0.5) {
        let a = start + Duration::hours(rng.random_range(-5..90));
        (a, a + Duration::hours(rng.random_range(1..60)))
    } else {
        let a = start + Duration::minutes(rng.random_range(-300..5_500));
        (a, a + Duration::minutes(rng.random_range(1..3_000)))
    };
    let granularity = [
        Granularity::None,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Week,
        Granularity::Month,
    ][rng.random_range(0..5)];
    let group_by = rng
        .random_bool(0.75)
        .then(|| Dimension::ALL[rng.random_range(0..Dimension::ALL.len())]);
    let mut filters: Vec<Filter> = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        if rng.random_bool(0.15) {
            filters.push(Filter {
                on: FilterOn::Tag,
                values: vec!["spring".into()],
            });
            continue;
        }
        let dimension = Dimension::ALL[rng.random_range(0..Dimension::ALL.len())];
        let sample = &events[rng.random_range(0..events.len())];
        if let Some(value) = reference::value(sample, dimension)
            && filters
                .iter()
                .all(|f| f.on != FilterOn::Dimension(dimension))
        {
            filters.push(Filter {
                on: FilterOn::Dimension(dimension),
                values: vec![value],
            });
        }
    }
    ScansQuery {
        tenant: Tenant::parse(&synthetic::tenant(rng.random_range(0..3))).unwrap(),
        from,
        to,
        tz: zones[rng.random_range(0..zones.len())],
        granularity,
        group_by,
        filters,
        bots: rng.random_bool(0.3),
        limit: if rng.random_bool(0.5) {
            rng.random_range(1..6)
        } else {
            100
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_answers_as_the_reference_does_and_duplicates_count_once() {
    let chdb = Chdb::start();
    let store = chdb.store("qrpool_parity").await;
    let events = events(8_000, 21);
    for chunk in events.chunks(2_000) {
        store.insert(chunk).await.expect("inserted");
    }
    // An at-least-once stream delivers some events again, in another insert.
    store
        .insert(&events[1_000..1_600])
        .await
        .expect("inserted again");
    let mut rng = StdRng::seed_from_u64(5);
    let mut answered = 0;
    for _ in 0..120 {
        let query = random_query(&mut rng, &events);
        let expected = reference::answer(&query, &events);
        let got = store
            .scans(&query)
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e:?}"));
        assert_eq!(got, expected, "{query:?}");
        answered += usize::from(expected.totals.scans > 0);
    }
    assert!(answered > 60, "{answered} of 120 queries had scans");
    // A whole-hour range grouped by country is read from the rollup, and agrees too.
    let query = ScansQuery {
        tenant: Tenant::parse(&synthetic::tenant(0)).unwrap(),
        from: first_day().and_hms_opt(0, 0, 0).unwrap().and_utc(),
        to: (first_day() + Duration::days(4))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc(),
        tz: chrono_tz::Europe::Berlin,
        granularity: Granularity::Day,
        group_by: Some(Dimension::Country),
        filters: vec![Filter {
            on: FilterOn::Dimension(Dimension::ViaQr),
            values: vec!["true".into()],
        }],
        bots: false,
        limit: 100,
    };
    assert_eq!(
        store.scans(&query).await.unwrap(),
        reference::answer(&query, &events)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clicks_retention_and_erasure_on_clickhouse() {
    let chdb = Chdb::start();
    let store = chdb.store("qrpool_upkeep").await;
    let mut events = events(2_000, 8);
    // A few tracked link scans with click ids.
    for (index, event) in events
        .iter_mut()
        .enumerate()
        .filter(|(_, e)| e.variant.is_some())
        .take(20)
    {
        event.click_id = Some(format!("click{index:04}"));
    }
    store.insert(&events).await.unwrap();
    let tracked: Vec<&ScanEvent> = events.iter().filter(|e| e.click_id.is_some()).collect();
    let sample = tracked[0];
    let wanted: HashSet<String> = tracked
        .iter()
        .filter(|e| e.key == sample.key && e.tenant == sample.tenant)
        .map(|e| e.click_id.clone().unwrap())
        .chain(["nobody".to_owned()])
        .collect();
    let found = store
        .click_variants(
            sample.tenant.as_deref().unwrap(),
            &sample.key,
            first_day().and_hms_opt(0, 0, 0).unwrap().and_utc(),
            (first_day() + Duration::days(5))
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc(),
            &wanted,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), wanted.len() - 1);
    assert_eq!(
        found[sample.click_id.as_ref().unwrap()],
        *sample.variant.as_ref().unwrap()
    );

    let dropped = store
        .drop_days_before(first_day() + Duration::days(2))
        .await
        .unwrap();
    assert_eq!(dropped.len(), 2);
    let tenant = synthetic::tenant(1);
    store.erase_tenant(&tenant).await.unwrap();
    let kept: Vec<ScanEvent> = events
        .into_iter()
        .filter(|e| e.at.date_naive() >= first_day() + Duration::days(2))
        .filter(|e| e.tenant.as_deref() != Some(tenant.as_str()))
        .collect();
    for index in 0..3 {
        for granularity in [Granularity::None, Granularity::Hour] {
            let query = ScansQuery {
                tenant: Tenant::parse(&synthetic::tenant(index)).unwrap(),
                from: first_day().and_hms_opt(0, 0, 0).unwrap().and_utc(),
                to: (first_day() + Duration::days(5))
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                tz: Tz::UTC,
                granularity,
                group_by: Some(Dimension::Device),
                filters: Vec::new(),
                bots: true,
                limit: 100,
            };
            assert_eq!(
                store.scans(&query).await.unwrap(),
                reference::answer(&query, &kept),
                "{query:?}"
            );
        }
    }
}
