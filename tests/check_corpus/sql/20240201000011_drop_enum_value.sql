-- PostgreSQL cannot drop an enum label: re-create the type without it.
UPDATE users SET mood = 'sad' WHERE mood = 'meh';
ALTER TYPE mood RENAME TO mood_old;
CREATE TYPE mood AS ENUM ('happy', 'sad');
ALTER TABLE users ALTER COLUMN mood DROP DEFAULT;
ALTER TABLE users ALTER COLUMN mood TYPE mood USING mood::text::mood;
ALTER TABLE users ALTER COLUMN mood SET DEFAULT 'happy';
DROP TYPE mood_old;
