-- API keys of the tenants' apps. Only the SHA-256 of a key's secret is kept.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id       TEXT    PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,
    rate_per_sec INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    revoked_at   TEXT
) WITHOUT ROWID;
