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

    /// Appends the event as JSON, the very bytes its `Serialize` makes (a test holds the two
    /// together), to `out`. Every scan's event is written, and serde's general path (a call per
    /// piece, every key escaped) was a tenth of the scan path's instructions (callgrind).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"v\":");
        write_decimal(out, self.v);
        out.extend_from_slice(b",\"at\":");
        match micros_text(&self.at) {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(&text);
                out.push(b'"');
            }
            None => write_string(out, &long_year_text(&self.at)),
        }
        out.extend_from_slice(b",\"key\":");
        write_string(out, &self.key);
        out.extend_from_slice(b",\"outcome\":");
        write_string(out, &self.outcome);
        write_optional(out, b",\"tenant\":", self.tenant.as_deref());
        out.extend_from_slice(b",\"device\":\"");
        out.extend_from_slice(self.device.as_str().as_bytes());
        out.push(b'"');
        write_optional(out, b",\"country\":", self.country.as_deref());
        write_optional(out, b",\"referrer\":", self.referrer.as_deref());
        write_optional(out, b",\"variant\":", self.variant.as_deref());
        out.extend_from_slice(if self.via_qr {
            b",\"via_qr\":true"
        } else {
            b",\"via_qr\":false"
        });
        write_optional(out, b",\"visitor\":", self.visitor.as_deref());
        out.push(b'}');
    }
}

fn write_decimal(out: &mut Vec<u8>, value: u16) {
    let mut digits = [0u8; 5];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        // A digit: `rest % 10` is below 10.
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn write_optional(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(value) = value {
        out.extend_from_slice(key);
        write_string(out, value);
    }
}

/// A JSON string: text without quotes, backslashes or control characters (ids, slugs,
/// outcomes: nearly all) is copied as it is, exactly as serde_json would write it; anything
/// else is written by serde_json.
fn write_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, text).is_err() {
        // Writing a `str` into a `Vec` cannot fail; were it to, the field stays valid JSON.
        out.extend_from_slice(b"\"\"");
    }
}

/// `at` as RFC 3339 with microseconds, `2026-11-23T22:35:01.123456Z`, written digit by digit:
/// every scan's event carries one, and chrono's general formatter showed in the scan path's
/// profile. Any RFC 3339 text reads back (`Deserialize` is chrono's).
fn utc_micros<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    match micros_text(at) {
        Some(text) => {
            serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
        }
        None => serializer.collect_str(&long_year_text(at)),
    }
}

/// Years past four digits (or before year 0) are chrono's to write: signs, five digits.
fn long_year_text(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `at`'s text when its year has four digits.
fn micros_text(at: &DateTime<Utc>) -> Option<[u8; 27]> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
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
    Some(text)
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
    /// The name events carry (as `Serialize` writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Ios => "ios",
            DeviceClass::Android => "android",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Bot => "bot",
            DeviceClass::Unknown => "unknown",
        }
    }

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
    fn written_json_is_what_serialize_makes() {
        use chrono::TimeZone;
        let plain = ScanEvent {
            v: ScanEvent::LAYOUT,
            at: Utc.timestamp_opt(1_795_000_000, 123_456_789).unwrap(),
            key: "1yHrICeb5NFw6AzpqjIxgR".into(),
            outcome: "bound".into(),
            tenant: None,
            device: DeviceClass::Unknown,
            country: None,
            referrer: None,
            variant: None,
            via_qr: false,
            visitor: None,
        };
        let full = ScanEvent {
            tenant: Some("acme".into()),
            country: Some("CN".into()),
            referrer: Some("https://example.com/?q=\"a\"\\b\n\t\u{1}\u{7f}é中".into()),
            variant: Some("split:b".into()),
            via_qr: true,
            visitor: Some("0123456789abcdef".into()),
            ..plain.clone()
        };
        let mut events = vec![plain.clone(), full.clone()];
        for device in [
            DeviceClass::Ios,
            DeviceClass::Android,
            DeviceClass::Desktop,
            DeviceClass::Bot,
        ] {
            events.push(ScanEvent {
                device,
                ..plain.clone()
            });
        }
        for at in [
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.timestamp_opt(0, 0).unwrap(),
        ] {
            events.push(ScanEvent { at, ..full.clone() });
        }
        events.push(ScanEvent {
            v: u16::MAX,
            key: "a\u{0}b".into(),
            outcome: "read \"back\"".to_owned().into(),
            ..plain
        });
        for event in events {
            let mut written = Vec::new();
            event.write_json(&mut written);
            let expected = serde_json::to_vec(&event).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
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
