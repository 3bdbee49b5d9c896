-- NOT VALID skips the scan, but new writes of the running release must pass it.
ALTER TABLE orders ADD CONSTRAINT orders_quantity_positive CHECK (quantity > 0) NOT VALID;
