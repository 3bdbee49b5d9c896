DROP TABLE users;
DROP TABLE migration_runs;
