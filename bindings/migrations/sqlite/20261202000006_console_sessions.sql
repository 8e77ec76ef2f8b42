-- Signed-in console sessions. Only the SHA-256 of a session's secret is kept; a session acts
-- with its key's tenant and scopes and ends at sign-out, on the key's revocation, or idle.
CREATE TABLE IF NOT EXISTS console_sessions (
    session_id   TEXT    PRIMARY KEY,
    secret_hash  BLOB    NOT NULL,
    key_id       TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    last_seen_at TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS console_sessions_last_seen ON console_sessions (last_seen_at);
