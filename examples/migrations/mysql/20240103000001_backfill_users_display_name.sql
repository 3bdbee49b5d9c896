UPDATE users SET display_name = SUBSTRING_INDEX(email, '@', 1) WHERE display_name IS NULL;
