//! A link target as JSON, checked, then asked where it sends scans: a checked target sends
//! every scan to one of its own destinations.
#![no_main]
use records::DeviceClass;
use records::link::{LinkTarget, Visit};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(target) = serde_json::from_slice::<LinkTarget>(bytes) else {
        return;
    };
    if target.check().is_err() {
        return;
    }
    let key = records::LinkKey::parse("abcdefghij").expect("a valid key");
    for (device, country, visitor) in [
        (DeviceClass::Ios, Some("GB"), Some("v1")),
        (DeviceClass::Desktop, None, None),
        (DeviceClass::Android, Some("US"), Some("another visitor")),
    ] {
        let served = target.serve(
            &key,
            &Visit {
                device,
                country,
                visitor,
            },
        );
        assert!(
            target
                .destinations()
                .any(|(_, own)| own == served.destination)
        );
    }
});
