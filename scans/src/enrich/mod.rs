//! Enrichment: what the event writer makes of a scan's raw facts before writing its event.
//!
//! The scan path hands over what it read (the peer address, the forwarding header of a
//! trusted proxy, the user agent, the referrer, the query) and goes on; here, on the writer's
//! thread, they become the client ([`client`]), its place ([`geo`]), browser, OS, device and
//! bot flag ([`agent`]), the campaign ([`campaign`]), the referrer's host and the day's
//! visitor digest. Then the address and the raw user agent are dropped with the [`Scan`]:
//! they are never written to a file, a topic or a table.

pub mod agent;
pub mod campaign;
pub mod client;
pub mod geo;

use std::sync::Arc;

use chrono::NaiveDate;
use records::{ScanEvent, referrer_host};
use sha2::{Digest, Sha256};

pub use agent::{Agent, Agents, AgentsError};
pub use campaign::Campaign;
pub use client::{Client, Forwarded, ProxyCidrError, TrustedProxies};
pub use geo::{GeoIp, GeoIpError, Place};

use crate::Scan;

/// Everything the writer needs to enrich scans; lives on the writer.
#[derive(Debug)]
pub struct Enricher {
    proxies: Arc<TrustedProxies>,
    geo: Option<Arc<GeoIp>>,
    agents: Agents,
    /// The salts of visitor digests for the last two UTC days seen (a batch may straddle
    /// midnight): random, made when a day is first seen, never stored.
    salts: [(NaiveDate, [u8; 16]); 2],
}

impl Enricher {
    pub fn new(
        proxies: Arc<TrustedProxies>,
        geo: Option<Arc<GeoIp>>,
    ) -> Result<Enricher, AgentsError> {
        Ok(Enricher {
            proxies,
            geo,
            agents: Agents::load()?,
            salts: [(NaiveDate::MIN, [0; 16]); 2],
        })
    }

    /// The event of `scan`. Consumes it: the address and the user agent end here.
    pub fn enrich(&mut self, scan: Scan) -> ScanEvent {
        let mut event = ScanEvent::new(scan.kind, scan.key, scan.outcome, scan.at);
        event.tenant = scan.tenant;
        event.variant = scan.variant;
        event.click_id = scan.click_id;
        event.tags = scan.tags.as_slice().to_vec();
        event.via_qr = scan.via_qr;

        let agent = self.agents.parse(scan.user_agent.as_deref());
        event.device = agent.device;
        event.bot = agent.bot;
        event.browser = agent.browser;
        event.browser_version = agent.browser_version;
        event.os = agent.os;
        event.os_version = agent.os_version;

        let client = scan
            .peer
            .map(|peer| self.proxies.client(peer, scan.forwarded.as_ref()));
        if let (Some(geo), Some(address)) = (&self.geo, client.as_ref().and_then(Client::address)) {
            let place = geo.locate(address);
            event.country = place.country;
            event.region = place.region;
            event.city = place.city;
        }
        // A country header from the CDN in front knows best.
        if let Some(country) = scan
            .country
            .and_then(|code| String::from_utf8(code.to_vec()).ok())
        {
            if event.country.as_deref() != Some(&country) {
                event.region = None;
                event.city = None;
            }
            event.country = Some(country);
        }
        event.referrer = scan.referrer.as_deref().and_then(referrer_host);
        if let Some(query) = scan.query.as_deref() {
            let campaign = Campaign::from_query(query);
            event.utm_source = campaign.source;
            event.utm_medium = campaign.medium;
            event.utm_campaign = campaign.campaign;
            event.utm_term = campaign.term;
            event.utm_content = campaign.content;
        }
        if let Some(client) = &client {
            event.visitor = Some(self.visitor(
                event.at.date_naive(),
                client,
                scan.user_agent.as_deref().unwrap_or_default(),
            ));
        }
        event
    }

    /// A digest of the client and its user agent under the salt of `day`: the same visitor
    /// gives the same digest all day, and nothing links two days or leads back to anyone.
    fn visitor(&mut self, day: NaiveDate, client: &Client, user_agent: &str) -> String {
        let salt = match self.salts.iter().find(|(known, _)| *known == day) {
            Some((_, salt)) => *salt,
            None => {
                let oldest = usize::from(self.salts[1].0 < self.salts[0].0);
                let salt = rand::random();
                self.salts[oldest] = (day, salt);
                salt
            }
        };
        let mut digest = Sha256::new();
        digest.update(salt);
        match client {
            Client::Address(std::net::IpAddr::V4(address)) => digest.update(address.octets()),
            Client::Address(std::net::IpAddr::V6(address)) => digest.update(address.octets()),
            Client::Unnamed(name) => digest.update(name),
        }
        digest.update([0]);
        digest.update(user_agent);
        let digest = digest.finalize();
        let mut text = String::with_capacity(16);
        for byte in &digest[..8] {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use records::{DeviceClass, ScanKind, Tags};

    fn enricher() -> Enricher {
        let geo = GeoIp::open(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/geoip/GeoIP2-City-Test.mmdb"),
        )
        .expect("the test database");
        Enricher::new(
            Arc::new(TrustedProxies::parse(&["10.0.0.0/8".into()]).expect("CIDR")),
            Some(Arc::new(geo)),
        )
        .expect("loads")
    }

    fn scan(peer: &str, forwarded: Option<&str>, agent: &str) -> Scan {
        Scan {
            at: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap(),
            kind: ScanKind::Link,
            key: "sV3kQ9xYb2".into(),
            outcome: "redirected",
            tenant: Some("acme".into()),
            variant: Some("variant:b".into()),
            click_id: Some("clk".into()),
            tags: Tags::parse(vec!["spring".into()]).unwrap(),
            via_qr: true,
            peer: Some(peer.parse().unwrap()),
            forwarded: forwarded.map(|f| Forwarded::XForwardedFor(f.into())),
            user_agent: Some(agent.into()),
            referrer: Some("https://www.news.example/story?id=1".into()),
            query: Some("qr=1&utm_source=poster&utm_campaign=spring".into()),
            country: None,
        }
    }

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

    #[test]
    fn a_scan_behind_a_trusted_proxy_is_placed_named_and_digested() {
        let mut enricher = enricher();
        let event = enricher.enrich(scan("10.0.0.7", Some("81.2.69.142"), IPHONE));
        assert_eq!(event.country.as_deref(), Some("GB"));
        assert_eq!(event.region.as_deref(), Some("England"));
        assert_eq!(event.city.as_deref(), Some("London"));
        assert_eq!(event.os.as_deref(), Some("iOS"));
        assert_eq!(event.browser.as_deref(), Some("Mobile Safari"));
        assert_eq!(event.device, DeviceClass::Ios);
        assert!(!event.bot);
        assert_eq!(event.referrer.as_deref(), Some("news.example"));
        assert_eq!(event.utm_source.as_deref(), Some("poster"));
        assert_eq!(event.utm_campaign.as_deref(), Some("spring"));
        assert_eq!(event.tags, ["spring"]);
        assert_eq!(event.variant.as_deref(), Some("variant:b"));
        assert_eq!(event.click_id.as_deref(), Some("clk"));
        let written = serde_json::to_string(&event).unwrap();
        for secret in ["81.2.69.142", "10.0.0.7", "AppleWebKit", "story?id"] {
            assert!(!written.contains(secret), "{secret} leaked: {written}");
        }
        // The same visitor through another proxy hop: the same digest that day.
        let again = enricher.enrich(scan("10.9.9.9", Some("81.2.69.142"), IPHONE));
        assert_eq!(again.visitor, event.visitor);
        // Another visitor, or the same one on another day: another digest.
        let other = enricher.enrich(scan("10.0.0.7", Some("216.160.83.56"), IPHONE));
        assert_eq!(other.country.as_deref(), Some("US"));
        assert_ne!(other.visitor, event.visitor);
        let mut tomorrow = scan("10.0.0.7", Some("81.2.69.142"), IPHONE);
        tomorrow.at += chrono::Duration::days(1);
        assert_ne!(enricher.enrich(tomorrow).visitor, event.visitor);
        // Yesterday's salt is kept while a batch may straddle midnight.
        assert_eq!(
            enricher
                .enrich(scan("10.0.0.7", Some("81.2.69.142"), IPHONE))
                .visitor,
            event.visitor
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_and_a_cdn_header_wins() {
        let mut enricher = enricher();
        // The header claims London, but the peer is no trusted proxy: the peer is located.
        let direct = enricher.enrich(scan("89.160.20.112", Some("81.2.69.142"), IPHONE));
        assert_eq!(direct.country.as_deref(), Some("SE"));
        let mut from_cdn = scan("10.0.0.7", Some("81.2.69.142"), IPHONE);
        from_cdn.country = Some(*b"FR");
        let event = enricher.enrich(from_cdn);
        assert_eq!(event.country.as_deref(), Some("FR"));
        assert_eq!(event.city, None, "a city of another country is not kept");
        let bot = enricher.enrich(scan(
            "10.0.0.7",
            Some("81.2.69.142"),
            "WhatsApp/2.23.20.0 A",
        ));
        assert!(bot.bot);
        assert_eq!(bot.device, DeviceClass::Bot);
    }
}
