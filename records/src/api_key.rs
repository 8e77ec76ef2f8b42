//! API keys: how an app proves which tenant it acts for, and what it may do.
//!
//! A key reads `qrp_<key id>_<secret>`. The key id (12 base62 characters) is public: it names
//! the key in logs, listings and the store. The secret (32 base62 characters, about 190
//! random bits) is shown once, when the key is made; the store keeps only its SHA-256. A
//! secret that random needs no slow hash: nobody can guess their way back from the digest.
//!
//! A console session ([`SessionToken`], `qrs_<session id>_<secret>`) is made the same way when
//! someone signs in with a key; it acts with that key's tenant and scopes until it ends.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const KEY_PREFIX: &str = "qrp_";
const SESSION_PREFIX: &str = "qrs_";
const KEY_ID_LEN: usize = 12;
const SESSION_ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// An id and a secret behind a prefix: what keys and sessions share.
#[derive(Clone, PartialEq, Eq)]
struct IdAndSecret {
    id: String,
    secret: String,
}

impl IdAndSecret {
    fn generate(id_len: usize) -> Self {
        IdAndSecret {
            id: random_base62(id_len),
            secret: random_base62(SECRET_LEN),
        }
    }

    fn parse(text: &str, prefix: &str, id_len: usize) -> Option<Self> {
        let rest = text.strip_prefix(prefix)?;
        let (id, secret) = rest.split_once('_')?;
        let base62 = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        (base62(id, id_len) && base62(secret, SECRET_LEN)).then(|| IdAndSecret {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret.as_bytes()).to_vec()
    }

    fn matches(&self, stored_hash: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored_hash).into()
    }
}

/// A whole key as an app sends it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyToken(IdAndSecret);

impl std::fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyToken({KEY_PREFIX}{}_…)", self.0.id)
    }
}

impl KeyToken {
    /// A new key with a random id and secret.
    pub fn generate() -> Self {
        KeyToken(IdAndSecret::generate(KEY_ID_LEN))
    }

    /// Reads a key as an app sent it; `None` for anything not shaped like one.
    pub fn parse(text: &str) -> Option<Self> {
        IdAndSecret::parse(text, KEY_PREFIX, KEY_ID_LEN).map(KeyToken)
    }

    pub fn key_id(&self) -> &str {
        &self.0.id
    }

    /// What the store keeps instead of the secret.
    pub fn secret_hash(&self) -> Vec<u8> {
        self.0.secret_hash()
    }

    /// Whether this key's secret is the one `stored_hash` was made from (constant time).
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.0.matches(stored_hash)
    }

    /// The whole key, to show once to whoever made it.
    pub fn reveal(&self) -> String {
        format!("{KEY_PREFIX}{}_{}", self.0.id, self.0.secret)
    }
}

/// A console session as its cookie carries it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(IdAndSecret);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionToken({SESSION_PREFIX}{}_…)", self.0.id)
    }
}

impl SessionToken {
    pub fn generate() -> Self {
        SessionToken(IdAndSecret::generate(SESSION_ID_LEN))
    }

    /// Reads a session token; `None` for anything not shaped like one.
    pub fn parse(text: &str) -> Option<Self> {
        IdAndSecret::parse(text, SESSION_PREFIX, SESSION_ID_LEN).map(SessionToken)
    }

    pub fn session_id(&self) -> &str {
        &self.0.id
    }

    pub fn secret_hash(&self) -> Vec<u8> {
        self.0.secret_hash()
    }

    /// Whether this session's secret is the one `stored_hash` was made from (constant time).
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.0.matches(stored_hash)
    }

    /// The whole token, for the cookie and the bearer header of the console's own calls.
    pub fn reveal(&self) -> String {
        format!("{SESSION_PREFIX}{}_{}", self.0.id, self.0.secret)
    }
}

/// A random base62 string of `len` characters (about 5.95 bits each), for ids and tokens.
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// One thing a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Take codes from the pool and bind them.
    Bind,
    /// Read the tenant's bindings and their images.
    Read,
    /// Change or revoke the tenant's bindings and links.
    Admin,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Bind, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Bind => "bind",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Bind => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

/// The scopes of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}`: use bind, read or admin")]
pub struct ScopesError(String);

impl Scopes {
    pub fn all() -> Self {
        Scopes(Scope::ALL.iter().map(|scope| scope.bit()).sum())
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Reads scope names separated by spaces or commas (`"bind read"`, `"bind,read"`).
    pub fn parse(text: &str) -> Result<Self, ScopesError> {
        let mut bits = 0;
        for name in text.split([' ', ',']).filter(|name| !name.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == name)
                .ok_or_else(|| ScopesError(name.to_owned()))?;
            bits |= scope.bit();
        }
        Ok(Scopes(bits))
    }
}

/// Space-separated names, the form the store keeps.
impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|scope| self.contains(*scope))
            .map(Scope::as_str)
            .collect();
        f.write_str(&names.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_and_matches_only_its_own_hash() {
        let key = KeyToken::generate();
        let parsed = KeyToken::parse(&key.reveal()).unwrap();
        assert_eq!(parsed, key);
        assert!(parsed.matches(&key.secret_hash()));
        assert!(!KeyToken::generate().matches(&key.secret_hash()));
        assert_ne!(KeyToken::generate().key_id(), key.key_id());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = KeyToken::generate();
        assert!(!format!("{key:?}").contains(&key.0.secret));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = KeyToken::generate().reveal();
        for bad in [
            "",
            "qrp_",
            "Bearer x",
            &good[..good.len() - 1],
            &format!("{good}x"),
            &good.replace("qrp_", "qrx_"),
            "qrp_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb!",
            "qrp_aaaaaaaaaaa\u{e9}_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ] {
            assert_eq!(KeyToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sessions_read_back_and_are_not_keys() {
        let session = SessionToken::generate();
        let text = session.reveal();
        assert_eq!(SessionToken::parse(&text), Some(session.clone()));
        assert!(session.matches(&session.secret_hash()));
        assert_eq!(KeyToken::parse(&text), None);
        assert_eq!(SessionToken::parse(&KeyToken::generate().reveal()), None);
        assert!(!format!("{session:?}").contains(&session.0.secret));
    }

    #[test]
    fn scopes_round_trip_and_refuse_unknown_names() {
        let scopes = Scopes::parse("read,bind").unwrap();
        assert!(scopes.contains(Scope::Bind) && scopes.contains(Scope::Read));
        assert!(!scopes.contains(Scope::Admin));
        assert_eq!(scopes.to_string(), "bind read");
        assert_eq!(Scopes::parse(&scopes.to_string()).unwrap(), scopes);
        assert_eq!(Scopes::all().to_string(), "bind read admin");
        assert!(Scopes::parse("bind root").is_err());
    }
}
