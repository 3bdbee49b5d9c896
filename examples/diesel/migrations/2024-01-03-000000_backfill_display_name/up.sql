-- A data migration: derive every user's display name, then require one.
UPDATE users SET display_name = split_part(email, '@', 1) WHERE display_name IS NULL;
ALTER TABLE users ALTER COLUMN display_name SET NOT NULL;
INSERT INTO migration_runs (migration) VALUES ('20240103000000');
