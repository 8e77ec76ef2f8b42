//! The pool record decoder: any bytes a Kafka partition could hold are decoded or refused.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = records::PoolRecord::decode(bytes) {
        let again = records::PoolRecord::decode(&record.encode()).expect("what we encode decodes");
        assert_eq!(again.request_id, record.request_id);
        assert_eq!(again.content, record.content);
    }
});
