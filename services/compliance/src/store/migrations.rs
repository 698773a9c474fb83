//! The `compliance` schema, written once per backend. Integers are BIGINT (timestamps in Unix
//! milliseconds, enums as their proto numbers), so the `Any` driver reads them the same on both.

use palisade_storage::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "evaluations, findings, customer posture, check state, schedules",
        postgres: "
        CREATE TABLE evaluations (
            evaluation_id TEXT PRIMARY KEY,
            partner_tenant_id TEXT NOT NULL,
            state TEXT NOT NULL,
            trigger TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            lease_owner TEXT NOT NULL,
            lease_until BIGINT NOT NULL,
            customers_total BIGINT NOT NULL DEFAULT 0,
            customers_done BIGINT NOT NULL DEFAULT 0,
            customers_failed BIGINT NOT NULL DEFAULT 0,
            score DOUBLE PRECISION,
            microsoft_score DOUBLE PRECISION,
            microsoft_max_score DOUBLE PRECISION,
            passing BIGINT NOT NULL DEFAULT 0,
            failing BIGINT NOT NULL DEFAULT 0,
            warnings BIGINT NOT NULL DEFAULT 0,
            unknown BIGINT NOT NULL DEFAULT 0,
            status BYTEA,
            error TEXT
        );
        CREATE UNIQUE INDEX evaluations_one_running ON evaluations (partner_tenant_id) WHERE state = 'running';
        CREATE INDEX evaluations_history ON evaluations (partner_tenant_id, state, finished_at);
        CREATE INDEX evaluations_leases ON evaluations (state, lease_until);
        CREATE TABLE findings (
            evaluation_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            partner_tenant_id TEXT NOT NULL,
            check_kind BIGINT NOT NULL,
            status BIGINT NOT NULL,
            customer_tenant_id TEXT NOT NULL,
            finding BYTEA NOT NULL,
            PRIMARY KEY (evaluation_id, seq)
        );
        CREATE TABLE customer_posture (
            partner_tenant_id TEXT NOT NULL,
            customer_tenant_id TEXT NOT NULL,
            evaluation_id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            status BIGINT NOT NULL,
            mechanism TEXT NOT NULL,
            admins_total BIGINT NOT NULL,
            admins_with_mfa BIGINT NOT NULL,
            detail TEXT NOT NULL,
            admins_without_mfa TEXT NOT NULL,
            evaluated_at BIGINT NOT NULL,
            dap BIGINT NOT NULL DEFAULT -1,
            dap_checked_at BIGINT,
            PRIMARY KEY (partner_tenant_id, customer_tenant_id)
        );
        CREATE INDEX customer_posture_status ON customer_posture (partner_tenant_id, status, customer_tenant_id);
        CREATE INDEX customer_posture_evaluation ON customer_posture (partner_tenant_id, evaluation_id);
        CREATE TABLE check_state (
            partner_tenant_id TEXT NOT NULL,
            check_kind BIGINT NOT NULL,
            status BIGINT NOT NULL,
            evaluation_id TEXT NOT NULL,
            changed_at BIGINT NOT NULL,
            PRIMARY KEY (partner_tenant_id, check_kind)
        );
        CREATE TABLE schedules (
            partner_tenant_id TEXT PRIMARY KEY,
            interval_ms BIGINT NOT NULL,
            enabled BIGINT NOT NULL,
            next_run_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX schedules_due ON schedules (enabled, next_run_at);
        ",
        sqlite: "
        CREATE TABLE evaluations (
            evaluation_id TEXT PRIMARY KEY,
            partner_tenant_id TEXT NOT NULL,
            state TEXT NOT NULL,
            trigger TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            lease_owner TEXT NOT NULL,
            lease_until BIGINT NOT NULL,
            customers_total BIGINT NOT NULL DEFAULT 0,
            customers_done BIGINT NOT NULL DEFAULT 0,
            customers_failed BIGINT NOT NULL DEFAULT 0,
            score REAL,
            microsoft_score REAL,
            microsoft_max_score REAL,
            passing BIGINT NOT NULL DEFAULT 0,
            failing BIGINT NOT NULL DEFAULT 0,
            warnings BIGINT NOT NULL DEFAULT 0,
            unknown BIGINT NOT NULL DEFAULT 0,
            status BLOB,
            error TEXT
        );
        CREATE UNIQUE INDEX evaluations_one_running ON evaluations (partner_tenant_id) WHERE state = 'running';
        CREATE INDEX evaluations_history ON evaluations (partner_tenant_id, state, finished_at);
        CREATE INDEX evaluations_leases ON evaluations (state, lease_until);
        CREATE TABLE findings (
            evaluation_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            partner_tenant_id TEXT NOT NULL,
            check_kind BIGINT NOT NULL,
            status BIGINT NOT NULL,
            customer_tenant_id TEXT NOT NULL,
            finding BLOB NOT NULL,
            PRIMARY KEY (evaluation_id, seq)
        );
        CREATE TABLE customer_posture (
            partner_tenant_id TEXT NOT NULL,
            customer_tenant_id TEXT NOT NULL,
            evaluation_id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            status BIGINT NOT NULL,
            mechanism TEXT NOT NULL,
            admins_total BIGINT NOT NULL,
            admins_with_mfa BIGINT NOT NULL,
            detail TEXT NOT NULL,
            admins_without_mfa TEXT NOT NULL,
            evaluated_at BIGINT NOT NULL,
            dap BIGINT NOT NULL DEFAULT -1,
            dap_checked_at BIGINT,
            PRIMARY KEY (partner_tenant_id, customer_tenant_id)
        );
        CREATE INDEX customer_posture_status ON customer_posture (partner_tenant_id, status, customer_tenant_id);
        CREATE INDEX customer_posture_evaluation ON customer_posture (partner_tenant_id, evaluation_id);
        CREATE TABLE check_state (
            partner_tenant_id TEXT NOT NULL,
            check_kind BIGINT NOT NULL,
            status BIGINT NOT NULL,
            evaluation_id TEXT NOT NULL,
            changed_at BIGINT NOT NULL,
            PRIMARY KEY (partner_tenant_id, check_kind)
        );
        CREATE TABLE schedules (
            partner_tenant_id TEXT PRIMARY KEY,
            interval_ms BIGINT NOT NULL,
            enabled BIGINT NOT NULL,
            next_run_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX schedules_due ON schedules (enabled, next_run_at);
        ",
    },
    palisade_queue::outbox::MIGRATION,
];
