//! The distributed analytics store: ClickHouse, through the official `clickhouse` crate.
//!
//! The schema is kept as files (`analytics/clickhouse/*.sql`, applied in order at start, each
//! statement idempotent): the raw `scans` table (ReplacingMergeTree, partitioned by day, the
//! tenant leading the sort key) and an hourly rollup fed by a materialized view. Every
//! statement here — the DDL, the insert (RowBinaryWithNamesAndTypes, checked against the
//! table by the crate), every query — runs in the tests on a real ClickHouse engine (chDB),
//! over the same events as the embedded store, with the same answers.
//!
//! Queries read `scans FINAL` (an event delivered twice counts once), or the rollup when a
//! query's groups and filters are among its columns and its range and buckets fall on whole
//! UTC hours. Unknown values are stored as `''` and answered as `null`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::{Client, Row};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use config::ClickHouseSettings;
use records::ScanEvent;

use crate::AnalyticsError;
use crate::embedded::schema::visitor_number;
use crate::query::{
    Answer, Dimension, FilterOn, Granularity, Row as AnswerRow, ScansQuery, Totals,
};

/// The schema, in the order it is applied. `{db}` is the configured database.
const SCHEMA: [(&str, &str); 2] = [
    ("001_scans.sql", include_str!("../clickhouse/001_scans.sql")),
    (
        "002_scans_hourly.sql",
        include_str!("../clickhouse/002_scans_hourly.sql"),
    ),
];

/// Click ids looked up per query (a long `IN` list is split).
const CLICKS_PER_QUERY: usize = 1_000;

/// A ClickHouse server holding the scans.
#[derive(Clone)]
pub struct ClickHouseStore {
    /// Shared: clones of the store share one client (and its connection pool).
    client: std::sync::Arc<Client>,
    db: String,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("database", &self.db)
            .finish_non_exhaustive()
    }
}

/// One scan as the `scans` table takes it.
#[derive(Debug, Row, Serialize)]
struct ScanRow<'a> {
    tenant: &'a str,
    id: [u8; 16],
    /// Microseconds since the epoch (`DateTime64(6)`).
    at: i64,
    kind: &'a str,
    key: &'a str,
    outcome: &'a str,
    device: &'a str,
    bot: bool,
    browser: &'a str,
    browser_version: &'a str,
    os: &'a str,
    os_version: &'a str,
    country: &'a str,
    region: &'a str,
    city: &'a str,
    referrer: &'a str,
    utm_source: &'a str,
    utm_medium: &'a str,
    utm_campaign: &'a str,
    utm_term: &'a str,
    utm_content: &'a str,
    variant: &'a str,
    via_qr: bool,
    click_id: &'a str,
    tags: Vec<&'a str>,
    visitor: Option<u64>,
}

impl<'a> ScanRow<'a> {
    fn of(event: &'a ScanEvent, tenant: &'a str) -> ScanRow<'a> {
        let text = |value: &'a Option<String>| value.as_deref().unwrap_or("");
        ScanRow {
            tenant,
            id: event.id.0,
            at: event.at.timestamp_micros(),
            kind: event.kind.as_str(),
            key: &event.key,
            outcome: &event.outcome,
            device: event.device.as_str(),
            bot: event.bot,
            browser: text(&event.browser),
            browser_version: text(&event.browser_version),
            os: text(&event.os),
            os_version: text(&event.os_version),
            country: text(&event.country),
            region: text(&event.region),
            city: text(&event.city),
            referrer: text(&event.referrer),
            utm_source: text(&event.utm_source),
            utm_medium: text(&event.utm_medium),
            utm_campaign: text(&event.utm_campaign),
            utm_term: text(&event.utm_term),
            utm_content: text(&event.utm_content),
            variant: text(&event.variant),
            via_qr: event.via_qr,
            click_id: text(&event.click_id),
            tags: event.tags.iter().map(String::as_str).collect(),
            visitor: visitor_number(event.visitor.as_deref()),
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct CellRow {
    bucket: i64,
    g: String,
    scans: u64,
    visitors: u64,
}

#[derive(Debug, Row, Deserialize)]
struct TotalsRow {
    scans: u64,
    visitors: u64,
}

#[derive(Debug, Row, Deserialize)]
struct ClickRow {
    click_id: String,
    variant: String,
}

#[derive(Debug, Row, Deserialize)]
struct PartitionRow {
    partition: String,
}

/// A value bound to a `?` of a generated statement.
#[derive(Debug, Clone)]
enum Bound {
    Text(String),
    Texts(Vec<String>),
    Number(i64),
}

/// A statement and its bound values, in order.
#[derive(Debug, Default)]
struct Statement {
    sql: String,
    values: Vec<Bound>,
}

impl Statement {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    fn bind(&mut self, value: Bound) -> &mut Self {
        self.sql.push('?');
        self.values.push(value);
        self
    }

    fn extend(&mut self, other: &Statement) -> &mut Self {
        self.sql.push_str(&other.sql);
        self.values.extend(other.values.iter().cloned());
        self
    }

    fn query(&self, client: &Client) -> clickhouse::query::Query {
        let mut query = client.query(&self.sql);
        for value in &self.values {
            query = match value {
                Bound::Text(text) => query.bind(text.as_str()),
                Bound::Texts(texts) => query.bind(texts.as_slice()),
                Bound::Number(number) => query.bind(*number),
            };
        }
        query
    }
}

/// The columns a query may use on the hourly rollup.
const ROLLUP_DIMENSIONS: [Dimension; 6] = [
    Dimension::Kind,
    Dimension::Key,
    Dimension::Outcome,
    Dimension::Device,
    Dimension::Country,
    Dimension::ViaQr,
];

/// Whether `query` can be answered from the hourly rollup.
fn fits_rollup(query: &ScansQuery) -> bool {
    let whole_hour = |at: DateTime<Utc>| {
        at.timestamp().rem_euclid(3_600) == 0 && at.timestamp_subsec_micros() == 0
    };
    query
        .group_by
        .is_none_or(|g| ROLLUP_DIMENSIONS.contains(&g))
        && query.filters.iter().all(|filter| match filter.on {
            FilterOn::Dimension(d) => ROLLUP_DIMENSIONS.contains(&d),
            FilterOn::Tag => false,
        })
        && whole_hour(query.from)
        && whole_hour(query.to)
        && query.bucket_starts().into_iter().all(whole_hour)
}

impl ClickHouseStore {
    /// Connects and brings the schema up to date.
    pub async fn connect(settings: &ClickHouseSettings) -> Result<ClickHouseStore, AnalyticsError> {
        let mut client = Client::default()
            .with_url(&settings.url)
            .with_user(&settings.user)
            // Deletions (erasing a tenant) finish before the statement returns.
            .with_setting("mutations_sync", "2");
        if let Some(password) = &settings.password {
            client = client.with_password(password.expose_secret());
        }
        let store = ClickHouseStore {
            client: std::sync::Arc::new(client),
            db: settings.database.clone(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the schema files; every statement is idempotent.
    async fn migrate(&self) -> Result<(), AnalyticsError> {
        self.client
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.db))
            .execute()
            .await?;
        for (name, text) in SCHEMA {
            for statement in statements(text, &self.db) {
                self.client
                    .query(&statement)
                    .execute()
                    .await
                    .map_err(|error| AnalyticsError::Schema(name, error))?;
            }
        }
        Ok(())
    }

    /// Whether the server answers.
    pub async fn check(&self) -> Result<(), AnalyticsError> {
        self.client.query("SELECT 1").execute().await?;
        Ok(())
    }

    /// Inserts the events that have a tenant, in one insert; how many.
    pub async fn insert(&self, events: &[ScanEvent]) -> Result<u64, AnalyticsError> {
        let mut insert = self
            .client
            .insert_unescaped::<ScanRow<'_>>(&format!("{}.scans", self.db))
            .await?;
        let mut count = 0;
        for event in events {
            if let Some(tenant) = event.tenant.as_deref() {
                insert.write(&ScanRow::of(event, tenant)).await?;
                count += 1;
            }
        }
        insert.end().await?;
        Ok(count)
    }

    /// `WHERE …` of `query` on the raw table (`time` is `at`) or the rollup (`hour`).
    fn conditions(&self, query: &ScansQuery, time: &str) -> Statement {
        let mut statement = Statement::default();
        statement
            .push(" WHERE tenant = ")
            .bind(Bound::Text(query.tenant.as_str().to_owned()));
        let instant = |at: DateTime<Utc>| {
            if time == "at" {
                Bound::Number(at.timestamp_micros())
            } else {
                Bound::Number(at.timestamp())
            }
        };
        let convert = if time == "at" {
            "fromUnixTimestamp64Micro("
        } else {
            "toDateTime("
        };
        statement
            .push(&format!(" AND {time} >= {convert}"))
            .bind(instant(query.from))
            .push(", 'UTC')");
        statement
            .push(&format!(" AND {time} < {convert}"))
            .bind(instant(query.to))
            .push(", 'UTC')");
        if !query.bots {
            statement.push(" AND NOT bot");
        }
        for filter in &query.filters {
            match filter.on {
                FilterOn::Tag => {
                    statement
                        .push(" AND hasAny(tags, ")
                        .bind(Bound::Texts(filter.values.clone()))
                        .push(")");
                }
                FilterOn::Dimension(dimension) => {
                    statement
                        .push(" AND has(")
                        .bind(Bound::Texts(filter.values.clone()))
                        .push(&format!(", {})", group_expression(dimension)));
                }
            }
        }
        statement
    }

    /// Answers `query`.
    pub async fn scans(&self, query: &ScansQuery) -> Result<Answer, AnalyticsError> {
        let rollup = fits_rollup(query);
        let (table, time, scans, visitors) = if rollup {
            (
                format!("{}.scans_hourly", self.db),
                "hour",
                "uniqExactMerge(scans)",
                "uniqExactMerge(visitors)",
            )
        } else {
            (
                format!("{}.scans FINAL", self.db),
                "at",
                "count()",
                "uniqExact(toDate(at), visitor)",
            )
        };
        let conditions = self.conditions(query, time);
        let group = query
            .group_by
            .map_or_else(|| "''".to_owned(), group_expression);
        let mut cells = Statement::default();
        cells.push("SELECT ");
        bucket_expression(&mut cells, query, time);
        cells
            .push(&format!(
                " AS bucket, {group} AS g, {scans} AS scans, {visitors} AS visitors FROM {table}"
            ))
            .extend(&conditions)
            .push(" GROUP BY bucket, g");
        if query.group_by.is_some() {
            // Only the top groups by scans over the whole range (ties: named before unknown,
            // then by name), as `ScansQuery::sort` keeps them.
            cells
                .push(&format!(" HAVING g IN (SELECT {group} AS g FROM {table}"))
                .extend(&conditions)
                .push(&format!(
                    " GROUP BY g ORDER BY {scans} DESC, g = '' ASC, g ASC LIMIT {})",
                    query.limit
                ));
        }
        let found: Vec<CellRow> = cells.query(&self.client).fetch_all().await?;
        let mut totals_statement = Statement::default();
        totals_statement
            .push(&format!(
                "SELECT {scans} AS scans, {visitors} AS visitors FROM {table}"
            ))
            .extend(&conditions);
        let totals: TotalsRow = totals_statement.query(&self.client).fetch_one().await?;
        let mut rows: Vec<AnswerRow> = found
            .into_iter()
            .map(|cell| AnswerRow {
                bucket: (query.granularity != Granularity::None)
                    .then(|| DateTime::from_timestamp(cell.bucket, 0))
                    .flatten(),
                group: query
                    .group_by
                    .and_then(|_| (!cell.g.is_empty()).then_some(cell.g)),
                scans: cell.scans,
                visitors: cell.visitors,
            })
            .collect();
        query.sort(&mut rows);
        Ok(Answer {
            rows,
            totals: Totals {
                scans: totals.scans,
                visitors: totals.visitors,
            },
        })
    }

    /// The variant each of `clicks` was served, among scans of `tenant`'s link `key` in
    /// `[from, to)`.
    pub async fn click_variants(
        &self,
        tenant: &str,
        key: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        clicks: &HashSet<String>,
    ) -> Result<HashMap<String, String>, AnalyticsError> {
        let clicks: Vec<String> = clicks.iter().cloned().collect();
        let mut found = HashMap::new();
        for chunk in clicks.chunks(CLICKS_PER_QUERY) {
            let mut statement = Statement::default();
            statement
                .push(&format!(
                    "SELECT click_id, variant FROM {}.scans FINAL WHERE tenant = ",
                    self.db
                ))
                .bind(Bound::Text(tenant.to_owned()))
                .push(" AND key = ")
                .bind(Bound::Text(key.to_owned()))
                .push(" AND at >= fromUnixTimestamp64Micro(")
                .bind(Bound::Number(from.timestamp_micros()))
                .push(", 'UTC') AND at < fromUnixTimestamp64Micro(")
                .bind(Bound::Number(to.timestamp_micros()))
                .push(", 'UTC') AND variant != '' AND has(")
                .bind(Bound::Texts(chunk.to_vec()))
                .push(", click_id)");
            let rows: Vec<ClickRow> = statement.query(&self.client).fetch_all().await?;
            found.extend(rows.into_iter().map(|row| (row.click_id, row.variant)));
        }
        Ok(found)
    }

    /// Drops the partitions (days) before `cutoff`, of the table and its rollup.
    pub async fn drop_days_before(
        &self,
        cutoff: NaiveDate,
    ) -> Result<Vec<NaiveDate>, AnalyticsError> {
        let mut dropped = Vec::new();
        for table in ["scans", "scans_hourly"] {
            let mut statement = Statement::default();
            statement
                .push("SELECT DISTINCT partition FROM system.parts WHERE active AND database = ")
                .bind(Bound::Text(self.db.clone()))
                .push(" AND table = ")
                .bind(Bound::Text(table.to_owned()))
                .push(" ORDER BY partition");
            let partitions: Vec<PartitionRow> = statement.query(&self.client).fetch_all().await?;
            for partition in partitions {
                let Ok(day) = NaiveDate::parse_from_str(&partition.partition, "%Y-%m-%d") else {
                    continue;
                };
                if day >= cutoff {
                    continue;
                }
                self.client
                    .query(&format!("ALTER TABLE {}.{table} DROP PARTITION ?", self.db))
                    .bind(day.to_string())
                    .execute()
                    .await?;
                if table == "scans" {
                    dropped.push(day);
                }
            }
        }
        Ok(dropped)
    }

    /// Deletes every row of `tenant`, in the table and its rollup.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<(), AnalyticsError> {
        for table in ["scans", "scans_hourly"] {
            self.client
                .query(&format!(
                    "ALTER TABLE {}.{table} DELETE WHERE tenant = ?",
                    self.db
                ))
                .bind(tenant)
                .execute()
                .await?;
        }
        Ok(())
    }
}

/// A dimension's value as text (`''` when unknown).
fn group_expression(dimension: Dimension) -> String {
    match dimension {
        Dimension::ViaQr => "toString(via_qr)".to_owned(),
        other => other.name().to_owned(),
    }
}

/// The start of a row's bucket, as Unix seconds (0 without granularity).
fn bucket_expression(statement: &mut Statement, query: &ScansQuery, time: &str) {
    let zone = Bound::Text(query.tz.name().to_owned());
    match query.granularity {
        Granularity::None => {
            statement.push("toInt64(0)");
        }
        Granularity::Hour => {
            statement
                .push(&format!("toInt64(toUnixTimestamp(toStartOfHour({time}, "))
                .bind(zone)
                .push(")))");
        }
        Granularity::Day => {
            statement
                .push(&format!("toInt64(toUnixTimestamp(toStartOfDay({time}, "))
                .bind(zone)
                .push(")))");
        }
        Granularity::Week | Granularity::Month => {
            let function = if query.granularity == Granularity::Week {
                "toMonday"
            } else {
                "toStartOfMonth"
            };
            statement
                .push(&format!(
                    "toInt64(toUnixTimestamp(toDateTime({function}({time}, "
                ))
                .bind(zone.clone())
                .push("), ")
                .bind(zone)
                .push(")))");
        }
    }
}

/// The statements of a schema file: comments dropped, split at `;`, `{db}` filled in.
pub fn statements(text: &str, db: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(|statement| statement.trim().replace("{db}", db))
        .filter(|statement| !statement.is_empty())
        .collect()
}

/// The UTC day `days` before `today`.
pub fn cutoff(today: NaiveDate, days: u32) -> NaiveDate {
    today - Duration::days(i64::from(days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_files_split_into_statements() {
        let statements: Vec<String> = SCHEMA
            .iter()
            .flat_map(|(_, text)| statements(text, "qrpool_test"))
            .collect();
        assert_eq!(statements.len(), 3);
        assert!(
            statements
                .iter()
                .all(|s| !s.contains("{db}") && !s.contains("--"))
        );
        assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS qrpool_test.scans"));
    }
}
