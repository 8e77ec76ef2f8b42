//! The columns of a scans file, and turning events into them.
//!
//! One Parquet file holds one tenant's scans of one UTC day (the tenant and the day are in its
//! path, not in its columns), rows ordered by visitor digest: a query then counts distinct
//! visitors by noticing where the digest changes, with no hash set (see
//! [`crate::embedded::engine`]). Text columns are written as plain strings and dictionary-
//! encoded by Parquet (one dictionary pass, not two), and read back as Arrow dictionaries
//! ([`read_schema`]), so a group or a filter is decided once per distinct value.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::line::Line;

/// How a text column reads its value from a line.
type Text = for<'a> fn(&'a Line<'_>) -> Option<&'a str>;

/// Columns whose values are text from a small set: name, whether a value is always present,
/// and how a line gives it.
pub const TEXT_COLUMNS: [(&str, bool, Text); 18] = [
    ("kind", true, |e| Some(&e.kind)),
    ("key", true, |e| Some(&e.key)),
    ("outcome", true, |e| Some(&e.outcome)),
    ("device", true, |e| Some(&e.device)),
    ("browser", false, |e| e.browser.as_deref()),
    ("browser_version", false, |e| e.browser_version.as_deref()),
    ("os", false, |e| e.os.as_deref()),
    ("os_version", false, |e| e.os_version.as_deref()),
    ("country", false, |e| e.country.as_deref()),
    ("region", false, |e| e.region.as_deref()),
    ("city", false, |e| e.city.as_deref()),
    ("referrer", false, |e| e.referrer.as_deref()),
    ("utm_source", false, |e| e.utm_source.as_deref()),
    ("utm_medium", false, |e| e.utm_medium.as_deref()),
    ("utm_campaign", false, |e| e.utm_campaign.as_deref()),
    ("utm_term", false, |e| e.utm_term.as_deref()),
    ("utm_content", false, |e| e.utm_content.as_deref()),
    ("variant", false, |e| e.variant.as_deref()),
];

fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn schema_with(text: fn() -> DataType) -> SchemaRef {
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
            .map(|(name, required, _)| Field::new(*name, text(), !required)),
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
}

/// The schema files are written with (text columns as plain strings).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_with(|| DataType::Utf8));
    Arc::clone(&SCHEMA)
}

/// The schema queries read files with: text columns as dictionaries.
pub fn read_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_with(dictionary));
    Arc::clone(&SCHEMA)
}

/// How files are written. Statistics per column chunk only (per page they cost three times
/// the encoding, and nothing reads them); the columns that never repeat (ids, times, click
/// ids) without a dictionary; visitor digests, in file order, delta-encoded.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(1 << 20))
        // Keys and cities have many values: a larger dictionary page keeps them encoded.
        .set_dictionary_page_size_limit(4 << 20)
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .set_column_compression(ColumnPath::from("id"), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(ColumnPath::from("at"), false)
        .set_column_dictionary_enabled(ColumnPath::from("click_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("visitor"), false)
        .set_column_encoding(ColumnPath::from("visitor"), Encoding::DELTA_BINARY_PACKED)
        .set_created_by("qrpool".into())
        .build()
}

/// The visitor digest (16 hex digits) as the number it spells.
pub fn visitor_number(visitor: Option<&str>) -> Option<u64> {
    visitor
        .filter(|text| text.len() == 16)
        .and_then(|text| u64::from_str_radix(text, 16).ok())
}

/// Orders lines as a file keeps them: by visitor (unknown last), then time.
pub fn sort_for_file(lines: &mut [&Line<'_>]) {
    lines.sort_unstable_by_key(|line| (line.visitor.is_none(), line.visitor, line.at));
}

/// `lines` (already in file order) as one batch of [`schema`].
pub fn to_batch(lines: &[&Line<'_>]) -> Result<RecordBatch, ArrowError> {
    let rows = lines.len();
    let mut ids = FixedSizeBinaryBuilder::with_capacity(rows, 16);
    let mut times = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    for line in lines {
        ids.append_value(line.id)?;
        times.append_value(line.at);
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(times.finish())];
    for (_, _, text) in TEXT_COLUMNS {
        let mut values = StringBuilder::with_capacity(rows, rows * 8);
        for line in lines {
            values.append_option(text(line));
        }
        columns.push(Arc::new(values.finish()));
    }
    let mut bots = BooleanBuilder::with_capacity(rows);
    let mut printed = BooleanBuilder::with_capacity(rows);
    let mut clicks = StringBuilder::new();
    let mut tags = ListBuilder::new(StringBuilder::new());
    let mut visitors = UInt64Builder::with_capacity(rows);
    for line in lines {
        bots.append_value(line.bot);
        printed.append_value(line.via_qr);
        clicks.append_option(line.click_id.as_deref());
        tags.append_value(line.tags.iter().map(|tag| Some(&**tag)));
        visitors.append_option(line.visitor);
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
