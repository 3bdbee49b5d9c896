-- The contract step of an expand/contract change: the running release no longer reads it.
-- schemagate:allow drop-column orders.comment
ALTER TABLE orders DROP COLUMN comment;
