-- The expand step: a nullable column and a new table; old code is unaffected.
ALTER TABLE users ADD COLUMN tier TEXT;
CREATE TABLE user_settings (
    user_id BIGINT PRIMARY KEY,
    theme TEXT NOT NULL DEFAULT 'light'
);
