-- The embedded pool: one row per pre-generated code, taken in `seq` order.
-- A row is deleted only after its code is bound, so a crash redelivers it.
CREATE TABLE IF NOT EXISTS pool (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    record BLOB    NOT NULL
);
