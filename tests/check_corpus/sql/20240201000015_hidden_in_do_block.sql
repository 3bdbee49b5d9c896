-- A parser sees a DO block; the rehearsal sees a narrowed column and a table rewrite.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'orders') THEN
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE varchar(16)', 'orders', 'status');
    END IF;
END
$$;
