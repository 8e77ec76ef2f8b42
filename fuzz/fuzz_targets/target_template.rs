//! A target template filled with any params never leaves the template's scheme and host.
#![no_main]
libfuzzer_sys::fuzz_target!(|input: (&str, &str, &str)| {
    let (path, name, value) = input;
    // Anything else would be part of the host (`listings.examplec/…`): the template's own
    // host, which is not what this target checks.
    if !path.starts_with(['/', '?', '#']) {
        return;
    }
    let text = format!("https://listings.example{}", path);
    let Ok(template) = records::TargetTemplate::parse(&text) else {
        return;
    };
    let mut map = serde_json::Map::new();
    map.insert(name.to_owned(), serde_json::Value::from(value));
    let Ok(params) = records::Params::parse(
        serde_json::Value::Object(map),
        &records::ParamsLimits::default(),
    ) else {
        return;
    };
    if let Some(filled) = template.fill(&params) {
        if let Ok(url) = url::Url::parse(&filled) {
            assert_eq!(url.scheme(), "https");
            assert_eq!(url.host_str(), Some("listings.example"));
        }
    }
});
