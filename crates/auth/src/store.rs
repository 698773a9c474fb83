//! The credential registry, in the platform-owned `auth` schema (see docs/ARCHITECTURE.md).

use std::collections::BTreeSet;

use palisade_storage::{Database, Migration, StorageError, now_millis};
use sqlx::Row;

use crate::credential::{Principal, Scope};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "credentials",
    postgres: "CREATE TABLE credentials (
        credential_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        is_service BIGINT NOT NULL,
        all_partners BIGINT NOT NULL,
        partners TEXT NOT NULL,
        scopes TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        revoked_at BIGINT,
        expires_at BIGINT
    );
    CREATE INDEX credentials_updated_at ON credentials (updated_at);",
    sqlite: "CREATE TABLE credentials (
        credential_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        is_service BIGINT NOT NULL,
        all_partners BIGINT NOT NULL,
        partners TEXT NOT NULL,
        scopes TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        revoked_at BIGINT,
        expires_at BIGINT
    );
    CREATE INDEX credentials_updated_at ON credentials (updated_at);",
}];

/// One registry row. The secret's hash is kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub credential_id: String,
    pub display_name: String,
    pub service: bool,
    pub all_partners: bool,
    pub partners: BTreeSet<String>,
    pub scopes: BTreeSet<Scope>,
    pub secret_sha256: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("credential_id", &self.credential_id)
            .field("display_name", &self.display_name)
            .field("partners", &self.partners)
            .field("scopes", &self.scopes)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl CredentialRecord {
    pub fn principal(&self) -> Principal {
        Principal {
            credential_id: self.credential_id.clone(),
            display_name: self.display_name.clone(),
            service: self.service,
            all_partners: self.all_partners,
            partners: self.partners.clone(),
            scopes: self.scopes.clone(),
        }
    }

    pub fn usable_at(&self, now_millis: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now_millis)
    }
}

/// What a new credential is bound to.
#[derive(Debug, Clone, Default)]
pub struct NewCredential {
    pub display_name: String,
    pub service: bool,
    pub all_partners: bool,
    pub partners: Vec<String>,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct AuthStore {
    db: Database,
}

const COLUMNS: &str = "credential_id, display_name, is_service, all_partners, partners, scopes, \
                       secret_sha256, created_at, updated_at, revoked_at, expires_at";

fn from_row(row: &sqlx::any::AnyRow) -> CredentialRecord {
    let split = |s: String| -> BTreeSet<String> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    CredentialRecord {
        credential_id: row.get(0),
        display_name: row.get(1),
        service: row.get::<i64, _>(2) != 0,
        all_partners: row.get::<i64, _>(3) != 0,
        partners: split(row.get(4)),
        scopes: split(row.get(5))
            .iter()
            .filter_map(|s| Scope::parse(s))
            .collect(),
        secret_sha256: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
        revoked_at: row.get(9),
        expires_at: row.get(10),
    }
}

impl AuthStore {
    /// Connects to the `auth` schema and applies its migrations.
    pub async fn open(settings: &palisade_storage::DatabaseSettings) -> Result<Self, StorageError> {
        let db = Database::connect(settings, "auth").await?;
        db.migrate(MIGRATIONS).await?;
        Ok(Self { db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn insert(
        &self,
        id: &str,
        secret_sha256: &str,
        new: &NewCredential,
    ) -> Result<CredentialRecord, StorageError> {
        let now = now_millis();
        let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
        sqlx::query(&format!(
            "INSERT INTO credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL, $9)"
        ))
        .bind(id)
        .bind(&new.display_name)
        .bind(i64::from(new.service))
        .bind(i64::from(new.all_partners))
        .bind(new.partners.join(","))
        .bind(scopes.join(","))
        .bind(secret_sha256)
        .bind(now)
        .bind(new.expires_at)
        .execute(self.db.pool())
        .await?;
        Ok(self.get(id).await?.expect("row just inserted"))
    }

    /// Creates or refreshes a credential whose secret comes from configuration (bootstrap).
    pub async fn upsert(
        &self,
        id: &str,
        secret_sha256: &str,
        new: &NewCredential,
    ) -> Result<(), StorageError> {
        if let Some(existing) = self.get(id).await? {
            if existing.secret_sha256 == secret_sha256 && existing.revoked_at.is_none() {
                return Ok(());
            }
            sqlx::query("UPDATE credentials SET secret_sha256 = $2, revoked_at = NULL, updated_at = $3 WHERE credential_id = $1")
                .bind(id)
                .bind(secret_sha256)
                .bind(now_millis())
                .execute(self.db.pool())
                .await?;
            return Ok(());
        }
        match self.insert(id, secret_sha256, new).await {
            Ok(_) => Ok(()),
            // Another replica inserted it at the same moment.
            Err(StorageError::Sqlx(sqlx::Error::Database(e))) if e.is_unique_violation() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE credential_id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Ordered by id, after `after` (the page token).
    pub async fn list(
        &self,
        after: &str,
        limit: i64,
        include_revoked: bool,
    ) -> Result<Vec<CredentialRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE credential_id > $1 AND ($2 = 1 OR revoked_at IS NULL) \
             ORDER BY credential_id LIMIT $3"
        ))
        .bind(after)
        .bind(i64::from(include_revoked))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn revoke(&self, id: &str) -> Result<Option<CredentialRecord>, StorageError> {
        let now = now_millis();
        sqlx::query("UPDATE credentials SET revoked_at = $2, updated_at = $2 WHERE credential_id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(self.db.pool())
            .await?;
        self.get(id).await
    }

    /// Rows changed at or after `since` (Unix ms): the feed the authenticators' caches follow.
    pub async fn changed_since(&self, since: i64) -> Result<Vec<CredentialRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE updated_at >= $1"
        ))
        .bind(since)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}
