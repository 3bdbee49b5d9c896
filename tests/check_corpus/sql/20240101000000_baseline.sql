-- The release still running was built for this schema.
CREATE TYPE mood AS ENUM ('happy', 'meh', 'sad');
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL,
    display_name TEXT,
    nickname VARCHAR(50),
    legacy_email TEXT,
    mood mood NOT NULL DEFAULT 'happy',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    quantity INTEGER NOT NULL DEFAULT 1,
    status VARCHAR(32) NOT NULL DEFAULT 'new',
    note TEXT
);
CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL);
CREATE TABLE events (id BIGSERIAL PRIMARY KEY, payload TEXT);
CREATE FUNCTION full_name(u users) RETURNS TEXT LANGUAGE sql STABLE
    AS $$ SELECT coalesce(u.display_name, u.email) $$;
CREATE VIEW user_names AS SELECT u.id, full_name(u) AS name FROM users u;
INSERT INTO users (email, nickname, legacy_email, mood)
    SELECT 'u' || g || '@example.com', 'n' || g, 'old' || g || '@example.com',
           (ARRAY['happy', 'meh', 'sad'])[1 + g % 3]::mood
    FROM generate_series(1, 200) g;
INSERT INTO orders (user_id, quantity, note) SELECT 1 + g % 200, g, 'n' FROM generate_series(1, 500) g;
INSERT INTO payments (order_id) SELECT g FROM generate_series(1, 500) g;
