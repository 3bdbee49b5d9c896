CREATE TABLE user_sessions (
    user_session_id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (user_id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
