//! The columns of a scans file, and turning events into them.
//!
//! One Parquet file holds one tenant's scans of one UTC day (the tenant and the day are in its
//! path, not in its columns), rows ordered by visitor digest: a query then counts distinct
//! visitors by noticing where the digest changes, with no hash set (see
//! [`crate::embedded::engine`]). Text columns are dictionary-encoded, so most of them cost a
//! byte or two per row and are read back as dictionaries.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use records::ScanEvent;

/// Columns whose values are text from a small set (dictionary-encoded), with whether a
/// value is always present.
pub const TEXT_COLUMNS: [(&str, bool); 18] = [
    ("kind", true),
    ("key", true),
    ("outcome", true),
    ("device", true),
    ("browser", false),
    ("browser_version", false),
    ("os", false),
    ("os_version", false),
    ("country", false),
    ("region", false),
    ("city", false),
    ("referrer", false),
    ("utm_source", false),
    ("utm_medium", false),
    ("utm_campaign", false),
    ("utm_term", false),
    ("utm_content", false),
    ("variant", false),
];

fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The schema of every scans file.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = vec![
            Field::new("id", DataType::FixedSizeBinary(16), false),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ];
        fields.extend(
            TEXT_COLUMNS
                .iter()
                .map(|(name, required)| Field::new(*name, dictionary(), !required)),
        );
        fields.extend([
            Field::new("bot", DataType::Boolean, false),
            Field::new("via_qr", DataType::Boolean, false),
            Field::new("click_id", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
            Field::new("visitor", DataType::UInt64, true),
        ]);
        Arc::new(Schema::new(fields))
    });
    Arc::clone(&SCHEMA)
}

/// The visitor digest (16 hex digits) as the number it spells.
pub fn visitor_number(visitor: Option<&str>) -> Option<u64> {
    visitor
        .filter(|text| text.len() == 16)
        .and_then(|text| u64::from_str_radix(text, 16).ok())
}

/// A text column's value of `event`.
fn text<'a>(event: &'a ScanEvent, column: &str) -> Option<&'a str> {
    match column {
        "kind" => Some(event.kind.as_str()),
        "key" => Some(&event.key),
        "outcome" => Some(&event.outcome),
        "device" => Some(event.device.as_str()),
        "browser" => event.browser.as_deref(),
        "browser_version" => event.browser_version.as_deref(),
        "os" => event.os.as_deref(),
        "os_version" => event.os_version.as_deref(),
        "country" => event.country.as_deref(),
        "region" => event.region.as_deref(),
        "city" => event.city.as_deref(),
        "referrer" => event.referrer.as_deref(),
        "utm_source" => event.utm_source.as_deref(),
        "utm_medium" => event.utm_medium.as_deref(),
        "utm_campaign" => event.utm_campaign.as_deref(),
        "utm_term" => event.utm_term.as_deref(),
        "utm_content" => event.utm_content.as_deref(),
        "variant" => event.variant.as_deref(),
        _ => None,
    }
}

/// Orders events as a file keeps them: by visitor (unknown last), then time.
pub fn sort_for_file(events: &mut [&ScanEvent]) {
    events.sort_by_key(|event| {
        let visitor = visitor_number(event.visitor.as_deref());
        (visitor.is_none(), visitor, event.at)
    });
}

/// `events` (already in file order) as one batch of [`schema`].
pub fn to_batch(events: &[&ScanEvent]) -> Result<RecordBatch, ArrowError> {
    let rows = events.len();
    let mut ids = FixedSizeBinaryBuilder::with_capacity(rows, 16);
    let mut times = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    for event in events {
        ids.append_value(event.id.0)?;
        times.append_value(event.at.timestamp_micros());
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(times.finish())];
    for (column, _) in TEXT_COLUMNS {
        let mut values = StringDictionaryBuilder::<Int32Type>::new();
        for event in events {
            match text(event, column) {
                Some(value) => values.append_value(value),
                None => values.append_null(),
            }
        }
        columns.push(Arc::new(values.finish()));
    }
    let mut bots = BooleanBuilder::with_capacity(rows);
    let mut printed = BooleanBuilder::with_capacity(rows);
    let mut clicks = StringBuilder::new();
    let mut tags = ListBuilder::new(StringBuilder::new());
    let mut visitors = UInt64Builder::with_capacity(rows);
    for event in events {
        bots.append_value(event.bot);
        printed.append_value(event.via_qr);
        clicks.append_option(event.click_id.as_deref());
        tags.append_value(event.tags.iter().map(Some));
        visitors.append_option(visitor_number(event.visitor.as_deref()));
    }
    columns.extend([
        Arc::new(bots.finish()) as ArrayRef,
        Arc::new(printed.finish()),
        Arc::new(clicks.finish()),
        Arc::new(tags.finish()),
        Arc::new(visitors.finish()),
    ]);
    RecordBatch::try_new(schema(), columns)
}
