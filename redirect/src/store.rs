//! Where links live: three tables beside the bindings, in the same database (the embedded
//! SQLite file or PostgreSQL), with migrations of their own.
//!
//! - `links`: one row per link: key, tenant, status, when made and (soft) deleted, and the
//!   number of its latest version;
//! - `link_versions`: every version, appended and never changed;
//! - `link_audit`: every change (create, update, rollback, delete, restore, purge), by whom
//!   and when. It outlives a purge: what happened to a link stays on record.
//!
//! Every change is one transaction, and optimistic: an edit names the version it was made
//! from and is refused if another edit came first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use sqlx::types::Json;

use bindings::Database;
use records::{Link, LinkKey, LinkTarget, LinkVersion, RedirectStatus, Tags, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum LinkStoreError {
    #[error("link database failed")]
    Database(#[from] sqlx::Error),
    #[error("link database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored link is unreadable: {0}")]
    Corrupt(String),
}

/// What an edit of a link ran into.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no such link")]
    NotFound,
    #[error("the link changed meanwhile (now at version {current}); read it again and retry")]
    Conflict { current: u32 },
    #[error("the link is deleted; restore it first")]
    Deleted,
    #[error("the link has no version {0}")]
    NoSuchVersion(u32),
    #[error(transparent)]
    Store(#[from] LinkStoreError),
}

impl From<sqlx::Error> for EditError {
    fn from(error: sqlx::Error) -> Self {
        EditError::Store(error.into())
    }
}

/// One line of a link's audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Its place in the tenant's log of the link: 1, 2, 3, … without gaps.
    pub seq: u32,
    pub at: DateTime<Utc>,
    /// The id of the API key that acted (`system` for the purge).
    pub actor: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// Which way a page of the audit log runs (the API's `order`: `oldest` or `newest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuditOrder {
    #[serde(rename = "oldest")]
    OldestFirst,
    #[serde(rename = "newest")]
    NewestFirst,
}

/// A link in a listing: its key and state, not its versions.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSummary {
    pub key: LinkKey,
    pub status: RedirectStatus,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
}

#[derive(FromRow)]
struct LinkRow {
    link_key: String,
    tenant: String,
    status: i32,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    version: i32,
    tags: Option<Json<Vec<String>>>,
}

/// Tags as stored: `NULL` for none.
fn stored_tags(tags: &Tags) -> Option<Json<&[String]>> {
    (!tags.is_empty()).then(|| Json(tags.as_slice()))
}

#[derive(FromRow)]
struct VersionRow {
    version: i32,
    target: Json<LinkTarget>,
    created_at: DateTime<Utc>,
    created_by: String,
    note: Option<String>,
}

#[derive(FromRow)]
struct AuditRow {
    seq: i32,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    version: Option<i32>,
    detail: Option<Json<serde_json::Value>>,
}

fn to_u32(n: i32, what: &str) -> Result<u32, LinkStoreError> {
    u32::try_from(n).map_err(|_| LinkStoreError::Corrupt(format!("negative {what}")))
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Versions numbered below `top`, newest first, fetched by `batch_below(below, limit)` (the
/// `limit` newest numbered below `below`, newest first) in batches of
/// [`FIRST_SERVABLE_BATCH`], then twice as many each time up to [`MAX_SERVABLE_BATCH`], down
/// to and with the newest one that serves for good from `now` (or all of them when none does).
/// Returns them oldest first.
async fn read_down_to_serving_for_good<Batch, Rows>(
    top: i32,
    now: DateTime<Utc>,
    mut batch_below: Batch,
) -> Result<Vec<LinkVersion>, LinkStoreError>
where
    Batch: FnMut(i32, i64) -> Rows,
    Rows: std::future::Future<Output = Result<Vec<VersionRow>, LinkStoreError>>,
{
    let mut versions = Vec::new();
    let mut below = top;
    let mut limit = FIRST_SERVABLE_BATCH;
    loop {
        let rows = batch_below(below, limit).await?;
        let last_batch = (rows.len() as i64) < limit;
        for row in rows {
            below = row.version;
            let version = row.into_version()?;
            let floor = version.target.serves_for_good_from(now);
            versions.push(version);
            if floor {
                versions.reverse();
                return Ok(versions);
            }
        }
        if last_batch {
            versions.reverse();
            return Ok(versions);
        }
        limit = (limit * 2).min(MAX_SERVABLE_BATCH);
    }
}

impl VersionRow {
    fn into_version(self) -> Result<LinkVersion, LinkStoreError> {
        Ok(LinkVersion {
            version: to_u32(self.version, "version")?,
            target: self.target.0,
            created_at: self.created_at,
            created_by: self.created_by,
            note: self.note,
        })
    }
}

impl LinkRow {
    /// The link this row heads, with `versions` (oldest first).
    fn into_link(self, key: &LinkKey, versions: Vec<LinkVersion>) -> Result<Link, LinkStoreError> {
        Ok(Link {
            v: Link::LAYOUT,
            key: key.clone(),
            tenant: Tenant::parse(&self.tenant)
                .map_err(|_| LinkStoreError::Corrupt(format!("tenant {}", self.tenant)))?,
            status: self.status()?,
            created_at: self.created_at,
            deleted_at: self.deleted_at,
            tags: self.tags()?,
            versions,
        })
    }

    fn status(&self) -> Result<RedirectStatus, LinkStoreError> {
        u16::try_from(self.status)
            .ok()
            .and_then(|code| RedirectStatus::try_from(code).ok())
            .ok_or_else(|| LinkStoreError::Corrupt(format!("status {}", self.status)))
    }

    fn summary(&self) -> Result<LinkSummary, LinkStoreError> {
        Ok(LinkSummary {
            key: LinkKey::parse(&self.link_key)
                .map_err(|e| LinkStoreError::Corrupt(e.to_string()))?,
            status: self.status()?,
            version: to_u32(self.version, "version")?,
            created_at: self.created_at,
            deleted_at: self.deleted_at,
            tags: self.tags()?,
        })
    }

    fn tags(&self) -> Result<Tags, LinkStoreError> {
        self.tags
            .as_ref()
            .map(|Json(tags)| Tags::parse(tags.clone()))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|error| LinkStoreError::Corrupt(format!("tags: {error}")))
    }
}

/// Runs `$body` with `$db` bound to whichever pool the store has.
macro_rules! on_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.db {
            Database::Sqlite($db) => $body,
            Database::Postgres($db) => $body,
        }
    };
}

/// Every caller holds the link's row locked (it has just written it), so the next number of
/// its log is read and taken by one change at a time; the unique index on
/// `(link_key, tenant, seq)` would refuse a second.
const INSERT_AUDIT: &str = "INSERT INTO link_audit (link_key, tenant, seq, at, actor, action, version, detail) \
                            VALUES ($1, $2, \
                            (SELECT COALESCE(MAX(seq), 0) + 1 FROM link_audit WHERE link_key = $1 AND tenant = $2), \
                            $3, $4, $5, $6, $7)";
const INSERT_VERSION: &str = "INSERT INTO link_versions (link_key, version, target, created_at, created_by, note) \
                              VALUES ($1, $2, $3, $4, $5, $6)";

/// How many versions, newest first, a read of what can still serve asks for first; each
/// further batch of the same read is twice as large, up to [`MAX_SERVABLE_BATCH`].
const FIRST_SERVABLE_BATCH: i64 = 4;
const MAX_SERVABLE_BATCH: i64 = 512;

/// The link tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkStore {
    db: Database,
}

/// A change to append as a new version.
#[derive(Debug, Clone)]
pub struct Edit<'a> {
    pub key: &'a LinkKey,
    pub tenant: &'a Tenant,
    /// The version the edit was made from.
    pub base_version: u32,
    pub target: Option<LinkTarget>,
    pub status: Option<RedirectStatus>,
    /// Replaces the tags in place (no new version: they do not change where scans go).
    pub tags: Option<Tags>,
    pub note: Option<String>,
    pub actor: &'a str,
}

impl LinkStore {
    /// Brings the link tables up to date in `db`, which the bindings share.
    pub async fn open(db: Database) -> Result<Self, LinkStoreError> {
        bindings::durable::migrate(
            &db,
            sqlx::migrate!("./migrations/sqlite"),
            sqlx::migrate!("./migrations/postgres"),
        )
        .await?;
        Ok(LinkStore { db })
    }

    /// Stores a new link with its first version; `false` if the key is taken (try another).
    pub async fn create(&self, link: &Link, actor: &str) -> Result<bool, LinkStoreError> {
        let Some(first) = link.versions.first() else {
            return Err(LinkStoreError::Corrupt("a link without a version".into()));
        };
        let status = i32::from(u16::from(link.status));
        on_db!(self, db => {
            let mut tx = db.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO links (link_key, tenant, status, created_at, version, tags) \
                 VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (link_key) DO NOTHING",
            )
            .bind(link.key.as_str())
            .bind(link.tenant.as_str())
            .bind(status)
            .bind(link.created_at)
            .bind(stored_tags(&link.tags))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !inserted {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(INSERT_VERSION)
                .bind(link.key.as_str())
                .bind(to_i32(first.version))
                .bind(Json(&first.target))
                .bind(first.created_at)
                .bind(&first.created_by)
                .bind(first.note.as_deref())
                .execute(&mut *tx)
                .await?;
            sqlx::query(INSERT_AUDIT)
                .bind(link.key.as_str())
                .bind(link.tenant.as_str())
                .bind(link.created_at)
                .bind(actor)
                .bind("create")
                .bind(Some(to_i32(first.version)))
                .bind(Json(serde_json::json!({
                    "status": u16::from(link.status),
                    "tags": link.tags,
                })))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The link behind `key` as scans from `now` on see it, deleted or not: its current
    /// version and those that may still serve ([`Link::servable_from`]); `None` if there is
    /// none (or it was purged).
    ///
    /// Versions are read newest first, in batches, down to the newest one that serves for
    /// good: nearly always the current one, so a link edited ten thousand times costs one
    /// short read, as a new one does. `GET /v1/links/{key}/versions` pages through the rest
    /// ([`LinkStore::versions`]).
    pub async fn servable(
        &self,
        key: &LinkKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Link>, LinkStoreError> {
        let row: Option<LinkRow> = on_db!(self, db => {
            sqlx::query_as(
                "SELECT link_key, tenant, status, created_at, deleted_at, version, tags FROM links \
                 WHERE link_key = $1",
            )
            .bind(key.as_str())
            .fetch_optional(db)
            .await?
        });
        let Some(row) = row else {
            return Ok(None);
        };
        // Bounded by the version the row names, so that an edit committed meanwhile is
        // either wholly seen or not at all.
        let top = row.version.saturating_add(1);
        let versions = read_down_to_serving_for_good(top, now, |below, limit| async move {
            let rows: Vec<VersionRow> = on_db!(self, db => {
                sqlx::query_as(
                    "SELECT version, target, created_at, created_by, note FROM link_versions \
                     WHERE link_key = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
                )
                .bind(key.as_str())
                .bind(below)
                .bind(limit)
                .fetch_all(db)
                .await?
            });
            Ok(rows)
        })
        .await?;
        Ok(Some(row.into_link(key, versions)?.servable_from(now)))
    }

    /// `tenant`'s link as scans from `now` on see it, or `None` — also for another tenant's
    /// link, so that keys cannot be probed across tenants.
    pub async fn servable_owned(
        &self,
        key: &LinkKey,
        tenant: &Tenant,
        now: DateTime<Utc>,
    ) -> Result<Option<Link>, LinkStoreError> {
        Ok(self
            .servable(key, now)
            .await?
            .filter(|link| link.tenant == *tenant))
    }

    /// Up to `limit` versions of `tenant`'s link numbered above `after`, oldest first; `None`
    /// when `tenant` has no such link.
    pub async fn versions(
        &self,
        key: &LinkKey,
        tenant: &Tenant,
        after: u32,
        limit: u32,
    ) -> Result<Option<Vec<LinkVersion>>, LinkStoreError> {
        let (owned, rows): (bool, Vec<VersionRow>) = on_db!(self, db => {
            let owned: Option<(i32,)> = sqlx::query_as(
                "SELECT version FROM links WHERE link_key = $1 AND tenant = $2",
            )
            .bind(key.as_str())
            .bind(tenant.as_str())
            .fetch_optional(db)
            .await?;
            let rows = if owned.is_some() {
                sqlx::query_as(
                    "SELECT version, target, created_at, created_by, note FROM link_versions \
                     WHERE link_key = $1 AND version > $2 ORDER BY version LIMIT $3",
                )
                .bind(key.as_str())
                .bind(to_i32(after))
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?
            } else {
                Vec::new()
            };
            (owned.is_some(), rows)
        });
        if !owned {
            return Ok(None);
        }
        rows.into_iter()
            .map(VersionRow::into_version)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Version `number` of `key`, whoever owns it (the caller checked); `None` when there is
    /// no such version.
    pub async fn version(
        &self,
        key: &LinkKey,
        number: u32,
    ) -> Result<Option<LinkVersion>, LinkStoreError> {
        let row: Option<VersionRow> = on_db!(self, db => {
            sqlx::query_as(
                "SELECT version, target, created_at, created_by, note FROM link_versions \
                 WHERE link_key = $1 AND version = $2",
            )
            .bind(key.as_str())
            .bind(to_i32(number))
            .fetch_optional(db)
            .await?
        });
        row.map(VersionRow::into_version).transpose()
    }

    /// Appends the edit's target as a new version (when it has one) and sets its status
    /// (when it has one), if the link is still at `base_version`. Returns the new version
    /// number.
    pub async fn edit(&self, edit: Edit<'_>, action: &str) -> Result<u32, EditError> {
        let now = Utc::now();
        let next = if edit.target.is_some() {
            edit.base_version + 1
        } else {
            edit.base_version
        };
        let mut detail = serde_json::Map::new();
        if let Some(status) = edit.status {
            detail.insert("status".into(), u16::from(status).into());
        }
        if let Some(note) = &edit.note {
            detail.insert("note".into(), note.clone().into());
        }
        if let Some(tags) = &edit.tags {
            detail.insert("tags".into(), tags.as_slice().into());
        }
        let detail = (!detail.is_empty()).then_some(Json(serde_json::Value::Object(detail)));
        let status = edit.status.map(|status| i32::from(u16::from(status)));
        // `NULL` is both "unchanged" (no tags sent) and "none" (stored): an emptied list is
        // stored as `[]`.
        let tags = edit.tags.as_ref().map(|tags| Json(tags.as_slice()));
        let outcome: Result<bool, EditError> = on_db!(self, db => {
            let mut tx = db.begin().await?;
            let updated = sqlx::query(
                "UPDATE links SET version = $1, status = COALESCE($2, status), tags = COALESCE($6, tags) \
                 WHERE link_key = $3 AND tenant = $4 AND version = $5 AND deleted_at IS NULL",
            )
            .bind(to_i32(next))
            .bind(status)
            .bind(edit.key.as_str())
            .bind(edit.tenant.as_str())
            .bind(to_i32(edit.base_version))
            .bind(tags)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if updated {
                if let Some(target) = &edit.target {
                    sqlx::query(INSERT_VERSION)
                        .bind(edit.key.as_str())
                        .bind(to_i32(next))
                        .bind(Json(target))
                        .bind(now)
                        .bind(edit.actor)
                        .bind(edit.note.as_deref())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(INSERT_AUDIT)
                    .bind(edit.key.as_str())
                    .bind(edit.tenant.as_str())
                    .bind(now)
                    .bind(edit.actor)
                    .bind(action)
                    .bind(Some(to_i32(next)))
                    .bind(detail)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(updated)
        });
        if outcome? {
            return Ok(next);
        }
        // Why not: tell the caller precisely.
        match self
            .servable_owned(edit.key, edit.tenant, Utc::now())
            .await?
        {
            None => Err(EditError::NotFound),
            Some(link) if link.deleted_at.is_some() => Err(EditError::Deleted),
            Some(link) => Err(EditError::Conflict {
                current: link.current().map_or(0, |v| v.version),
            }),
        }
    }

    /// Soft-deletes (`delete: true`) or restores a link. Returns whether it changed; `None`
    /// when `tenant` has no such link.
    pub async fn set_deleted(
        &self,
        key: &LinkKey,
        tenant: &Tenant,
        delete: bool,
        actor: &str,
    ) -> Result<Option<bool>, LinkStoreError> {
        let now = Utc::now();
        let (query, action) = if delete {
            (
                "UPDATE links SET deleted_at = $3 \
                 WHERE link_key = $1 AND tenant = $2 AND deleted_at IS NULL",
                "delete",
            )
        } else {
            (
                "UPDATE links SET deleted_at = NULL \
                 WHERE link_key = $1 AND tenant = $2 AND deleted_at IS NOT NULL",
                "restore",
            )
        };
        let changed: bool = on_db!(self, db => {
            let mut tx = db.begin().await?;
            let mut update = sqlx::query(query).bind(key.as_str()).bind(tenant.as_str());
            if delete {
                update = update.bind(now);
            }
            let changed = update.execute(&mut *tx).await?.rows_affected() == 1;
            if changed {
                sqlx::query(INSERT_AUDIT)
                    .bind(key.as_str())
                    .bind(tenant.as_str())
                    .bind(now)
                    .bind(actor)
                    .bind(action)
                    .bind(None::<i32>)
                    .bind(None::<Json<serde_json::Value>>)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            changed
        });
        if changed {
            return Ok(Some(true));
        }
        Ok(self.servable_owned(key, tenant, now).await?.map(|_| false))
    }

    /// Removes links deleted before `cutoff`, with their versions; their audit stays, with a
    /// `purge` line. Returns the keys purged.
    pub async fn purge_deleted_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<LinkKey>, LinkStoreError> {
        let now = Utc::now();
        let purged: Vec<(String, String)> = on_db!(self, db => {
            let mut tx = db.begin().await?;
            let doomed: Vec<(String, String)> = sqlx::query_as(
                "SELECT link_key, tenant FROM links WHERE deleted_at IS NOT NULL AND deleted_at < $1",
            )
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            for (key, tenant) in &doomed {
                sqlx::query("DELETE FROM link_versions WHERE link_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM links WHERE link_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(INSERT_AUDIT)
                    .bind(key)
                    .bind(tenant)
                    .bind(now)
                    .bind("system")
                    .bind("purge")
                    .bind(None::<i32>)
                    .bind(None::<Json<serde_json::Value>>)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            doomed
        });
        Ok(purged
            .into_iter()
            .filter_map(|(key, _)| LinkKey::parse(&key).ok())
            .collect())
    }

    /// Up to `limit` lines of `tenant`'s audit log of `key` that come after line `after` in
    /// `order` (from the start when `None`); empty when there are none.
    pub async fn audit(
        &self,
        key: &LinkKey,
        tenant: &Tenant,
        order: AuditOrder,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, LinkStoreError> {
        let query = match order {
            AuditOrder::OldestFirst => {
                "SELECT seq, at, actor, action, version, detail FROM link_audit \
                 WHERE link_key = $1 AND tenant = $2 AND seq > $3 ORDER BY seq LIMIT $4"
            }
            AuditOrder::NewestFirst => {
                "SELECT seq, at, actor, action, version, detail FROM link_audit \
                 WHERE link_key = $1 AND tenant = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4"
            }
        };
        let after = match (order, after) {
            (_, Some(after)) => i64::from(after),
            (AuditOrder::OldestFirst, None) => 0,
            (AuditOrder::NewestFirst, None) => i64::MAX,
        };
        let rows: Vec<AuditRow> = on_db!(self, db => {
            sqlx::query_as(query)
                .bind(key.as_str())
                .bind(tenant.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?
        });
        rows.into_iter()
            .map(|row| {
                Ok(AuditEntry {
                    seq: to_u32(row.seq, "audit seq")?,
                    at: row.at,
                    actor: row.actor,
                    action: row.action,
                    version: row.version.map(|v| to_u32(v, "version")).transpose()?,
                    detail: row.detail.map(|d| d.0).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// `tenant`'s links in key order, after `after`, at most `limit`.
    pub async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&LinkKey>,
        limit: u32,
    ) -> Result<Vec<LinkSummary>, LinkStoreError> {
        let rows: Vec<LinkRow> = on_db!(self, db => {
            sqlx::query_as(
                "SELECT link_key, tenant, status, created_at, deleted_at, version, tags FROM links \
                 WHERE tenant = $1 AND link_key > $2 ORDER BY link_key LIMIT $3",
            )
            .bind(tenant.as_str())
            .bind(after.map_or("", LinkKey::as_str))
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?
        });
        rows.iter().map(LinkRow::summary).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history in memory, and how many rows reads of it asked for.
    struct History {
        rows: Vec<(i32, LinkTarget)>,
        asked: std::cell::Cell<i64>,
    }

    impl History {
        fn of(targets: impl IntoIterator<Item = LinkTarget>) -> History {
            History {
                rows: (1..).zip(targets).collect(),
                asked: std::cell::Cell::new(0),
            }
        }

        async fn read(&self, now: DateTime<Utc>) -> Vec<u32> {
            let top = self.rows.len() as i32 + 1;
            let versions = read_down_to_serving_for_good(top, now, |below, limit| {
                self.asked.set(self.asked.get() + limit);
                let rows: Vec<VersionRow> = self
                    .rows
                    .iter()
                    .rev()
                    .filter(|(version, _)| *version < below)
                    .take(limit as usize)
                    .map(|(version, target)| VersionRow {
                        version: *version,
                        target: Json(target.clone()),
                        created_at: now,
                        created_by: "test".into(),
                        note: None,
                    })
                    .collect();
                async move { Ok(rows) }
            })
            .await
            .unwrap();
            versions.iter().map(|version| version.version).collect()
        }
    }

    fn plain(n: u32) -> LinkTarget {
        serde_json::from_value(
            serde_json::json!({"destination": format!("https://shop.example/{n}")}),
        )
        .unwrap()
    }

    fn starting(n: u32, start: DateTime<Utc>) -> LinkTarget {
        LinkTarget {
            effective_start: Some(start),
            ..plain(n)
        }
    }

    /// The read's cost is what makes an edit of a link with a long history cheap: it must
    /// not grow with the history.
    #[tokio::test]
    async fn a_long_history_of_plain_edits_costs_one_small_batch() {
        let now = Utc::now();
        let history = History::of((1..=10_000).map(plain));
        assert_eq!(history.read(now).await, [10_000]);
        assert_eq!(history.asked.get(), FIRST_SERVABLE_BATCH);
    }

    #[tokio::test]
    async fn versions_scheduled_ahead_are_read_down_to_the_one_serving_now_in_growing_batches() {
        let now = Utc::now();
        let ahead = |n: u32| starting(n, now + chrono::Duration::hours(i64::from(n)));
        let history = History::of((1..=9_960).map(plain).chain((9_961..=10_000).map(ahead)));
        let read = history.read(now).await;
        assert_eq!(read, (9_960..=10_000).collect::<Vec<u32>>());
        // 4 + 8 + 16 + 32 rows asked for, not 10,000.
        assert_eq!(history.asked.get(), 60);
    }

    #[tokio::test]
    async fn without_a_version_serving_for_good_the_whole_history_is_read() {
        let now = Utc::now();
        let later = now + chrono::Duration::days(1);
        let history = History::of((1..=10).map(|n| starting(n, later)));
        assert_eq!(history.read(now).await, (1..=10).collect::<Vec<u32>>());
    }
}
