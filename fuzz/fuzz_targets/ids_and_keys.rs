//! Request ids, link keys, tenants and tags, as they arrive in paths and bodies.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(id) = records::RequestId::parse(text) {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(key) = records::LinkKey::parse(text) {
        assert_eq!(key.as_str(), text);
    }
    let _ = records::Tenant::parse(text);
    let _ = records::Tags::parse(text.split(',').map(str::to_owned).collect());
});
