//! The notifier's schema, once per backend. Types are chosen to mean the same in both:
//! TEXT ids, BIGINT Unix milliseconds and 0/1 flags, byte blobs for sealed secrets and for
//! the nested protobuf of routes and settings (never queried by field, only loaded whole).

use palisade_storage::Migration;

const V1_POSTGRES: &str = r#"
CREATE TABLE security_contacts (
    partner_tenant_id TEXT PRIMARY KEY,
    first_name TEXT NOT NULL, middle_name TEXT NOT NULL, last_name TEXT NOT NULL,
    email TEXT NOT NULL, phone TEXT NOT NULL, is_group BIGINT NOT NULL,
    language TEXT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE compliance_contacts (
    partner_tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL, email TEXT NOT NULL, phone TEXT NOT NULL, language TEXT NOT NULL,
    updated_at BIGINT NOT NULL);
CREATE TABLE admin_agents (
    partner_tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    display_name TEXT NOT NULL, email TEXT NOT NULL, language TEXT NOT NULL,
    time_zone TEXT NOT NULL, phone TEXT NOT NULL, updated_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, agent_id));
CREATE TABLE channels (
    channel_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL, kind BIGINT NOT NULL, target TEXT NOT NULL,
    language TEXT NOT NULL, enabled BIGINT NOT NULL, disabled_reason TEXT NOT NULL,
    secret_sealed BYTEA, secret_count BIGINT NOT NULL, failing_since BIGINT,
    created_at BIGINT NOT NULL);
CREATE INDEX channels_by_partner ON channels (partner_tenant_id, channel_id);
CREATE TABLE routes (
    route_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, priority BIGINT NOT NULL,
    route_proto BYTEA NOT NULL, created_at BIGINT NOT NULL);
CREATE INDEX routes_by_partner ON routes (partner_tenant_id, priority, route_id);
CREATE TABLE partner_settings (
    partner_tenant_id TEXT PRIMARY KEY, settings_proto BYTEA NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE processed_events (
    message_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, processed_at BIGINT NOT NULL);
CREATE TABLE items (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
    open BIGINT NOT NULL, severity BIGINT NOT NULL, alert_type TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL, subscription_id TEXT NOT NULL, title TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE notify_groups (
    group_key TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, route_id TEXT NOT NULL,
    version BIGINT NOT NULL, flush_seq BIGINT NOT NULL, created_at BIGINT NOT NULL,
    next_flush_at BIGINT NOT NULL, last_notified_at BIGINT, last_notified_hash TEXT NOT NULL,
    group_interval_ms BIGINT NOT NULL, repeat_interval_ms BIGINT NOT NULL);
CREATE INDEX notify_groups_due ON notify_groups (next_flush_at);
CREATE TABLE group_items (
    group_key TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
    firing BIGINT NOT NULL, severity BIGINT NOT NULL, summary TEXT NOT NULL,
    updated_at BIGINT NOT NULL, PRIMARY KEY (group_key, fingerprint));
CREATE TABLE notification_log (
    group_key TEXT NOT NULL, flush_seq BIGINT NOT NULL, partner_tenant_id TEXT NOT NULL,
    notified_at BIGINT NOT NULL, content_hash TEXT NOT NULL, firing BIGINT NOT NULL,
    resolved BIGINT NOT NULL, PRIMARY KEY (group_key, flush_seq));
CREATE TABLE digest_items (
    partner_tenant_id TEXT NOT NULL, route_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    summary TEXT NOT NULL, added_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, route_id, fingerprint));
CREATE TABLE digest_runs (
    partner_tenant_id TEXT NOT NULL, local_date TEXT NOT NULL, ran_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, local_date));
CREATE TABLE snoozes (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, until_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE acks (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, acknowledged_at BIGINT NOT NULL,
    note TEXT NOT NULL, PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE escalations (
    escalation_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    chain_proto BYTEA NOT NULL, started_at BIGINT NOT NULL, next_step BIGINT NOT NULL,
    next_due_at BIGINT NOT NULL, state TEXT NOT NULL, context TEXT NOT NULL);
CREATE INDEX escalations_due ON escalations (state, next_due_at);
CREATE INDEX escalations_by_alert ON escalations (partner_tenant_id, fingerprint, state);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, event_id TEXT NOT NULL,
    event_kind TEXT NOT NULL, fingerprint TEXT NOT NULL, channel_kind BIGINT NOT NULL,
    channel_id TEXT NOT NULL, recipient TEXT NOT NULL, target TEXT NOT NULL,
    language TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
    status BIGINT NOT NULL, attempts BIGINT NOT NULL, retry_base BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT, last_error TEXT NOT NULL, created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_partner ON deliveries (partner_tenant_id, delivery_id);
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL, attempt BIGINT NOT NULL, at BIGINT NOT NULL,
    http_status BIGINT NOT NULL, error TEXT NOT NULL, duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt));
"#;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "contacts, channels, routes, grouping, escalation and deliveries",
        postgres: V1_POSTGRES,
        // The same statements except BYTEA → BLOB, which SQLite needs for blob affinity.
        sqlite: V1_SQLITE,
    },
    Migration {
        version: 2,
        description: "the producer's time of the event that started an escalation",
        postgres: "ALTER TABLE escalations ADD COLUMN raised_at BIGINT NOT NULL DEFAULT 0",
        sqlite: "ALTER TABLE escalations ADD COLUMN raised_at BIGINT NOT NULL DEFAULT 0",
    },
];

const V1_SQLITE: &str = r#"
CREATE TABLE security_contacts (
    partner_tenant_id TEXT PRIMARY KEY,
    first_name TEXT NOT NULL, middle_name TEXT NOT NULL, last_name TEXT NOT NULL,
    email TEXT NOT NULL, phone TEXT NOT NULL, is_group BIGINT NOT NULL,
    language TEXT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE compliance_contacts (
    partner_tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL, email TEXT NOT NULL, phone TEXT NOT NULL, language TEXT NOT NULL,
    updated_at BIGINT NOT NULL);
CREATE TABLE admin_agents (
    partner_tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    display_name TEXT NOT NULL, email TEXT NOT NULL, language TEXT NOT NULL,
    time_zone TEXT NOT NULL, phone TEXT NOT NULL, updated_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, agent_id));
CREATE TABLE channels (
    channel_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL, kind BIGINT NOT NULL, target TEXT NOT NULL,
    language TEXT NOT NULL, enabled BIGINT NOT NULL, disabled_reason TEXT NOT NULL,
    secret_sealed BLOB, secret_count BIGINT NOT NULL, failing_since BIGINT,
    created_at BIGINT NOT NULL);
CREATE INDEX channels_by_partner ON channels (partner_tenant_id, channel_id);
CREATE TABLE routes (
    route_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, priority BIGINT NOT NULL,
    route_proto BLOB NOT NULL, created_at BIGINT NOT NULL);
CREATE INDEX routes_by_partner ON routes (partner_tenant_id, priority, route_id);
CREATE TABLE partner_settings (
    partner_tenant_id TEXT PRIMARY KEY, settings_proto BLOB NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE processed_events (
    message_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, processed_at BIGINT NOT NULL);
CREATE TABLE items (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
    open BIGINT NOT NULL, severity BIGINT NOT NULL, alert_type TEXT NOT NULL,
    customer_tenant_id TEXT NOT NULL, subscription_id TEXT NOT NULL, title TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE notify_groups (
    group_key TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, route_id TEXT NOT NULL,
    version BIGINT NOT NULL, flush_seq BIGINT NOT NULL, created_at BIGINT NOT NULL,
    next_flush_at BIGINT NOT NULL, last_notified_at BIGINT, last_notified_hash TEXT NOT NULL,
    group_interval_ms BIGINT NOT NULL, repeat_interval_ms BIGINT NOT NULL);
CREATE INDEX notify_groups_due ON notify_groups (next_flush_at);
CREATE TABLE group_items (
    group_key TEXT NOT NULL, fingerprint TEXT NOT NULL, kind TEXT NOT NULL,
    firing BIGINT NOT NULL, severity BIGINT NOT NULL, summary TEXT NOT NULL,
    updated_at BIGINT NOT NULL, PRIMARY KEY (group_key, fingerprint));
CREATE TABLE notification_log (
    group_key TEXT NOT NULL, flush_seq BIGINT NOT NULL, partner_tenant_id TEXT NOT NULL,
    notified_at BIGINT NOT NULL, content_hash TEXT NOT NULL, firing BIGINT NOT NULL,
    resolved BIGINT NOT NULL, PRIMARY KEY (group_key, flush_seq));
CREATE TABLE digest_items (
    partner_tenant_id TEXT NOT NULL, route_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    summary TEXT NOT NULL, added_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, route_id, fingerprint));
CREATE TABLE digest_runs (
    partner_tenant_id TEXT NOT NULL, local_date TEXT NOT NULL, ran_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, local_date));
CREATE TABLE snoozes (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, until_at BIGINT NOT NULL,
    PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE acks (
    partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL, acknowledged_at BIGINT NOT NULL,
    note TEXT NOT NULL, PRIMARY KEY (partner_tenant_id, fingerprint));
CREATE TABLE escalations (
    escalation_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    chain_proto BLOB NOT NULL, started_at BIGINT NOT NULL, next_step BIGINT NOT NULL,
    next_due_at BIGINT NOT NULL, state TEXT NOT NULL, context TEXT NOT NULL);
CREATE INDEX escalations_due ON escalations (state, next_due_at);
CREATE INDEX escalations_by_alert ON escalations (partner_tenant_id, fingerprint, state);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, event_id TEXT NOT NULL,
    event_kind TEXT NOT NULL, fingerprint TEXT NOT NULL, channel_kind BIGINT NOT NULL,
    channel_id TEXT NOT NULL, recipient TEXT NOT NULL, target TEXT NOT NULL,
    language TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
    status BIGINT NOT NULL, attempts BIGINT NOT NULL, retry_base BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT, last_error TEXT NOT NULL, created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_partner ON deliveries (partner_tenant_id, delivery_id);
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL, attempt BIGINT NOT NULL, at BIGINT NOT NULL,
    http_status BIGINT NOT NULL, error TEXT NOT NULL, duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt));
"#;
