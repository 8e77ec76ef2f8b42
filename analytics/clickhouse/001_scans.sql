-- Scan events, one row each (qrpool's analytics on ClickHouse).
--
-- Partitioned by day: retention drops a day's partition whole, and a query of a date range
-- opens only those days. The tenant leads the sort key rather than the partition key, as
-- ClickHouse advises (a partition per tenant and day would make thousands of small parts):
-- within each day's partition the rows of a tenant are contiguous, so a tenant's query reads
-- only its own granules — day × tenant pruning, as the design asks, from the partition and
-- the primary index together.
--
-- The stream into this table is at least once; an event delivered twice has the same id, and
-- ReplacingMergeTree keeps one row per (tenant, at, id). Queries read it with FINAL, so a
-- duplicate not merged away yet is not counted either.
--
-- Text columns are never NULL: an unknown value is ''. `{db}` is the configured database.
CREATE TABLE IF NOT EXISTS {db}.scans
(
    tenant          LowCardinality(String),
    id              FixedString(16),
    at              DateTime64(6, 'UTC'),
    kind            LowCardinality(String),
    key             String,
    outcome         LowCardinality(String),
    device          LowCardinality(String),
    bot             Bool,
    browser         LowCardinality(String),
    browser_version LowCardinality(String),
    os              LowCardinality(String),
    os_version      LowCardinality(String),
    country         LowCardinality(String),
    region          LowCardinality(String),
    city            LowCardinality(String),
    referrer        LowCardinality(String),
    utm_source      LowCardinality(String),
    utm_medium      LowCardinality(String),
    utm_campaign    LowCardinality(String),
    utm_term        LowCardinality(String),
    utm_content     LowCardinality(String),
    variant         LowCardinality(String),
    via_qr          Bool,
    click_id        String,
    tags            Array(LowCardinality(String)),
    visitor         Nullable(UInt64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(at)
ORDER BY (tenant, at, id)
