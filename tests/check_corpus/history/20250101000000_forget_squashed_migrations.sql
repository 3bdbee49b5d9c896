-- As matrix-authentication-service does after squashing its early migrations: the rows
-- of the squashed ones are deleted from the history table the migration runs under, so
-- that sqlx does not report them as applied but missing. The rehearsal must have that
-- table, where and as `migrate` has it.
DELETE FROM public._sqlx_migrations
WHERE version IN (20230102000000, 20230103000000);

ALTER TABLE user_sessions ADD COLUMN user_agent TEXT;
