-- migrate:up
ALTER TABLE users ADD COLUMN display_name text;
INSERT INTO migration_runs (migration) VALUES ('20240102000000');

-- migrate:down
ALTER TABLE users DROP COLUMN display_name;
