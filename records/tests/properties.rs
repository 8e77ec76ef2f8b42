//! Properties of what crosses our boundaries, checked on generated inputs (proptest): the
//! parsers never panic and read back what they write, a target template never lets params
//! change where a scan lands, a link's choice of destination is one of its own, and a link
//! without its spent versions serves as the whole link does. The same
//! properties run for longer as cargo-fuzz targets (`fuzz/`, `scripts/fuzz`).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use records::link::{Link, LinkTarget, LinkVersion, RedirectStatus, Visit};
use records::{
    DeviceClass, LinkKey, Params, ParamsLimits, PoolRecord, RequestId, Tags, TargetTemplate, Tenant,
};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn device() -> impl Strategy<Value = DeviceClass> {
    prop_oneof![
        Just(DeviceClass::Ios),
        Just(DeviceClass::Android),
        Just(DeviceClass::Desktop),
        Just(DeviceClass::Bot),
        Just(DeviceClass::Unknown),
    ]
}

proptest! {
    #[test]
    fn a_request_id_reads_back_as_itself(text in "[0-9A-Za-z]{0,30}|.{0,40}") {
        if let Ok(id) = RequestId::parse(&text) {
            prop_assert_eq!(id.to_string(), text);
        }
        let generated = RequestId::generate();
        prop_assert_eq!(RequestId::parse(&generated.to_string()).unwrap(), generated);
    }

    #[test]
    fn a_link_key_reads_back_as_itself(text in "[0-9A-Za-z]{0,12}|.{0,20}") {
        if let Ok(key) = LinkKey::parse(&text) {
            prop_assert_eq!(key.as_str(), text.as_str());
        }
    }

    #[test]
    fn a_pool_record_decoder_never_panics_and_round_trips(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        issuer in "[a-z_]{1,16}",
        content in ".{0,64}",
        image in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
    ) {
        let _ = PoolRecord::decode(&bytes);
        let record = PoolRecord {
            request_id: RequestId::generate(),
            issuer,
            content,
            image: image.map(|bytes| records::CodeImage { media_type: "image/png".into(), bytes }),
            created_at: chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap(),
        };
        let decoded = PoolRecord::decode(&record.encode()).unwrap();
        prop_assert_eq!(decoded.request_id, record.request_id);
        prop_assert_eq!(&decoded.issuer, &record.issuer);
        prop_assert_eq!(&decoded.content, &record.content);
        prop_assert_eq!(
            decoded.image.map(|image| image.bytes),
            record.image.map(|image| image.bytes)
        );
    }

    #[test]
    fn params_are_accepted_or_refused_without_a_panic(value in any_json()) {
        let _ = Params::parse(value, &ParamsLimits::default());
    }

    /// For any params, the filled URL's scheme, host and port are the template's.
    #[test]
    fn params_never_change_where_a_template_sends_a_scan(
        host in "[a-z]{1,10}(\\.[a-z]{2,6}){1,2}(:[1-9][0-9]{1,3})?",
        path in "(/[a-z{}_0-9]{0,12}){0,3}(\\?[a-z]{1,5}=\\{[a-z_]{1,8}\\})?(#\\{frag\\})?",
        values in prop::collection::btree_map("[a-z_]{1,8}", ".{0,24}", 0..6),
        frag in ".{0,24}",
    ) {
        let text = format!("https://{host}{path}");
        let Ok(template) = TargetTemplate::parse(&text) else {
            return Ok(());
        };
        let mut params = serde_json::Map::new();
        for (name, value) in &values {
            params.insert(name.clone(), Value::from(value.as_str()));
        }
        params.insert("frag".into(), Value::from(frag));
        // Names the template asks for and the params lack make `fill` answer `None`.
        let params = Params::parse(Value::Object(params), &ParamsLimits::default()).unwrap();
        if let Some(filled) = template.fill(&params) {
            let expected = url::Url::parse(&format!("https://{host}/")).unwrap();
            let url = url::Url::parse(&filled).unwrap();
            prop_assert_eq!(url.scheme(), "https");
            prop_assert_eq!(url.host_str(), expected.host_str());
            prop_assert_eq!(url.port(), expected.port());
        }
    }

    /// Any JSON read as a link target is refused or accepted without a panic; an accepted
    /// one sends every scan to one of its own destinations, the same one for one visitor.
    #[test]
    fn a_link_serves_one_of_its_own_destinations(
        value in any_json(),
        weights in prop::collection::vec(0u32..=20_000, 0..4),
        countries in prop::collection::vec("[A-Z]{2}", 0..3),
        device in device(),
        country in prop::option::of("[A-Z]{2}"),
        visitor in prop::option::of("[a-z0-9]{1,16}"),
    ) {
        if let Ok(target) = serde_json::from_value::<LinkTarget>(value) {
            let _ = target.check();
        }
        let split: Vec<Value> = weights
            .iter()
            .enumerate()
            .map(|(i, weight)| json!({"name": format!("v{i}"), "weight": weight, "destination": format!("https://v{i}.example/")}))
            .collect();
        let target: LinkTarget = serde_json::from_value(json!({
            "destination": "https://default.example/",
            "rules": [{"name": "r", "countries": countries, "destination": "https://rule.example/"}],
            "split": split,
        }))
        .unwrap();
        if target.check().is_err() {
            return Ok(());
        }
        let key = LinkKey::parse("abcdefghij").unwrap();
        let visit = Visit { device, country: country.as_deref(), visitor: visitor.as_deref() };
        let served = target.serve(&key, &visit);
        let own: Vec<String> = target.destinations().map(|(_, destination)| destination.to_owned()).collect();
        prop_assert!(own.iter().any(|destination| destination == served.destination));
        if visitor.is_some() {
            prop_assert_eq!(target.serve(&key, &visit).destination, served.destination);
        }
    }

    #[test]
    fn a_link_without_its_spent_versions_serves_as_the_whole_link_does(
        windows in prop::collection::vec((prop::option::of(0i64..100), prop::option::of(1i64..60)), 1..12),
        now in 0i64..120,
    ) {
        let hour = |n: i64| chrono::DateTime::UNIX_EPOCH + chrono::Duration::hours(n);
        let versions: Vec<LinkVersion> = windows
            .iter()
            .zip(1u32..)
            .map(|(&(start, length), version)| {
                let end = length.map(|length| hour(start.unwrap_or(0) + length));
                LinkVersion {
                    version,
                    target: serde_json::from_value(json!({
                        "destination": format!("https://v{version}.example/"),
                        "effective_start": start.map(hour),
                        "effective_end": end,
                    }))
                    .unwrap(),
                    created_at: hour(0),
                    created_by: "k".into(),
                    note: None,
                }
            })
            .collect();
        let link = Link {
            v: Link::LAYOUT,
            key: LinkKey::parse("abcdefghij").unwrap(),
            tenant: Tenant::parse("acme").unwrap(),
            status: RedirectStatus::Found,
            created_at: hour(0),
            deleted_at: None,
            tags: Tags::default(),
            versions,
        };
        let servable = link.clone().servable_from(hour(now));
        for later in now..200 {
            prop_assert_eq!(
                servable.effective(hour(later)).map(|v| v.version),
                link.effective(hour(later)).map(|v| v.version),
                "at hour {}", later
            );
        }
        prop_assert_eq!(servable.current(), link.current(), "an edit starts from the same version");
        prop_assert!(servable.versions.len() <= link.versions.len());
    }
}
