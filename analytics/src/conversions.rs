//! Conversions: what an app reports after a scan of a conversion-tracked link led somewhere
//! (`POST /v1/conversions`), kept beside the bindings in the same database.
//!
//! A click id is the link's key followed by a request id (22 base62 characters, 122 random
//! bits), so a conversion names its link without a lookup and nobody can guess a click id. The
//! caller's `conversion_id` makes a report idempotent: sent again, it is the same conversion.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use bindings::Database;
use records::{LinkKey, RequestId, Tenant};

/// One reported conversion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conversion {
    #[serde(skip)]
    pub tenant: Tenant,
    pub conversion_id: String,
    pub click_id: String,
    pub link_key: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub at: DateTime<Utc>,
}

/// What recording a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    New,
    /// The same report was recorded before.
    Replayed(Conversion),
    /// The conversion id was used before for another report.
    Conflict(Conversion),
}

#[derive(Debug, thiserror::Error)]
pub enum ConversionsError {
    #[error("the conversions table")]
    Database(#[from] sqlx::Error),
    #[error("migrating the conversions table")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Splits a click id into its link's key; `None` when it is not one we could have made.
pub fn link_of_click(click_id: &str) -> Option<LinkKey> {
    let key_len = records::link::LINK_KEY_LEN;
    if !click_id.is_char_boundary(key_len.min(click_id.len())) || click_id.len() <= key_len {
        return None;
    }
    let (key, random) = click_id.split_at(key_len);
    RequestId::parse(random).ok()?;
    LinkKey::parse(key).ok()
}

/// A new click id for a scan of `key`.
pub fn new_click_id(key: &LinkKey) -> String {
    format!("{key}{}", RequestId::generate())
}

#[derive(FromRow)]
struct ConversionRow {
    conversion_id: String,
    click_id: String,
    link_key: String,
    name: String,
    value: Option<f64>,
    at: DateTime<Utc>,
}

/// The conversions table.
#[derive(Debug, Clone)]
pub struct Conversions {
    db: Database,
}

macro_rules! on_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.db {
            Database::Sqlite($db) => $body,
            Database::Postgres($db) => $body,
        }
    };
}

impl Conversions {
    /// Brings the table up to date in `db`, which the bindings share.
    pub async fn open(db: Database) -> Result<Conversions, ConversionsError> {
        bindings::durable::migrate(
            &db,
            sqlx::migrate!("./migrations/sqlite"),
            sqlx::migrate!("./migrations/postgres"),
        )
        .await?;
        Ok(Conversions { db })
    }

    /// Records `conversion` unless its id was used before by its tenant.
    pub async fn record(&self, conversion: &Conversion) -> Result<Recorded, ConversionsError> {
        let inserted = on_db!(self, db => {
            sqlx::query(
                "INSERT INTO conversions (tenant, conversion_id, click_id, link_key, name, value, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, conversion_id) DO NOTHING",
            )
            .bind(conversion.tenant.as_str())
            .bind(&conversion.conversion_id)
            .bind(&conversion.click_id)
            .bind(&conversion.link_key)
            .bind(&conversion.name)
            .bind(conversion.value)
            .bind(conversion.at)
            .execute(db)
            .await?
            .rows_affected()
        }) == 1;
        if inserted {
            return Ok(Recorded::New);
        }
        let earlier: ConversionRow = on_db!(self, db => {
            sqlx::query_as(
                "SELECT conversion_id, click_id, link_key, name, value, at FROM conversions \
                 WHERE tenant = $1 AND conversion_id = $2",
            )
            .bind(conversion.tenant.as_str())
            .bind(&conversion.conversion_id)
            .fetch_one(db)
            .await?
        });
        let earlier = Conversion {
            tenant: conversion.tenant.clone(),
            conversion_id: earlier.conversion_id,
            click_id: earlier.click_id,
            link_key: earlier.link_key,
            name: earlier.name,
            value: earlier.value,
            at: earlier.at,
        };
        let same = earlier.click_id == conversion.click_id
            && earlier.name == conversion.name
            && earlier.value == conversion.value;
        Ok(if same {
            Recorded::Replayed(earlier)
        } else {
            Recorded::Conflict(earlier)
        })
    }

    /// The conversions of `tenant`'s link `key` reported at or after `since`.
    pub async fn of_link(
        &self,
        tenant: &Tenant,
        key: &LinkKey,
        since: DateTime<Utc>,
    ) -> Result<Vec<Conversion>, ConversionsError> {
        let rows: Vec<ConversionRow> = on_db!(self, db => {
            sqlx::query_as(
                "SELECT conversion_id, click_id, link_key, name, value, at FROM conversions \
                 WHERE tenant = $1 AND link_key = $2 AND at >= $3 ORDER BY at",
            )
            .bind(tenant.as_str())
            .bind(key.as_str())
            .bind(since)
            .fetch_all(db)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|row| Conversion {
                tenant: tenant.clone(),
                conversion_id: row.conversion_id,
                click_id: row.click_id,
                link_key: row.link_key,
                name: row.name,
                value: row.value,
                at: row.at,
            })
            .collect())
    }

    /// Deletes every conversion of `tenant`; how many.
    pub async fn erase_tenant(&self, tenant: &Tenant) -> Result<u64, ConversionsError> {
        Ok(on_db!(self, db => {
            sqlx::query("DELETE FROM conversions WHERE tenant = $1")
                .bind(tenant.as_str())
                .execute(db)
                .await?
                .rows_affected()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_id_names_its_link_and_nothing_else_passes() {
        let key = LinkKey::generate();
        let click = new_click_id(&key);
        assert_eq!(click.len(), 32);
        assert_eq!(link_of_click(&click), Some(key));
        for bad in [
            "",
            "short",
            "sV3kQ9xYb2",
            "sV3kQ9xYb2-not-base62-at-all!!!",
            "ééééééééééé",
        ] {
            assert_eq!(link_of_click(bad), None, "{bad}");
        }
    }
}
