use sqlx::{Executor, Row};

use crate::{Backend, Database, StorageError, now_millis};

/// One schema change, written for both backends. Versions only ever grow; an applied
/// migration is never edited (the checksum below refuses that).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        }
    }
}

fn checksum(sql: &str) -> String {
    // FNV-1a: enough to notice an edited migration, and dependency-free.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl Database {
    /// Applies the migrations not yet applied, each in its own transaction. Safe to run from
    /// several replicas at once: Postgres serialises them on an advisory lock per schema.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<usize, StorageError> {
        let mut conn = self.pool().acquire().await?;
        let lock_key = i64::from_str_radix(&checksum(self.schema())[..15], 16).unwrap_or(1);
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(lock_key)
                .execute(&mut *conn)
                .await?;
        }
        let result = self.apply_pending(&mut conn, migrations).await;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(lock_key)
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn apply_pending(
        &self,
        conn: &mut sqlx::AnyConnection,
        migrations: &[Migration],
    ) -> Result<usize, StorageError> {
        // Created under the lock: concurrent CREATE TABLE IF NOT EXISTS races in Postgres' catalog.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
               checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let rows = sqlx::query("SELECT version, checksum FROM schema_migrations")
            .fetch_all(&mut *conn)
            .await?;
        let applied: std::collections::HashMap<i64, String> = rows
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
            .collect();
        let mut count = 0;
        for migration in migrations {
            let sql = migration.sql(self.backend());
            let sum = checksum(sql);
            if let Some(existing) = applied.get(&migration.version) {
                if *existing != sum {
                    return Err(StorageError::Sqlx(sqlx::Error::Protocol(format!(
                        "migration {} ({}) was edited after it was applied",
                        migration.version, migration.description
                    ))));
                }
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            tx.execute(sql).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, description, checksum, applied_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(migration.version)
            .bind(migration.description)
            .bind(sum)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(
                schema = self.schema(),
                version = migration.version,
                description = migration.description,
                "applied migration"
            );
            count += 1;
        }
        Ok(count)
    }
}
