CREATE INDEX orders_user_created_idx ON orders (user_id, created_at);
