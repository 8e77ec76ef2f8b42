//! Charts drawn on the server as SVG: no script, nothing a content-security policy has to
//! allow, and the same picture in every browser. Colours come from the stylesheet.

use std::fmt::Write;

/// One point of a time series.
#[derive(Debug, Clone)]
pub struct Point {
    /// The bucket as people read it (`Mon 3`, `14:00`).
    pub label: String,
    pub scans: u64,
    pub visitors: u64,
    /// The same bucket of the previous period, when compared.
    pub previous: Option<u64>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// XML text: what a label may hold is escaped.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The axis for values up to `value`: the smallest ceiling of 5, 10, 20, 50, 100, 200, … at or
/// above it, and how many equal whole-number steps divide it (5, or 4 for 2 × 10ⁿ).
fn axis(value: u64) -> (u64, u32) {
    let mut magnitude = 1u64;
    loop {
        for (leading, steps) in [(1, 5), (2, 4), (5, 5)] {
            let ceiling = leading * magnitude;
            if ceiling >= value.max(5) {
                return (ceiling, steps);
            }
        }
        match magnitude.checked_mul(10) {
            Some(next) => magnitude = next,
            None => return (value, 1),
        }
    }
}

/// A line chart of scans (area), visitors and the previous period's scans (dashed).
pub fn time_series(points: &[Point], title: &str) -> String {
    let mut svg = String::new();
    let highest = points
        .iter()
        .map(|point| point.scans.max(point.previous.unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let (ceiling, steps) = axis(highest);
    let ceiling = ceiling as f64;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |index: usize| {
        if points.len() <= 1 {
            LEFT + plot_width / 2.0
        } else {
            LEFT + plot_width * index as f64 / (points.len() - 1) as f64
        }
    };
    let y = |value: u64| TOP + plot_height * (1.0 - value as f64 / ceiling);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        escape(title)
    );
    for step in 0..=steps {
        let value = (ceiling * f64::from(step) / f64::from(steps)).round() as u64;
        let line_y = y(value);
        let _ = write!(
            svg,
            r#"<line class="grid-line" x1="{LEFT}" x2="{}" y1="{line_y:.1}" y2="{line_y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            line_y + 4.0,
            short_number(value)
        );
    }
    let labels = points.len().clamp(1, 7);
    for label in 0..labels {
        let index = if labels == 1 {
            0
        } else {
            label * (points.len() - 1) / (labels - 1)
        };
        if let Some(point) = points.get(index) {
            let anchor = match (label, labels) {
                (0, _) if labels > 1 => "start",
                (last, count) if last + 1 == count && count > 1 => "end",
                _ => "middle",
            };
            let _ = write!(
                svg,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
                x(index),
                HEIGHT - 8.0,
                escape(&point.label)
            );
        }
    }
    if !points.is_empty() {
        let line = |value: &dyn Fn(&Point) -> u64| {
            let mut d = String::new();
            for (index, point) in points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if index == 0 { "M" } else { "L" },
                    x(index),
                    y(value(point))
                );
            }
            d
        };
        let scans = line(&|point| point.scans);
        let _ = write!(
            svg,
            r#"<path class="scans-area" d="{scans}L{:.1},{:.1}L{:.1},{:.1}Z"/>"#,
            x(points.len() - 1),
            y(0),
            x(0),
            y(0)
        );
        if points.iter().any(|point| point.previous.is_some()) {
            let _ = write!(
                svg,
                r#"<path class="previous" d="{}"/>"#,
                line(&|point| point.previous.unwrap_or(0))
            );
        }
        let _ = write!(
            svg,
            r#"<path class="visitors" d="{}"/><path class="scans" d="{scans}"/>"#,
            line(&|point| point.visitors)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `1234` → `1.2k`, for axes.
pub fn short_number(value: u64) -> String {
    match value {
        0..1_000 => value.to_string(),
        1_000..1_000_000 => trim(format!("{:.1}", value as f64 / 1e3)) + "k",
        _ => trim(format!("{:.1}", value as f64 / 1e6)) + "M",
    }
}

fn trim(text: String) -> String {
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

/// `1234567` → `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_their_steps_whole() {
        assert_eq!(axis(0), (5, 5));
        assert_eq!(axis(7), (10, 5));
        assert_eq!(axis(11), (20, 4));
        assert_eq!(axis(60), (100, 5));
        assert_eq!(axis(480), (500, 5));
        assert_eq!(axis(501), (1_000, 5));
        for value in [0, 3, 17, 99, 150, 2_001, 987_654] {
            let (ceiling, steps) = axis(value);
            assert!(
                ceiling >= value && ceiling % u64::from(steps) == 0,
                "{value}"
            );
        }
    }

    #[test]
    fn labels_are_escaped_and_every_point_drawn() {
        let points: Vec<Point> = (0..10)
            .map(|index| Point {
                label: format!("<b>{index}</b>"),
                scans: index * 3,
                visitors: index,
                previous: Some(1),
            })
            .collect();
        let svg = time_series(&points, "Scans & visitors");
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("&lt;b&gt;0&lt;/b&gt;"));
        assert!(svg.contains("Scans &amp; visitors"));
        let scans = svg
            .split(r#"<path class="scans" d=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert_eq!(scans.matches('L').count(), 9, "ten points, nine segments");
        assert!(svg.contains(r#"class="previous""#));
        assert!(time_series(&[], "empty").ends_with("</svg>"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(short_number(999), "999");
        assert_eq!(short_number(1_000), "1k");
        assert_eq!(short_number(12_345), "12.3k");
        assert_eq!(short_number(2_500_000), "2.5M");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(100), "100");
    }
}
