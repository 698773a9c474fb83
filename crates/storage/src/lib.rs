//! Database access shared by every service: one connection pool per service, over Postgres
//! (production) or SQLite (the embedded default), with the service's tables in its own schema.
//!
//! Services write their SQL once against sqlx's `Any` driver and keep the few dialect
//! differences behind [`Backend`]. This crate never knows any service's tables: it only
//! connects, isolates schemas and applies the migrations a service hands it.

mod database;
mod migrate;

pub use database::{Backend, Database, DatabaseSettings, StorageError, is_unavailable};
pub use migrate::Migration;

/// Milliseconds since the Unix epoch: the one timestamp format stored in every table, because
/// it means the same thing in Postgres and SQLite.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
