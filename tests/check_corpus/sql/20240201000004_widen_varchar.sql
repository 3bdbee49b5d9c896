-- Widening a varchar is binary compatible: no rewrite, no scan.
ALTER TABLE orders ALTER COLUMN status TYPE VARCHAR(64);
