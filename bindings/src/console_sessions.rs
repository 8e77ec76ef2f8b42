//! Console sessions, kept beside the API keys they were opened with.
//!
//! Someone signs in to the console with an API key; the session ([`SessionToken`]) then acts
//! for that key. Only the SHA-256 of its secret is stored, with the key's id (so revoking the
//! key ends its sessions), a CSRF token for the console's forms, and when it was last used
//! (sessions end when idle). Checking a session is `service::auth`'s job; this module only
//! keeps them, in the durable store so that they outlive a restart.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use records::{SessionToken, random_base62};

use crate::{DurableStore, StoreError};

/// Characters of a session's CSRF token (about 190 random bits).
const CSRF_LEN: usize = 32;

/// A stored session.
#[derive(Debug, Clone, FromRow)]
pub struct ConsoleSession {
    pub session_id: String,
    pub secret_hash: Vec<u8>,
    /// The API key the session acts for.
    pub key_id: String,
    /// What every state-changing form of this session must carry back.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

const SELECT_SESSION: &str = "SELECT session_id, secret_hash, key_id, csrf_token, created_at, last_seen_at FROM console_sessions";

impl DurableStore {
    /// Opens a session for `key_id`; the returned token is the only time its secret is seen.
    pub async fn create_console_session(
        &self,
        key_id: &str,
    ) -> Result<(SessionToken, ConsoleSession), StoreError> {
        let token = SessionToken::generate();
        let now = Utc::now();
        let session = ConsoleSession {
            session_id: token.session_id().to_owned(),
            secret_hash: token.secret_hash(),
            key_id: key_id.to_owned(),
            csrf_token: random_base62(CSRF_LEN),
            created_at: now,
            last_seen_at: now,
        };
        let insert = "INSERT INTO console_sessions \
                      (session_id, secret_hash, key_id, csrf_token, created_at, last_seen_at) \
                      VALUES ($1, $2, $3, $4, $5, $6)";
        macro_rules! run {
            ($db:expr) => {
                sqlx::query(insert)
                    .bind(&session.session_id)
                    .bind(&session.secret_hash)
                    .bind(&session.key_id)
                    .bind(&session.csrf_token)
                    .bind(session.created_at)
                    .bind(session.last_seen_at)
                    .execute($db)
                    .await
                    .map(drop)?
            };
        }
        match self {
            DurableStore::Embedded(store) => run!(&store.db),
            DurableStore::Postgres(store) => run!(&store.db),
        };
        Ok((token, session))
    }

    /// The session called `session_id`, however old.
    pub async fn console_session(
        &self,
        session_id: &str,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let query = format!("{SELECT_SESSION} WHERE session_id = $1");
        Ok(match self {
            DurableStore::Embedded(store) => {
                sqlx::query_as(&query)
                    .bind(session_id)
                    .fetch_optional(&store.db)
                    .await?
            }
            DurableStore::Postgres(store) => {
                sqlx::query_as(&query)
                    .bind(session_id)
                    .fetch_optional(&store.db)
                    .await?
            }
        })
    }

    /// Marks a session used at `now`.
    pub async fn touch_console_session(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let update = "UPDATE console_sessions SET last_seen_at = $1 WHERE session_id = $2";
        match self {
            DurableStore::Embedded(store) => {
                sqlx::query(update)
                    .bind(now)
                    .bind(session_id)
                    .execute(&store.db)
                    .await
                    .map(drop)?;
            }
            DurableStore::Postgres(store) => {
                sqlx::query(update)
                    .bind(now)
                    .bind(session_id)
                    .execute(&store.db)
                    .await
                    .map(drop)?;
            }
        }
        Ok(())
    }

    /// Ends a session (sign-out); `false` when there was none.
    pub async fn end_console_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let delete = "DELETE FROM console_sessions WHERE session_id = $1";
        let deleted = match self {
            DurableStore::Embedded(store) => sqlx::query(delete)
                .bind(session_id)
                .execute(&store.db)
                .await?
                .rows_affected(),
            DurableStore::Postgres(store) => sqlx::query(delete)
                .bind(session_id)
                .execute(&store.db)
                .await?
                .rows_affected(),
        };
        Ok(deleted == 1)
    }

    /// Forgets sessions idle since before `cutoff`; returns how many.
    pub async fn end_console_sessions_idle_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let delete = "DELETE FROM console_sessions WHERE last_seen_at < $1";
        Ok(match self {
            DurableStore::Embedded(store) => sqlx::query(delete)
                .bind(cutoff)
                .execute(&store.db)
                .await?
                .rows_affected(),
            DurableStore::Postgres(store) => sqlx::query(delete)
                .bind(cutoff)
                .execute(&store.db)
                .await?
                .rows_affected(),
        })
    }
}
