-- integer -> bigint: compatible for the running release, but the table is rewritten.
ALTER TABLE orders ALTER COLUMN quantity TYPE BIGINT;
