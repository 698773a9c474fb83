use std::{path::PathBuf, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{
    Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

/// Where a service keeps its rows.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` in production, `sqlite://path/to/palisade.db` for the embedded default.
    /// With SQLite each service gets its own file next to this one (`palisade.<schema>.db`),
    /// because SQLite has no schemas and every service owns tables with common names.
    /// Never serialised: it may carry a password.
    #[serde(skip_serializing)]
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long start-up keeps trying to reach Postgres while it refuses connections (down,
    /// restarting, recovering from a crash) before giving up. A service restarted during a
    /// database outage waits for it instead of exiting into a crash loop.
    #[serde(with = "humantime_serde")]
    pub startup_wait: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://.palisade/palisade.db"),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            startup_wait: Duration::from_secs(120),
        }
    }
}

impl std::fmt::Debug for DatabaseSettings {
    // The URL may carry a password, so only its scheme is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.expose_secret();
        let scheme = url.split("://").next().unwrap_or("?");
        f.debug_struct("DatabaseSettings")
            .field("url", &format_args!("{scheme}://[redacted]"))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("startup_wait", &self.startup_wait)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported database url scheme {0:?}: use postgres:// or sqlite://")]
    UnsupportedScheme(String),
    #[error("invalid schema name {0:?}: use lowercase letters, digits and underscores")]
    InvalidSchema(String),
    #[error("cannot create the directory for the sqlite database: {0}")]
    SqliteDirectory(#[source] std::io::Error),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// A connection pool bound to one service's schema.
#[derive(Clone)]
pub struct Database {
    pool: sqlx::AnyPool,
    backend: Backend,
    schema: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend)
            .field("schema", &self.schema)
            .finish()
    }
}

impl Database {
    /// Connects and pins every connection to `schema` (a Postgres schema, or a SQLite file).
    pub async fn connect(settings: &DatabaseSettings, schema: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(StorageError::InvalidSchema(schema.to_owned()));
        }
        let url = settings.url.expose_secret();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            let scheme = url.split(':').next().unwrap_or_default().to_owned();
            return Err(StorageError::UnsupportedScheme(scheme));
        };
        let pool = match backend {
            Backend::Postgres => Self::connect_postgres_waiting(settings, schema).await?,
            Backend::Sqlite => Self::connect_sqlite(settings, schema).await?,
        };
        Ok(Self {
            pool,
            backend,
            schema: schema.to_owned(),
        })
    }

    /// [`Self::connect_postgres`], retried with back-off while the server cannot be reached
    /// or is still starting, for up to `startup_wait`. Found by the chaos suite: a notifier
    /// started while Postgres was down exited with "pool timed out while waiting for an open
    /// connection".
    async fn connect_postgres_waiting(
        settings: &DatabaseSettings,
        schema: &str,
    ) -> Result<sqlx::AnyPool, StorageError> {
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            match Self::connect_postgres(settings, schema).await {
                Ok(pool) => return Ok(pool),
                Err(e) if e.is_unavailable() && started.elapsed() < settings.startup_wait => {
                    tracing::warn!(
                        error = %e,
                        schema,
                        "the database is not reachable yet; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_postgres(
        settings: &DatabaseSettings,
        schema: &str,
    ) -> Result<sqlx::AnyPool, StorageError> {
        let options = AnyConnectOptions::from_str(settings.url.expose_secret())?;
        // Create the schema once, outside the pool, so `search_path` can name it.
        {
            let bootstrap = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(settings.connect_timeout)
                .connect_with(options.clone())
                .await?;
            // Concurrent CREATE SCHEMA IF NOT EXISTS can race on the catalog; the lock serialises it.
            let mut tx = bootstrap.begin().await?;
            tx.execute("SELECT pg_advisory_xact_lock(7461201)").await?;
            tx.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
                .await?;
            tx.commit().await?;
            bootstrap.close().await;
        }
        let statement_timeout_ms = settings.statement_timeout.as_millis();
        let set_path =
            format!("SET search_path TO {schema}; SET statement_timeout = {statement_timeout_ms}");
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.connect_timeout)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(set_path.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(pool)
    }

    async fn connect_sqlite(
        settings: &DatabaseSettings,
        schema: &str,
    ) -> Result<sqlx::AnyPool, StorageError> {
        let url = settings.url.expose_secret();
        let path = sqlite_path_for_schema(url, schema);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StorageError::SqliteDirectory)?;
        }
        let options =
            AnyConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", path.display()))?;
        // SQLite allows one writer. A single connection turns "database is locked" races into
        // an orderly queue, which is the right trade for the embedded, single-process default.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.connect_timeout.max(Duration::from_secs(30)))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(pool)
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness probe for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// `sqlite://dir/palisade.db` + `tokens` → `dir/palisade.tokens.db`.
fn sqlite_path_for_schema(url: &str, schema: &str) -> PathBuf {
    let raw = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let raw = raw.split('?').next().unwrap_or(raw);
    let path = PathBuf::from(raw);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "palisade".to_owned());
    path.with_file_name(format!("{stem}.{schema}.db"))
}

impl StorageError {
    /// Whether this means "not now" rather than "never": the database is unreachable or
    /// restarting, so the caller should retry (gRPC `UNAVAILABLE`, not `INTERNAL`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Sqlx(e) => is_unavailable(e),
            _ => false,
        }
    }
}

/// Errors that mean "not now" rather than "never": no connection (refused, reset, timed out,
/// pool closing), a broken connection (SQLSTATE class 08), a server that is starting, shutting
/// down or recovering (class 57P), or one out of connection slots (53300).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("57P") || code.starts_with("08") || code == "53300"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_are_per_schema() {
        assert_eq!(
            sqlite_path_for_schema("sqlite://.palisade/palisade.db", "tokens"),
            PathBuf::from(".palisade/palisade.tokens.db")
        );
        assert_eq!(
            sqlite_path_for_schema("sqlite:///tmp/x/p.db?mode=rwc", "alerts"),
            PathBuf::from("/tmp/x/p.alerts.db")
        );
    }

    #[test]
    fn debug_hides_the_url() {
        let settings = DatabaseSettings {
            url: SecretString::from("postgres://admin:hunter2@db/palisade"),
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://[redacted]"));
    }
}
