//! The obvious answer to a [`ScansQuery`], computed from events in memory: every event
//! checked against the query, a hash set of (day, visitor) per cell. Slow and plainly
//! right; the engines are tested against it.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;

use records::ScanEvent;

use crate::embedded::schema::visitor_number;
use crate::query::{Answer, Dimension, FilterOn, Granularity, Row, ScansQuery, Totals};

/// `dimension`'s value in `event`, as the API shows it.
pub fn value(event: &ScanEvent, dimension: Dimension) -> Option<String> {
    let text = |value: &Option<String>| value.clone();
    match dimension {
        Dimension::Country => text(&event.country),
        Dimension::Region => text(&event.region),
        Dimension::City => text(&event.city),
        Dimension::Device => Some(event.device.as_str().to_owned()),
        Dimension::Browser => text(&event.browser),
        Dimension::Os => text(&event.os),
        Dimension::Referrer => text(&event.referrer),
        Dimension::ViaQr => Some(event.via_qr.to_string()),
        Dimension::Variant => text(&event.variant),
        Dimension::Key => Some(event.key.clone()),
        Dimension::Kind => Some(event.kind.as_str().to_owned()),
        Dimension::Outcome => Some(event.outcome.to_string()),
        Dimension::UtmSource => text(&event.utm_source),
        Dimension::UtmMedium => text(&event.utm_medium),
        Dimension::UtmCampaign => text(&event.utm_campaign),
    }
}

/// Whether `event` is one `query` counts.
pub fn counts(query: &ScansQuery, event: &ScanEvent) -> bool {
    event.tenant.as_deref() == Some(query.tenant.as_str())
        && event.at >= query.from
        && event.at < query.to
        && (query.bots || !event.bot)
        && query.filters.iter().all(|filter| match filter.on {
            FilterOn::Tag => event.tags.iter().any(|tag| filter.values.contains(tag)),
            FilterOn::Dimension(dimension) => {
                value(event, dimension).is_some_and(|value| filter.values.contains(&value))
            }
        })
}

/// The answer to `query` from `events`.
pub fn answer(query: &ScansQuery, events: &[ScanEvent]) -> Answer {
    type Cell = (Option<chrono::DateTime<chrono::Utc>>, Option<String>);
    let mut scans: HashMap<Cell, u64> = HashMap::new();
    let mut visitors: HashMap<Cell, HashSet<(NaiveDate, u64)>> = HashMap::new();
    let mut all_visitors: HashSet<(NaiveDate, u64)> = HashSet::new();
    let mut totals = Totals::default();
    for event in events.iter().filter(|event| counts(query, event)) {
        let bucket = (query.granularity != Granularity::None).then(|| query.bucket_of(event.at));
        let group = query.group_by.and_then(|dimension| value(event, dimension));
        let cell = (bucket, group);
        *scans.entry(cell.clone()).or_default() += 1;
        totals.scans += 1;
        let set = visitors.entry(cell).or_default();
        if let Some(visitor) = visitor_number(event.visitor.as_deref()) {
            set.insert((event.at.date_naive(), visitor));
            all_visitors.insert((event.at.date_naive(), visitor));
        }
    }
    totals.visitors = all_visitors.len() as u64;
    let mut rows: Vec<Row> = scans
        .into_iter()
        .map(|(cell, scans)| Row {
            visitors: visitors.get(&cell).map_or(0, |set| set.len() as u64),
            bucket: cell.0,
            group: cell.1,
            scans,
        })
        .collect();
    query.sort(&mut rows);
    Answer { rows, totals }
}
