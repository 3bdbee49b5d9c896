//! The integration tests: one crate, as ripgrep lays them out, so the binary links once and
//! the harness is shared. Each module runs the real `schemagate` binary against real
//! PostgreSQL, MySQL/MariaDB, SQLite, PgBouncer and migrators; every test creates its own
//! database, so they run in parallel.

#[macro_use]
mod harness;

mod alembic;
mod backends;
mod check;
mod connecting;
mod contracts;
mod edges;
mod external;
mod faults;
mod fleet;
mod layouts;
mod migrations_table;
mod migrators;
mod mysql;
mod phased_migrators;
mod phases;
mod postgres;
mod reliability_doc;
mod smoke;
mod sqlx_parity;
