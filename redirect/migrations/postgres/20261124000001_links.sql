-- Dynamic redirects. Versions are appended, never changed; the audit log outlives a purge.
CREATE TABLE IF NOT EXISTS links (
    link_key   TEXT        PRIMARY KEY,
    tenant     TEXT        NOT NULL,
    status     INTEGER     NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ,
    -- The number of the latest version: what an edit must name to be applied.
    version    INTEGER     NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_tenant ON links (tenant, link_key);
CREATE INDEX IF NOT EXISTS links_deleted ON links (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS link_versions (
    link_key   TEXT        NOT NULL REFERENCES links (link_key) ON DELETE CASCADE,
    version    INTEGER     NOT NULL,
    target     JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT        NOT NULL,
    note       TEXT,
    PRIMARY KEY (link_key, version)
);

CREATE TABLE IF NOT EXISTS link_audit (
    id       BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    link_key TEXT        NOT NULL,
    tenant   TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    actor    TEXT        NOT NULL,
    action   TEXT        NOT NULL,
    version  INTEGER,
    detail   JSONB
);
CREATE INDEX IF NOT EXISTS link_audit_by_link ON link_audit (link_key, id);
