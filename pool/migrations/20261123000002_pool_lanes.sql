-- Each issuer has its own lane: takers of one issuer's codes read only its rows, and the depth
-- of a lane is a count. Rows written before lanes were the local renderer's.
ALTER TABLE pool ADD COLUMN issuer TEXT NOT NULL DEFAULT 'local';
CREATE INDEX pool_issuer_seq ON pool (issuer, seq);
