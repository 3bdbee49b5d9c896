INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
