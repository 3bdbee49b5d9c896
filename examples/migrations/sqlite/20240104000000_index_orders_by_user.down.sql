DROP INDEX orders_user_created_idx;
