ALTER TABLE users ADD COLUMN display_name text;
INSERT INTO migration_runs (migration) VALUES ('20240102000000');
