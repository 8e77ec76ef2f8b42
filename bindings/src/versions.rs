//! Changing a binding: its params, its expiry or its tags, as a new version. The versions it had are
//! kept (`binding_versions`), with when and by which key each was replaced.
//!
//! A change is optimistic: it applies only to the version it was computed from, so two
//! concurrent changes cannot both win; the loser is told and may try again.
//!
//! Redis's copy is removed *before* the commit, and a change is refused when Redis cannot be
//! told: a copy left behind would serve the old version (a revoked code, say) for up to
//! `redis.ttl_secs`. Binds and scans go on without Redis; changes wait for it. After the
//! commit the change is written through to this process's cache and to Redis, and announced
//! to the other processes ([`crate::change_events`]), which drop their copy.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use sqlx::types::Json;

use records::{Binding, Params, RequestId, Tags, Tenant};

use crate::durable::{read_tags, stored_tags};
use crate::{Bindings, DurableStore, StoreError};

/// What a change sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub params: Option<Params>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub tags: Option<Tags>,
}

/// A version a binding had before.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PastVersion {
    pub version: u32,
    pub params: Params,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    pub replaced_at: DateTime<Utc>,
    /// The id of the API key that replaced it.
    pub replaced_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no such code")]
    NotFound,
    #[error("the code changed meanwhile; read it again and retry")]
    Conflict,
    /// Redis is configured and unreachable: its copy could not be removed, so the change
    /// was not made.
    #[error("the cache tier is unavailable; the change was not made")]
    CacheUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(FromRow)]
struct PastVersionRow {
    version: i32,
    params: Json<serde_json::Value>,
    expires_at: Option<DateTime<Utc>>,
    tags: Option<Json<Vec<String>>>,
    replaced_at: DateTime<Utc>,
    replaced_by: String,
}

impl Bindings {
    /// Applies `change` to `tenant`'s code `id` as a new version, by the key `by`.
    pub async fn change(
        &self,
        id: RequestId,
        tenant: &Tenant,
        change: Change,
        by: &str,
    ) -> Result<Arc<Binding>, ChangeError> {
        let current = self
            .durable()
            .get(id)
            .await?
            .filter(|binding| binding.tenant == *tenant)
            .ok_or(ChangeError::NotFound)?;
        let next = Binding {
            version: current.version + 1,
            params: change.params.unwrap_or_else(|| current.params.clone()),
            expires_at: change.expires_at.unwrap_or(current.expires_at),
            tags: change.tags.unwrap_or_else(|| current.tags.clone()),
            ..current.clone()
        };
        if let Some(redis) = &self.redis
            && !redis.forget(id).await
        {
            return Err(ChangeError::CacheUnavailable);
        }
        if !self.durable().replace(&current, &next, by).await? {
            return Err(ChangeError::Conflict);
        }
        let next = self.refresh(next).await;
        if let Some(redis) = &self.redis {
            redis.publish_change(id).await;
        }
        Ok(next)
    }

    /// The versions `tenant`'s code `id` had before its current one, oldest first; `None`
    /// when there is no such code.
    pub async fn past_versions(
        &self,
        id: RequestId,
        tenant: &Tenant,
    ) -> Result<Option<Vec<PastVersion>>, StoreError> {
        let owned = self
            .durable()
            .get(id)
            .await?
            .is_some_and(|binding| binding.tenant == *tenant);
        if !owned {
            return Ok(None);
        }
        self.durable().past_versions(id).await.map(Some)
    }
}

impl DurableStore {
    /// Replaces `current` by `next` if `current` is still the stored version, keeping
    /// `current` as a past version. Returns whether it was replaced.
    async fn replace(
        &self,
        current: &Binding,
        next: &Binding,
        by: &str,
    ) -> Result<bool, StoreError> {
        let id = current.request_id.to_text();
        let version = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let update = "UPDATE bindings SET params = $1, version = $2, expires_at = $3, tags = $6 \
                      WHERE request_id = $4 AND version = $5";
        let keep = "INSERT INTO binding_versions \
                    (request_id, version, params, expires_at, replaced_at, replaced_by, tags) \
                    VALUES ($1, $2, $3, $4, $5, $6, $7)";
        macro_rules! replace_in {
            ($db:expr) => {{
                let mut tx = $db.begin().await?;
                let replaced = sqlx::query(update)
                    .bind(Json(&next.params))
                    .bind(version(next.version))
                    .bind(next.expires_at)
                    .bind(id.as_str())
                    .bind(version(current.version))
                    .bind(stored_tags(&next.tags))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !replaced {
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query(keep)
                    .bind(id.as_str())
                    .bind(version(current.version))
                    .bind(Json(&current.params))
                    .bind(current.expires_at)
                    .bind(Utc::now())
                    .bind(by)
                    .bind(stored_tags(&current.tags))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }};
        }
        match self {
            DurableStore::Embedded(store) => replace_in!(store.db),
            DurableStore::Postgres(store) => replace_in!(store.db),
        }
    }

    async fn past_versions(&self, id: RequestId) -> Result<Vec<PastVersion>, StoreError> {
        let query = "SELECT version, params, expires_at, tags, replaced_at, replaced_by \
                     FROM binding_versions WHERE request_id = $1 ORDER BY version";
        let rows: Vec<PastVersionRow> = match self {
            DurableStore::Embedded(store) => {
                sqlx::query_as(query)
                    .bind(id.to_text().as_str())
                    .fetch_all(&store.db)
                    .await?
            }
            DurableStore::Postgres(store) => {
                sqlx::query_as(query)
                    .bind(id.to_text().as_str())
                    .fetch_all(&store.db)
                    .await?
            }
        };
        rows.into_iter()
            .map(|row| {
                Ok(PastVersion {
                    version: u32::try_from(row.version)
                        .map_err(|_| StoreError::Corrupt("bad past version".into()))?,
                    params: serde_json::from_value(row.params.0)
                        .map_err(|error| StoreError::Corrupt(format!("past params: {error}")))?,
                    expires_at: row.expires_at,
                    tags: read_tags(row.tags)?,
                    replaced_at: row.replaced_at,
                    replaced_by: row.replaced_by,
                })
            })
            .collect()
    }
}
