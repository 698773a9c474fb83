//! Test support shared by every crate's tests: each test gets its own Postgres database, its
//! own Redis key prefix and its own SQLite directory, so tests run in parallel against the
//! real servers without seeing each other.
//!
//! The servers are found through `PALISADE_TEST_DATABASE_URL` / `DATABASE_URL` (an admin URL,
//! e.g. `postgres://postgres@127.0.0.1:5432/postgres`) and `PALISADE_TEST_REDIS_URL` /
//! `REDIS_URL`, falling back to the standard local ports. `make test` starts throwaway
//! servers when none is running (see `scripts/test-services.sh`). This crate never mocks them.

mod logs;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::{SystemTime, UNIX_EPOCH},
};

use palisade_storage::DatabaseSettings;
use secrecy::SecretString;
use sqlx::{ConnectOptions, Connection, Executor, postgres::PgConnectOptions};

pub use logs::{LogCapture, capture_logs};

const TEST_DB_PREFIX: &str = "palisade_test_";

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The admin URL of the Postgres server tests use.
pub fn postgres_admin_url() -> String {
    env_first(&["PALISADE_TEST_DATABASE_URL", "DATABASE_URL"])
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of the Redis server tests use.
pub fn redis_url() -> String {
    env_first(&["PALISADE_TEST_REDIS_URL", "REDIS_URL"])
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

fn unique_suffix() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "{secs}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn unreachable_help(what: &str, url: &str, err: impl std::fmt::Display) -> String {
    format!(
        "cannot reach the test {what} at {url}: {err}\n\
         Run the tests with `make test`, which starts throwaway Postgres and Redis servers when \
         none is running, or set PALISADE_TEST_DATABASE_URL / PALISADE_TEST_REDIS_URL. \
         On Debian/Ubuntu: `apt-get install postgresql redis-server`."
    )
}

/// A fresh, empty Postgres database that is dropped when the value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .finish()
    }
}

impl TestDatabase {
    /// Creates `palisade_test_<unix secs>_<random>` on the test server.
    pub async fn create() -> Self {
        let admin_url = postgres_admin_url();
        let mut admin = connect_admin(&admin_url).await;
        sweep_stale_databases(&mut admin).await;
        let name = format!("{TEST_DB_PREFIX}{}", unique_suffix());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let options = PgConnectOptions::from_str(&admin_url)
            .expect("valid admin url")
            .database(&name);
        let url = options.to_url_lossy().to_string();
        Self {
            name,
            url,
            admin_url,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Settings for `palisade_storage::Database::connect`.
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: SecretString::from(self.url.clone()),
            max_connections: 8,
            ..DatabaseSettings::default()
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // Drop runs inside the test's runtime; a separate thread with its own runtime can block.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect_admin(admin_url: &str) -> sqlx::PgConnection {
    let options = PgConnectOptions::from_str(admin_url)
        .unwrap_or_else(|e| panic!("invalid test database url {admin_url}: {e}"))
        .log_statements(tracing::log::LevelFilter::Off);
    options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable_help("Postgres", admin_url, e)))
}

/// Drops test databases left behind by killed test processes (older than two hours).
async fn sweep_stale_databases(admin: &mut sqlx::PgConnection) {
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .saturating_sub(2 * 3600);
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'palisade_test_%' LIMIT 50",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for (name,) in names {
        let created = name
            .trim_start_matches(TEST_DB_PREFIX)
            .split('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|c| c < cutoff) {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }
}

/// A unique Redis key prefix on the test server; its keys are deleted on drop.
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl TestRedis {
    pub async fn create() -> Self {
        let url = redis_url();
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid test redis url {url}: {e}"));
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable_help("Redis", &url, e)));
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable_help("Redis", &url, e)));
        Self {
            url,
            prefix: format!("test:{}:", unique_suffix()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every key a test writes starts with this, e.g. `test:1700000000_ab12cd34ef56:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis reachable")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Plain keys, and hash-tagged ones (`{prefix…}`) as the queue writes them.
        let patterns = [format!("{}*", self.prefix), format!("{{{}*", self.prefix)];
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            for pattern in patterns {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        })
        .join();
    }
}

/// A private directory for SQLite files, removed on drop.
#[derive(Debug)]
pub struct TestSqlite {
    dir: PathBuf,
}

impl TestSqlite {
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-test-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}/palisade.db", self.dir.display())
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: SecretString::from(self.url()),
            ..DatabaseSettings::default()
        }
    }
}

impl Drop for TestSqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Either backend, for conformance suites that run the same test against both.
#[derive(Debug)]
pub enum TestBackend {
    Postgres(TestDatabase),
    Sqlite(TestSqlite),
}

impl TestBackend {
    pub async fn postgres() -> Self {
        Self::Postgres(TestDatabase::create().await)
    }

    pub fn sqlite() -> Self {
        Self::Sqlite(TestSqlite::create())
    }

    pub fn settings(&self) -> DatabaseSettings {
        match self {
            Self::Postgres(db) => db.settings(),
            Self::Sqlite(db) => db.settings(),
        }
    }
}

/// Declares one `#[tokio::test]` per backend that runs the given async fn with a fresh
/// [`TestBackend`]: `backend_conformance!(stores_and_reads, my_test_fn);` expands to
/// `stores_and_reads::postgres` and `stores_and_reads::sqlite`.
#[macro_export]
macro_rules! backend_conformance {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::TestBackend::postgres().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::TestBackend::sqlite()).await;
            }
        }
    };
}
