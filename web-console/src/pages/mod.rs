//! The console's pages, one module per section.

pub mod audience;
pub mod codes;
pub mod export;
pub mod links;
pub mod overview;
pub mod pool;
pub mod sign_in;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::encode;
use crate::session::Visit;

/// The range, zone and options a dashboard page is asked for; every field optional, and
/// passed on to the analytics API, which checks them (a bad one is shown, not a crash).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RangeForm {
    /// `24h`, `7d`, `30d`, `90d` or `custom` (then `from` and `to`).
    pub range: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub tz: Option<String>,
    pub granularity: Option<String>,
    /// `on`: the previous period beside this one.
    pub compare: Option<String>,
    /// `include`: bots counted too.
    pub bots: Option<String>,
}

/// A range resolved: what the API is asked and what the form shows.
#[derive(Debug, Clone)]
pub struct Range {
    pub preset: String,
    pub from: String,
    pub to: String,
    pub tz: String,
    pub granularity: String,
    pub compare: bool,
    pub bots: bool,
}

pub const PRESETS: [(&str, &str); 5] = [
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("custom", "Custom"),
];

pub const GRANULARITIES: [&str; 4] = ["hour", "day", "week", "month"];

/// Zones offered in the picker, besides the browser's own.
pub const ZONES: [&str; 14] = [
    "UTC",
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Dubai",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Australia/Sydney",
];

impl RangeForm {
    pub fn resolve(&self, visit: &Visit, now: DateTime<Utc>) -> Range {
        let tz: Tz = self
            .tz
            .as_deref()
            .and_then(|zone| zone.parse().ok())
            .or(visit.browser_tz)
            .unwrap_or(Tz::UTC);
        let today = now.with_timezone(&tz).date_naive();
        let preset = self
            .range
            .as_deref()
            .filter(|preset| PRESETS.iter().any(|(known, _)| known == preset))
            .unwrap_or("7d");
        let day = |date: NaiveDate| date.format("%Y-%m-%d").to_string();
        let (from, to, granularity) = match preset {
            "24h" => (
                (now - chrono::Duration::hours(24))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "hour",
            ),
            "30d" => (day(today - chrono::Duration::days(29)), day(today), "day"),
            "90d" => (day(today - chrono::Duration::days(89)), day(today), "week"),
            "custom" => (
                self.from
                    .clone()
                    .filter(|from| !from.is_empty())
                    .unwrap_or_else(|| day(today - chrono::Duration::days(6))),
                self.to
                    .clone()
                    .filter(|to| !to.is_empty())
                    .unwrap_or_else(|| day(today)),
                "day",
            ),
            _ => (day(today - chrono::Duration::days(6)), day(today), "day"),
        };
        let granularity = self
            .granularity
            .as_deref()
            .filter(|chosen| GRANULARITIES.contains(chosen))
            .unwrap_or(granularity);
        Range {
            preset: preset.to_owned(),
            from,
            to,
            tz: tz.name().to_owned(),
            granularity: granularity.to_owned(),
            compare: self.compare.as_deref() == Some("on"),
            bots: self.bots.as_deref() == Some("include"),
        }
    }
}

impl Range {
    /// The analytics API's query for this range, plus `extra` (`group_by=…&limit=…`).
    pub fn api_query(&self, extra: &str) -> String {
        let mut query = format!(
            "/v1/analytics/scans?from={}&to={}&tz={}",
            encode(&self.from),
            encode(&self.to),
            encode(&self.tz)
        );
        if self.bots {
            query.push_str("&bots=include");
        }
        if !extra.is_empty() {
            query.push('&');
            query.push_str(extra);
        }
        query
    }

    /// This page's own query string, for links that keep the range (exports, other pages).
    pub fn page_query(&self) -> String {
        let mut query = format!(
            "range={}&tz={}&granularity={}",
            encode(&self.preset),
            encode(&self.tz),
            encode(&self.granularity)
        );
        if self.preset == "custom" {
            query.push_str(&format!(
                "&from={}&to={}",
                encode(&self.from),
                encode(&self.to)
            ));
        }
        if self.compare {
            query.push_str("&compare=on");
        }
        if self.bots {
            query.push_str("&bots=include");
        }
        query
    }

    /// The zones for the picker: ours, with the chosen one first when it is not among them.
    pub fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = ZONES.iter().map(|zone| (*zone).to_owned()).collect();
        if !zones.contains(&self.tz) {
            zones.insert(0, self.tz.clone());
        }
        zones
    }

    /// The custom range's dates for the form (empty for presets).
    pub fn from_date(&self) -> &str {
        if self.preset == "custom" {
            &self.from
        } else {
            ""
        }
    }

    pub fn to_date(&self) -> &str {
        if self.preset == "custom" {
            &self.to
        } else {
            ""
        }
    }
}

/// The analytics API's answer, as the console reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Scans {
    pub totals: Figures,
    pub rows: Vec<ScansRow>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Figures {
    pub scans: u64,
    pub visitors: u64,
    pub previous: Option<Previous>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Previous {
    pub scans: u64,
    pub visitors: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScansRow {
    pub bucket: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub scans: u64,
    pub visitors: u64,
    pub previous: Option<Previous>,
}

/// A group of a breakdown, as tables show it.
#[derive(Debug, Clone)]
pub struct Share {
    pub label: String,
    pub scans: String,
    pub visitors: String,
    /// Width of its bar, in percent of the largest.
    pub bar: u32,
    /// A link to narrow down to it, when there is a page for it.
    pub href: Option<String>,
}

pub fn shares(rows: &[ScansRow], label: impl Fn(Option<&str>) -> String) -> Vec<Share> {
    let most = rows.iter().map(|row| row.scans).max().unwrap_or(0).max(1);
    rows.iter()
        .map(|row| Share {
            label: label(row.group.as_deref()),
            scans: crate::chart::grouped(row.scans),
            visitors: crate::chart::grouped(row.visitors),
            bar: u32::try_from(row.scans * 100 / most).unwrap_or(100),
            href: None,
        })
        .collect()
}

/// A daily time series as a chart draws it (one link's or code's scans).
pub fn daily_points(scans: &Scans) -> Vec<crate::chart::Point> {
    scans
        .rows
        .iter()
        .map(|row| crate::chart::Point {
            label: row
                .bucket
                .as_deref()
                .and_then(|bucket| DateTime::parse_from_rfc3339(bucket).ok())
                .map(|time| time.format("%b %-d").to_string())
                .unwrap_or_default(),
            scans: row.scans,
            visitors: row.visitors,
            previous: None,
        })
        .collect()
}

/// A change against the previous period, as a card shows it.
pub fn delta(now: u64, before: Option<u64>) -> Option<(String, bool)> {
    let before = before?;
    if before == 0 {
        return (now > 0).then(|| ("new".to_owned(), true));
    }
    let change = (now as f64 - before as f64) / before as f64 * 100.0;
    Some((format!("{change:+.0} %"), change >= 0.0))
}
