//! The embedded store against the plainly right answer: events written as the scan writer
//! writes them, ingested in several rounds (so partitions have several files, some merged),
//! then many random queries, each answered by the engine and by `reference`.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use analytics::embedded::column_cache::{ColumnCache, FileId};
use analytics::embedded::ingest::Ingest;
use analytics::embedded::{EmbeddedStore, live_files};
use analytics::query::{Dimension, Filter, FilterOn, Granularity, ScansQuery};
use analytics::{reference, synthetic};
use records::{ScanEvent, Tenant};

fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 23).unwrap()
}

fn shape(events: usize, seed: u64) -> synthetic::Shape {
    synthetic::Shape {
        events,
        tenants: 4,
        keys: 60,
        first_day: first_day(),
        days: 5,
        seed,
    }
}

/// Appends `events` to the daily files as the scan writer does.
fn append(events_dir: &Path, events: &[ScanEvent]) {
    std::fs::create_dir_all(events_dir).unwrap();
    for event in events {
        let path = events_dir.join(format!("{}.jsonl", event.at.date_naive()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let mut line = Vec::new();
        event.write_json(&mut line);
        line.push(b'\n');
        file.write_all(&line).unwrap();
    }
}

/// A tenant's six days from the first, in UTC, bots counted.
fn whole_range(tenant: usize, granularity: Granularity, group_by: Option<Dimension>) -> ScansQuery {
    ScansQuery {
        tenant: Tenant::parse(&synthetic::tenant(tenant)).unwrap(),
        from: first_day().and_hms_opt(0, 0, 0).unwrap().and_utc(),
        to: (first_day() + Duration::days(6))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc(),
        tz: Tz::UTC,
        granularity,
        group_by,
        filters: Vec::new(),
        bots: true,
        limit: 100,
    }
}

fn random_query(rng: &mut StdRng, events: &[ScanEvent]) -> ScansQuery {
    let zones: [Tz; 5] = [
        Tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::Asia::Kolkata,
        chrono_tz::America::New_York,
        chrono_tz::Asia::Shanghai,
    ];
    let start: DateTime<Utc> = first_day().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let (from, to) = if rng.random_bool(0.3) {
        (start - Duration::days(1), start + Duration::days(7))
    } else {
        let a = start + Duration::minutes(rng.random_range(-600..7_800));
        let b = a + Duration::minutes(rng.random_range(1..4_000));
        (a, b)
    };
    let granularity = [
        Granularity::None,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Week,
        Granularity::Month,
    ][rng.random_range(0..5)];
    let group_by = rng
        .random_bool(0.7)
        .then(|| Dimension::ALL[rng.random_range(0..Dimension::ALL.len())]);
    let mut filters = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        let sample = &events[rng.random_range(0..events.len())];
        if rng.random_bool(0.2) {
            filters.push(Filter {
                on: FilterOn::Tag,
                values: vec!["spring".into()],
            });
            continue;
        }
        let dimension = Dimension::ALL[rng.random_range(0..Dimension::ALL.len())];
        let Some(value) = reference::value(sample, dimension) else {
            continue;
        };
        let mut values = vec![value];
        if rng.random_bool(0.3)
            && let Some(other) =
                reference::value(&events[rng.random_range(0..events.len())], dimension)
        {
            values.push(other);
        }
        if filters
            .iter()
            .all(|f: &Filter| f.on != FilterOn::Dimension(dimension))
        {
            filters.push(Filter {
                on: FilterOn::Dimension(dimension),
                values,
            });
        }
    }
    ScansQuery {
        tenant: Tenant::parse(&synthetic::tenant(rng.random_range(0..4))).unwrap(),
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

#[test]
fn the_engine_answers_as_the_reference_does_before_and_after_merges() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics")).unwrap();
    let events = synthetic::events(&shape(30_000, 7));
    // Ingested in rounds: several files per partition, and the last day's still unmerged.
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    for chunk in events.chunks(1_500) {
        append(&events_dir, chunk);
        let round = ingest.round().unwrap();
        assert_eq!(round.skipped, 0);
    }
    let mut rng = StdRng::seed_from_u64(11);
    // The same files with decoded columns kept between queries: room for all, and room for
    // a few (columns go and come back, and a file larger than its share of the budget is
    // streamed a batch at a time instead of kept).
    let cached = store.clone().with_query_cache(64 << 20);
    let cramped = store.clone().with_query_cache(256 << 10);
    let check = |rng: &mut StdRng, rounds: usize| {
        let mut answered_something = 0;
        for _ in 0..rounds {
            let query = random_query(rng, &events);
            let expected = reference::answer(&query, &events);
            let answered = store.query(&query).unwrap();
            assert_eq!(answered, expected, "{query:?}");
            assert_eq!(cached.query(&query).unwrap(), expected, "cached: {query:?}");
            assert_eq!(
                cramped.query(&query).unwrap(),
                expected,
                "cramped: {query:?}"
            );
            answered_something += usize::from(expected.totals.scans > 0);
        }
        // Most random questions have an answer: the comparison is not of empty sets.
        assert!(
            answered_something * 2 > rounds,
            "{answered_something} of {rounds}"
        );
    };
    check(&mut rng, 150);
    // Merged: during the day (parts into L1), and the days that are over (whole).
    let today = first_day() + Duration::days(4);
    let done = store.compact(today).unwrap();
    assert!(done.merges > 0, "{done:?}");
    check(&mut rng, 150);
}

#[test]
fn a_file_too_large_for_its_share_of_the_query_cache_is_streamed_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics")).unwrap();
    append(&events_dir, &synthetic::events(&shape(8_000, 5)));
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    while ingest.round().unwrap().more {}
    let partition = store.partition_dir(first_day(), &synthetic::tenant(0));
    let (live, _) = live_files(&partition).unwrap();
    let file = FileId::of(&live.first().expect("a file of the first day").1).unwrap();
    let columns = ["visitor", "at"];
    let rows_through = |cache: &ColumnCache| {
        let mut rows = 0;
        cache
            .for_each_batch(&file, &columns, 64, |batch| {
                rows += batch.num_rows();
                Ok(())
            })
            .unwrap();
        rows
    };
    let roomy = ColumnCache::new(1 << 30);
    let rows = rows_through(&roomy);
    assert!(rows > 64, "{rows} rows: more than one batch");
    assert!(roomy.kept_bytes() > 0, "a small file is kept");
    assert_eq!(
        rows_through(&roomy),
        rows,
        "and read back from memory whole"
    );
    // A sixteenth of this budget is 8 bytes a row; two columns of the file take 16.
    let cramped = ColumnCache::new(rows as u64 * 8 * 16);
    assert_eq!(rows_through(&cramped), rows, "every row, a batch at a time");
    assert_eq!(cramped.kept_bytes(), 0, "nothing kept");
}

#[test]
fn a_question_asked_again_reads_only_the_files_written_since() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics"))
        .unwrap()
        .with_query_cache(64 << 20);
    // Every round writes a file in each partition: a day's answers keep their visitors for
    // the files that follow from the first (as today's do), and all are read from the start.
    let events = synthetic::events(&shape(12_000, 3));
    let round_of = |index: usize| index % 6;
    let mut earlier = Vec::new();
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    for round in 0..5 {
        let chunk: Vec<ScanEvent> = (0..events.len())
            .filter(|index| round_of(*index) == round)
            .map(|index| events[index].clone())
            .collect();
        append(&events_dir, &chunk);
        ingest.round().unwrap();
        earlier.extend(chunk);
    }
    let later: Vec<ScanEvent> = (0..events.len())
        .filter(|index| round_of(*index) == 5)
        .map(|index| events[index].clone())
        .collect();
    let tenant = synthetic::tenant(0);
    let files = || -> u64 {
        (0..6)
            .map(|day| {
                let partition = store.partition_dir(first_day() + Duration::days(day), &tenant);
                live_files(&partition).unwrap().0.len() as u64
            })
            .sum()
    };
    // As the console asks: the last 30 days up to the moment of asking, by hour and by a
    // dimension, and the same again a little later.
    let asked_at = |at: DateTime<Utc>, granularity, group_by| ScansQuery {
        from: at - Duration::days(30),
        to: at,
        ..whole_range(0, granularity, group_by)
    };
    let questions = [
        (Granularity::Hour, None),
        (Granularity::None, Some(Dimension::Country)),
    ];
    let ask = |at: DateTime<Utc>, seen: &[ScanEvent]| {
        for (granularity, group_by) in questions {
            let query = asked_at(at, granularity, group_by);
            assert_eq!(
                store.query(&query).unwrap(),
                reference::answer(&query, seen),
                "{query:?}"
            );
        }
    };
    let now = earlier.iter().map(|event| event.at).max().unwrap() + Duration::seconds(1);
    let before = files();
    assert_eq!(before, 5 * 5, "five days, a file a round");
    ask(now, &earlier);
    assert_eq!(
        store.file_answers_read(),
        2 * before,
        "every file once a question"
    );
    assert!(store.kept_answer_bytes() > 0);
    ask(now + Duration::minutes(1), &earlier);
    assert_eq!(
        store.file_answers_read(),
        2 * before,
        "asked again a minute later: every file's answers kept"
    );
    append(&events_dir, &later);
    ingest.round().unwrap();
    let written = files() - before;
    assert_eq!(written, 5);
    ask(events.last().unwrap().at + Duration::seconds(1), &events);
    assert_eq!(
        store.file_answers_read(),
        2 * (before + written),
        "only the new files read"
    );
}

#[test]
fn a_merge_hands_the_answers_of_its_file_to_the_questions_asked_lately() {
    use analytics::embedded::compact::PARTS_BEFORE_MERGE;
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics"))
        .unwrap()
        .with_query_cache(64 << 20);
    // One tenant's day, written as that day's parts, a round at a time; the merges treat it
    // as today (merged by size tiers, not yet into one file).
    let day = first_day();
    let tenant = synthetic::tenant(0);
    let events = synthetic::events(&synthetic::Shape {
        tenants: 1,
        days: 1,
        ..shape(PARTS_BEFORE_MERGE * 2 * 150, 9)
    });
    let rounds: Vec<&[ScanEvent]> = events.chunks(150).collect();
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    let mut seen = Vec::new();
    let mut ingest_rounds = |rounds: &[&[ScanEvent]], seen: &mut Vec<ScanEvent>| {
        for round in rounds {
            append(&events_dir, round);
            ingest.round().unwrap();
            seen.extend_from_slice(round);
        }
    };
    let partition = store.partition_dir(day, &tenant);
    let files = || live_files(&partition).unwrap().0.len();
    ingest_rounds(&rounds[..PARTS_BEFORE_MERGE], &mut seen);
    store.compact_partition(day, &tenant, day).unwrap();
    ingest_rounds(
        &rounds[PARTS_BEFORE_MERGE..PARTS_BEFORE_MERGE + 1],
        &mut seen,
    );
    assert_eq!(files(), 2, "a merged file and a part");
    // Asked as the console asks (up to the moment of asking, by hour) and over a fixed range.
    let questions = || {
        [
            ScansQuery {
                from: day.and_hms_opt(0, 0, 0).unwrap().and_utc(),
                to: Utc::now(),
                ..whole_range(0, Granularity::Hour, None)
            },
            whole_range(0, Granularity::None, Some(Dimension::Country)),
        ]
    };
    let ask = |seen: &[ScanEvent]| {
        for query in questions() {
            assert_eq!(
                store.query(&query).unwrap(),
                reference::answer(&query, seen),
                "{query:?}"
            );
        }
    };
    ask(&seen);
    let read = store.file_answers_read();
    assert_eq!(read, 2 * 2, "each file once a question");
    let kept = store.kept_answer_bytes();
    // The next parts fill level 0 again and are merged: the new file takes their place.
    ingest_rounds(
        &rounds[PARTS_BEFORE_MERGE + 1..2 * PARTS_BEFORE_MERGE],
        &mut seen,
    );
    ask(&seen);
    let read = store.file_answers_read();
    assert_eq!(
        read,
        4 + 2 * (PARTS_BEFORE_MERGE as u64 - 1),
        "the new parts read"
    );
    let before_merge = store.kept_answer_bytes();
    assert!(before_merge > kept);
    store.compact_partition(day, &tenant, day).unwrap();
    assert_eq!(files(), 2, "two merged files");
    ask(&seen);
    assert_eq!(
        store.file_answers_read(),
        read,
        "the merged file's answers were kept before anyone asked"
    );
    // And what was kept of the parts it merged is gone, not left to crowd the budget.
    assert!(
        store.kept_answer_bytes() < before_merge,
        "{} of {before_merge}",
        store.kept_answer_bytes()
    );
}

#[test]
fn a_crash_between_files_and_checkpoint_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let root = dir.path().join("analytics");
    let store = EmbeddedStore::open(&root).unwrap();
    let events = synthetic::events(&shape(4_000, 3));
    let (first, second) = events.split_at(2_000);
    append(&events_dir, first);
    Ingest::open(store.clone(), &events_dir)
        .unwrap()
        .round()
        .unwrap();
    // The second round's files are written, but its checkpoint is lost (a crash before
    // the rename): the old checkpoint is put back.
    let checkpoint = std::fs::read(root.join("ingest.json")).unwrap();
    append(&events_dir, second);
    Ingest::open(store.clone(), &events_dir)
        .unwrap()
        .round()
        .unwrap();
    std::fs::write(root.join("ingest.json"), checkpoint).unwrap();
    // Opening again deletes the orphans, and the round writes them once.
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    let round = ingest.round().unwrap();
    assert_eq!(
        round.events as usize,
        second.iter().filter(|e| e.tenant.is_some()).count()
    );
    let query = whole_range(0, Granularity::Day, Some(Dimension::Country));
    assert_eq!(
        store.query(&query).unwrap(),
        reference::answer(&query, &events)
    );
    // A merge interrupted after writing its file: the parts it covers are not counted.
    let day = first_day() + Duration::days(1);
    store
        .compact_partition(day, &synthetic::tenant(0), day + Duration::days(1))
        .unwrap();
    assert_eq!(
        store.query(&query).unwrap(),
        reference::answer(&query, &events)
    );
}

#[test]
fn retention_drops_days_and_erasure_drops_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics")).unwrap();
    let events = synthetic::events(&shape(3_000, 5));
    append(&events_dir, &events);
    Ingest::open(store.clone(), &events_dir)
        .unwrap()
        .round()
        .unwrap();
    let dropped = store
        .drop_days_before(first_day() + Duration::days(2))
        .unwrap();
    assert_eq!(dropped.len(), 2);
    let tenant = synthetic::tenant(1);
    assert!(store.erase_tenant(&tenant).unwrap() > 0);
    let kept: Vec<ScanEvent> = events
        .iter()
        .filter(|e| e.at.date_naive() >= first_day() + Duration::days(2))
        .filter(|e| e.tenant.as_deref() != Some(tenant.as_str()))
        .cloned()
        .collect();
    for index in 0..4 {
        let query = whole_range(index, Granularity::None, None);
        assert_eq!(
            store.query(&query).unwrap(),
            reference::answer(&query, &kept)
        );
    }
}

#[test]
fn a_round_that_cannot_write_changes_nothing_and_the_next_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let root = dir.path().join("analytics");
    let store = EmbeddedStore::open(&root).unwrap();
    let events = synthetic::events(&shape(2_000, 9));
    append(&events_dir, &events);
    // Where the first day's folder goes, a file: the round fails part-way (as a full or
    // failing disk makes it fail).
    let mut ingest = Ingest::open(store.clone(), &events_dir).unwrap();
    let blocked = store.day_dir(first_day());
    std::fs::write(&blocked, b"in the way").unwrap();
    assert!(ingest.round().is_err());
    assert!(!root.join("ingest.json").exists(), "nothing was committed");
    // A restart meanwhile would not trip over it either.
    Ingest::open(store.clone(), &events_dir).unwrap();
    std::fs::remove_file(&blocked).unwrap();
    // The next round takes it all, once.
    let mut taken = 0;
    loop {
        let round = ingest.round().unwrap();
        taken += round.events;
        if !round.more {
            break;
        }
    }
    assert_eq!(taken as usize, events.len());
    let query = whole_range(0, Granularity::Day, None);
    assert_eq!(
        store.query(&query).unwrap(),
        reference::answer(&query, &events)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_the_bound_wait_their_turn_and_an_abandoned_scan_stops() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics"))
        .unwrap()
        .with_concurrent_queries(1);
    let events = synthetic::events(&shape(4_000, 5));
    append(&events_dir, &events);
    Ingest::open(store.clone(), &events_dir)
        .unwrap()
        .round()
        .unwrap();
    let query = whole_range(0, Granularity::Day, Some(Dimension::Country));
    let expected = reference::answer(&query, &events);
    let api = analytics::Store::Embedded(store.clone());

    // The one turn is taken: the next query waits for it, then answers.
    let held = std::sync::Arc::clone(store.turns())
        .acquire_owned()
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (api, query) = (api.clone(), query.clone());
        async move { api.scans(query).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a query ran beside the one holding the turn"
    );
    drop(held);
    assert_eq!(waiting.await.unwrap().unwrap(), expected);

    // A scan whose asker has gone reads no further.
    let abandoned = std::sync::atomic::AtomicBool::new(true);
    assert!(matches!(
        store.query_unless(&query, &abandoned),
        Err(analytics::AnalyticsError::Abandoned)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_request_is_dropped_stops_reading() {
    use std::future::Future as _;

    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("scans");
    let store = EmbeddedStore::open(&dir.path().join("analytics"))
        .unwrap()
        .with_concurrent_queries(1);
    // A year of one tenant: a day is a partition, and a scan checks between partitions
    // whether its asker is still there.
    let days = 365;
    let events = synthetic::events(&synthetic::Shape {
        events: 36_500,
        tenants: 1,
        keys: 20,
        first_day: first_day(),
        days,
        seed: 9,
    });
    append(&events_dir, &events);
    Ingest::open(store.clone(), &events_dir)
        .unwrap()
        .round()
        .unwrap();
    let mut query = whole_range(0, Granularity::Day, Some(Dimension::Country));
    query.to = query.from + Duration::days(i64::from(days));
    let api = analytics::Store::Embedded(store.clone());

    // The request is polled until its scan has started, then dropped, as axum drops the
    // handler's future of a request past its time limit or of a client that went away.
    let mut request = Box::pin(api.scans(query));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(request.as_mut().poll(&mut context).is_pending());
    drop(request);
    // The turn comes back once the scan has stopped.
    drop(
        std::sync::Arc::clone(store.turns())
            .acquire_owned()
            .await
            .unwrap(),
    );
    let read = store.file_answers_read();
    assert!(
        read < u64::from(days) / 2,
        "{read} of {days} days read after the request was dropped"
    );
}
