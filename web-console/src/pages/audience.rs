//! Where and who: the world map shaded by scans, then regions, cities, devices, browsers,
//! operating systems, referrers and campaigns.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;

use crate::pages::{self, Range, RangeForm, Scans, Share};
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, map, render};

/// A breakdown table of the page.
#[derive(Debug)]
struct Breakdown {
    /// The API's dimension.
    dimension: &'static str,
    title: &'static str,
    shares: Vec<Share>,
}

/// The tables, in the order shown, after the map's countries.
const BREAKDOWNS: [(&str, &str); 10] = [
    ("region", "Regions"),
    ("city", "Cities"),
    ("device", "Devices"),
    ("browser", "Browsers"),
    ("os", "Operating systems"),
    ("referrer", "Referrers"),
    ("utm_source", "UTM source"),
    ("utm_medium", "UTM medium"),
    ("utm_campaign", "UTM campaign"),
    ("variant", "A/B variants and rules"),
];

/// Groups shown per table.
const TOP: usize = 10;

#[derive(Template)]
#[template(path = "audience.html")]
struct AudiencePage {
    frame: Frame,
    range: Range,
    presets: &'static [(&'static str, &'static str)],
    granularities: &'static [&'static str],
    zones: Vec<String>,
    problem: Option<String>,
    map: String,
    countries: Vec<Share>,
    breakdowns: Vec<Breakdown>,
    page_query: String,
}

pub async fn page(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Query(form): Query<RangeForm>,
) -> Result<Response, ConsoleError> {
    let range = form.resolve(&visit, Utc::now());
    let countries_query = range.api_query("group_by=country&limit=300");
    let queries: Vec<String> = BREAKDOWNS
        .iter()
        .map(|(dimension, _)| range.api_query(&format!("group_by={dimension}&limit={TOP}")))
        .collect();
    let api = &console.api;
    let (countries, breakdowns) = futures::join!(
        api.get(&visit.token, &countries_query),
        futures::future::join_all(queries.iter().map(|query| api.get(&visit.token, query))),
    );
    let countries = countries?;
    let mut problem = None;
    let (country_rows, breakdowns) = if countries.status.is_client_error() {
        problem = Some(countries.message());
        (Vec::new(), Vec::new())
    } else {
        let country_rows = countries.json::<Scans>()?.rows;
        let mut tables = Vec::new();
        for ((dimension, title), answer) in BREAKDOWNS.iter().zip(breakdowns) {
            let rows = answer?.json::<Scans>()?.rows;
            tables.push(Breakdown {
                dimension,
                title,
                shares: pages::shares(&rows, |group| group.unwrap_or("(unknown)").to_owned()),
            });
        }
        (country_rows, tables)
    };
    let scans_by_country: HashMap<String, u64> = country_rows
        .iter()
        .filter_map(|row| Some((row.group.clone()?.to_ascii_uppercase(), row.scans)))
        .collect();
    let map = map::world(&scans_by_country, "World map of scans by country");
    let mut countries = pages::shares(&country_rows, |group| match group {
        Some(code) => match map::country_name(code) {
            Some(name) => format!("{name} ({code})"),
            None => code.to_owned(),
        },
        None => "(unknown)".to_owned(),
    });
    countries.truncate(15);
    Ok(render(&AudiencePage {
        frame: Frame::new(&visit, Section::Audience, "Where & who"),
        zones: range.zones(),
        page_query: range.page_query(),
        presets: &pages::PRESETS,
        granularities: &pages::GRANULARITIES,
        problem,
        map,
        countries,
        breakdowns,
        range,
    }))
}
