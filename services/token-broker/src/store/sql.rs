//! [`TokenStore`] over sqlx's `Any` driver: one set of queries for Postgres and SQLite.

use palisade_contracts::{events::v1::Envelope, tokens::v1::TokenHealthState};
use palisade_storage::Database;
use sqlx::{Row, any::AnyRow};

use super::*;

/// The outbox topic the broker's events go to.
pub const TOPIC: &str = "tokens";

#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn migrate(&self) -> Result<usize> {
        Ok(self.db.migrate(MIGRATIONS).await?)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.db.pool()
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

const APP_COLUMNS: &str = "app_id, partner_tenant_id, display_name, client_id, cloud, scopes, \
    token_endpoint, redirect_uri, credential_kind, credential_sealed, credential_key_version, \
    credential_reference, credential_expires_at, created_at, updated_at";

fn app_from_row(r: &AnyRow) -> AppRow {
    let scopes: String = r.get("scopes");
    AppRow {
        app_id: r.get("app_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        display_name: r.get("display_name"),
        client_id: r.get("client_id"),
        cloud: r.get::<i64, _>("cloud") as i32,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        token_endpoint: r.get::<i64, _>("token_endpoint") as i32,
        redirect_uri: r.get("redirect_uri"),
        credential_kind: r.get::<i64, _>("credential_kind") as i32,
        credential_sealed: r.get("credential_sealed"),
        credential_key_version: r.get("credential_key_version"),
        credential_reference: r.get("credential_reference"),
        credential_expires_at: r.get("credential_expires_at"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

const CONSENT_COLUMNS: &str = "consent_id, partner_tenant_id, app_id, consented_by_upn, \
    consented_with_mfa, source, refresh_token_sealed, key_version, version, rotation_count, \
    health, health_detail, remediation, reconsent_url, health_changed_at, created_at, \
    last_redeemed_at, cliff_warned_at, revoked_at";

fn consent_from_row(r: &AnyRow) -> ConsentRow {
    ConsentRow {
        consent_id: r.get("consent_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        app_id: r.get("app_id"),
        consented_by_upn: r.get("consented_by_upn"),
        consented_with_mfa: r.get::<i64, _>("consented_with_mfa") != 0,
        source: r.get("source"),
        refresh_token_sealed: r.get("refresh_token_sealed"),
        key_version: r.get("key_version"),
        version: r.get("version"),
        rotation_count: r.get("rotation_count"),
        health: r.get::<i64, _>("health") as i32,
        health_detail: r.get("health_detail"),
        remediation: r.get("remediation"),
        reconsent_url: r.get("reconsent_url"),
        health_changed_at: r.get("health_changed_at"),
        created_at: r.get("created_at"),
        last_redeemed_at: r.get("last_redeemed_at"),
        cliff_warned_at: r.get("cliff_warned_at"),
        revoked_at: r.get("revoked_at"),
    }
}

const ACCESS_COLUMNS: &str = "cache_key, partner_tenant_id, consent_id, token_sealed, key_version, \
    token_type, mfa, expires_at, obtained_at";

fn access_from_row(r: &AnyRow) -> AccessTokenRow {
    AccessTokenRow {
        cache_key: r.get("cache_key"),
        partner_tenant_id: r.get("partner_tenant_id"),
        consent_id: r.get("consent_id"),
        token_sealed: r.get("token_sealed"),
        key_version: r.get("key_version"),
        token_type: r.get("token_type"),
        mfa: r.get::<i64, _>("mfa") != 0,
        expires_at: r.get("expires_at"),
        obtained_at: r.get("obtained_at"),
    }
}

const AUDIT_COLUMNS: &str = "event_id, partner_tenant_id, kind, target_tenant_id, resource, \
    caller, success, mfa, detail, occurred_at";

fn audit_from_row(r: &AnyRow) -> AuditRow {
    AuditRow {
        event_id: r.get("event_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        kind: r.get("kind"),
        target_tenant_id: r.get("target_tenant_id"),
        resource: r.get("resource"),
        caller: r.get("caller"),
        success: r.get::<i64, _>("success") != 0,
        mfa: r.get::<i64, _>("mfa") != 0,
        detail: r.get("detail"),
        occurred_at: r.get("occurred_at"),
    }
}

fn customer_from_row(r: &AnyRow) -> CustomerAccessRow {
    CustomerAccessRow {
        partner_tenant_id: r.get("partner_tenant_id"),
        customer_tenant_id: r.get("customer_tenant_id"),
        health: r.get::<i64, _>("health") as i32,
        detail: r.get("detail"),
        since: r.get("since"),
    }
}

async fn insert_audit_in(conn: &mut sqlx::AnyConnection, audit: &AuditRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
    ))
    .bind(&audit.event_id)
    .bind(&audit.partner_tenant_id)
    .bind(&audit.kind)
    .bind(&audit.target_tenant_id)
    .bind(&audit.resource)
    .bind(&audit.caller)
    .bind(flag(audit.success))
    .bind(flag(audit.mfa))
    .bind(&audit.detail)
    .bind(audit.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_access_in(conn: &mut sqlx::AnyConnection, row: &AccessTokenRow) -> Result<()> {
    // The newest token wins: an older answer arriving late never replaces a newer one.
    sqlx::query(&format!(
        "INSERT INTO access_tokens ({ACCESS_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
         ON CONFLICT (cache_key) DO UPDATE SET consent_id = excluded.consent_id, \
         token_sealed = excluded.token_sealed, key_version = excluded.key_version, \
         token_type = excluded.token_type, mfa = excluded.mfa, expires_at = excluded.expires_at, \
         obtained_at = excluded.obtained_at \
         WHERE access_tokens.obtained_at <= excluded.obtained_at"
    ))
    .bind(&row.cache_key)
    .bind(&row.partner_tenant_id)
    .bind(&row.consent_id)
    .bind(&row.token_sealed)
    .bind(&row.key_version)
    .bind(&row.token_type)
    .bind(flag(row.mfa))
    .bind(row.expires_at)
    .bind(row.obtained_at)
    .execute(conn)
    .await?;
    Ok(())
}

fn range_clause(
    column: &str,
    range: (Option<i64>, Option<i64>),
    next_param: &mut usize,
) -> (String, Vec<i64>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    if let Some(start) = range.0 {
        sql.push_str(&format!(" AND {column} >= ${next_param}"));
        *next_param += 1;
        binds.push(start);
    }
    if let Some(end) = range.1 {
        sql.push_str(&format!(" AND {column} < ${next_param}"));
        *next_param += 1;
        binds.push(end);
    }
    (sql, binds)
}

#[async_trait::async_trait]
impl TokenStore for SqlStore {
    async fn insert_app(&self, app: &AppRow, audit: &AuditRow) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO apps ({APP_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
        ))
        .bind(&app.app_id)
        .bind(&app.partner_tenant_id)
        .bind(&app.display_name)
        .bind(&app.client_id)
        .bind(i64::from(app.cloud))
        .bind(app.scopes.join(" "))
        .bind(i64::from(app.token_endpoint))
        .bind(&app.redirect_uri)
        .bind(i64::from(app.credential_kind))
        .bind(app.credential_sealed.clone())
        .bind(app.credential_key_version.clone())
        .bind(&app.credential_reference)
        .bind(app.credential_expires_at)
        .bind(app.created_at)
        .bind(app.updated_at)
        .execute(&mut *tx)
        .await?;
        insert_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_app(&self, partner_tenant_id: &str, app_id: &str) -> Result<Option<AppRow>> {
        let row = sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE partner_tenant_id = $1 AND app_id = $2 AND deleted_at IS NULL"
        ))
        .bind(partner_tenant_id)
        .bind(app_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(app_from_row))
    }

    async fn list_apps(&self, partner_tenant_id: &str, cursor: &Cursor) -> Result<Vec<AppRow>> {
        let (after_at, after_id) = cursor.after.clone().unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE partner_tenant_id = $1 AND deleted_at IS NULL \
             AND (created_at > $2 OR (created_at = $2 AND app_id > $3)) \
             ORDER BY created_at, app_id LIMIT $4"
        ))
        .bind(partner_tenant_id)
        .bind(after_at)
        .bind(after_id)
        .bind(cursor.limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(app_from_row).collect())
    }

    async fn all_apps(&self) -> Result<Vec<AppRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE deleted_at IS NULL ORDER BY created_at"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(app_from_row).collect())
    }

    async fn update_app_credential(&self, app: &AppRow, audit: &AuditRow) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE apps SET credential_kind = $1, credential_sealed = $2, \
             credential_key_version = $3, credential_reference = $4, credential_expires_at = $5, \
             updated_at = $6 WHERE partner_tenant_id = $7 AND app_id = $8 AND deleted_at IS NULL",
        )
        .bind(i64::from(app.credential_kind))
        .bind(app.credential_sealed.clone())
        .bind(app.credential_key_version.clone())
        .bind(&app.credential_reference)
        .bind(app.credential_expires_at)
        .bind(app.updated_at)
        .bind(&app.partner_tenant_id)
        .bind(&app.app_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if updated {
            insert_audit_in(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn delete_app(
        &self,
        partner_tenant_id: &str,
        app_id: &str,
        audit: &AuditRow,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let deleted = sqlx::query(
            "UPDATE apps SET deleted_at = $1, credential_sealed = NULL, credential_key_version = NULL, \
             credential_reference = '' WHERE partner_tenant_id = $2 AND app_id = $3 AND deleted_at IS NULL",
        )
        .bind(audit.occurred_at)
        .bind(partner_tenant_id)
        .bind(app_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if deleted {
            insert_audit_in(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn insert_pending(&self, pending: &PendingConsent) -> Result<()> {
        sqlx::query(
            "INSERT INTO pending_consents (state, partner_tenant_id, app_id, nonce, redirect_uri, \
             expires_at, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&pending.state)
        .bind(&pending.partner_tenant_id)
        .bind(&pending.app_id)
        .bind(&pending.nonce)
        .bind(&pending.redirect_uri)
        .bind(pending.expires_at)
        .bind(pending.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn take_pending(
        &self,
        partner_tenant_id: &str,
        state: &str,
    ) -> Result<Option<PendingConsent>> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "SELECT state, partner_tenant_id, app_id, nonce, redirect_uri, expires_at, created_at \
             FROM pending_consents WHERE state = $1 AND partner_tenant_id = $2",
        )
        .bind(state)
        .bind(partner_tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        // Deleted by whoever gets here first: a state is good for one completion.
        let taken = sqlx::query("DELETE FROM pending_consents WHERE state = $1")
            .bind(state)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(taken.then(|| PendingConsent {
            state: row.get("state"),
            partner_tenant_id: row.get("partner_tenant_id"),
            app_id: row.get("app_id"),
            nonce: row.get("nonce"),
            redirect_uri: row.get("redirect_uri"),
            expires_at: row.get("expires_at"),
            created_at: row.get("created_at"),
        }))
    }

    async fn insert_consent(&self, c: &ConsentRow, audit: &AuditRow) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO consents ({CONSENT_COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
        ))
        .bind(&c.consent_id)
        .bind(&c.partner_tenant_id)
        .bind(&c.app_id)
        .bind(&c.consented_by_upn)
        .bind(flag(c.consented_with_mfa))
        .bind(&c.source)
        .bind(c.refresh_token_sealed.clone())
        .bind(c.key_version.clone())
        .bind(c.version)
        .bind(c.rotation_count)
        .bind(i64::from(c.health))
        .bind(&c.health_detail)
        .bind(&c.remediation)
        .bind(&c.reconsent_url)
        .bind(c.health_changed_at)
        .bind(c.created_at)
        .bind(c.last_redeemed_at)
        .bind(c.cliff_warned_at)
        .bind(c.revoked_at)
        .execute(&mut *tx)
        .await?;
        insert_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_consent(&self, consent_id: &str) -> Result<Option<ConsentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1"
        ))
        .bind(consent_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(consent_from_row))
    }

    async fn list_consents(
        &self,
        partner_tenant_id: &str,
        cursor: &Cursor,
    ) -> Result<Vec<ConsentRow>> {
        let (after_at, after_id) = cursor.after.clone().unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE partner_tenant_id = $1 \
             AND (created_at > $2 OR (created_at = $2 AND consent_id > $3)) \
             ORDER BY created_at, consent_id LIMIT $4"
        ))
        .bind(partner_tenant_id)
        .bind(after_at)
        .bind(after_id)
        .bind(cursor.limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(consent_from_row).collect())
    }

    async fn active_consent(&self, partner_tenant_id: &str) -> Result<Option<ConsentRow>> {
        let healthy = TokenHealthState::Healthy as i64;
        let expiring = TokenHealthState::ClientCredentialExpiring as i64;
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE partner_tenant_id = $1 \
             AND revoked_at IS NULL AND refresh_token_sealed IS NOT NULL \
             ORDER BY CASE WHEN health = $2 OR health = $3 THEN 0 ELSE 1 END, created_at DESC, consent_id DESC \
             LIMIT 1"
        ))
        .bind(partner_tenant_id)
        .bind(healthy)
        .bind(expiring)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(consent_from_row))
    }

    async fn live_consents(&self) -> Result<Vec<ConsentRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE revoked_at IS NULL \
             AND refresh_token_sealed IS NOT NULL ORDER BY created_at"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(consent_from_row).collect())
    }

    async fn revoked_since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT consent_id, revoked_at FROM consents WHERE revoked_at IS NOT NULL AND revoked_at >= $1",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("consent_id"), r.get("revoked_at")))
            .collect())
    }

    async fn record_redemption(
        &self,
        consent_id: &str,
        expected_version: i64,
        rotated: Option<(&[u8], &str)>,
        access_token: Option<&AccessTokenRow>,
        audit: &AuditRow,
    ) -> Result<RotationOutcome> {
        let mut tx = self.pool().begin().await?;
        let outcome = match rotated {
            Some((sealed, key_version)) => {
                let stored = sqlx::query(
                    "UPDATE consents SET refresh_token_sealed = $1, key_version = $2, \
                     version = version + 1, rotation_count = rotation_count + 1, \
                     last_redeemed_at = $3, cliff_warned_at = NULL \
                     WHERE consent_id = $4 AND version = $5 AND revoked_at IS NULL",
                )
                .bind(sealed.to_vec())
                .bind(key_version)
                .bind(audit.occurred_at)
                .bind(consent_id)
                .bind(expected_version)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if stored {
                    RotationOutcome::Stored
                } else {
                    RotationOutcome::LostRace
                }
            }
            None => {
                sqlx::query(
                    "UPDATE consents SET last_redeemed_at = $1, cliff_warned_at = NULL \
                     WHERE consent_id = $2 AND revoked_at IS NULL AND last_redeemed_at < $1",
                )
                .bind(audit.occurred_at)
                .bind(consent_id)
                .execute(&mut *tx)
                .await?;
                RotationOutcome::Kept
            }
        };
        if let Some(row) = access_token {
            // A consent revoked meanwhile gets no access token stored.
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM consents WHERE consent_id = $1 AND revoked_at IS NULL",
            )
            .bind(consent_id)
            .fetch_optional(&mut *tx)
            .await?;
            if live.is_some() {
                upsert_access_in(&mut tx, row).await?;
            }
        }
        insert_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn get_access_token(&self, cache_key: &str) -> Result<Option<AccessTokenRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ACCESS_COLUMNS} FROM access_tokens WHERE cache_key = $1"
        ))
        .bind(cache_key)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(access_from_row))
    }

    async fn set_consent_health(
        &self,
        consent_id: &str,
        change: &HealthChange,
        event: Option<&Envelope>,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let applied = sqlx::query(
            "UPDATE consents SET health = $1, health_detail = $2, remediation = $3, \
             reconsent_url = $4, health_changed_at = $5 \
             WHERE consent_id = $6 AND health = $7 AND revoked_at IS NULL",
        )
        .bind(i64::from(change.health))
        .bind(&change.detail)
        .bind(&change.remediation)
        .bind(&change.reconsent_url)
        .bind(change.at)
        .bind(consent_id)
        .bind(i64::from(change.expected))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if applied && let Some(event) = event {
            palisade_queue::outbox::enqueue(&mut tx, TOPIC, event).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn mark_cliff_warned(&self, consent_id: &str, at: i64, event: &Envelope) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let applied = sqlx::query(
            "UPDATE consents SET cliff_warned_at = $1 WHERE consent_id = $2 AND cliff_warned_at IS NULL",
        )
        .bind(at)
        .bind(consent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if applied {
            palisade_queue::outbox::enqueue(&mut tx, TOPIC, event).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn set_customer_access(
        &self,
        row: &CustomerAccessRow,
        event_for: &(dyn Fn(i32) -> Envelope + Send + Sync),
    ) -> Result<Option<i32>> {
        let healthy = TokenHealthState::Healthy as i32;
        let mut tx = self.pool().begin().await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT health FROM customer_access WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
        )
        .bind(&row.partner_tenant_id)
        .bind(&row.customer_tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let previous = current.map(|h| h as i32).unwrap_or(healthy);
        if previous == row.health {
            return Ok(None);
        }
        if row.health == healthy {
            sqlx::query(
                "DELETE FROM customer_access WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
            )
            .bind(&row.partner_tenant_id)
            .bind(&row.customer_tenant_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO customer_access (partner_tenant_id, customer_tenant_id, health, detail, since) \
                 VALUES ($1,$2,$3,$4,$5) ON CONFLICT (partner_tenant_id, customer_tenant_id) DO UPDATE \
                 SET health = excluded.health, detail = excluded.detail, since = excluded.since",
            )
            .bind(&row.partner_tenant_id)
            .bind(&row.customer_tenant_id)
            .bind(i64::from(row.health))
            .bind(&row.detail)
            .bind(row.since)
            .execute(&mut *tx)
            .await?;
        }
        palisade_queue::outbox::enqueue(&mut tx, TOPIC, &event_for(previous)).await?;
        tx.commit().await?;
        Ok(Some(previous))
    }

    async fn customer_access(&self, partner_tenant_id: &str) -> Result<Vec<CustomerAccessRow>> {
        let rows = sqlx::query(
            "SELECT partner_tenant_id, customer_tenant_id, health, detail, since FROM customer_access \
             WHERE partner_tenant_id = $1 ORDER BY customer_tenant_id",
        )
        .bind(partner_tenant_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(customer_from_row).collect())
    }

    async fn get_customer_access(
        &self,
        partner_tenant_id: &str,
        customer_tenant_id: &str,
    ) -> Result<Option<CustomerAccessRow>> {
        let row = sqlx::query(
            "SELECT partner_tenant_id, customer_tenant_id, health, detail, since FROM customer_access \
             WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
        )
        .bind(partner_tenant_id)
        .bind(customer_tenant_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(customer_from_row))
    }

    async fn revoke_consent(
        &self,
        partner_tenant_id: &str,
        consent_id: &str,
        at: i64,
        audit: &AuditRow,
        event: &Envelope,
    ) -> Result<Option<ConsentRow>> {
        let mut tx = self.pool().begin().await?;
        // Crypto-shredding: the sealed token and its wrapped data key go together; without
        // them nothing can ever decrypt a copy of the old ciphertext (backups included).
        let revoked = sqlx::query(
            "UPDATE consents SET refresh_token_sealed = NULL, key_version = NULL, revoked_at = $1, \
             version = version + 1, health = $2, health_detail = $3, remediation = '', \
             reconsent_url = '', health_changed_at = $1 \
             WHERE consent_id = $4 AND partner_tenant_id = $5 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(TokenHealthState::RevokedByOperator as i64)
        .bind("revoked by an operator; the refresh token was destroyed")
        .bind(consent_id)
        .bind(partner_tenant_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if revoked {
            sqlx::query("DELETE FROM access_tokens WHERE consent_id = $1")
                .bind(consent_id)
                .execute(&mut *tx)
                .await?;
            insert_audit_in(&mut tx, audit).await?;
            palisade_queue::outbox::enqueue(&mut tx, TOPIC, event).await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1 AND partner_tenant_id = $2"
        ))
        .bind(consent_id)
        .bind(partner_tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(consent_from_row))
    }

    async fn insert_audit(&self, audit: &AuditRow) -> Result<()> {
        let mut conn = self.pool().acquire().await?;
        insert_audit_in(&mut conn, audit).await
    }

    async fn list_audit(
        &self,
        partner_tenant_id: &str,
        target_tenant_id: Option<&str>,
        range: (Option<i64>, Option<i64>),
        cursor: &Cursor,
    ) -> Result<Vec<AuditRow>> {
        let mut next = 5;
        let target_clause = if target_tenant_id.is_some() {
            next += 1;
            " AND target_tenant_id = $5"
        } else {
            ""
        };
        let (time_clause, time_binds) = range_clause("occurred_at", range, &mut next);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE partner_tenant_id = $1 \
             AND (occurred_at > $2 OR (occurred_at = $2 AND event_id > $3)){target_clause}{time_clause} \
             ORDER BY occurred_at, event_id LIMIT $4"
        );
        let (after_at, after_id) = cursor.after.clone().unwrap_or((i64::MIN, String::new()));
        let mut query = sqlx::query(&sql)
            .bind(partner_tenant_id)
            .bind(after_at)
            .bind(after_id)
            .bind(cursor.limit);
        if let Some(target) = target_tenant_id {
            query = query.bind(target);
        }
        for b in time_binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(self.pool()).await?;
        Ok(rows.iter().map(audit_from_row).collect())
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for row in rows {
            sqlx::query(
                "INSERT INTO token_usage (partner_tenant_id, minute, caller, target_tenant_id, \
                 resource, cache_hits, issued) VALUES ($1,$2,$3,$4,$5,$6,$7) \
                 ON CONFLICT (partner_tenant_id, minute, caller, target_tenant_id, resource) DO UPDATE \
                 SET cache_hits = token_usage.cache_hits + excluded.cache_hits, \
                 issued = token_usage.issued + excluded.issued",
            )
            .bind(&row.partner_tenant_id)
            .bind(row.minute)
            .bind(&row.caller)
            .bind(&row.target_tenant_id)
            .bind(&row.resource)
            .bind(row.cache_hits)
            .bind(row.issued)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_usage(
        &self,
        partner_tenant_id: &str,
        target_tenant_id: Option<&str>,
        range: (Option<i64>, Option<i64>),
        cursor: &Cursor,
    ) -> Result<Vec<UsageRow>> {
        // Usage pages by offset (`cursor.after.0`): rows are only ever added or incremented.
        let mut next = 4;
        let target_clause = if target_tenant_id.is_some() {
            next += 1;
            " AND target_tenant_id = $4"
        } else {
            ""
        };
        let (time_clause, time_binds) = range_clause("minute", range, &mut next);
        let sql = format!(
            "SELECT partner_tenant_id, minute, caller, target_tenant_id, resource, cache_hits, issued \
             FROM token_usage WHERE partner_tenant_id = $1{target_clause}{time_clause} \
             ORDER BY minute, caller, target_tenant_id, resource LIMIT $2 OFFSET $3"
        );
        let offset = cursor.after.as_ref().map(|(o, _)| *o).unwrap_or(0).max(0);
        let mut query = sqlx::query(&sql)
            .bind(partner_tenant_id)
            .bind(cursor.limit)
            .bind(offset);
        if let Some(target) = target_tenant_id {
            query = query.bind(target);
        }
        for b in time_binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                partner_tenant_id: r.get("partner_tenant_id"),
                minute: r.get("minute"),
                caller: r.get("caller"),
                target_tenant_id: r.get("target_tenant_id"),
                resource: r.get("resource"),
                cache_hits: r.get("cache_hits"),
                issued: r.get("issued"),
            })
            .collect())
    }

    async fn mfa_statistics(
        &self,
        partner_tenant_id: &str,
        range: (Option<i64>, Option<i64>),
    ) -> Result<(u64, u64)> {
        let mut next = 2;
        let (time_clause, time_binds) = range_clause("occurred_at", range, &mut next);
        let sql = format!(
            "SELECT COUNT(*) AS minted, COUNT(CASE WHEN mfa = 1 THEN 1 END) AS with_mfa FROM audit_events \
             WHERE partner_tenant_id = $1 AND kind = 'redemption' AND success = 1{time_clause}"
        );
        let mut query = sqlx::query(&sql).bind(partner_tenant_id);
        for b in time_binds {
            query = query.bind(b);
        }
        let row = query.fetch_one(self.pool()).await?;
        let minted: i64 = row.get("minted");
        // COUNT, not SUM: SUM of BIGINT is NUMERIC in Postgres, which `Any` cannot decode.
        let with_mfa: i64 = row.get("with_mfa");
        Ok((minted.max(0) as u64, with_mfa.max(0) as u64))
    }

    async fn records_by_key_version(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT key_version, COUNT(*) AS n FROM ( \
               SELECT credential_key_version AS key_version FROM apps WHERE credential_sealed IS NOT NULL \
               UNION ALL SELECT key_version FROM consents WHERE refresh_token_sealed IS NOT NULL \
               UNION ALL SELECT key_version FROM access_tokens) AS sealed \
             GROUP BY key_version ORDER BY key_version",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<Option<String>, _>("key_version")
                        .unwrap_or_default(),
                    r.get::<i64, _>("n").max(0) as u64,
                )
            })
            .collect())
    }

    async fn sealed_not_under(&self, key_version: &str, limit: i64) -> Result<Vec<SealedRecord>> {
        let mut out = Vec::new();
        let queries = [
            (
                SealedKind::AppCredential,
                "SELECT app_id AS id, partner_tenant_id, credential_sealed AS sealed, credential_key_version AS kv \
                 FROM apps WHERE credential_sealed IS NOT NULL AND credential_key_version <> $1 LIMIT $2",
            ),
            (
                SealedKind::RefreshToken,
                "SELECT consent_id AS id, partner_tenant_id, refresh_token_sealed AS sealed, key_version AS kv \
                 FROM consents WHERE refresh_token_sealed IS NOT NULL AND key_version <> $1 LIMIT $2",
            ),
            (
                SealedKind::AccessToken,
                "SELECT cache_key AS id, partner_tenant_id, token_sealed AS sealed, key_version AS kv \
                 FROM access_tokens WHERE key_version <> $1 LIMIT $2",
            ),
        ];
        for (kind, sql) in queries {
            let remaining = limit - out.len() as i64;
            if remaining <= 0 {
                break;
            }
            let rows = sqlx::query(sql)
                .bind(key_version)
                .bind(remaining)
                .fetch_all(self.pool())
                .await?;
            out.extend(rows.iter().map(|r| SealedRecord {
                kind,
                id: r.get("id"),
                partner_tenant_id: r.get("partner_tenant_id"),
                sealed: r.get("sealed"),
                key_version: r.get::<Option<String>, _>("kv").unwrap_or_default(),
            }));
        }
        Ok(out)
    }

    async fn replace_sealed(
        &self,
        record: &SealedRecord,
        new: &[u8],
        new_version: &str,
    ) -> Result<bool> {
        let sql = match record.kind {
            SealedKind::AppCredential => {
                "UPDATE apps SET credential_sealed = $1, credential_key_version = $2 \
                 WHERE app_id = $3 AND credential_sealed = $4"
            }
            SealedKind::RefreshToken => {
                "UPDATE consents SET refresh_token_sealed = $1, key_version = $2 \
                 WHERE consent_id = $3 AND refresh_token_sealed = $4"
            }
            SealedKind::AccessToken => {
                "UPDATE access_tokens SET token_sealed = $1, key_version = $2 \
                 WHERE cache_key = $3 AND token_sealed = $4"
            }
        };
        Ok(sqlx::query(sql)
            .bind(new.to_vec())
            .bind(new_version)
            .bind(&record.id)
            .bind(record.sealed.clone())
            .execute(self.pool())
            .await?
            .rows_affected()
            == 1)
    }
}
