//! No open redirect: a link may send scanners only to hosts its tenant is allowed
//! (`[redirect.allowed_hosts]`), or to a destination the platform signed for that tenant.
//!
//! A host pattern is a host name (`shop.example`, that host only) or `*.` and a domain
//! (`*.example`, its subdomains, not the domain itself). A signature is the lower-case hex
//! HMAC-SHA256, under `redirect.signing_secret`, of `<tenant>\n<destination>`: a platform
//! that checked a destination some other way signs it, and a link may then use it.
//!
//! Destinations are checked when a version is written; a scan serves what was written.

use std::collections::{BTreeMap, HashMap};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use records::{LinkTarget, Tenant, check_destination};

/// The destination rules of every tenant.
#[derive(Clone, Default)]
pub struct Destinations {
    hosts: BTreeMap<String, Vec<String>>,
    signing_secret: Option<SecretString>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("hosts", &self.hosts)
            .field("signing", &self.signing_secret.is_some())
            .finish()
    }
}

/// A destination the tenant may not use, by the field that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{field}`: {host} is not an allowed host for this tenant, and no valid signature came with it"
)]
pub struct NotAllowed {
    pub field: String,
    pub host: String,
}

impl Destinations {
    pub fn new(hosts: BTreeMap<String, Vec<String>>, signing_secret: Option<SecretString>) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|(tenant, patterns)| {
                let patterns = patterns
                    .into_iter()
                    .map(|pattern| pattern.to_ascii_lowercase())
                    .collect();
                (tenant, patterns)
            })
            .collect();
        Destinations {
            hosts,
            signing_secret,
        }
    }

    fn host_allowed(&self, tenant: &Tenant, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.get(tenant.as_str()).is_some_and(|patterns| {
            patterns
                .iter()
                .any(|pattern| match pattern.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                    None => *pattern == host,
                })
        })
    }

    /// The signature of `destination` for `tenant`, when signing is configured.
    pub fn sign(&self, tenant: &Tenant, destination: &str) -> Option<String> {
        let mac = self.mac(tenant, destination)?;
        Some(
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    fn mac(&self, tenant: &Tenant, destination: &str) -> Option<Hmac<Sha256>> {
        let secret = self.signing_secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).ok()?;
        mac.update(tenant.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(destination.as_bytes());
        Some(mac)
    }

    fn signed(&self, tenant: &Tenant, destination: &str, signature: Option<&String>) -> bool {
        let (Some(mac), Some(signature)) = (self.mac(tenant, destination), signature) else {
            return false;
        };
        let Some(bytes) = decode_hex(signature) else {
            return false;
        };
        // Constant time, by the hmac crate.
        mac.verify_slice(&bytes).is_ok()
    }

    /// Checks every destination of `target` for `tenant`; `signatures` maps destinations
    /// to their signatures.
    pub fn check(
        &self,
        tenant: &Tenant,
        target: &LinkTarget,
        signatures: &HashMap<String, String>,
    ) -> Result<(), NotAllowed> {
        for (field, destination) in target.destinations() {
            // `LinkTarget::check` ran first; an unparsable one is refused all the same.
            let host = check_destination(destination)
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default();
            if !self.host_allowed(tenant, &host)
                && !self.signed(tenant, destination, signatures.get(destination))
            {
                return Err(NotAllowed { field, host });
            }
        }
        Ok(())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations() -> Destinations {
        Destinations::new(
            [(
                "acme".to_owned(),
                vec![
                    "Shop.Acme.example".to_owned(),
                    "*.acme-promo.example".to_owned(),
                ],
            )]
            .into(),
            Some(SecretString::from("a signing secret")),
        )
    }

    fn target(destination: &str) -> LinkTarget {
        LinkTarget {
            destination: destination.to_owned(),
            effective_start: None,
            effective_end: None,
            rules: Vec::new(),
            split: Vec::new(),
            track_conversions: false,
        }
    }

    #[test]
    fn hosts_match_exactly_or_as_subdomains() {
        let rules = destinations();
        let acme = Tenant::parse("acme").unwrap();
        let other = Tenant::parse("other").unwrap();
        let none = HashMap::new();
        for good in [
            "https://shop.acme.example/a",
            "https://SHOP.acme.example/",
            "https://x.acme-promo.example/",
            "https://a.b.acme-promo.example/",
        ] {
            assert!(rules.check(&acme, &target(good), &none).is_ok(), "{good}");
        }
        for bad in [
            "https://acme-promo.example/",
            "https://evilacme-promo.example/",
            "https://shop.acme.example.evil.example/",
            "https://evil.example/?shop.acme.example",
        ] {
            assert!(rules.check(&acme, &target(bad), &none).is_err(), "{bad}");
        }
        assert!(
            rules
                .check(&other, &target("https://shop.acme.example/"), &none)
                .is_err(),
            "another tenant's hosts are not this tenant's"
        );
    }

    #[test]
    fn a_signed_destination_passes_only_for_the_tenant_it_was_signed_for() {
        let rules = destinations();
        let acme = Tenant::parse("acme").unwrap();
        let other = Tenant::parse("other").unwrap();
        let url = "https://partner.example/offer";
        let signature = rules.sign(&acme, url).unwrap();
        let signed: HashMap<_, _> = [(url.to_owned(), signature.clone())].into();
        assert!(rules.check(&acme, &target(url), &signed).is_ok());
        assert!(rules.check(&other, &target(url), &signed).is_err());
        let forged: HashMap<_, _> = [(url.to_owned(), "00".repeat(32))].into();
        assert!(rules.check(&acme, &target(url), &forged).is_err());
        let unsigning = Destinations::new(BTreeMap::new(), None);
        assert!(unsigning.check(&acme, &target(url), &signed).is_err());
        assert_eq!(unsigning.sign(&acme, url), None);
    }
}
