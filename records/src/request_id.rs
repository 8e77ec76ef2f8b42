//! [`RequestId`]: 122 random bits under 6 bits of the hour it was made, written as 22 base62
//! characters.
//!
//! Why these numbers: the design asks for at least 122 random bits (so that enumerating ids
//! finds nothing) and at most 32 characters (a WeChat mini-program `scene` holds 32). 128 bits
//! in a fixed-width base62 text fit both, and the text is URL-safe without escaping.
//!
//! Why the hour on top: every bind inserts its id into the database's primary-key indexes
//! (`bindings`, `code_images`). Uniformly random ids land on any leaf page of those indexes, so
//! once the indexes outgrow the database's buffers each insert reads a cold page, dirties it,
//! and (the first time after each checkpoint) writes a full copy of it to the WAL. Ids made in
//! the same hour share their top six bits, so the codes the pool hands out together (it is
//! first in, first out) go into one sixty-fourth of each index, which stays in memory: on a
//! table of 4 million binds the WAL a bind writes fell from 2.7-3.2 KB to 1.1 KB, its
//! full-page images from 0.3-0.4 to under 0.03 (`benches/bindings-wal.sh`,
//! docs/performance.md; the insert rate on this machine's disk did not move). The text keeps
//! the value's order (fixed width, digits and letters in ASCII order), so the text index of
//! the database sees the same locality under a byte-wise collation. The hour number wraps
//! every 64 hours; it tells nothing of use about a code, and the 122 bits below it are the
//! whole of what a guesser faces.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The length of every request id's text form.
pub const TEXT_LEN: usize = 22;

/// How many of the top bits of an id number the hour it was made in (modulo 64).
const HOUR_BITS: u32 = 6;

/// The random bits below them.
const RANDOM_BITS: u32 = 128 - HOUR_BITS;

/// An unguessable id for one pooled code. Generated only by [`RequestId::generate`]; read
/// back from outside only through [`RequestId::parse`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u128);

/// Why a text is not a request id. Deliberately vague about which character was wrong: the
/// caller answers a plain 404 either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseRequestIdError {
    #[error("a request id has exactly {TEXT_LEN} characters, this one has {0}")]
    Length(usize),
    #[error("a request id is written in base62 (0-9, A-Z, a-z)")]
    Alphabet,
    #[error("the value is larger than 128 bits")]
    Overflow,
}

impl RequestId {
    /// A fresh id: 122 bits from the thread-local CSPRNG (seeded by the operating system)
    /// under the number of the current hour, modulo 64.
    pub fn generate() -> Self {
        Self::generate_at(SystemTime::now())
    }

    fn generate_at(now: SystemTime) -> Self {
        let hour = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() / 3600);
        let hour_bits = u128::from(hour % (1 << HOUR_BITS)) << RANDOM_BITS;
        let mut rng = rand::rng();
        let random = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> HOUR_BITS;
        RequestId(hour_bits | random)
    }

    /// Parses the 22-character base62 form.
    pub fn parse(text: &str) -> Result<Self, ParseRequestIdError> {
        let bytes = text.as_bytes();
        if bytes.len() != TEXT_LEN {
            return Err(ParseRequestIdError::Length(bytes.len()));
        }
        let mut value: u128 = 0;
        for &byte in bytes {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'A'..=b'Z' => byte - b'A' + 10,
                b'a'..=b'z' => byte - b'a' + 36,
                _ => return Err(ParseRequestIdError::Alphabet),
            };
            value = value
                .checked_mul(62)
                .and_then(|v| v.checked_add(u128::from(digit)))
                .ok_or(ParseRequestIdError::Overflow)?;
        }
        Ok(RequestId(value))
    }

    /// The text form, without allocating. Every scan writes a few (its entity tag, its
    /// page, its event), so the 128-bit value is cut into three parts of at most ten digits
    /// first: two 128-bit divisions instead of twenty-two, the rest in 64 bits.
    pub fn to_text(self) -> RequestIdText {
        const TEN_DIGITS: u128 = 62u128.pow(10);
        fn write_digits(slots: &mut [u8], mut value: u64) {
            for slot in slots.iter_mut().rev() {
                *slot = ALPHABET[(value % 62) as usize];
                value /= 62;
            }
        }
        let mut out = [b'0'; TEXT_LEN];
        let (rest, low) = (self.0 / TEN_DIGITS, self.0 % TEN_DIGITS);
        let (high, middle) = (rest / TEN_DIGITS, rest % TEN_DIGITS);
        // Each part is below 62^10 < 2^60 (the high one below 62^2): the casts are exact.
        write_digits(&mut out[12..], low as u64);
        write_digits(&mut out[2..12], middle as u64);
        write_digits(&mut out[..2], high as u64);
        RequestIdText(out)
    }
}

/// The text form of a [`RequestId`], on the stack.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdText([u8; TEXT_LEN]);

impl RequestIdText {
    pub fn as_str(&self) -> &str {
        // Only ALPHABET bytes are ever written, all ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for RequestIdText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_text().as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl FromStr for RequestId {
    type Err = ParseRequestIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestId::parse(s)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.to_text().as_str())
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        RequestId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn text_form_is_22_base62_characters_and_parses_back() {
        for _ in 0..1000 {
            let id = RequestId::generate();
            let text = id.to_string();
            assert_eq!(text.len(), TEXT_LEN);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(RequestId::parse(&text), Ok(id));
        }
    }

    #[test]
    fn the_text_is_the_plain_base62_digits_of_the_value() {
        let plain = |mut value: u128| {
            let mut out = [b'0'; TEXT_LEN];
            for slot in out.iter_mut().rev() {
                *slot = ALPHABET[(value % 62) as usize];
                value /= 62;
            }
            String::from_utf8(out.to_vec()).unwrap()
        };
        for value in [
            0,
            61,
            62,
            62u128.pow(10) - 1,
            62u128.pow(10),
            62u128.pow(20),
            u128::MAX,
        ]
        .into_iter()
        .chain((0..1000).map(|_| RequestId::generate().0))
        {
            assert_eq!(RequestId(value).to_text().as_str(), plain(value), "{value}");
        }
    }

    #[test]
    fn extreme_values_round_trip() {
        for value in [0, 1, 61, 62, u128::MAX] {
            let id = RequestId(value);
            assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
        }
        assert_eq!(RequestId(0).to_string(), "0".repeat(TEXT_LEN));
    }

    #[test]
    fn generated_ids_do_not_repeat_and_use_every_random_bit() {
        let ids: HashSet<_> = (0..10_000).map(|_| RequestId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
        let (mut ones, mut zeros) = (0u128, 0u128);
        for id in &ids {
            ones |= id.0;
            zeros |= !id.0;
        }
        let random = (1u128 << RANDOM_BITS) - 1;
        assert_eq!(ones & random, random, "a random bit is never 1");
        assert_eq!(zeros & random, random, "a random bit is never 0");
    }

    #[test]
    fn ids_made_in_one_hour_share_their_top_bits_and_the_next_hour_has_the_next() {
        let hour = |n: u64| UNIX_EPOCH + Duration::from_secs(n * 3600);
        let top = |id: RequestId| id.0 >> RANDOM_BITS;
        let start = 493_000; // an hour of 2026
        let first = top(RequestId::generate_at(hour(start)));
        for second in [0, 1, 1799, 3599] {
            let id = RequestId::generate_at(hour(start) + Duration::from_secs(second));
            assert_eq!(top(id), first, "{second} s into the hour");
        }
        assert_eq!(
            top(RequestId::generate_at(hour(start + 1))),
            (first + 1) % 64
        );
        // Sixty-four hours later the same bits again; before the epoch (a clock set wrong), 0.
        assert_eq!(top(RequestId::generate_at(hour(start + 64))), first);
        assert_eq!(
            top(RequestId::generate_at(UNIX_EPOCH - Duration::from_secs(1))),
            0
        );
    }

    #[test]
    fn the_text_sorts_as_the_value_does() {
        // What keeps one hour's ids together in a text index (byte-wise collation).
        let mut ids: Vec<RequestId> = (0..64)
            .flat_map(|hour| {
                (0..50).map(move |second| {
                    RequestId::generate_at(UNIX_EPOCH + Duration::from_secs(hour * 3600 + second))
                })
            })
            .chain([
                RequestId(0),
                RequestId(u128::MAX),
                RequestId(61),
                RequestId(62),
            ])
            .collect();
        ids.sort_unstable();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert!(texts.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn malformed_text_is_rejected() {
        assert_eq!(RequestId::parse(""), Err(ParseRequestIdError::Length(0)));
        assert_eq!(RequestId::parse("abc"), Err(ParseRequestIdError::Length(3)));
        assert_eq!(
            RequestId::parse("0000000000000000000-_!"),
            Err(ParseRequestIdError::Alphabet)
        );
        // 22 'z' is 62^22 - 1, larger than u128::MAX.
        assert_eq!(
            RequestId::parse(&"z".repeat(TEXT_LEN)),
            Err(ParseRequestIdError::Overflow)
        );
        // Multi-byte characters count as bytes, never panic on a char boundary.
        assert!(RequestId::parse("ééééééééééé").is_err());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let id = RequestId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: RequestId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<RequestId>("\"nope\"").is_err());
    }
}
