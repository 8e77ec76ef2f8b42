//! [`ScanEvent`]: one scan of a code or a link, as analytics receive it.
//!
//! Written as one JSON object per line (files) or per message (the events topic). The `v`
//! field names the layout: 2 since enrichment (layout 1, without `id`, `kind` and the
//! enriched fields, still reads). The scanner's IP address and raw user agent are never kept:
//! the event writer turns them into the fields below and drops them. `visitor` is a digest of
//! the address and user agent under a salt that changes every UTC day and is never stored,
//! enough to count distinct visitors within a day and useless to find anyone.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEvent {
    pub v: u16,
    /// Unique per scan: an at-least-once stream may deliver an event twice, and a store that
    /// keeps one row per id counts it once. Layout-1 events had none: they get a fresh one.
    #[serde(default = "EventId::random")]
    pub id: EventId,
    #[serde(serialize_with = "utc_micros")]
    pub at: DateTime<Utc>,
    /// A code (`/m/`, `/v1/scene/`) or a link (`/r/`).
    #[serde(default)]
    pub kind: ScanKind,
    /// The request id of a code or the key of a link.
    pub key: String,
    /// `bound`, `unknown`, `expired` or `unavailable`; a link's `redirected`, `gone`, ….
    /// Borrowed when made (every outcome is a constant), owned when read back.
    pub outcome: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub device: DeviceClass,
    /// A crawler, a link-preview fetcher (chat apps unfurling a link) or another program, not
    /// a person: left out of counts unless asked for.
    #[serde(default)]
    pub bot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// The browser's major version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Major and minor, `17.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// ISO 3166-1 alpha-2, upper case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The first subdivision (state, province), by its English name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// The referring site's host (`news.example.com`), never its path or query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    /// The A/B variant or rule that served the scan, when one did (`variant:a`, `rule:ios`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Opened from a printed code (`qr=1` on the URL), not a plain click.
    pub via_qr: bool,
    /// The id appended to a conversion-tracked link's destination; a conversion names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    /// The code's or link's tags when it was scanned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visitor: Option<String>,
}

impl ScanEvent {
    pub const LAYOUT: u16 = 2;

    /// An event of `kind` for `key` with nothing known about the scanner yet.
    pub fn new(kind: ScanKind, key: String, outcome: &'static str, at: DateTime<Utc>) -> ScanEvent {
        ScanEvent {
            v: Self::LAYOUT,
            id: EventId::random(),
            at,
            kind,
            key,
            outcome: Cow::Borrowed(outcome),
            tenant: None,
            device: DeviceClass::Unknown,
            bot: false,
            browser: None,
            browser_version: None,
            os: None,
            os_version: None,
            country: None,
            region: None,
            city: None,
            referrer: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            variant: None,
            via_qr: false,
            click_id: None,
            tags: Vec::new(),
            visitor: None,
        }
    }

    /// Reads one event line, of either layout: layout 1 had no kind, which its key's length
    /// tells (a request id has 22 characters, a link key 10).
    pub fn from_json(line: &[u8]) -> Result<ScanEvent, serde_json::Error> {
        let mut event: ScanEvent = serde_json::from_slice(line)?;
        if event.v < 2 {
            event.kind = if event.key.len() == crate::link::LINK_KEY_LEN {
                ScanKind::Link
            } else {
                ScanKind::Code
            };
            // Layout 1 kept the whole referrer; only its host is kept now.
            event.referrer = event.referrer.as_deref().and_then(referrer_host);
            event.bot = event.device == DeviceClass::Bot;
        }
        Ok(event)
    }

    /// Appends the event as JSON, the very bytes its `Serialize` makes (a test holds the two
    /// together), to `out`. Every scan's event is written, and serde's general path (a call per
    /// piece, every key escaped) cost a tenth of the scan path's instructions when events
    /// were written on it (callgrind); the writer still writes every one.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"v\":");
        write_decimal(out, self.v);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(&self.id.text());
        out.extend_from_slice(b"\",\"at\":");
        match micros_text(&self.at) {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(&text);
                out.push(b'"');
            }
            None => write_string(out, &long_year_text(&self.at)),
        }
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key\":");
        write_string(out, &self.key);
        out.extend_from_slice(b",\"outcome\":");
        write_string(out, &self.outcome);
        write_optional(out, b",\"tenant\":", self.tenant.as_deref());
        out.extend_from_slice(b",\"device\":\"");
        out.extend_from_slice(self.device.as_str().as_bytes());
        out.extend_from_slice(if self.bot {
            b"\",\"bot\":true"
        } else {
            b"\",\"bot\":false"
        });
        write_optional(out, b",\"browser\":", self.browser.as_deref());
        write_optional(
            out,
            b",\"browser_version\":",
            self.browser_version.as_deref(),
        );
        write_optional(out, b",\"os\":", self.os.as_deref());
        write_optional(out, b",\"os_version\":", self.os_version.as_deref());
        write_optional(out, b",\"country\":", self.country.as_deref());
        write_optional(out, b",\"region\":", self.region.as_deref());
        write_optional(out, b",\"city\":", self.city.as_deref());
        write_optional(out, b",\"referrer\":", self.referrer.as_deref());
        write_optional(out, b",\"utm_source\":", self.utm_source.as_deref());
        write_optional(out, b",\"utm_medium\":", self.utm_medium.as_deref());
        write_optional(out, b",\"utm_campaign\":", self.utm_campaign.as_deref());
        write_optional(out, b",\"utm_term\":", self.utm_term.as_deref());
        write_optional(out, b",\"utm_content\":", self.utm_content.as_deref());
        write_optional(out, b",\"variant\":", self.variant.as_deref());
        out.extend_from_slice(if self.via_qr {
            b",\"via_qr\":true"
        } else {
            b",\"via_qr\":false"
        });
        write_optional(out, b",\"click_id\":", self.click_id.as_deref());
        if !self.tags.is_empty() {
            out.extend_from_slice(b",\"tags\":[");
            for (index, tag) in self.tags.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(out, tag);
            }
            out.push(b']');
        }
        write_optional(out, b",\"visitor\":", self.visitor.as_deref());
        out.push(b'}');
    }
}

/// The host of a referrer URL, lower case, without a leading `www.`; `None` for anything
/// that is not an absolute URL with a host.
pub fn referrer_host(referrer: &str) -> Option<String> {
    let rest = referrer.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    // An IPv6 literal loses its brackets; any other host its port.
    let host = match host.strip_prefix('[') {
        Some(literal) => literal.split(']').next()?,
        None => host.split(':').next()?,
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_prefix("www.").map(str::to_owned).unwrap_or(host);
    let plausible = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
    plausible.then_some(host)
}

/// What was scanned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanKind {
    /// A pooled code (`/m/{id}`, `/v1/scene/{id}`).
    #[default]
    Code,
    /// A dynamic link (`/r/{key}`).
    Link,
}

impl ScanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanKind::Code => "code",
            ScanKind::Link => "link",
        }
    }
}

/// A scan event's id: 128 bits, of which 122 random (a version-4 UUID, so that ClickHouse's
/// `UUID` type and every tool that reads UUIDs takes it as it is).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    pub fn random() -> EventId {
        let mut bytes: [u8; 16] = rand::random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        EventId(bytes)
    }

    /// `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, lower case.
    pub fn text(&self) -> [u8; 36] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'-'; 36];
        let mut at = 0;
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                at += 1;
            }
            text[at] = HEX[usize::from(byte >> 4)];
            text[at + 1] = HEX[usize::from(byte & 0x0f)];
            at += 2;
        }
        text
    }

    /// The hyphenated form, or 32 hex digits without hyphens.
    pub fn parse(text: &str) -> Option<EventId> {
        let hyphenated = text.len() == 36;
        if !(hyphenated || text.len() == 32) {
            return None;
        }
        let mut bytes = [0u8; 16];
        let mut digits = text.bytes().enumerate().filter_map(|(index, byte)| {
            let hyphen = hyphenated && matches!(index, 8 | 13 | 18 | 23);
            (!hyphen).then_some(byte)
        });
        for slot in &mut bytes {
            let high = (digits.next()? as char).to_digit(16)?;
            let low = (digits.next()? as char).to_digit(16)?;
            // Two hex digits are below 256.
            *slot = (high * 16 + low) as u8;
        }
        let hyphens_in_place = !hyphenated
            || [8, 13, 18, 23]
                .iter()
                .all(|&index| text.as_bytes()[index] == b'-');
        (digits.next().is_none() && hyphens_in_place).then_some(EventId(bytes))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hex digits and hyphens only: always UTF-8.
        f.write_str(std::str::from_utf8(&self.text()).unwrap_or_default())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        EventId::parse(&text).ok_or_else(|| serde::de::Error::custom("not an event id (a UUID)"))
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Ios,
    Android,
    Desktop,
    Bot,
    #[default]
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
            let written =
                serde_json::to_value(ScanEvent::new(ScanKind::Code, "k".into(), "bound", at))
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
        let plain = ScanEvent::new(
            ScanKind::Code,
            "1yHrICeb5NFw6AzpqjIxgR".into(),
            "bound",
            Utc.timestamp_opt(1_795_000_000, 123_456_789).unwrap(),
        );
        let full = ScanEvent {
            kind: ScanKind::Link,
            tenant: Some("acme".into()),
            bot: true,
            browser: Some("Mobile Safari".into()),
            browser_version: Some("17".into()),
            os: Some("iOS".into()),
            os_version: Some("17.1".into()),
            country: Some("CN".into()),
            region: Some("Shanghai".into()),
            city: Some("S\u{e3}o \"Paulo\"".into()),
            referrer: Some("example.com/?q=\"a\"\\b\n\t\u{1}\u{7f}é中".into()),
            utm_source: Some("poster".into()),
            utm_medium: Some("print".into()),
            utm_campaign: Some("spring".into()),
            utm_term: Some("t".into()),
            utm_content: Some("c".into()),
            variant: Some("split:b".into()),
            via_qr: true,
            click_id: Some("5rJxQq0aW8s1b2c3d4e5f6".into()),
            tags: vec!["spring".into(), "a\"b".into()],
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

    #[test]
    fn event_ids_are_version_4_uuids_that_read_back() {
        let id = EventId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "{text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        assert_eq!(EventId::parse(&text), Some(id));
        assert_eq!(EventId::parse(&text.replace('-', "")), Some(id));
        assert_eq!(EventId::parse("not-a-uuid"), None);
        assert_eq!(EventId::parse(&text.replace('-', "x")), None);
        assert_eq!(
            EventId::parse(&format!("{}-", &text.replace('-', "")[..31])),
            None
        );
        assert_eq!(EventId::parse(&"g".repeat(32)), None);
        assert_ne!(EventId::random(), EventId::random());
    }

    #[test]
    fn a_layout_1_line_reads_with_its_kind_inferred_and_its_referrer_cut_to_the_host() {
        let code = br#"{"v":1,"at":"2026-11-23T09:36:58.640348Z","key":"2XmxVhtUGkTrv5VOwFpSUh","outcome":"bound","tenant":"default","device":"ios","referrer":"https://www.news.example/a?b=c","via_qr":true,"visitor":"0123456789abcdef"}"#;
        let event = ScanEvent::from_json(code).unwrap();
        assert_eq!(event.kind, ScanKind::Code);
        assert_eq!(event.referrer.as_deref(), Some("news.example"));
        assert_eq!(event.device, DeviceClass::Ios);
        let link = br#"{"v":1,"at":"2026-11-23T09:36:58Z","key":"sV3kQ9xYb2","outcome":"redirected","device":"bot","via_qr":false}"#;
        let event = ScanEvent::from_json(link).unwrap();
        assert_eq!(event.kind, ScanKind::Link);
        assert!(event.bot);
    }

    #[test]
    fn a_referrer_keeps_only_its_host() {
        let cases = [
            ("https://www.Google.com/search?q=x", Some("google.com")),
            ("http://user:pw@news.example:8080/a", Some("news.example")),
            ("android-app://com.tencent.mm/", Some("com.tencent.mm")),
            ("https://[2001:db8::1]:443/x", Some("2001:db8::1")),
            ("not a url", None),
            ("https:///path", None),
            ("https://evil.example\"<script>/", None),
        ];
        for (referrer, host) in cases {
            assert_eq!(referrer_host(referrer).as_deref(), host, "{referrer}");
        }
    }
}
