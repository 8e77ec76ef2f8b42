-- Every version a binding had before its current one: an update appends, never overwrites.
CREATE TABLE IF NOT EXISTS binding_versions (
    request_id TEXT    NOT NULL REFERENCES bindings (request_id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    params     TEXT   NOT NULL,
    expires_at TEXT,
    -- When it was replaced, and by which API key.
    replaced_at TEXT NOT NULL,
    replaced_by TEXT NOT NULL,
    PRIMARY KEY (request_id, version)
);
