class AddDisplayName < ActiveRecord::Migration[6.1]
  def change
    add_column :users, :display_name, :text
    execute "INSERT INTO migration_runs (migration) VALUES ('20240102000000')"
  end
end
