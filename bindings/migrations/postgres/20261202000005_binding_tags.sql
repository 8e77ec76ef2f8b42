-- Tags a tenant puts on a code (a JSON array of strings; NULL: none), carried into its scans'
-- events. A past version keeps the tags it had.
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS tags JSONB;
ALTER TABLE binding_versions ADD COLUMN IF NOT EXISTS tags JSONB;
