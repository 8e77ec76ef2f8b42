//! Settings of the pregen part: pool depth marks, off-peak windows and issuers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use secrecy::SecretString;
use serde::Deserialize;

/// The issuer name of codes rendered by qrpool itself.
pub const LOCAL_ISSUER: &str = "local";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PregenSettings {
    /// High-water mark: inside an off-peak window pregen fills the pool up to here.
    pub target_depth: u64,
    /// Outside the windows pregen refills only when the pool falls below this (and only up
    /// to it): an emergency refill.
    pub low_water: u64,
    /// Codes rendered or requested at a time; also the bound on work in flight.
    pub batch: usize,
    pub check_interval_ms: u64,
    /// The issuer `pregen run` fills the pool from: `local` or a name under `issuers`.
    pub issuer: String,
    /// The time zone the windows are written in (IANA name).
    pub time_zone: chrono_tz::Tz,
    /// When the platform is quiet, as `"Mon-Fri 22:00-07:00"`, `"Sat,Sun 00:00-24:00"` or
    /// `"daily 01:00-06:00"`. A window ending at or before its start runs past midnight.
    /// Empty: every hour counts as off-peak.
    pub off_peak: Vec<OffPeakWindow>,
    /// Outside the windows, the share of each remote issuer's quota pregen may use; the rest
    /// is left for on-demand issuing at peak.
    pub peak_quota_share: f64,
    pub issuers: BTreeMap<String, IssuerSettings>,
}

impl Default for PregenSettings {
    fn default() -> Self {
        PregenSettings {
            target_depth: 2_000,
            low_water: 1_000,
            batch: 256,
            check_interval_ms: 1_000,
            issuer: LOCAL_ISSUER.to_owned(),
            time_zone: chrono_tz::Tz::UTC,
            off_peak: Vec::new(),
            peak_quota_share: 0.2,
            issuers: BTreeMap::new(),
        }
    }
}

impl PregenSettings {
    /// Whether `now` falls in an off-peak window (always, when none is configured).
    pub fn is_off_peak(&self, now: DateTime<Utc>) -> bool {
        if self.off_peak.is_empty() {
            return true;
        }
        let local = now.with_timezone(&self.time_zone);
        let weekday = local.weekday().num_days_from_monday() as usize;
        let minute = u16::try_from(local.hour() * 60 + local.minute()).unwrap_or_default();
        self.off_peak
            .iter()
            .any(|window| window.contains(weekday, minute))
    }
}

/// One recurring off-peak window, in the zone of `pregen.time_zone`.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OffPeakWindow {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight; `end` is 1440 for "24:00".
    start: u16,
    end: u16,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl OffPeakWindow {
    /// `weekday` counts from Monday = 0; `minute` from midnight.
    pub fn contains(&self, weekday: usize, minute: u16) -> bool {
        if self.start < self.end {
            self.days[weekday] && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the evening of a listed day, and the morning after it.
            let yesterday = (weekday + 6) % 7;
            (self.days[weekday] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }
}

impl FromStr for OffPeakWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || format!("{text:?} is not like \"Mon-Fri 22:00-07:00\"");
        let (days_text, times) = text.trim().split_once(' ').ok_or_else(expected)?;
        let mut days = [false; 7];
        if days_text.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for item in days_text.split(',') {
                let day = |name: &str| {
                    DAY_NAMES
                        .iter()
                        .position(|day| day.eq_ignore_ascii_case(name))
                        .ok_or_else(|| format!("{name:?} is not a day (Mon … Sun)"))
                };
                let (first, last) = match item.split_once('-') {
                    Some((first, last)) => (day(first)?, day(last)?),
                    None => (day(item)?, day(item)?),
                };
                let mut at = first;
                loop {
                    days[at] = true;
                    if at == last {
                        break;
                    }
                    at = (at + 1) % 7;
                }
            }
        }
        let (start, end) = times.trim().split_once('-').ok_or_else(expected)?;
        let minutes = |clock: &str| -> Result<u16, String> {
            let (hours, minutes) = clock.split_once(':').ok_or_else(expected)?;
            let (hours, minutes): (u16, u16) = (
                hours.parse().map_err(|_| expected())?,
                minutes.parse().map_err(|_| expected())?,
            );
            match (hours, minutes) {
                (0..=23, 0..=59) | (24, 0) => Ok(hours * 60 + minutes),
                _ => Err(format!("{clock:?} is not a time of day")),
            }
        };
        let (start, end) = (minutes(start)?, minutes(end)?);
        if start == end || start == 1440 {
            return Err(format!("{text:?} is an empty window"));
        }
        Ok(OffPeakWindow { days, start, end })
    }
}

impl TryFrom<String> for OffPeakWindow {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Debug for OffPeakWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = DAY_NAMES
            .iter()
            .zip(self.days)
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            days.join(","),
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// A third party that issues codes. Tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IssuerSettings {
    /// A WeChat-style mini-program code API (`getwxacodeunlimit`).
    Wechat(WechatIssuerSettings),
}

impl IssuerSettings {
    pub fn quota(&self) -> QuotaSettings {
        match self {
            IssuerSettings::Wechat(wechat) => wechat.quota,
        }
    }
}

/// How much an issuer lets us call it: `calls` per `window_ms`, shared by every worker.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    pub calls: u32,
    pub window_ms: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            calls: 5_000,
            window_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatIssuerSettings {
    /// Scheme and host of the API.
    pub endpoint: String,
    pub app_id: String,
    /// Secret; environment only (`QRPOOL_PREGEN__ISSUERS__<NAME>__APP_SECRET`).
    pub app_secret: Option<SecretString>,
    /// The fixed middle page of the mini program the codes open.
    pub page: String,
    /// `release`, `trial` or `develop`.
    pub env_version: String,
    pub check_path: bool,
    /// Image width in pixels (the API accepts 280–1280).
    pub width: u32,
    pub auto_color: bool,
    pub line_color: Option<LineColor>,
    pub is_hyaline: bool,
    pub quota: QuotaSettings,
    /// Calls in flight at once.
    pub concurrency: usize,
    pub request_timeout_ms: u64,
    /// Retries of a busy (`-1`) or failed call before the code is given up.
    pub max_retries: u32,
}

impl Default for WechatIssuerSettings {
    fn default() -> Self {
        WechatIssuerSettings {
            endpoint: "https://api.weixin.qq.com".to_owned(),
            app_id: String::new(),
            app_secret: None,
            page: String::new(),
            env_version: "release".to_owned(),
            check_path: true,
            width: 430,
            auto_color: false,
            line_color: None,
            is_hyaline: false,
            quota: QuotaSettings::default(),
            concurrency: 16,
            request_timeout_ms: 5_000,
            max_retries: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineColor {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn window(text: &str) -> OffPeakWindow {
        text.parse().unwrap()
    }

    #[test]
    fn windows_parse_days_ranges_and_midnight() {
        let weeknights = window("Mon-Fri 22:00-07:00");
        assert!(weeknights.contains(0, 22 * 60)); // Monday 22:00
        assert!(weeknights.contains(1, 6 * 60 + 59)); // Tuesday 06:59, Monday's night
        assert!(!weeknights.contains(1, 7 * 60)); // Tuesday 07:00
        assert!(!weeknights.contains(0, 6 * 60)); // Monday 06:00 follows Sunday: not listed
        assert!(weeknights.contains(5, 60)); // Saturday 01:00 follows Friday night
        assert!(!weeknights.contains(5, 23 * 60)); // Saturday evening
        let weekend = window("sat,SUN 00:00-24:00");
        assert!(weekend.contains(6, 23 * 60 + 59));
        assert!(!weekend.contains(0, 0));
        let wrapping = window("Fri-Mon 01:00-02:00");
        assert!(wrapping.contains(0, 90) && wrapping.contains(4, 90) && !wrapping.contains(1, 90));
        assert!(window("daily 01:00-06:00").contains(3, 5 * 60));
        for bad in [
            "Mon-Fri",
            "Mon-Fry 22:00-07:00",
            "Mon 25:00-07:00",
            "Mon 10:00-10:00",
            "Mon 24:00-01:00",
        ] {
            assert!(bad.parse::<OffPeakWindow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn off_peak_is_read_in_the_configured_time_zone() {
        let settings = PregenSettings {
            time_zone: chrono_tz::Asia::Shanghai,
            off_peak: vec![window("Mon-Fri 22:00-07:00"), window("Sat,Sun 00:00-24:00")],
            ..PregenSettings::default()
        };
        // Tuesday 2026-11-24 14:30 UTC is 22:30 in Shanghai: off-peak.
        assert!(settings.is_off_peak(Utc.with_ymd_and_hms(2026, 11, 24, 14, 30, 0).unwrap()));
        // Tuesday 03:00 UTC is 11:00 in Shanghai: peak.
        assert!(!settings.is_off_peak(Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap()));
        // Friday 2026-11-27 20:00 UTC is Saturday 04:00 in Shanghai.
        assert!(settings.is_off_peak(Utc.with_ymd_and_hms(2026, 11, 27, 20, 0, 0).unwrap()));
        assert!(PregenSettings::default().is_off_peak(Utc::now()));
    }
}
