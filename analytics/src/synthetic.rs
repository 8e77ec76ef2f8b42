//! Realistic synthetic scan events, for tests and benchmarks: many tenants (a few large, many
//! small), keys by a Zipf law (a few posters take most scans), phones more than desktops,
//! WeChat and Safari more than the rest, a few countries most of the time, a share of bots,
//! visitors who come back the same day, and days with a daily rhythm.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use records::{DeviceClass, EventId, ScanEvent, ScanKind};

/// What to make.
#[derive(Debug, Clone)]
pub struct Shape {
    pub events: usize,
    pub tenants: usize,
    /// Keys (codes and links) per tenant, the largest tenant's; smaller tenants have fewer.
    pub keys: usize,
    pub first_day: NaiveDate,
    pub days: u32,
    pub seed: u64,
}

const COUNTRIES: [(&str, &str, &str, u32); 8] = [
    ("CN", "Shanghai", "Shanghai", 40),
    ("CN", "Beijing", "Beijing", 20),
    ("US", "California", "San Francisco", 10),
    ("DE", "Berlin", "Berlin", 8),
    ("GB", "England", "London", 7),
    ("JP", "Tokyo", "Tokyo", 6),
    ("FR", "Île-de-France", "Paris", 5),
    ("BR", "São Paulo", "São Paulo", 4),
];
const AGENTS: [(&str, &str, &str, &str, DeviceClass, u32); 6] = [
    ("WeChat", "8", "iOS", "17.1", DeviceClass::Ios, 35),
    ("Mobile Safari", "17", "iOS", "17.1", DeviceClass::Ios, 20),
    ("WeChat", "8", "Android", "14", DeviceClass::Android, 20),
    (
        "Chrome Mobile",
        "120",
        "Android",
        "14",
        DeviceClass::Android,
        15,
    ),
    ("Chrome", "120", "Windows", "10", DeviceClass::Desktop, 7),
    (
        "Firefox",
        "121",
        "Mac OS X",
        "14.2",
        DeviceClass::Desktop,
        3,
    ),
];
const REFERRERS: [&str; 4] = [
    "news.example",
    "weibo.com",
    "google.com",
    "mp.weixin.qq.com",
];
const SOURCES: [&str; 3] = ["poster", "newsletter", "billboard"];

fn pick<T: Copy>(rng: &mut StdRng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, weight)| weight).sum();
    let mut roll = rng.random_range(0..total);
    for (item, weight) in table {
        if roll < *weight {
            return *item;
        }
        roll -= weight;
    }
    table[0].0
}

/// An index below `n` drawn by a Zipf law of exponent ~1 (rank 1 the most likely).
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    // Inverse of the continuous approximation: rank = n^u.
    let u: f64 = rng.random();
    let rank = (n as f64).powf(u);
    (rank as usize).saturating_sub(1).min(n.saturating_sub(1))
}

/// The tenant names: `tenant-000`, … (`tenant-000` the largest).
pub fn tenant(index: usize) -> String {
    format!("tenant-{index:03}")
}

/// `shape.events` events, in time order.
pub fn events(shape: &Shape) -> Vec<ScanEvent> {
    let mut events = Vec::with_capacity(shape.events);
    for_each_day(shape, |day| events.extend(day));
    events
}

/// The events day by day, each day's in time order, so that a large set never has to be held
/// whole: `each` gets one day's events at a time.
pub fn for_each_day(shape: &Shape, mut each: impl FnMut(Vec<ScanEvent>)) {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let country_table: Vec<(usize, u32)> = COUNTRIES
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.3))
        .collect();
    let agent_table: Vec<(usize, u32)> = AGENTS.iter().enumerate().map(|(i, a)| (i, a.5)).collect();
    let days = shape.days.max(1) as usize;
    for day_index in 0..days {
        let Some(date) = shape
            .first_day
            .checked_add_days(chrono::Days::new(day_index as u64))
        else {
            return;
        };
        let start: DateTime<Utc> = date
            .and_hms_opt(0, 0, 0)
            .map_or_else(Utc::now, |t| t.and_utc());
        // The events spread evenly over the days; the rounding goes to the last.
        let count = if day_index + 1 == days {
            shape.events - shape.events / days * (days - 1)
        } else {
            shape.events / days
        };
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(one(
                &mut rng,
                shape,
                start,
                day_index,
                &country_table,
                &agent_table,
            ));
        }
        events.sort_by_key(|event| event.at);
        each(events);
    }
}

fn one(
    rng: &mut StdRng,
    shape: &Shape,
    start: DateTime<Utc>,
    day_index: usize,
    country_table: &[(usize, u32)],
    agent_table: &[(usize, u32)],
) -> ScanEvent {
    let tenant_index = zipf(rng, shape.tenants.max(1));
    let keys = (shape.keys / (tenant_index + 1)).max(3);
    let key_index = zipf(rng, keys);
    let kind = if key_index % 4 == 3 {
        ScanKind::Link
    } else {
        ScanKind::Code
    };
    let key = match kind {
        ScanKind::Link => format!("L{tenant_index:03}k{key_index:05}"),
        ScanKind::Code => format!("C{tenant_index:03}code{key_index:013}"),
    };
    // Busier in the day than at night.
    let second = loop {
        let second: i64 = rng.random_range(0..86_400);
        let hour = second / 3600;
        if rng.random_range(0..24) < 8 + hour.min(23 - hour) {
            break second;
        }
    };
    let at =
        start + Duration::seconds(second) + Duration::microseconds(rng.random_range(0..1_000_000));
    let (country, region, city, _) = COUNTRIES[pick(rng, country_table)];
    let bot = rng.random_range(0..100) < 4;
    let (browser, version, os, os_version, device, _) = AGENTS[pick(rng, agent_table)];
    let outcome = if rng.random_range(0..50) == 0 {
        "expired"
    } else {
        "bound"
    };
    let mut event = ScanEvent::new(kind, key, outcome, at);
    if kind == ScanKind::Link {
        event.outcome = "redirected".into();
        if key_index % 2 == 1 {
            event.variant = Some(
                if rng.random_bool(0.5) {
                    "variant:a"
                } else {
                    "variant:b"
                }
                .into(),
            );
        }
    }
    event.id = EventId::random();
    event.tenant = Some(tenant(tenant_index));
    event.device = if bot { DeviceClass::Bot } else { device };
    event.bot = bot;
    if !bot {
        event.browser = Some(browser.into());
        event.browser_version = Some(version.into());
        event.os = Some(os.into());
        event.os_version = Some(os_version.into());
    }
    if rng.random_range(0..100) < 97 {
        event.country = Some(country.into());
        event.region = Some(region.into());
        event.city = Some(city.into());
    }
    event.via_qr = rng.random_range(0..100) < 80;
    if !event.via_qr && rng.random_bool(0.5) {
        event.referrer = Some(REFERRERS[rng.random_range(0..REFERRERS.len())].into());
    }
    if rng.random_range(0..10) < 3 {
        event.utm_source = Some(SOURCES[rng.random_range(0..SOURCES.len())].into());
        event.utm_medium = Some("print".into());
        event.utm_campaign = Some(format!("spring-{}", key_index % 5));
    }
    if key_index.is_multiple_of(5) {
        event.tags = vec!["spring".into()];
    }
    // Visitors come back the same day: one is drawn from a pool per tenant, and its digest
    // differs each day (the salt changes daily).
    let visitor_pool = (keys as u64 * 20).max(50);
    let visitor: u64 = rng.random_range(0..visitor_pool);
    let digest = (visitor ^ ((day_index as u64) << 40) ^ ((tenant_index as u64) << 56))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    event.visitor = Some(format!("{digest:016x}"));
    event
}
