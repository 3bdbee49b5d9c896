-- migrate:up
CREATE TABLE migration_runs (migration text NOT NULL, ran_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
INSERT INTO migration_runs (migration) VALUES ('20240101000000');

-- migrate:down
DROP TABLE users;
DROP TABLE migration_runs;
