DROP TABLE orders;
DELETE FROM users;
