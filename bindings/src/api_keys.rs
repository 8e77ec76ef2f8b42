//! The API keys of the tenants' apps, kept beside the bindings they guard.
//!
//! Only a key's id and the SHA-256 of its secret are stored ([`records::KeyToken`]); the
//! whole key is returned once, by [`DurableStore::create_api_key`]. Checking a key is the
//! binder's job; this module only keeps them.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use records::{KeyToken, Scopes, Tenant};

use crate::{DurableStore, StoreError};

/// A stored key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub key_id: String,
    pub tenant: Tenant,
    pub scopes: Scopes,
    pub secret_hash: Vec<u8>,
    /// Requests per second the key may make (a burst of as many is allowed).
    pub rate_per_sec: u32,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct ApiKeyRow {
    key_id: String,
    tenant: String,
    scopes: String,
    secret_hash: Vec<u8>,
    rate_per_sec: i32,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    fn into_key(self) -> Result<ApiKey, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("API key {}: bad {what}", self.key_id));
        Ok(ApiKey {
            tenant: Tenant::parse(&self.tenant).map_err(|_| corrupt("tenant"))?,
            scopes: Scopes::parse(&self.scopes).map_err(|_| corrupt("scopes"))?,
            rate_per_sec: u32::try_from(self.rate_per_sec).map_err(|_| corrupt("rate"))?,
            secret_hash: self.secret_hash,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            key_id: self.key_id,
        })
    }
}

const SELECT_KEY: &str = "SELECT key_id, tenant, scopes, secret_hash, rate_per_sec, created_at, revoked_at FROM api_keys";

impl DurableStore {
    /// Makes a key for `tenant`; the returned token is the only time its secret is seen.
    pub async fn create_api_key(
        &self,
        tenant: &Tenant,
        scopes: Scopes,
        rate_per_sec: u32,
    ) -> Result<(KeyToken, ApiKey), StoreError> {
        let token = KeyToken::generate();
        let key = ApiKey {
            key_id: token.key_id().to_owned(),
            tenant: tenant.clone(),
            scopes,
            secret_hash: token.secret_hash(),
            rate_per_sec,
            created_at: Utc::now(),
            revoked_at: None,
        };
        let insert = "INSERT INTO api_keys (key_id, tenant, scopes, secret_hash, rate_per_sec, created_at) \
                      VALUES ($1, $2, $3, $4, $5, $6)";
        let rate = i32::try_from(rate_per_sec).unwrap_or(i32::MAX);
        macro_rules! run {
            ($db:expr) => {
                sqlx::query(insert)
                    .bind(&key.key_id)
                    .bind(key.tenant.as_str())
                    .bind(key.scopes.to_string())
                    .bind(&key.secret_hash)
                    .bind(rate)
                    .bind(key.created_at)
                    .execute($db)
                    .await
                    .map(drop)?
            };
        }
        match self {
            DurableStore::Embedded(store) => run!(&store.db),
            DurableStore::Postgres(store) => run!(&store.db),
        };
        Ok((token, key))
    }

    /// The key called `key_id`, revoked or not.
    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let query = format!("{SELECT_KEY} WHERE key_id = $1");
        let row: Option<ApiKeyRow> = match self {
            DurableStore::Embedded(store) => {
                sqlx::query_as(&query)
                    .bind(key_id)
                    .fetch_optional(&store.db)
                    .await?
            }
            DurableStore::Postgres(store) => {
                sqlx::query_as(&query)
                    .bind(key_id)
                    .fetch_optional(&store.db)
                    .await?
            }
        };
        row.map(ApiKeyRow::into_key).transpose()
    }

    /// Every key, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let query = format!("{SELECT_KEY} ORDER BY created_at, key_id");
        let rows: Vec<ApiKeyRow> = match self {
            DurableStore::Embedded(store) => sqlx::query_as(&query).fetch_all(&store.db).await?,
            DurableStore::Postgres(store) => sqlx::query_as(&query).fetch_all(&store.db).await?,
        };
        rows.into_iter().map(ApiKeyRow::into_key).collect()
    }

    /// Revokes a key for good; `false` when no key (not yet revoked) has that id.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let update = "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL";
        let now = Utc::now();
        let result = match self {
            DurableStore::Embedded(store) => sqlx::query(update)
                .bind(now)
                .bind(key_id)
                .execute(&store.db)
                .await?
                .rows_affected(),
            DurableStore::Postgres(store) => sqlx::query(update)
                .bind(now)
                .bind(key_id)
                .execute(&store.db)
                .await?
                .rows_affected(),
        };
        Ok(result == 1)
    }
}
