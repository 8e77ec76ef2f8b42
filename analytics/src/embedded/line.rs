//! One event line of a daily event file, read for the ingest without copying its text.
//!
//! The ingest reads every event qrpool records, and serde's general path into an owned
//! [`ScanEvent`] (a string allocated per field) was half of its time. Event lines are written
//! by [`ScanEvent::write_json`]: flat objects of strings, booleans, a number and one array of
//! strings. [`Line::parse`] reads exactly that shape in one pass, borrowing every string that
//! has no escape; a line with anything else (an escape, another layout, nesting) is read by
//! serde instead, into the same [`Line`]. A test holds the two readings together.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use records::ScanEvent;

/// An event as the ingest needs it; strings borrowed from the line when they can be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Line<'a> {
    pub id: [u8; 16],
    /// Microseconds since the epoch.
    pub at: i64,
    pub kind: Cow<'a, str>,
    pub key: Cow<'a, str>,
    pub outcome: Cow<'a, str>,
    pub tenant: Option<Cow<'a, str>>,
    pub device: Cow<'a, str>,
    pub bot: bool,
    pub browser: Option<Cow<'a, str>>,
    pub browser_version: Option<Cow<'a, str>>,
    pub os: Option<Cow<'a, str>>,
    pub os_version: Option<Cow<'a, str>>,
    pub country: Option<Cow<'a, str>>,
    pub region: Option<Cow<'a, str>>,
    pub city: Option<Cow<'a, str>>,
    pub referrer: Option<Cow<'a, str>>,
    pub utm_source: Option<Cow<'a, str>>,
    pub utm_medium: Option<Cow<'a, str>>,
    pub utm_campaign: Option<Cow<'a, str>>,
    pub utm_term: Option<Cow<'a, str>>,
    pub utm_content: Option<Cow<'a, str>>,
    pub variant: Option<Cow<'a, str>>,
    pub via_qr: bool,
    pub click_id: Option<Cow<'a, str>>,
    pub tags: Vec<Cow<'a, str>>,
    pub visitor: Option<u64>,
}

impl<'a> Line<'a> {
    /// Reads one event line; `None` when it is no event.
    pub fn parse(line: &'a [u8]) -> Option<Line<'a>> {
        let mut parsed = Line::default();
        parsed.read(line).then_some(parsed)
    }

    /// Reads one event line into `self` (in place: a line is a few hundred bytes, and moving
    /// each one showed in the ingest's profile); `false` when it is no event, and then `self`
    /// holds nothing of use.
    pub fn read(&mut self, line: &'a [u8]) -> bool {
        let text = std::str::from_utf8(line).ok();
        if text.is_some_and(|text| fast(text, self)) {
            return true;
        }
        match ScanEvent::from_json(line) {
            Ok(event) => {
                *self = Line::from(event);
                true
            }
            Err(_) => false,
        }
    }

    /// [`Line::read`] of a line already known to be UTF-8.
    pub fn read_text(&mut self, line: &'a str) -> bool {
        if fast(line, self) {
            return true;
        }
        match ScanEvent::from_json(line.as_bytes()) {
            Ok(event) => {
                *self = Line::from(event);
                true
            }
            Err(_) => false,
        }
    }

    /// The UTC day of the event.
    pub fn day(&self) -> Option<chrono::NaiveDate> {
        DateTime::<Utc>::from_timestamp_micros(self.at).map(|at| at.date_naive())
    }
}

impl From<ScanEvent> for Line<'static> {
    fn from(event: ScanEvent) -> Self {
        let owned = |text: Option<String>| text.map(Cow::Owned);
        Line {
            id: event.id.0,
            at: event.at.timestamp_micros(),
            kind: Cow::Borrowed(event.kind.as_str()),
            key: Cow::Owned(event.key),
            outcome: Cow::Owned(event.outcome.into_owned()),
            tenant: owned(event.tenant),
            device: Cow::Borrowed(event.device.as_str()),
            bot: event.bot,
            browser: owned(event.browser),
            browser_version: owned(event.browser_version),
            os: owned(event.os),
            os_version: owned(event.os_version),
            country: owned(event.country),
            region: owned(event.region),
            city: owned(event.city),
            referrer: owned(event.referrer),
            utm_source: owned(event.utm_source),
            utm_medium: owned(event.utm_medium),
            utm_campaign: owned(event.utm_campaign),
            utm_term: owned(event.utm_term),
            utm_content: owned(event.utm_content),
            variant: owned(event.variant),
            via_qr: event.via_qr,
            click_id: owned(event.click_id),
            tags: event.tags.into_iter().map(Cow::Owned).collect(),
            visitor: crate::embedded::schema::visitor_number(event.visitor.as_deref()),
        }
    }
}

/// A JSON value of the shapes event lines hold.
enum Value<'a> {
    Text(&'a str),
    Flag(bool),
    Number(u64),
    Texts(Vec<&'a str>),
    Null,
}

/// Reads the line's flat object into `parsed`; `false` for anything outside the written shape
/// (read by serde instead). Every string must be free of escapes and every value one of
/// [`Value`].
fn fast<'a>(line: &'a str, parsed: &mut Line<'a>) -> bool {
    fast_into(line, parsed).is_some()
}

fn fast_into<'a>(line: &'a str, parsed: &mut Line<'a>) -> Option<()> {
    let mut at = Cursor {
        text: line,
        bytes: line.as_bytes(),
        at: 0,
    };
    at.skip_space();
    at.expect(b'{')?;
    *parsed = Line::default();
    let (mut has_layout, mut has_id, mut has_at, mut has_key, mut has_outcome, mut has_device) =
        (false, false, false, false, false, false);
    at.skip_space();
    if at.peek()? == b'}' {
        return None;
    }
    loop {
        at.skip_space();
        let name = at.string()?;
        at.skip_space();
        at.expect(b':')?;
        at.skip_space();
        let value = at.value()?;
        fn text(value: Value<'_>) -> Option<Option<&str>> {
            match value {
                Value::Text(text) => Some(Some(text)),
                Value::Null => Some(None),
                _ => None,
            }
        }
        fn optional(value: Value<'_>) -> Option<Option<Cow<'_, str>>> {
            text(value).map(|text| text.map(Cow::Borrowed))
        }
        match name {
            "v" => match value {
                // Layout 1 needs the fix-ups `ScanEvent::from_json` makes.
                Value::Number(2) => has_layout = true,
                _ => return None,
            },
            "id" => {
                parsed.id = records::EventId::parse(text(value)??)?.0;
                has_id = true;
            }
            "at" => {
                parsed.at = micros(text(value)??)?;
                has_at = true;
            }
            "kind" => parsed.kind = Cow::Borrowed(text(value)??),
            "key" => {
                parsed.key = Cow::Borrowed(text(value)??);
                has_key = true;
            }
            "outcome" => {
                parsed.outcome = Cow::Borrowed(text(value)??);
                has_outcome = true;
            }
            "device" => {
                parsed.device = Cow::Borrowed(text(value)??);
                has_device = true;
            }
            "bot" => match value {
                Value::Flag(flag) => parsed.bot = flag,
                _ => return None,
            },
            "via_qr" => match value {
                Value::Flag(flag) => parsed.via_qr = flag,
                _ => return None,
            },
            "tags" => match value {
                Value::Texts(tags) => parsed.tags = tags.into_iter().map(Cow::Borrowed).collect(),
                _ => return None,
            },
            "visitor" => parsed.visitor = crate::embedded::schema::visitor_number(text(value)?),
            "tenant" => parsed.tenant = optional(value)?,
            "browser" => parsed.browser = optional(value)?,
            "browser_version" => parsed.browser_version = optional(value)?,
            "os" => parsed.os = optional(value)?,
            "os_version" => parsed.os_version = optional(value)?,
            "country" => parsed.country = optional(value)?,
            "region" => parsed.region = optional(value)?,
            "city" => parsed.city = optional(value)?,
            "referrer" => parsed.referrer = optional(value)?,
            "utm_source" => parsed.utm_source = optional(value)?,
            "utm_medium" => parsed.utm_medium = optional(value)?,
            "utm_campaign" => parsed.utm_campaign = optional(value)?,
            "utm_term" => parsed.utm_term = optional(value)?,
            "utm_content" => parsed.utm_content = optional(value)?,
            "variant" => parsed.variant = optional(value)?,
            "click_id" => parsed.click_id = optional(value)?,
            // A field this reader does not know: serde decides what it means.
            _ => return None,
        }
        at.skip_space();
        match at.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    at.skip_space();
    let complete = at.at == line.len()
        && has_layout
        && has_id
        && has_at
        && has_key
        && has_outcome
        && has_device
        && !parsed.kind.is_empty();
    // What serde would refuse, this refuses too (by handing the line over).
    let known_kind = matches!(&*parsed.kind, "code" | "link");
    let known_device = matches!(
        &*parsed.device,
        "ios" | "android" | "desktop" | "bot" | "unknown"
    );
    (complete && known_kind && known_device).then_some(())
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_space(&mut self) {
        while self
            .peek()
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters (JSON allows none unescaped).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = memchr::memchr2(b'"', b'\\', &self.bytes[start..])?;
        if self.bytes[start + length] != b'"' {
            return None;
        }
        let found = &self.bytes[start..start + length];
        if found.iter().any(|byte| *byte < 0x20) {
            return None;
        }
        self.at = start + length + 1;
        // Quotes are ASCII, so both ends are character boundaries of the (valid) text.
        self.text.get(start..start + length)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Value::Text),
            b't' => self.literal(b"true").map(|()| Value::Flag(true)),
            b'f' => self.literal(b"false").map(|()| Value::Flag(false)),
            b'n' => self.literal(b"null").map(|()| Value::Null),
            b'0'..=b'9' => {
                let start = self.at;
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
                self.text
                    .get(start..self.at)?
                    .parse()
                    .ok()
                    .map(Value::Number)
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_space();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(Value::Texts(items));
                }
                loop {
                    self.skip_space();
                    items.push(self.string()?);
                    self.skip_space();
                    match self.next()? {
                        b',' => continue,
                        b']' => return Some(Value::Texts(items)),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// `2026-11-23T22:35:01.123456Z` (as events are written) read digit by digit; any other RFC
/// 3339 form through chrono.
fn micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 27
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[19] == b'.'
        && bytes[26] == b'Z';
    if !shaped {
        return DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.timestamp_micros());
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        bytes[from..to].iter().try_fold(0i64, |sum, b| {
            b.is_ascii_digit().then(|| sum * 10 + i64::from(b - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(0, 4)?).ok()?,
        u32::try_from(number(5, 7)?).ok()?,
        u32::try_from(number(8, 10)?).ok()?,
    )?;
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = i64::from(date.num_days_from_ce()) - 719_163;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + number(20, 26)?)
}

use chrono::Datelike as _;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use records::{DeviceClass, ScanKind};

    fn full() -> ScanEvent {
        let mut event = ScanEvent::new(
            ScanKind::Link,
            "sV3kQ9xYb2".into(),
            "redirected",
            Utc.with_ymd_and_hms(2026, 12, 1, 23, 59, 59).unwrap()
                + chrono::Duration::microseconds(123_456),
        );
        event.tenant = Some("acme".into());
        event.device = DeviceClass::Ios;
        event.bot = true;
        event.browser = Some("WeChat".into());
        event.browser_version = Some("8".into());
        event.os = Some("iOS".into());
        event.os_version = Some("17.1".into());
        event.country = Some("BR".into());
        event.region = Some("São Paulo".into());
        event.city = Some("São Paulo".into());
        event.referrer = Some("news.example".into());
        event.utm_source = Some("poster".into());
        event.utm_medium = Some("print".into());
        event.utm_campaign = Some("spring".into());
        event.utm_term = Some("t".into());
        event.utm_content = Some("c".into());
        event.variant = Some("variant:b".into());
        event.via_qr = true;
        event.click_id = Some("sV3kQ9xYb27FzxFKHlNCo3VhCeJ84KFE".into());
        event.tags = vec!["spring".into(), "store 12".into()];
        event.visitor = Some("0123456789abcdef".into());
        event
    }

    fn taken(line: &[u8]) -> bool {
        fast(std::str::from_utf8(line).unwrap(), &mut Line::default())
    }

    /// The fast reading of a written line is what serde reads.
    fn same(event: &ScanEvent) {
        let mut line = Vec::new();
        event.write_json(&mut line);
        let slow = Line::from(ScanEvent::from_json(&line).unwrap());
        let text = std::str::from_utf8(&line).unwrap();
        let mut quick = Line::default();
        if fast(text, &mut quick) {
            assert_eq!(quick, slow, "{text}");
        }
        assert_eq!(Line::parse(&line).unwrap(), slow);
    }

    #[test]
    fn the_fast_reading_agrees_with_serde() {
        let plain = ScanEvent::new(
            ScanKind::Code,
            "1yHrICeb5NFw6AzpqjIxgR".into(),
            "bound",
            Utc::now(),
        );
        let mut line = Vec::new();
        plain.write_json(&mut line);
        assert!(taken(&line), "the usual line takes the fast path");
        let mut line = Vec::new();
        full().write_json(&mut line);
        assert!(taken(&line), "{}", String::from_utf8_lossy(&line));
        same(&plain);
        same(&full());
        // Escapes, and times chrono must read, go to serde with the same result.
        let escaped = ScanEvent {
            city: Some("a \"quoted\" \\ city\n".into()),
            tags: vec!["tab\there".into()],
            ..full()
        };
        let mut line = Vec::new();
        escaped.write_json(&mut line);
        assert!(!taken(&line));
        same(&escaped);
        for at in [
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.timestamp_opt(0, 0).unwrap(),
        ] {
            same(&ScanEvent { at, ..full() });
        }
    }

    #[test]
    fn layout_1_lines_and_garbage_go_to_serde_or_nowhere() {
        let old = br#"{"v":1,"at":"2026-11-23T09:36:58.640348Z","key":"sV3kQ9xYb2","outcome":"redirected","tenant":"acme","device":"bot","referrer":"https://www.news.example/a","via_qr":false}"#;
        assert!(!taken(old));
        let read = Line::parse(old).unwrap();
        assert_eq!(read.kind, "link");
        assert!(read.bot);
        assert_eq!(read.referrer.as_deref(), Some("news.example"));
        for garbage in [
            &b""[..],
            b"{}",
            b"[1,2]",
            b"{\"v\":2",
            b"not json",
            b"{\"v\":2,\"nested\":{}}",
        ] {
            assert!(
                Line::parse(garbage).is_none(),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
        // A field the fast path does not know is left to serde (which ignores it).
        let event = full();
        let mut line = Vec::new();
        event.write_json(&mut line);
        let extended = String::from_utf8(line)
            .unwrap()
            .replacen('{', "{\"future\":1,", 1);
        assert!(!taken(extended.as_bytes()));
        assert_eq!(Line::parse(extended.as_bytes()).unwrap(), Line::from(event));
    }

    #[test]
    fn times_are_read_to_the_microsecond() {
        for at in [
            "2026-11-23T22:35:01.123456Z",
            "1970-01-01T00:00:00.000000Z",
            "2024-02-29T23:59:59.999999Z",
            "2016-12-31T23:59:60.500000Z",
        ] {
            let expected = DateTime::parse_from_rfc3339(at).unwrap().timestamp_micros();
            assert_eq!(micros(at), Some(expected), "{at}");
        }
        assert_eq!(micros("2026-13-01T00:00:00.000000Z"), None);
        assert_eq!(
            micros("2026-11-23T22:35:01+01:00"),
            Some(
                DateTime::parse_from_rfc3339("2026-11-23T22:35:01+01:00")
                    .unwrap()
                    .timestamp_micros()
            )
        );
    }
}
