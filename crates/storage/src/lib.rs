//! Database pools for Postgres and SQLite, per-service schemas, migrations, leases and the outbox table.
