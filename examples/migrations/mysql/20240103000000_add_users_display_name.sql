-- One statement per migration on MySQL: DDL commits implicitly, so a failure after the
-- first statement would leave the migration half-applied (dirty).
ALTER TABLE users ADD COLUMN display_name VARCHAR(255) NULL;
