//! Where a scan came from: country, region and city of the client's address, from an MMDB
//! file (`analytics.geoip_db`).
//!
//! Two layouts are read: MaxMind's GeoIP2 / GeoLite2 City and Country (`country.iso_code`,
//! `subdivisions[0].names.en`, `city.names.en`), and the flat one of DB-IP's lite downloads
//! and similar (`country_code`, with `region` / `city` when present), which anyone can
//! download without an account. The file is read into memory once; a lookup walks its tree
//! and decodes only the three fields.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader};

/// An open GeoIP database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    path: PathBuf,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("path", &self.path)
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the GeoIP database `{path}`")]
pub struct GeoIpError {
    path: PathBuf,
    #[source]
    source: maxminddb::MaxMindDbError,
}

/// Where an address is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let reader = Reader::open_readfile(path).map_err(|source| GeoIpError {
            path: path.to_owned(),
            source,
        })?;
        Ok(GeoIp {
            reader,
            path: path.to_owned(),
        })
    }

    /// The database's own name for its kind (`GeoIP2-City`, `DBIP-Country-Lite`, …).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The place of `address`; empty when the database does not know it (a private address,
    /// say) or its record is malformed (logged at debug: the scan is still counted).
    pub fn locate(&self, address: IpAddr) -> Place {
        let found = match self.reader.lookup(address) {
            Ok(found) if found.has_data() => found,
            Ok(_) => return Place::default(),
            Err(error) => {
                tracing::debug!(%error, "GeoIP lookup failed");
                return Place::default();
            }
        };
        let text = |path: &[PathElement<'_>]| -> Option<String> {
            match found.decode_path::<&str>(path) {
                Ok(Some(text)) if !text.is_empty() => Some(text.to_owned()),
                Ok(_) => None,
                Err(error) => {
                    tracing::debug!(%error, "a GeoIP record is not as expected");
                    None
                }
            }
        };
        use PathElement::{Index, Key};
        let country = text(&[Key("country"), Key("iso_code")])
            .or_else(|| text(&[Key("registered_country"), Key("iso_code")]))
            .or_else(|| text(&[Key("country_code")]))
            .filter(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(|code| code.to_ascii_uppercase());
        let region = text(&[Key("subdivisions"), Index(0), Key("names"), Key("en")])
            .or_else(|| text(&[Key("region")]))
            .or_else(|| text(&[Key("state1")]));
        let city = text(&[Key("city"), Key("names"), Key("en")]).or_else(|| text(&[Key("city")]));
        Place {
            country,
            region,
            city,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(name: &str) -> GeoIp {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/geoip")
            .join(name);
        GeoIp::open(&path).expect("the test database opens")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_city_database_gives_country_region_and_city() {
        let geo = open("GeoIP2-City-Test.mmdb");
        let london = geo.locate(ip("81.2.69.142"));
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.region.as_deref(), Some("England"));
        assert_eq!(london.city.as_deref(), Some("London"));
        let milton = geo.locate(ip("216.160.83.56"));
        assert_eq!(milton.country.as_deref(), Some("US"));
        assert_eq!(milton.city.as_deref(), Some("Milton"));
        assert_eq!(
            geo.locate(ip("89.160.20.112")).country.as_deref(),
            Some("SE")
        );
        assert_eq!(geo.locate(ip("127.0.0.1")), Place::default());
        assert_eq!(geo.locate(ip("::1")), Place::default());
    }

    #[test]
    fn a_country_database_gives_the_country_only() {
        let geo = open("GeoLite2-Country-Test.mmdb");
        let place = geo.locate(ip("81.2.69.142"));
        assert_eq!(place.country.as_deref(), Some("GB"));
        assert_eq!(place.city, None);
    }

    #[test]
    fn the_flat_country_code_layout_is_read() {
        let geo = open("DBIP-Country-Lite-Test.mmdb");
        assert_eq!(geo.database_type(), "DBIP-Country-Lite");
        assert_eq!(
            geo.locate(ip("89.160.20.112")).country.as_deref(),
            Some("SE")
        );
        assert_eq!(geo.locate(ip("2001:db8::5")).country.as_deref(), Some("DE"));
        assert_eq!(geo.locate(ip("8.8.8.8")), Place::default());
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let error = GeoIp::open(Path::new("/nonexistent/GeoLite2-City.mmdb")).expect_err("no file");
        assert!(
            error
                .to_string()
                .contains("/nonexistent/GeoLite2-City.mmdb")
        );
    }
}
