//! Campaign parameters (`utm_*`) from the scanned URL's query.

use percent_encoding::percent_decode_str;

/// Longest campaign value kept, in characters.
const MAX_VALUE: usize = 128;

/// The five `utm_*` parameters of a query, decoded; absent or empty ones are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Campaign {
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
}

impl Campaign {
    pub fn from_query(query: &str) -> Campaign {
        let mut found = Campaign::default();
        for pair in query.split('&') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let slot = match name {
                "utm_source" => &mut found.source,
                "utm_medium" => &mut found.medium,
                "utm_campaign" => &mut found.campaign,
                "utm_term" => &mut found.term,
                "utm_content" => &mut found.content,
                _ => continue,
            };
            // `+` is a space in a query; the first occurrence of a parameter wins.
            if slot.is_none() {
                let spaced = value.replace('+', " ");
                let decoded = percent_decode_str(&spaced).decode_utf8_lossy();
                let value: String = decoded
                    .trim()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_VALUE)
                    .collect();
                if !value.is_empty() {
                    *slot = Some(value);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utm_parameters_are_decoded_and_the_rest_ignored() {
        let campaign = Campaign::from_query(
            "qr=1&utm_source=poster&utm_medium=print&utm_campaign=spring%20sale&utm_term=a+b&utm_content=&x=y&utm_source=again",
        );
        assert_eq!(campaign.source.as_deref(), Some("poster"));
        assert_eq!(campaign.medium.as_deref(), Some("print"));
        assert_eq!(campaign.campaign.as_deref(), Some("spring sale"));
        assert_eq!(campaign.term.as_deref(), Some("a b"));
        assert_eq!(campaign.content, None);
        assert_eq!(Campaign::from_query("qr=1"), Campaign::default());
        let long = Campaign::from_query(&format!("utm_source={}%0A", "x".repeat(500)));
        assert_eq!(long.source.map(|s| s.len()), Some(MAX_VALUE));
        assert_eq!(
            Campaign::from_query("utm_source=%FF%FE").source.as_deref(),
            Some("\u{fffd}\u{fffd}")
        );
    }
}
