class CreateUsers < ActiveRecord::Migration[6.1]
  def change
    create_table :migration_runs, id: false do |t|
      t.text :migration, null: false
    end
    create_table :users do |t|
      t.text :email, null: false, index: { unique: true }
    end
    execute "INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com')"
    execute "INSERT INTO migration_runs (migration) VALUES ('20240101000000')"
  end
end
