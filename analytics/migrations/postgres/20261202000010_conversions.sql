-- Conversions an app reports for the clicks of conversion-tracked links. The caller's id makes
-- a report idempotent: the same report twice is one conversion.
CREATE TABLE IF NOT EXISTS conversions (
    tenant        TEXT             NOT NULL,
    conversion_id TEXT             NOT NULL,
    click_id      TEXT             NOT NULL,
    -- The link the click came from (the click id starts with its key).
    link_key      TEXT             NOT NULL,
    name          TEXT             NOT NULL,
    value         DOUBLE PRECISION,
    at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (tenant, conversion_id)
);
CREATE INDEX IF NOT EXISTS conversions_by_link ON conversions (tenant, link_key, at);
