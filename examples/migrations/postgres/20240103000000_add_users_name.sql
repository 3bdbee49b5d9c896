ALTER TABLE users ADD COLUMN display_name TEXT;
-- Backfill from the address so the column can become NOT NULL.
UPDATE users SET display_name = split_part(email, '@', 1) WHERE display_name IS NULL;
ALTER TABLE users ALTER COLUMN display_name SET NOT NULL;
