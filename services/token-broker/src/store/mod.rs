//! What the token broker keeps, behind one trait with a Postgres and a SQLite backend (one SQL
//! text over sqlx's `Any` driver, see [`SqlStore`]). The conformance suite in
//! `tests/store.rs` runs every case against both.
//!
//! Rows carry sealed bytes only; opening them is the broker's business (it holds the cipher).
//! Every change of a consent's health and its outbox event commit in one transaction, and the
//! refresh token is replaced only by a compare-and-swap on the consent's `version`.

mod migrations;
mod sql;

pub use migrations::MIGRATIONS;
pub use sql::SqlStore;

use palisade_contracts::events::v1::Envelope;

use crate::error::Result;

/// An app registration. `credential_sealed` holds the secret or certificate (sealed); a
/// reference (Kubernetes or Key Vault) is stored as text and resolved at use.
#[derive(Clone, PartialEq, Eq)]
pub struct AppRow {
    pub app_id: String,
    pub partner_tenant_id: String,
    pub display_name: String,
    pub client_id: String,
    pub cloud: i32,
    pub scopes: Vec<String>,
    pub token_endpoint: i32,
    pub redirect_uri: String,
    pub credential_kind: i32,
    pub credential_sealed: Option<Vec<u8>>,
    pub credential_key_version: Option<String>,
    pub credential_reference: String,
    pub credential_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for AppRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRow")
            .field("app_id", &self.app_id)
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("client_id", &self.client_id)
            .field("credential_kind", &self.credential_kind)
            .finish_non_exhaustive()
    }
}

/// A consent in flight: `state` and `nonce` from `BeginConsent`, awaiting `CompleteConsent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingConsent {
    pub state: String,
    pub partner_tenant_id: String,
    pub app_id: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub expires_at: i64,
    pub created_at: i64,
}

/// A stored consent: metadata plus the sealed refresh token (absent once crypto-shredded).
#[derive(Clone, PartialEq, Eq)]
pub struct ConsentRow {
    pub consent_id: String,
    pub partner_tenant_id: String,
    pub app_id: String,
    pub consented_by_upn: String,
    pub consented_with_mfa: bool,
    pub source: String,
    pub refresh_token_sealed: Option<Vec<u8>>,
    pub key_version: Option<String>,
    /// Compare-and-swap version of the refresh token: +1 on every stored rotation.
    pub version: i64,
    pub rotation_count: i64,
    pub health: i32,
    pub health_detail: String,
    pub remediation: String,
    pub reconsent_url: String,
    pub health_changed_at: i64,
    pub created_at: i64,
    pub last_redeemed_at: i64,
    pub cliff_warned_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for ConsentRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentRow")
            .field("consent_id", &self.consent_id)
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("version", &self.version)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// A cached access token shared by every replica, sealed like everything else.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    pub cache_key: String,
    pub partner_tenant_id: String,
    pub consent_id: String,
    pub token_sealed: Vec<u8>,
    pub key_version: String,
    pub token_type: String,
    pub mfa: bool,
    pub expires_at: i64,
    pub obtained_at: i64,
}

impl std::fmt::Debug for AccessTokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenRow")
            .field("cache_key", &self.cache_key)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerAccessRow {
    pub partner_tenant_id: String,
    pub customer_tenant_id: String,
    pub health: i32,
    pub detail: String,
    pub since: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub event_id: String,
    pub partner_tenant_id: String,
    pub kind: String,
    pub target_tenant_id: String,
    pub resource: String,
    pub caller: String,
    pub success: bool,
    pub mfa: bool,
    pub detail: String,
    pub occurred_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub partner_tenant_id: String,
    pub minute: i64,
    pub caller: String,
    pub target_tenant_id: String,
    pub resource: String,
    pub cache_hits: i64,
    pub issued: i64,
}

/// A page cursor: rows after `(created_at, id)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

/// The result of storing a redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The rotated refresh token is now the stored one (version + 1).
    Stored,
    /// Another redemption stored a newer token first; this one was discarded (it is still
    /// valid at Entra, so nothing breaks).
    LostRace,
    /// No new refresh token came back; the old one stays (and its inactivity clock restarts).
    Kept,
}

/// A sealed value, wherever it lives, for `RotateKey`'s rewrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedKind {
    AppCredential,
    RefreshToken,
    AccessToken,
}

#[derive(Clone)]
pub struct SealedRecord {
    pub kind: SealedKind,
    pub id: String,
    pub partner_tenant_id: String,
    pub sealed: Vec<u8>,
    pub key_version: String,
}

impl std::fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRecord")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// A health change to apply only if the state is still `expected` (so two replicas observing
/// the same failure publish one event).
#[derive(Debug, Clone)]
pub struct HealthChange {
    pub expected: i32,
    pub health: i32,
    pub detail: String,
    pub remediation: String,
    pub reconsent_url: String,
    pub at: i64,
}

#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    // Apps.
    async fn insert_app(&self, app: &AppRow, audit: &AuditRow) -> Result<()>;
    async fn get_app(&self, partner_tenant_id: &str, app_id: &str) -> Result<Option<AppRow>>;
    async fn list_apps(&self, partner_tenant_id: &str, cursor: &Cursor) -> Result<Vec<AppRow>>;
    /// Every live app (for the credential-expiry sweep).
    async fn all_apps(&self) -> Result<Vec<AppRow>>;
    async fn update_app_credential(&self, app: &AppRow, audit: &AuditRow) -> Result<bool>;
    /// Soft-deletes the app and shreds its credential.
    async fn delete_app(
        &self,
        partner_tenant_id: &str,
        app_id: &str,
        audit: &AuditRow,
    ) -> Result<bool>;

    // Consent flow.
    async fn insert_pending(&self, pending: &PendingConsent) -> Result<()>;
    /// Removes and returns the pending consent (one use only).
    async fn take_pending(
        &self,
        partner_tenant_id: &str,
        state: &str,
    ) -> Result<Option<PendingConsent>>;
    async fn insert_consent(&self, consent: &ConsentRow, audit: &AuditRow) -> Result<()>;
    async fn get_consent(&self, consent_id: &str) -> Result<Option<ConsentRow>>;
    async fn list_consents(
        &self,
        partner_tenant_id: &str,
        cursor: &Cursor,
    ) -> Result<Vec<ConsentRow>>;
    /// The consent tokens are minted from: the newest unrevoked one, healthy first.
    async fn active_consent(&self, partner_tenant_id: &str) -> Result<Option<ConsentRow>>;
    /// Every unrevoked consent (for the keep-alive sweep).
    async fn live_consents(&self) -> Result<Vec<ConsentRow>>;
    /// Consents revoked at or after `since` (replicas drop their cached tokens).
    async fn revoked_since(&self, since: i64) -> Result<Vec<(String, i64)>>;

    /// One redemption, in one transaction: the rotated refresh token by compare-and-swap on
    /// `expected_version` (or only the inactivity clock when none came back), the access token
    /// for every replica, and the audit row.
    async fn record_redemption(
        &self,
        consent_id: &str,
        expected_version: i64,
        rotated: Option<(&[u8], &str)>,
        access_token: Option<&AccessTokenRow>,
        audit: &AuditRow,
    ) -> Result<RotationOutcome>;
    async fn get_access_token(&self, cache_key: &str) -> Result<Option<AccessTokenRow>>;

    /// Applies `change` if the health is still `change.expected`, with `event` in the outbox,
    /// in one transaction. Returns whether it applied.
    async fn set_consent_health(
        &self,
        consent_id: &str,
        change: &HealthChange,
        event: Option<&Envelope>,
    ) -> Result<bool>;
    async fn mark_cliff_warned(&self, consent_id: &str, at: i64, event: &Envelope) -> Result<bool>;
    /// Sets (or, with `HEALTHY`, clears) a customer's access state with its event. Returns the
    /// previous state when it changed.
    async fn set_customer_access(
        &self,
        row: &CustomerAccessRow,
        event_for: &(dyn Fn(i32) -> Envelope + Send + Sync),
    ) -> Result<Option<i32>>;
    async fn customer_access(&self, partner_tenant_id: &str) -> Result<Vec<CustomerAccessRow>>;
    async fn get_customer_access(
        &self,
        partner_tenant_id: &str,
        customer_tenant_id: &str,
    ) -> Result<Option<CustomerAccessRow>>;

    /// Crypto-shreds the refresh token, marks the consent revoked by an operator, drops its
    /// access tokens, and records the audit row and the event. Returns the updated row.
    async fn revoke_consent(
        &self,
        partner_tenant_id: &str,
        consent_id: &str,
        at: i64,
        audit: &AuditRow,
        event: &Envelope,
    ) -> Result<Option<ConsentRow>>;

    // Audit and usage.
    async fn insert_audit(&self, audit: &AuditRow) -> Result<()>;
    async fn list_audit(
        &self,
        partner_tenant_id: &str,
        target_tenant_id: Option<&str>,
        range: (Option<i64>, Option<i64>),
        cursor: &Cursor,
    ) -> Result<Vec<AuditRow>>;
    /// Adds counts to the per-minute rows.
    async fn add_usage(&self, rows: &[UsageRow]) -> Result<()>;
    async fn list_usage(
        &self,
        partner_tenant_id: &str,
        target_tenant_id: Option<&str>,
        range: (Option<i64>, Option<i64>),
        cursor: &Cursor,
    ) -> Result<Vec<UsageRow>>;
    /// (tokens minted, of which with MFA) from the redemption audit.
    async fn mfa_statistics(
        &self,
        partner_tenant_id: &str,
        range: (Option<i64>, Option<i64>),
    ) -> Result<(u64, u64)>;

    // Keys.
    async fn records_by_key_version(&self) -> Result<Vec<(String, u64)>>;
    /// Up to `limit` sealed values not under `key_version`.
    async fn sealed_not_under(&self, key_version: &str, limit: i64) -> Result<Vec<SealedRecord>>;
    /// Replaces a sealed value if it is still `old` (a writer that re-sealed it wins).
    async fn replace_sealed(
        &self,
        record: &SealedRecord,
        new: &[u8],
        new_version: &str,
    ) -> Result<bool>;
}
