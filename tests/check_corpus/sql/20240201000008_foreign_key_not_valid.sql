-- NOT VALID: existing rows are not checked, so nothing is scanned under the lock
-- (VALIDATE CONSTRAINT later takes only SHARE UPDATE EXCLUSIVE).
ALTER TABLE payments ADD CONSTRAINT payments_order_fk
    FOREIGN KEY (order_id) REFERENCES orders (id) NOT VALID;
