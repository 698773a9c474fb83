//! The token broker's schema, once per backend. Types mean the same in both: TEXT ids, BIGINT
//! Unix milliseconds, 0/1 flags and health states as their proto numbers, byte blobs for
//! sealed secrets. No column ever holds a token or a secret in the clear: every `*_sealed`
//! column is an envelope (`palisade_crypto::Sealed`) bound to its partner and row.

use palisade_storage::Migration;

/// The version-1 schema with the dialect's blob type (`BYTEA` or `BLOB`), the only
/// difference between the two here.
macro_rules! v1_schema {
    ($blob:literal) => {
        concat!(
            r#"
CREATE TABLE apps (
    app_id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    client_id TEXT NOT NULL,
    cloud BIGINT NOT NULL,
    scopes TEXT NOT NULL,
    token_endpoint BIGINT NOT NULL,
    redirect_uri TEXT NOT NULL,
    credential_kind BIGINT NOT NULL,
    credential_sealed "#,
            $blob,
            r#",
    credential_key_version TEXT,
    credential_reference TEXT NOT NULL,
    credential_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT);
CREATE INDEX apps_by_partner ON apps (partner_tenant_id, created_at, app_id);
CREATE TABLE pending_consents (
    state TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL);
CREATE TABLE consents (
    consent_id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    consented_by_upn TEXT NOT NULL,
    consented_with_mfa BIGINT NOT NULL,
    source TEXT NOT NULL,
    refresh_token_sealed "#,
            $blob,
            r#",
    key_version TEXT,
    version BIGINT NOT NULL,
    rotation_count BIGINT NOT NULL,
    health BIGINT NOT NULL,
    health_detail TEXT NOT NULL,
    remediation TEXT NOT NULL,
    reconsent_url TEXT NOT NULL,
    health_changed_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_redeemed_at BIGINT NOT NULL,
    cliff_warned_at BIGINT,
    revoked_at BIGINT);
CREATE INDEX consents_by_partner ON consents (partner_tenant_id, created_at, consent_id);
CREATE TABLE access_tokens (
    cache_key TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    consent_id TEXT NOT NULL,
    token_sealed "#,
            $blob,
            r#" NOT NULL,
    key_version TEXT NOT NULL,
    token_type TEXT NOT NULL,
    mfa BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    obtained_at BIGINT NOT NULL);
CREATE INDEX access_tokens_by_consent ON access_tokens (consent_id);
CREATE TABLE customer_access (
    partner_tenant_id TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL,
    health BIGINT NOT NULL,
    detail TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, customer_tenant_id));
CREATE TABLE audit_events (
    event_id TEXT PRIMARY KEY,
    partner_tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target_tenant_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    caller TEXT NOT NULL,
    success BIGINT NOT NULL,
    mfa BIGINT NOT NULL,
    detail TEXT NOT NULL,
    occurred_at BIGINT NOT NULL);
CREATE INDEX audit_by_partner ON audit_events (partner_tenant_id, occurred_at, event_id);
CREATE TABLE token_usage (
    partner_tenant_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
    caller TEXT NOT NULL,
    target_tenant_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    cache_hits BIGINT NOT NULL,
    issued BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, minute, caller, target_tenant_id, resource))
"#
        )
    };
}

const V1_POSTGRES: &str = v1_schema!("BYTEA");
const V1_SQLITE: &str = v1_schema!("BLOB");

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "apps, consents, access tokens, customer access, audit, usage",
        postgres: V1_POSTGRES,
        sqlite: V1_SQLITE,
    },
    palisade_queue::outbox::MIGRATION,
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_dialects_differ_only_in_the_blob_type() {
        assert_eq!(
            super::V1_POSTGRES.replace("BYTEA", "BLOB"),
            super::V1_SQLITE
        );
    }
}
