//! The world map: Natural Earth's countries (1:110m, public domain, through npm's
//! `world-atlas`; `scripts/update-world-map` regenerates `assets/world-110m.tsv`) in the Equal
//! Earth projection, each shaded by its share of scans on a log scale.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::LazyLock;

use crate::chart::{escape, grouped};

/// One country: ISO 3166-1 alpha-2 code, name, SVG path.
#[derive(Debug)]
pub struct Country {
    pub code: &'static str,
    pub name: &'static str,
    path: &'static str,
}

pub static COUNTRIES: LazyLock<Vec<Country>> = LazyLock::new(|| {
    include_str!("../assets/world-110m.tsv")
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            Some(Country {
                code: fields.next()?,
                name: fields.next()?,
                path: fields.next()?,
            })
        })
        .collect()
});

/// The name of a country code, when the map knows it.
pub fn country_name(code: &str) -> Option<&'static str> {
    COUNTRIES
        .iter()
        .find(|country| country.code.eq_ignore_ascii_case(code))
        .map(|country| country.name)
}

/// Shade 0 (none) to 5 (the most scanned country) on a log scale.
fn shade(scans: u64, most: u64) -> u8 {
    if scans == 0 || most == 0 {
        return 0;
    }
    let share = ((scans as f64).ln_1p() / (most as f64).ln_1p()).clamp(0.0, 1.0);
    1 + (share * 4.0).round() as u8
}

/// The map as SVG, countries shaded by `scans` (keyed by alpha-2 code, upper case).
pub fn world(scans: &HashMap<String, u64>, title: &str) -> String {
    let most = scans.values().copied().max().unwrap_or(0);
    let mut svg = String::with_capacity(130_000);
    let _ = write!(
        svg,
        r#"<svg class="map" viewBox="0 0 1000 487" role="img" aria-label="{}">"#,
        escape(title)
    );
    for country in COUNTRIES.iter() {
        let count = scans.get(country.code).copied().unwrap_or(0);
        let _ = write!(
            svg,
            r#"<path class="q{}" d="{}"><title>{}: {} scans</title></path>"#,
            shade(count, most),
            country.path,
            escape(country.name),
            grouped(count)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_knows_the_countries_scans_come_from() {
        assert!(COUNTRIES.len() > 150);
        for code in ["DE", "US", "CN", "BR", "GB", "SE", "JP"] {
            assert!(country_name(code).is_some(), "{code}");
        }
        assert_eq!(country_name("de"), Some("Germany"));
    }

    #[test]
    fn shades_rise_with_scans() {
        assert_eq!(shade(0, 100), 0);
        assert_eq!(shade(100, 100), 5);
        assert!(shade(1, 1_000_000) >= 1);
        assert!(shade(10, 1_000) < shade(500, 1_000));
        let svg = world(
            &HashMap::from([("DE".to_owned(), 10)]),
            "Scans <by> country",
        );
        assert!(svg.contains("Germany: 10 scans"));
        assert!(svg.contains("Scans &lt;by&gt; country"));
        assert!(svg.contains(r#"class="q5""#));
    }
}
