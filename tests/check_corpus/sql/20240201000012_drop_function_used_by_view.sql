-- CASCADE silently takes the view that calls it along.
DROP FUNCTION full_name(users) CASCADE;
