-- One row per bound code. The primary key is what makes a bind happen at most once.
CREATE TABLE IF NOT EXISTS bindings (
    request_id TEXT    PRIMARY KEY,
    tenant     TEXT    NOT NULL,
    params     TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    issuer     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    expires_at TEXT
) WITHOUT ROWID;

-- Image bytes live apart so that scan-time lookups never read them.
CREATE TABLE IF NOT EXISTS code_images (
    request_id TEXT PRIMARY KEY REFERENCES bindings (request_id) ON DELETE CASCADE,
    media_type TEXT NOT NULL,
    bytes      BLOB NOT NULL
) WITHOUT ROWID;
