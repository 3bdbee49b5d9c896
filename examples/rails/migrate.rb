# Runs ActiveRecord's own migrator on db/migrate, as `bin/rails db:migrate` does, without
# a Rails application: `DATABASE_URL=postgres://… ruby migrate.rb`.
#
# db/post_migrate (contract migrations, GitLab's convention) is added to the paths unless
# SKIP_POST_DEPLOYMENT_MIGRATIONS is set, as the initializer in docs/src/phases.md does for
# a Rails app: `schemagate migrate --phase expand` sets it.
require "active_record"

paths = [File.expand_path("db/migrate", __dir__)]
unless ENV["SKIP_POST_DEPLOYMENT_MIGRATIONS"]
  paths << File.expand_path("db/post_migrate", __dir__)
end
ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))
ActiveRecord::MigrationContext.new(paths, ActiveRecord::SchemaMigration).migrate
