-- Tags a tenant puts on a link (a JSON array of strings; NULL: none), carried into its scans'
-- events. Changed in place, each change in the audit log: they do not change where scans go.
ALTER TABLE links ADD COLUMN IF NOT EXISTS tags JSONB;
