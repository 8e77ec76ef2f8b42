-- Tags a tenant puts on a code (a JSON array of strings; NULL: none), carried into its scans'
-- events. A past version keeps the tags it had.
ALTER TABLE bindings ADD COLUMN tags TEXT;
ALTER TABLE binding_versions ADD COLUMN tags TEXT;
