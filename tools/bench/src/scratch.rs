//! A Postgres database of a workload's own, created on the bench's server and dropped after it,
//! so a workload's rows and indexes never carry over into the next one.

use sqlx::Executor;

pub struct ScratchDatabase {
    admin: sqlx::PgPool,
    name: String,
    /// The database's URL: the server's, with the scratch database as its path.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `palisade_bench_<label>_<random>` on the server `database_url` points at.
    pub async fn create(database_url: &str, label: &str) -> anyhow::Result<Self> {
        let name = format!("palisade_bench_{label}_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(database_url)
            .await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let mut url = url::Url::parse(database_url)?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }

    /// Drops the database, whoever is still connected to it.
    pub async fn drop(self) -> anyhow::Result<()> {
        self.admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        self.admin.close().await;
        Ok(())
    }
}
