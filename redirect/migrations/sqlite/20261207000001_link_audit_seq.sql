-- Each tenant's audit log of a link is numbered 1, 2, 3, … without gaps, as versions are: the
-- API pages on this number. The table's `id` is shared by every tenant, so showing it would
-- tell one tenant how busy the others are. (SQLite cannot add NOT NULL to a column in place;
-- every insert sets it.)
ALTER TABLE link_audit ADD COLUMN seq INTEGER;
UPDATE link_audit SET seq = numbered.seq
FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY link_key, tenant ORDER BY id) AS seq
    FROM link_audit
) AS numbered
WHERE link_audit.id = numbered.id;
CREATE UNIQUE INDEX IF NOT EXISTS link_audit_by_seq ON link_audit (link_key, tenant, seq);
DROP INDEX IF EXISTS link_audit_by_link;
