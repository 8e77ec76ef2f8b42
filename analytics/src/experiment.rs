//! A/B readouts: per variant of a link's split, its scans, visitors, conversions and
//! conversion rate, and its lift against the first variant (the control) with a 95 %
//! interval.
//!
//! A variant's conversion rate is the share of its scans (bots left out) whose click led to
//! at least one conversion of the goal. Lift is the relative difference of rates,
//! `rate / control rate − 1`, with the 95 % interval of the rate ratio on the log scale
//! (Katz et al. 1978: `exp(ln RR ± 1.96 · √(1/x₁ − 1/n₁ + 1/x₀ − 1/n₀))`), and the
//! two-sided p-value of the two-proportion z-test with pooled variance. Both are normal
//! approximations: sound with a few dozen conversions per variant, shaky below — the readout
//! says so (`enough_data`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// The z of a two-sided 95 % interval.
const Z_95: f64 = 1.959_963_984_540_054;
/// Conversions per variant below which the normal approximation is not to be trusted.
const ENOUGH_CONVERSIONS: u64 = 30;

/// What a variant's scans and clicks came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub scans: u64,
    pub visitors: u64,
    /// Clicks that converted, by goal name; the clicks are distinct within a goal.
    pub converted: BTreeMap<String, HashSet<String>>,
    /// Conversions by goal (a click may convert more than once) and their value.
    pub conversions: BTreeMap<String, (u64, f64)>,
}

/// How a variant compares with the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lift {
    /// `rate / control rate − 1`.
    pub relative: f64,
    /// The 95 % interval of `relative` (`None` while a variant has no conversion).
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Two-proportion z-test, two-sided.
    pub p_value: Option<f64>,
}

/// One variant's line of the readout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantReadout {
    pub variant: String,
    pub scans: u64,
    pub visitors: u64,
    /// Scans whose click converted (to the goal asked for, or to any).
    pub converted: u64,
    /// Conversions reported (a click may convert more than once) and their summed value.
    pub conversions: u64,
    pub value: f64,
    pub conversion_rate: Option<f64>,
    /// `None` for the control, and while the control has no conversion.
    pub lift: Option<Lift>,
    /// Share of this variant's scans that reached each goal.
    pub funnel: BTreeMap<String, f64>,
}

/// Compares `variants` (in order; the first is the control) on `goal` (`None`: any goal).
pub fn readout(variants: &[(String, Observed)], goal: Option<&str>) -> Vec<VariantReadout> {
    let converted_of = |observed: &Observed| -> u64 {
        match goal {
            Some(goal) => observed
                .converted
                .get(goal)
                .map_or(0, |set| set.len() as u64),
            None => {
                let any: HashSet<&String> = observed.converted.values().flatten().collect();
                any.len() as u64
            }
        }
    };
    let control = variants
        .first()
        .map(|(_, observed)| (observed.scans, converted_of(observed)));
    variants
        .iter()
        .enumerate()
        .map(|(index, (name, observed))| {
            let converted = converted_of(observed);
            let (conversions, value) = observed
                .conversions
                .iter()
                .filter(|(name, _)| goal.is_none_or(|goal| goal == name.as_str()))
                .fold((0, 0.0), |(count, sum), (_, (c, v))| (count + c, sum + v));
            let lift = match control {
                Some((n0, x0)) if index > 0 => lift(n0, x0, observed.scans, converted),
                _ => None,
            };
            VariantReadout {
                variant: name.clone(),
                scans: observed.scans,
                visitors: observed.visitors,
                converted,
                conversions,
                value,
                conversion_rate: rate(converted, observed.scans),
                lift,
                funnel: observed
                    .converted
                    .iter()
                    .filter_map(|(goal, clicks)| {
                        Some((goal.clone(), rate(clicks.len() as u64, observed.scans)?))
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Whether every variant has enough conversions for the intervals to mean much.
pub fn enough_data(readout: &[VariantReadout]) -> bool {
    !readout.is_empty() && readout.iter().all(|v| v.converted >= ENOUGH_CONVERSIONS)
}

fn rate(converted: u64, scans: u64) -> Option<f64> {
    (scans > 0).then(|| converted as f64 / scans as f64)
}

/// The lift of `x1` of `n1` against `x0` of `n0`.
pub fn lift(n0: u64, x0: u64, n1: u64, x1: u64) -> Option<Lift> {
    if n0 == 0 || n1 == 0 || x0 == 0 {
        return None;
    }
    let (n0f, x0f, n1f, x1f) = (n0 as f64, x0 as f64, n1 as f64, x1 as f64);
    let (p0, p1) = (x0f / n0f, x1f / n1f);
    let relative = p1 / p0 - 1.0;
    let (low, high) = if x1 > 0 {
        let se = (1.0 / x1f - 1.0 / n1f + 1.0 / x0f - 1.0 / n0f)
            .max(0.0)
            .sqrt();
        let log_ratio = (p1 / p0).ln();
        (
            Some((log_ratio - Z_95 * se).exp() - 1.0),
            Some((log_ratio + Z_95 * se).exp() - 1.0),
        )
    } else {
        (None, None)
    };
    let pooled = (x0f + x1f) / (n0f + n1f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n0f + 1.0 / n1f)).sqrt();
    let p_value = (se > 0.0).then(|| erfc(((p1 - p0) / se).abs() / std::f64::consts::SQRT_2));
    Some(Lift {
        relative,
        low,
        high,
        p_value,
    })
}

/// The complementary error function (Numerical Recipes' `erfcc`, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * polynomial.exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

/// Adds conversions to the variants of the clicks they name: `clicks` maps a click id to
/// its variant, `conversions` are (click id, goal, value).
pub fn attribute(
    observed: &mut HashMap<String, Observed>,
    clicks: &HashMap<String, String>,
    conversions: &[(String, String, Option<f64>)],
) {
    for (click, goal, value) in conversions {
        let Some(variant) = clicks.get(click) else {
            continue;
        };
        let entry = observed.entry(variant.clone()).or_default();
        entry
            .converted
            .entry(goal.clone())
            .or_default()
            .insert(click.clone());
        let sum = entry.conversions.entry(goal.clone()).or_default();
        sum.0 += 1;
        sum.1 += value.unwrap_or(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    #[test]
    fn lift_and_its_interval_match_the_textbook() {
        // 100 of 1,000 against 130 of 1,000: rate ratio 1.3, Katz interval 1.017–1.662,
        // z = 2.103, p = 0.0355.
        let lift = lift(1_000, 100, 1_000, 130).unwrap();
        assert!(close(lift.relative, 0.3), "{lift:?}");
        assert!(close(lift.low.unwrap(), 0.0169), "{lift:?}");
        assert!(close(lift.high.unwrap(), 0.6619), "{lift:?}");
        assert!(close(lift.p_value.unwrap(), 0.0355), "{lift:?}");
        // No difference: lift 0, p 1.
        let same = super::lift(500, 50, 500, 50).unwrap();
        assert!(close(same.relative, 0.0) && close(same.p_value.unwrap(), 1.0));
        // A control without conversions has no lift to speak of.
        assert_eq!(super::lift(500, 0, 500, 5), None);
        // A variant without conversions: lift −100 %, no interval.
        let none = super::lift(500, 5, 500, 0).unwrap();
        assert!(close(none.relative, -1.0) && none.low.is_none());
    }

    #[test]
    fn conversions_are_attributed_to_their_clicks_variants() {
        let clicks: HashMap<String, String> = [("c1", "a"), ("c2", "b"), ("c3", "b")]
            .into_iter()
            .map(|(c, v)| (c.to_owned(), v.to_owned()))
            .collect();
        let mut observed: HashMap<String, Observed> = HashMap::new();
        observed.entry("a".into()).or_default().scans = 10;
        observed.entry("b".into()).or_default().scans = 10;
        let conversions = vec![
            ("c1".to_owned(), "signup".to_owned(), None),
            ("c2".to_owned(), "signup".to_owned(), None),
            ("c2".to_owned(), "purchase".to_owned(), Some(30.0)),
            ("c2".to_owned(), "purchase".to_owned(), Some(12.5)),
            ("c3".to_owned(), "signup".to_owned(), None),
            ("unknown".to_owned(), "signup".to_owned(), None),
        ];
        attribute(&mut observed, &clicks, &conversions);
        let variants = vec![
            ("a".to_owned(), observed["a"].clone()),
            ("b".to_owned(), observed["b"].clone()),
        ];
        let any = readout(&variants, None);
        assert_eq!((any[0].converted, any[1].converted), (1, 2));
        assert_eq!(any[1].conversions, 4);
        let purchase = readout(&variants, Some("purchase"));
        assert_eq!((purchase[0].converted, purchase[1].converted), (0, 1));
        assert_eq!(purchase[1].conversions, 2);
        assert!(close(purchase[1].value, 42.5));
        assert_eq!(any[1].funnel["signup"], 0.2);
        assert_eq!(any[1].funnel["purchase"], 0.1);
        assert!(!enough_data(&any));
    }
}
