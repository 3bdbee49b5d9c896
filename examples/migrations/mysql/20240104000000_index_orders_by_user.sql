-- InnoDB builds this index online (ALGORITHM=INPLACE, LOCK=NONE): writes continue.
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at) ALGORITHM=INPLACE LOCK=NONE;
