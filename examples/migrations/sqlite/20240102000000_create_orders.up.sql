CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
INSERT INTO orders (user_id, total_cents) VALUES (1, 1250), (1, 990), (2, 4200);
