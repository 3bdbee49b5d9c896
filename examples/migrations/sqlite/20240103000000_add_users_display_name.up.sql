ALTER TABLE users ADD COLUMN display_name TEXT;
-- Backfill from the address, so the application can rely on it.
UPDATE users SET display_name = substr(email, 1, instr(email, '@') - 1) WHERE display_name IS NULL;
