//! The questions the analytics API answers, in one shape both engines execute.
//!
//! A [`ScansQuery`] is one tenant's scans in `[from, to)`, optionally cut into time buckets in
//! the caller's time zone ([`Granularity`]), optionally grouped by one [`Dimension`], filtered
//! by any dimensions (and tags), bots left out unless asked for. Each answer row has `scans`
//! and `visitors`; `visitors` counts distinct visitor digests within each UTC day (the digest's
//! salt changes daily, so a visitor cannot be followed across days) and adds the days up.
//!
//! Both engines ([`crate::embedded`], [`crate::clickhouse`]) return the same rows for the same
//! query — the same buckets, the same order, the same top groups — and tests hold them to it.
//! [`ScansQuery::parse`] reads the HTTP query string and names the parameter it refuses.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use records::Tenant;

/// What a scan can be grouped and filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Country,
    Region,
    City,
    Device,
    Browser,
    Os,
    Referrer,
    ViaQr,
    Variant,
    Key,
    Kind,
    Outcome,
    UtmSource,
    UtmMedium,
    UtmCampaign,
}

impl Dimension {
    pub const ALL: [Dimension; 15] = [
        Dimension::Country,
        Dimension::Region,
        Dimension::City,
        Dimension::Device,
        Dimension::Browser,
        Dimension::Os,
        Dimension::Referrer,
        Dimension::ViaQr,
        Dimension::Variant,
        Dimension::Key,
        Dimension::Kind,
        Dimension::Outcome,
        Dimension::UtmSource,
        Dimension::UtmMedium,
        Dimension::UtmCampaign,
    ];

    /// Its name in the API and its column in both stores.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Country => "country",
            Dimension::Region => "region",
            Dimension::City => "city",
            Dimension::Device => "device",
            Dimension::Browser => "browser",
            Dimension::Os => "os",
            Dimension::Referrer => "referrer",
            Dimension::ViaQr => "via_qr",
            Dimension::Variant => "variant",
            Dimension::Key => "key",
            Dimension::Kind => "kind",
            Dimension::Outcome => "outcome",
            Dimension::UtmSource => "utm_source",
            Dimension::UtmMedium => "utm_medium",
            Dimension::UtmCampaign => "utm_campaign",
        }
    }

    pub fn parse(name: &str) -> Option<Dimension> {
        Self::ALL
            .into_iter()
            .find(|dimension| dimension.name() == name)
    }

    /// `via_qr` is a flag: its values are `true` and `false`.
    pub fn is_flag(self) -> bool {
        self == Dimension::ViaQr
    }
}

/// How time is cut into buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One bucket: the whole range.
    #[default]
    None,
    Hour,
    Day,
    /// ISO weeks, from Monday.
    Week,
    Month,
}

impl Granularity {
    pub fn parse(text: &str) -> Option<Granularity> {
        Some(match text {
            "none" => Granularity::None,
            "hour" => Granularity::Hour,
            "day" => Granularity::Day,
            "week" => Granularity::Week,
            "month" => Granularity::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Granularity::None => "none",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }
}

/// What a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterOn {
    Dimension(Dimension),
    /// The code's or link's tags when it was scanned.
    Tag,
}

/// Keeps scans whose value is one of `values` (a parameter given several times is an OR).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pub on: FilterOn,
    pub values: Vec<String>,
}

/// One tenant's question about its scans.
#[derive(Debug, Clone, PartialEq)]
pub struct ScansQuery {
    pub tenant: Tenant,
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive.
    pub to: DateTime<Utc>,
    pub tz: Tz,
    pub granularity: Granularity,
    pub group_by: Option<Dimension>,
    pub filters: Vec<Filter>,
    /// Count bots (crawlers, link previews) too.
    pub bots: bool,
    /// Most groups answered: the top ones by scans.
    pub limit: usize,
}

/// One answer row. Groups whose value is unknown (no country, say) have `group: None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The bucket's start (`None` without granularity).
    pub bucket: Option<DateTime<Utc>>,
    pub group: Option<String>,
    pub scans: u64,
    pub visitors: u64,
}

/// Scans and visitors of the whole range (filters applied, no grouping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub scans: u64,
    pub visitors: u64,
}

/// An engine's answer: rows in their order (see [`ScansQuery::sort`]) and the totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub rows: Vec<Row>,
    pub totals: Totals,
}

/// The longest range one query may ask for.
pub const MAX_RANGE_DAYS: i64 = 400;
/// The most buckets one query may cut its range into.
pub const MAX_BUCKETS: usize = 10_000;
/// The most groups one query may answer.
pub const MAX_LIMIT: usize = 10_000;
/// Groups answered when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// A refused parameter: the API's 422 names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{parameter}`: {problem}")]
pub struct BadParameter {
    pub parameter: String,
    pub problem: String,
}

fn bad(parameter: &str, problem: impl Into<String>) -> BadParameter {
    BadParameter {
        parameter: parameter.to_owned(),
        problem: problem.into(),
    }
}

/// What the API reads besides the query itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presentation {
    /// Add the previous period's figures (`compare=previous`).
    pub compare_previous: bool,
    /// Answer as CSV (`format=csv`).
    pub csv: bool,
}

impl ScansQuery {
    /// Reads `GET /v1/analytics/scans`'s parameters for `tenant`, at `now`.
    pub fn parse(
        tenant: Tenant,
        pairs: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<(ScansQuery, Presentation), BadParameter> {
        let mut single = std::collections::HashMap::new();
        let mut filters: Vec<Filter> = Vec::new();
        for (name, value) in pairs {
            match name.as_str() {
                "from" | "to" | "tz" | "granularity" | "group_by" | "bots" | "limit"
                | "compare" | "format" => {
                    if single.insert(name.as_str(), value.as_str()).is_some() {
                        return Err(bad(name, "is given more than once"));
                    }
                }
                other => {
                    let on = match other {
                        "tag" => FilterOn::Tag,
                        _ => FilterOn::Dimension(Dimension::parse(other).ok_or_else(|| {
                            bad(
                                other,
                                "is not a parameter of this query (see the API document)",
                            )
                        })?),
                    };
                    let value = value.trim();
                    if value.is_empty() || value.chars().count() > 256 {
                        return Err(bad(other, "must be 1 to 256 characters"));
                    }
                    if let FilterOn::Dimension(dimension) = on
                        && dimension.is_flag()
                        && !matches!(value, "true" | "false")
                    {
                        return Err(bad(other, "is `true` or `false`"));
                    }
                    match filters.iter_mut().find(|filter| filter.on == on) {
                        Some(filter) if filter.values.len() >= 100 => {
                            return Err(bad(other, "is given at most 100 times"));
                        }
                        Some(filter) => filter.values.push(value.to_owned()),
                        None => filters.push(Filter {
                            on,
                            values: vec![value.to_owned()],
                        }),
                    }
                }
            }
        }
        let tz: Tz = match single.get("tz") {
            Some(name) => name
                .parse()
                .map_err(|_| bad("tz", "is not an IANA time zone like Europe/Berlin"))?,
            None => Tz::UTC,
        };
        let to = match single.get("to") {
            Some(text) => parse_time(text, tz, true).ok_or_else(|| {
                bad(
                    "to",
                    "is a date (YYYY-MM-DD, inclusive) or an RFC 3339 time (exclusive)",
                )
            })?,
            None => now,
        };
        let from = match single.get("from") {
            Some(text) => parse_time(text, tz, false)
                .ok_or_else(|| bad("from", "is a date (YYYY-MM-DD) or an RFC 3339 time"))?,
            None => to - Duration::days(30),
        };
        if from >= to {
            return Err(bad("from", "must be before `to`"));
        }
        if to - from > Duration::days(MAX_RANGE_DAYS) {
            return Err(bad(
                "from",
                format!("the range is at most {MAX_RANGE_DAYS} days"),
            ));
        }
        let granularity = match single.get("granularity") {
            Some(text) => Granularity::parse(text)
                .ok_or_else(|| bad("granularity", "is none, hour, day, week or month"))?,
            None => Granularity::None,
        };
        let group_by = match single.get("group_by") {
            Some(name) => Some(Dimension::parse(name).ok_or_else(|| {
                bad(
                    "group_by",
                    format!(
                        "is one of {}",
                        Dimension::ALL.map(Dimension::name).join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let bots = match single.get("bots").copied() {
            None | Some("exclude") => false,
            Some("include") => true,
            Some(_) => return Err(bad("bots", "is include or exclude")),
        };
        let limit = match single.get("limit") {
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| bad("limit", format!("is a number from 1 to {MAX_LIMIT}")))?,
            None => DEFAULT_LIMIT,
        };
        let presentation = Presentation {
            compare_previous: match single.get("compare").copied() {
                None => false,
                Some("previous") => true,
                Some(_) => return Err(bad("compare", "is previous")),
            },
            csv: match single.get("format").copied() {
                None | Some("json") => false,
                Some("csv") => true,
                Some(_) => return Err(bad("format", "is json or csv")),
            },
        };
        let query = ScansQuery {
            tenant,
            from,
            to,
            tz,
            granularity,
            group_by,
            filters,
            bots,
            limit,
        };
        if query.granularity != Granularity::None && query.bucket_starts().len() > MAX_BUCKETS {
            return Err(bad(
                "granularity",
                format!("cuts the range into more than {MAX_BUCKETS} buckets"),
            ));
        }
        Ok((query, presentation))
    }

    /// The same question about the period of the same length just before.
    pub fn previous_period(&self) -> ScansQuery {
        let length = self.to - self.from;
        ScansQuery {
            from: self.from - length,
            to: self.from,
            ..self.clone()
        }
    }

    /// The start of the bucket `at` falls in (the range's start without granularity).
    pub fn bucket_of(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        bucket_start(self.granularity, self.tz, at).unwrap_or(self.from)
    }

    /// The starts of the buckets that cover `[from, to)`, in order; the first may begin
    /// before `from`. Empty without granularity.
    pub fn bucket_starts(&self) -> Vec<DateTime<Utc>> {
        let Some(mut start) = bucket_start(self.granularity, self.tz, self.from) else {
            return Vec::new();
        };
        let mut starts = Vec::new();
        while start < self.to && starts.len() <= MAX_BUCKETS {
            starts.push(start);
            start = match next_bucket(self.granularity, self.tz, start) {
                Some(next) if next > start => next,
                _ => break,
            };
        }
        starts
    }

    /// Puts rows in the answer's order and keeps the top `limit` groups: without buckets,
    /// by scans (most first), then group (unknown last); with buckets, the top groups by
    /// scans over the whole range, each bucket's rows in that order, buckets in time order.
    pub fn sort(&self, rows: &mut Vec<Row>) {
        fn by_group(a: &Option<String>, b: &Option<String>) -> std::cmp::Ordering {
            match (a, b) {
                (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        }
        if self.group_by.is_none() {
            rows.sort_by_key(|row| row.bucket);
            return;
        }
        let mut totals: std::collections::HashMap<Option<String>, u64> =
            std::collections::HashMap::new();
        for row in rows.iter() {
            *totals.entry(row.group.clone()).or_default() += row.scans;
        }
        let mut ranked: Vec<(Option<String>, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| by_group(&a.0, &b.0)));
        ranked.truncate(self.limit);
        let rank: std::collections::HashMap<Option<String>, usize> = ranked
            .into_iter()
            .enumerate()
            .map(|(rank, (group, _))| (group, rank))
            .collect();
        rows.retain(|row| rank.contains_key(&row.group));
        rows.sort_by_key(|row| (row.bucket, rank.get(&row.group).copied()));
    }
}

/// A date (`YYYY-MM-DD`: local midnight in `tz`, or the next midnight for an inclusive end)
/// or an RFC 3339 time.
fn parse_time(text: &str, tz: Tz, end: bool) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let date = if end { date.succ_opt()? } else { date };
        return local_midnight(tz, date);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// Midnight of `date` in `tz`; where a zone skips midnight (a DST change at 00:00), the first
/// instant of that day.
fn local_midnight(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    local_instant(tz, date.and_hms_opt(0, 0, 0)?)
}

/// The instant of a local time; the earlier of two (a time that repeats when clocks go back),
/// the first valid one after it when it does not exist (clocks going forward).
fn local_instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut candidate = local;
    for _ in 0..=4 {
        if let Some(at) = tz.from_local_datetime(&candidate).earliest() {
            return Some(at.with_timezone(&Utc));
        }
        candidate += Duration::minutes(30);
    }
    None
}

/// The start of the bucket of `granularity` that holds `at`, in `tz`.
pub fn bucket_start(granularity: Granularity, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = at.with_timezone(&tz).naive_local();
    let date = local.date();
    match granularity {
        Granularity::None => None,
        Granularity::Hour => {
            use chrono::Timelike;
            // The hour on the local clock; an hour repeated when clocks go back is two
            // buckets, told apart by their UTC instants.
            let offset = *at.with_timezone(&tz).offset();
            let local_hour = local.with_minute(0)?.with_second(0)?.with_nanosecond(0)?;
            let shift = chrono::Offset::fix(&offset).local_minus_utc();
            Some(DateTime::from_naive_utc_and_offset(
                local_hour - Duration::seconds(i64::from(shift)),
                Utc,
            ))
        }
        Granularity::Day => local_midnight(tz, date),
        Granularity::Week => local_midnight(
            tz,
            date - Duration::days(i64::from(date.weekday().num_days_from_monday())),
        ),
        Granularity::Month => local_midnight(tz, date.with_day(1)?),
    }
}

/// The start of the bucket after the one starting at `start`.
fn next_bucket(granularity: Granularity, tz: Tz, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let date = start.with_timezone(&tz).date_naive();
    match granularity {
        Granularity::None => None,
        Granularity::Hour => Some(start + Duration::hours(1)),
        Granularity::Day => local_midnight(tz, date.succ_opt()?),
        Granularity::Week => local_midnight(tz, date + Duration::days(7)),
        Granularity::Month => {
            let (year, month) = if date.month() == 12 {
                (date.year() + 1, 1)
            } else {
                (date.year(), date.month() + 1)
            };
            local_midnight(tz, NaiveDate::from_ymd_opt(year, month, 1)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-12-02T10:30:00Z".parse().unwrap()
    }

    fn parse(query: &str) -> Result<ScansQuery, BadParameter> {
        ScansQuery::parse(Tenant::default(), &pairs(query), now()).map(|(query, _)| query)
    }

    #[test]
    fn dates_are_local_days_and_the_end_date_is_inclusive() {
        let query =
            parse("from=2026-11-01&to=2026-11-30&tz=Europe/Berlin&granularity=day").unwrap();
        assert_eq!(
            query.from,
            "2026-10-31T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            query.to,
            "2026-11-30T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let starts = query.bucket_starts();
        assert_eq!(starts.len(), 30);
        assert_eq!(
            starts[1],
            "2026-11-01T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // Times are taken as they are.
        let query = parse("from=2026-11-01T06:00:00%2B05:30&to=2026-11-02T00:00:00Z").unwrap();
        assert_eq!(
            query.from,
            "2026-11-01T00:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // By default, the last 30 days up to now.
        let query = parse("").unwrap();
        assert_eq!((query.to - query.from).num_days(), 30);
        assert_eq!(query.to, now());
    }

    #[test]
    fn buckets_follow_the_callers_clock_through_daylight_saving() {
        // Berlin leaves summer time on 2026-10-25: that day is 25 hours long.
        let query =
            parse("from=2026-10-24&to=2026-10-26&tz=Europe/Berlin&granularity=day").unwrap();
        let starts = query.bucket_starts();
        assert_eq!(starts.len(), 3);
        assert_eq!((starts[2] - starts[1]).num_hours(), 25);
        let hours =
            parse("from=2026-10-25&to=2026-10-25&tz=Europe/Berlin&granularity=hour").unwrap();
        assert_eq!(
            hours.bucket_starts().len(),
            25,
            "the repeated hour is a bucket of its own"
        );
        // Kolkata is 5:30 ahead: its hours start at half past, UTC.
        let kolkata =
            parse("from=2026-11-01&to=2026-11-01&tz=Asia/Kolkata&granularity=hour").unwrap();
        assert_eq!(
            kolkata.bucket_starts()[0].to_rfc3339(),
            "2026-10-31T18:30:00+00:00"
        );
        let weeks = parse("from=2026-11-04&to=2026-11-30&granularity=week").unwrap();
        let starts = weeks.bucket_starts();
        assert_eq!(starts[0].date_naive().to_string(), "2026-11-02", "a Monday");
        assert_eq!(starts.len(), 5);
        let months =
            parse("from=2026-01-15&to=2026-12-01&granularity=month&tz=America/New_York").unwrap();
        assert_eq!(months.bucket_starts().len(), 12);
        let at: DateTime<Utc> = "2026-03-31T23:30:00-04:00".parse().unwrap();
        assert_eq!(
            months.bucket_of(at).to_rfc3339(),
            "2026-03-01T05:00:00+00:00"
        );
    }

    #[test]
    fn every_refusal_names_its_parameter() {
        let cases = [
            ("tz=Mars/Olympus", "tz"),
            ("from=yesterday", "from"),
            ("to=2026-13-01", "to"),
            ("from=2026-11-02&to=2026-11-01", "from"),
            ("from=2020-01-01&to=2026-01-01", "from"),
            ("granularity=minute", "granularity"),
            ("group_by=ip", "group_by"),
            ("bots=maybe", "bots"),
            ("limit=0", "limit"),
            ("limit=lots", "limit"),
            ("compare=next", "compare"),
            ("format=xml", "format"),
            ("colour=red", "colour"),
            ("country=", "country"),
            ("via_qr=yes", "via_qr"),
            ("tz=UTC&tz=UTC", "tz"),
        ];
        for (query, parameter) in cases {
            let error = parse(query).expect_err(query);
            assert_eq!(error.parameter, parameter, "{query}: {error}");
        }
    }

    #[test]
    fn filters_collect_their_values_and_groups_and_presentation_are_read() {
        let (query, presentation) = ScansQuery::parse(
            Tenant::default(),
            &pairs("group_by=country&country=DE&country=FR&tag=spring&via_qr=true&bots=include&limit=5&compare=previous&format=csv"),
            now(),
        )
        .unwrap();
        assert_eq!(query.group_by, Some(Dimension::Country));
        assert_eq!(
            query.filters,
            vec![
                Filter {
                    on: FilterOn::Dimension(Dimension::Country),
                    values: vec!["DE".into(), "FR".into()]
                },
                Filter {
                    on: FilterOn::Tag,
                    values: vec!["spring".into()]
                },
                Filter {
                    on: FilterOn::Dimension(Dimension::ViaQr),
                    values: vec!["true".into()]
                },
            ]
        );
        assert!(query.bots);
        assert_eq!(query.limit, 5);
        assert!(presentation.compare_previous && presentation.csv);
        let previous = query.previous_period();
        assert_eq!(previous.to, query.from);
        assert_eq!(previous.to - previous.from, query.to - query.from);
    }

    #[test]
    fn rows_are_ranked_by_scans_and_cut_to_the_top_groups() {
        let query = parse("group_by=country&limit=2&granularity=day&from=2026-11-01&to=2026-11-02")
            .unwrap();
        let day = |d: u32| Some(Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap());
        let row = |bucket, group: Option<&str>, scans| Row {
            bucket,
            group: group.map(str::to_owned),
            scans,
            visitors: 1,
        };
        let mut rows = vec![
            row(day(2), Some("FR"), 1),
            row(day(1), None, 5),
            row(day(1), Some("DE"), 3),
            row(day(2), Some("DE"), 2),
            row(day(1), Some("FR"), 4),
            row(day(2), Some("CN"), 1),
        ];
        query.sort(&mut rows);
        // Totals: unknown 5, DE 5, FR 5, CN 1 — ties go to the named group first, by name.
        let order: Vec<_> = rows.iter().map(|r| (r.bucket, r.group.clone())).collect();
        assert_eq!(
            order,
            vec![
                (day(1), Some("DE".into())),
                (day(1), Some("FR".into())),
                (day(2), Some("DE".into())),
                (day(2), Some("FR".into()))
            ]
        );
    }
}
