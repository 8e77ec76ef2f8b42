//! [`ScanEvent`]: one scan of a code or a link, as analytics receive it.
//!
//! Written as one JSON object per line (files) or per message (the events topic). The `v`
//! field names the layout. The scanner's IP address is never kept: `visitor` is a digest of
//! it (and the user agent) under a salt that changes every day and is never stored, enough to
//! count distinct visitors within a day and useless to find anyone.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEvent {
    pub v: u16,
    #[serde(serialize_with = "utc_micros")]
    pub at: DateTime<Utc>,
    /// The request id of a code (or, later, the key of a link).
    pub key: String,
    /// `bound`, `unknown`, `expired` or `unavailable`; a link's `redirected`, `gone`, ….
    /// Borrowed when made (every outcome is a constant), owned when read back.
    pub outcome: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub device: DeviceClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// The A/B variant or rule that served the scan, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Opened from a printed code (`qr=1` on the URL), not a plain click.
    pub via_qr: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visitor: Option<String>,
}

impl ScanEvent {
    pub const LAYOUT: u16 = 1;
}

/// `at` as RFC 3339 with microseconds, `2026-11-23T22:35:01.123456Z`, written digit by digit:
/// every scan's event carries one, and chrono's general formatter showed in the scan path's
/// profile. Any RFC 3339 text reads back (`Deserialize` is chrono's).
fn utc_micros<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    // Four digits of year only; chrono writes the rest (signs, five digits).
    let Some(year) = u32::try_from(at.year()).ok().filter(|year| *year <= 9999) else {
        return serializer.collect_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    };
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for slot in text[at..at + width].iter_mut().rev() {
            // A digit: `value % 10` is below 10.
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, at.month());
    put(8, 2, at.day());
    put(11, 2, at.hour());
    put(14, 2, at.minute());
    // A leap second shows as second 59 with over a million microseconds: kept as 60.
    let micros = at.timestamp_subsec_micros();
    put(17, 2, at.second() + micros / 1_000_000);
    put(20, 6, micros % 1_000_000);
    let text = std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(text)
}

/// What kind of device scanned, from its user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Ios,
    Android,
    Desktop,
    Bot,
    Unknown,
}

impl DeviceClass {
    pub fn from_user_agent(user_agent: Option<&str>) -> Self {
        let Some(agent) = user_agent.filter(|agent| !agent.is_empty()) else {
            return DeviceClass::Unknown;
        };
        // Compared in place, ignoring ASCII case: a lower-cased copy per scan showed in the
        // scan path's profile.
        let has = |word: &str| contains_ignoring_case(agent, word);
        if ["bot", "spider", "crawl", "preview"].into_iter().any(has) {
            DeviceClass::Bot
        } else if ["iphone", "ipad", "ipod", "ios"].into_iter().any(has) {
            DeviceClass::Ios
        } else if has("android") {
            DeviceClass::Android
        } else if agent
            .get(..8)
            .is_some_and(|start| start.eq_ignore_ascii_case("mozilla/"))
        {
            DeviceClass::Desktop
        } else {
            // curl, scripts, link checkers: not a person at a desk.
            DeviceClass::Unknown
        }
    }
}

/// Whether `haystack` holds `needle` (lower-case ASCII), whatever the case of `haystack`.
fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_written_as_chrono_writes_it_with_microseconds() {
        use chrono::TimeZone;
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        let times = [
            Utc::now(),
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 23, 9, 5, 7).unwrap(),
            Utc.timestamp_opt(1_795_000_000, 999_999_999).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            leap,
        ];
        for at in times {
            let written = serde_json::to_value(ScanEvent {
                v: ScanEvent::LAYOUT,
                at,
                key: "k".into(),
                outcome: "bound".into(),
                tenant: None,
                device: DeviceClass::Unknown,
                country: None,
                referrer: None,
                variant: None,
                via_qr: false,
                visitor: None,
            })
            .unwrap();
            let expected = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(written["at"], expected.as_str(), "{at:?}");
            let read: ScanEvent = serde_json::from_value(written).unwrap();
            assert_eq!(read.at.timestamp_micros(), at.timestamp_micros(), "{at:?}");
        }
    }

    #[test]
    fn devices_are_told_apart_by_their_user_agent() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) MicroMessenger/8.0",
                DeviceClass::Ios,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/120 Mobile",
                DeviceClass::Android,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120",
                DeviceClass::Desktop,
            ),
            (
                "Googlebot/2.1 (+http://www.google.com/bot.html)",
                DeviceClass::Bot,
            ),
            ("", DeviceClass::Unknown),
            ("curl/8.5.0", DeviceClass::Unknown),
        ];
        for (agent, class) in cases {
            assert_eq!(DeviceClass::from_user_agent(Some(agent)), class, "{agent}");
        }
        assert_eq!(DeviceClass::from_user_agent(None), DeviceClass::Unknown);
        assert_eq!(
            DeviceClass::from_user_agent(Some("MOZILLA/5.0 (IPHONE)")),
            DeviceClass::Ios,
            "case does not matter"
        );
        assert_eq!(
            DeviceClass::from_user_agent(Some("Mozill")),
            DeviceClass::Unknown
        );
    }
}
