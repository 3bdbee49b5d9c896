# A data migration: derive every user's display name, then require one.
class BackfillDisplayName < ActiveRecord::Migration[6.1]
  def up
    execute "UPDATE users SET display_name = split_part(email, '@', 1) WHERE display_name IS NULL"
    change_column_null :users, :display_name, false
    execute "INSERT INTO migration_runs (migration) VALUES ('20240103000000')"
  end

  def down
    change_column_null :users, :display_name, true
  end
end
