-- The hourly rollup: per tenant and UTC hour, the dimensions dashboards group by most, with
-- the scans and visitors as aggregate states. A materialized view fills it from every insert
-- into `scans`.
--
-- Scans are counted as distinct event ids (uniqExact of `id`), so an event delivered twice is
-- counted once here too; visitors as distinct (UTC day, digest) pairs, as everywhere.
-- Queries whose groups and filters are among these columns, and whose range and buckets fall
-- on whole UTC hours, read this instead of `scans`.
CREATE TABLE IF NOT EXISTS {db}.scans_hourly
(
    tenant   LowCardinality(String),
    hour     DateTime('UTC'),
    kind     LowCardinality(String),
    key      String,
    outcome  LowCardinality(String),
    device   LowCardinality(String),
    country  LowCardinality(String),
    via_qr   Bool,
    bot      Bool,
    scans    AggregateFunction(uniqExact, FixedString(16)),
    visitors AggregateFunction(uniqExact, Date, Nullable(UInt64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (tenant, hour, kind, key, outcome, device, country, via_qr, bot);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.scans_hourly_feed TO {db}.scans_hourly AS
SELECT
    tenant,
    toStartOfHour(at) AS hour,
    kind,
    key,
    outcome,
    device,
    country,
    via_qr,
    bot,
    uniqExactState(id) AS scans,
    uniqExactState(toDate(at), visitor) AS visitors
FROM {db}.scans
GROUP BY tenant, hour, kind, key, outcome, device, country, via_qr, bot
