//! [`PoolRecord`]: one pre-generated code waiting in the pool, and its wire format.
//!
//! The wire format is postcard (compact, no schema registry needed) wrapped in a versioned
//! enum: the enum's variant index is the first byte of every record, so a binder of release
//! N reads everything release N-1 wrote. A new layout adds a variant; old variants are never
//! changed or removed while records written with them may still sit in a pool.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::RequestId;

/// One pre-generated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub request_id: RequestId,
    /// Which issuer made the code (`local`, or the name of a remote issuer in config).
    pub issuer: String,
    /// What the code encodes: the middle-page URL, or a mini-program `scene`.
    pub content: String,
    /// The rendered image. Remote issuers hand us bytes we cannot make again; the local
    /// renderer's bytes are carried too, so a bind never waits on rendering.
    pub image: Option<CodeImage>,
    pub created_at: DateTime<Utc>,
}

/// Image bytes with the media type that says how to read them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeImage {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for CodeImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CodeImage({}, {} bytes)",
            self.media_type,
            self.bytes.len()
        )
    }
}

/// Why bytes from the pool are not a record we can read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable pool record ({len} bytes): {source}")]
pub struct DecodeError {
    len: usize,
    #[source]
    source: postcard::Error,
}

/// Every layout the pool has ever carried. Append only.
#[derive(Serialize, Deserialize)]
enum Wire {
    V1(WireV1),
}

#[derive(Serialize, Deserialize)]
struct WireV1 {
    request_id: RequestId,
    issuer: String,
    content: String,
    image: Option<CodeImage>,
    created_at_ms: i64,
}

impl PoolRecord {
    /// The newest wire layout.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire::V1(WireV1 {
            request_id: self.request_id,
            issuer: self.issuer.clone(),
            content: self.content.clone(),
            image: self.image.clone(),
            created_at_ms: self.created_at.timestamp_millis(),
        });
        // Serializing owned strings and bytes into a Vec cannot fail.
        postcard::to_stdvec(&wire).unwrap_or_default()
    }

    /// Reads any layout this release knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire = postcard::from_bytes(bytes).map_err(|source| DecodeError {
            len: bytes.len(),
            source,
        })?;
        Ok(match wire {
            Wire::V1(v1) => PoolRecord {
                request_id: v1.request_id,
                issuer: v1.issuer,
                content: v1.content,
                image: v1.image,
                created_at: DateTime::from_timestamp_millis(v1.created_at_ms).unwrap_or_default(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PoolRecord {
        PoolRecord {
            request_id: RequestId::generate(),
            issuer: "local".into(),
            content: "https://qr.example.com/m/abc".into(),
            image: Some(CodeImage {
                media_type: "image/png".into(),
                bytes: vec![0x89, b'P', b'N', b'G'],
            }),
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        }
    }

    #[test]
    fn a_record_survives_the_wire() {
        let record = record();
        assert_eq!(PoolRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn the_first_byte_is_the_layout_version() {
        assert_eq!(record().encode()[0], 0, "V1 is variant 0");
    }

    /// Bytes written by release 0.1 (V1), frozen here: a later release must still read them.
    #[test]
    fn records_written_by_the_first_release_still_decode() {
        let frozen: &[u8] = &[
            0, 22, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
            48, 55, 5, 108, 111, 99, 97, 108, 3, 117, 114, 108, 0, 254, 175, 171, 254, 249, 98,
        ];
        let decoded = PoolRecord::decode(frozen).unwrap();
        assert_eq!(
            decoded.request_id,
            RequestId::parse("0000000000000000000007").unwrap()
        );
        assert_eq!(decoded.issuer, "local");
        assert_eq!(decoded.content, "url");
        assert_eq!(decoded.image, None);
        assert_eq!(decoded.created_at.timestamp_millis(), 1_700_000_001_023);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(PoolRecord::decode(&[]).is_err());
        assert!(PoolRecord::decode(&[7, 1, 2, 3]).is_err());
        assert!(PoolRecord::decode(&[0, 200, 200, 200]).is_err());
        let mut truncated = record().encode();
        truncated.truncate(truncated.len() / 2);
        assert!(PoolRecord::decode(&truncated).is_err());
    }
}
