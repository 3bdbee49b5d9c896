ALTER TABLE user_sessions ADD COLUMN finished_at TIMESTAMPTZ;
