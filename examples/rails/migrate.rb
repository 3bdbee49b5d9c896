# Runs ActiveRecord's own migrator on db/migrate, as `bin/rails db:migrate` does, without
# a Rails application: `DATABASE_URL=postgres://… ruby migrate.rb`.
require "active_record"

ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))
ActiveRecord::MigrationContext.new(File.expand_path("db/migrate", __dir__), ActiveRecord::SchemaMigration).migrate
