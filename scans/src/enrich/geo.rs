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

use maxminddb::Reader;
use serde::Deserialize;

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
    /// say) or its record is malformed (logged at debug: the scan is still counted). The
    /// record is decoded once, into the few fields wanted, borrowing its text.
    pub fn locate(&self, address: IpAddr) -> Place {
        let record = match self
            .reader
            .lookup(address)
            .and_then(|found| found.decode::<Record<'_>>())
        {
            Ok(Some(record)) => record,
            Ok(None) => return Place::default(),
            Err(error) => {
                tracing::debug!(%error, "GeoIP lookup failed");
                return Place::default();
            }
        };
        let text = |value: Option<&str>| value.filter(|text| !text.is_empty()).map(str::to_owned);
        let country = record
            .country
            .and_then(|country| country.iso_code)
            .or_else(|| {
                record
                    .registered_country
                    .and_then(|country| country.iso_code)
            })
            .or(record.country_code)
            .filter(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(str::to_ascii_uppercase);
        let region = record
            .subdivisions
            .and_then(|subdivisions| subdivisions.into_iter().next())
            .and_then(|subdivision| subdivision.names.en)
            .or(record.region)
            .or(record.state1);
        let city = match record.city {
            Some(CityField::Named(city)) => city.names.en,
            Some(CityField::Flat(name)) => Some(name),
            None => None,
        };
        Place {
            country,
            region: text(region),
            city: text(city),
        }
    }
}

/// The fields read of a record, in either layout; the rest is skipped undecoded.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Country<'a>>,
    #[serde(borrow)]
    registered_country: Option<Country<'a>>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Named<'a>>>,
    #[serde(borrow)]
    city: Option<CityField<'a>>,
    /// The flat layout (DB-IP Lite and others).
    country_code: Option<&'a str>,
    region: Option<&'a str>,
    state1: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Names<'a>,
}

#[derive(Deserialize, Default)]
struct Names<'a> {
    en: Option<&'a str>,
}

/// `city` is a map with names (GeoIP2) or a plain name (flat layouts). Told apart by hand:
/// serde's untagged enums buffer the whole value (every language's name) before choosing.
enum CityField<'a> {
    Named(Named<'a>),
    Flat(&'a str),
}

impl<'de: 'a, 'a> Deserialize<'de> for CityField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = CityField<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a city: a name, or a map with `names`")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                name: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(CityField::Flat(name))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut names = Names::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    if key == "names" {
                        names = map.next_value()?;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(CityField::Named(Named { names }))
            }
        }
        deserializer.deserialize_any(Either)
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
