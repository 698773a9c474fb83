//! The `alerts` schema, per backend. Versions only grow; an applied migration is never edited.

use palisade_storage::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "alerts, transitions, quarantine",
        postgres: "
            CREATE TABLE alerts (
                alert_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL UNIQUE,
                status BIGINT NOT NULL,
                severity BIGINT NOT NULL,
                alert_type TEXT NOT NULL,
                alert_type_key TEXT NOT NULL,
                customer_tenant_id TEXT NOT NULL,
                subscription_id TEXT NOT NULL,
                reseller_tenant_id TEXT NOT NULL,
                is_test BIGINT NOT NULL,
                detected_at BIGINT NOT NULL,
                last_observed_at BIGINT NOT NULL,
                resolved_at BIGINT,
                write_back_state BIGINT NOT NULL,
                enrich_state BIGINT NOT NULL,
                enrich_after BIGINT NOT NULL,
                enrich_attempts BIGINT NOT NULL DEFAULT 0,
                alert_proto BYTEA NOT NULL,
                raw_graph TEXT,
                raw_fraud TEXT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            );
            CREATE INDEX alerts_partner_observed ON alerts (partner_tenant_id, last_observed_at, alert_id);
            CREATE INDEX alerts_partner_resolved ON alerts (partner_tenant_id, resolved_at);
            CREATE INDEX alerts_enrich_due ON alerts (enrich_state, enrich_after);
            CREATE TABLE alert_transitions (
                seq BIGSERIAL PRIMARY KEY,
                alert_id TEXT NOT NULL,
                partner_tenant_id TEXT NOT NULL,
                from_status BIGINT NOT NULL,
                to_status BIGINT NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                at BIGINT NOT NULL
            );
            CREATE INDEX alert_transitions_alert ON alert_transitions (alert_id, seq);
            CREATE TABLE quarantine (
                quarantine_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                source BIGINT NOT NULL,
                reason TEXT NOT NULL,
                payload TEXT NOT NULL,
                received_at BIGINT NOT NULL
            );
            CREATE INDEX quarantine_partner ON quarantine (partner_tenant_id, source);",
        sqlite: "
            CREATE TABLE alerts (
                alert_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL UNIQUE,
                status BIGINT NOT NULL,
                severity BIGINT NOT NULL,
                alert_type TEXT NOT NULL,
                alert_type_key TEXT NOT NULL,
                customer_tenant_id TEXT NOT NULL,
                subscription_id TEXT NOT NULL,
                reseller_tenant_id TEXT NOT NULL,
                is_test BIGINT NOT NULL,
                detected_at BIGINT NOT NULL,
                last_observed_at BIGINT NOT NULL,
                resolved_at BIGINT,
                write_back_state BIGINT NOT NULL,
                enrich_state BIGINT NOT NULL,
                enrich_after BIGINT NOT NULL,
                enrich_attempts BIGINT NOT NULL DEFAULT 0,
                alert_proto BLOB NOT NULL,
                raw_graph TEXT,
                raw_fraud TEXT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            );
            CREATE INDEX alerts_partner_observed ON alerts (partner_tenant_id, last_observed_at, alert_id);
            CREATE INDEX alerts_partner_resolved ON alerts (partner_tenant_id, resolved_at);
            CREATE INDEX alerts_enrich_due ON alerts (enrich_state, enrich_after);
            CREATE TABLE alert_transitions (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                alert_id TEXT NOT NULL,
                partner_tenant_id TEXT NOT NULL,
                from_status BIGINT NOT NULL,
                to_status BIGINT NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                at BIGINT NOT NULL
            );
            CREATE INDEX alert_transitions_alert ON alert_transitions (alert_id, seq);
            CREATE TABLE quarantine (
                quarantine_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                source BIGINT NOT NULL,
                reason TEXT NOT NULL,
                payload TEXT NOT NULL,
                received_at BIGINT NOT NULL
            );
            CREATE INDEX quarantine_partner ON quarantine (partner_tenant_id, source);",
    },
    Migration {
        version: 2,
        description: "ingestion settings, poll schedule and leases, webhook inbox, enrichment cache",
        postgres: "
            CREATE TABLE ingestion (
                partner_tenant_id TEXT PRIMARY KEY,
                graph_enabled BIGINT NOT NULL,
                fraud_events_enabled BIGINT NOT NULL,
                poll_interval_ms BIGINT NOT NULL,
                webhook_url TEXT NOT NULL,
                updated_at BIGINT NOT NULL
            );
            CREATE TABLE poll_state (
                partner_tenant_id TEXT NOT NULL,
                source BIGINT NOT NULL,
                enabled BIGINT NOT NULL,
                interval_ms BIGINT NOT NULL,
                cursor_ms BIGINT,
                next_poll_at BIGINT NOT NULL,
                lease_owner TEXT NOT NULL,
                lease_until BIGINT NOT NULL,
                last_attempt_at BIGINT,
                last_success_at BIGINT,
                last_error TEXT NOT NULL,
                polls BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (partner_tenant_id, source)
            );
            CREATE INDEX poll_state_due ON poll_state (enabled, next_poll_at);
            CREATE TABLE webhook_inbox (
                inbox_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                body_sha256 TEXT NOT NULL UNIQUE,
                event_name TEXT NOT NULL,
                body BYTEA NOT NULL,
                received_at BIGINT NOT NULL,
                state BIGINT NOT NULL,
                attempts BIGINT NOT NULL,
                next_attempt_at BIGINT NOT NULL,
                last_error TEXT NOT NULL
            );
            CREATE INDEX webhook_inbox_due ON webhook_inbox (state, next_attempt_at);
            CREATE INDEX webhook_inbox_partner ON webhook_inbox (partner_tenant_id, received_at);
            CREATE TABLE enrichment_cache (
                cache_key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                fetched_at BIGINT NOT NULL
            );",
        sqlite: "
            CREATE TABLE ingestion (
                partner_tenant_id TEXT PRIMARY KEY,
                graph_enabled BIGINT NOT NULL,
                fraud_events_enabled BIGINT NOT NULL,
                poll_interval_ms BIGINT NOT NULL,
                webhook_url TEXT NOT NULL,
                updated_at BIGINT NOT NULL
            );
            CREATE TABLE poll_state (
                partner_tenant_id TEXT NOT NULL,
                source BIGINT NOT NULL,
                enabled BIGINT NOT NULL,
                interval_ms BIGINT NOT NULL,
                cursor_ms BIGINT,
                next_poll_at BIGINT NOT NULL,
                lease_owner TEXT NOT NULL,
                lease_until BIGINT NOT NULL,
                last_attempt_at BIGINT,
                last_success_at BIGINT,
                last_error TEXT NOT NULL,
                polls BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (partner_tenant_id, source)
            );
            CREATE INDEX poll_state_due ON poll_state (enabled, next_poll_at);
            CREATE TABLE webhook_inbox (
                inbox_id TEXT PRIMARY KEY,
                partner_tenant_id TEXT NOT NULL,
                body_sha256 TEXT NOT NULL UNIQUE,
                event_name TEXT NOT NULL,
                body BLOB NOT NULL,
                received_at BIGINT NOT NULL,
                state BIGINT NOT NULL,
                attempts BIGINT NOT NULL,
                next_attempt_at BIGINT NOT NULL,
                last_error TEXT NOT NULL
            );
            CREATE INDEX webhook_inbox_due ON webhook_inbox (state, next_attempt_at);
            CREATE INDEX webhook_inbox_partner ON webhook_inbox (partner_tenant_id, received_at);
            CREATE TABLE enrichment_cache (
                cache_key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                fetched_at BIGINT NOT NULL
            );",
    },
    Migration {
        version: 3,
        description: "alerts: fewer and smaller indexes on the ingest path, byte-order keys",
        // A new alert writes three index entries instead of five (see the README's Benchmark).
        // - `fingerprint` needs no unique index of its own: `alert_id` is derived from it
        //   (`model::alert_id_for`) and is the primary key, so one row per fingerprint holds,
        //   and nothing reads by fingerprint.
        // - Response times read resolved alerts only, and claims read unenriched alerts only:
        //   partial indexes leave a new (open, unenriched) alert out of the first and store one
        //   column in the second.
        // - Key columns compare bytewise (`COLLATE "C"`, as SQLite does): identifiers, not
        //   words, so the order of UUIDs and tenant ids is the same and index comparisons skip
        //   the locale. Changing a collation rebuilds the indexes on those columns (not the
        //   table) under an exclusive lock.
        postgres: r#"
            ALTER TABLE alerts DROP CONSTRAINT alerts_fingerprint_key;
            DROP INDEX alerts_partner_resolved;
            CREATE INDEX alerts_partner_resolved ON alerts (partner_tenant_id, resolved_at)
                WHERE resolved_at IS NOT NULL;
            DROP INDEX alerts_enrich_due;
            CREATE INDEX alerts_enrich_due ON alerts (enrich_after) WHERE enrich_state = 0;
            ALTER TABLE alerts
                ALTER COLUMN alert_id TYPE TEXT COLLATE "C",
                ALTER COLUMN partner_tenant_id TYPE TEXT COLLATE "C";
            ALTER TABLE alert_transitions ALTER COLUMN alert_id TYPE TEXT COLLATE "C";"#,
        // SQLite cannot drop an inline UNIQUE without rebuilding the table; it keeps it.
        sqlite: "
            DROP INDEX alerts_partner_resolved;
            CREATE INDEX alerts_partner_resolved ON alerts (partner_tenant_id, resolved_at)
                WHERE resolved_at IS NOT NULL;
            DROP INDEX alerts_enrich_due;
            CREATE INDEX alerts_enrich_due ON alerts (enrich_after) WHERE enrich_state = 0;",
    },
    palisade_queue::outbox::MIGRATION,
];
