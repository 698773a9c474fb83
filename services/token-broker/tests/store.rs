//! The store contract, run on Postgres and on SQLite with the same test bodies.

use palisade_contracts::{events::v1::TokenHealthChanged, tokens::v1::TokenHealthState};
use palisade_storage::Database;
use palisade_testkit::{TestBackend, backend_conformance};
use palisade_token_broker::store::{
    AccessTokenRow, AppRow, AuditRow, ConsentRow, Cursor, CustomerAccessRow, HealthChange,
    RotationOutcome, SealedKind, SqlStore, TokenStore, UsageRow,
};

async fn open(backend: &TestBackend) -> (SqlStore, Database) {
    let db = Database::connect(&backend.settings(), "tokens")
        .await
        .unwrap();
    let store = SqlStore::new(db.clone());
    store.migrate().await.unwrap();
    (store, db)
}

fn audit(partner: &str, kind: &str, at: i64, mfa: bool) -> AuditRow {
    AuditRow {
        event_id: uuid::Uuid::now_v7().to_string(),
        partner_tenant_id: partner.into(),
        kind: kind.into(),
        target_tenant_id: partner.into(),
        resource: "graph".into(),
        caller: "cred-1".into(),
        success: true,
        mfa,
        detail: String::new(),
        occurred_at: at,
    }
}

fn app(partner: &str, id: &str, at: i64) -> AppRow {
    AppRow {
        app_id: id.into(),
        partner_tenant_id: partner.into(),
        display_name: "SAM".into(),
        client_id: "client".into(),
        cloud: 1,
        scopes: vec!["a".into(), "b".into()],
        token_endpoint: 1,
        redirect_uri: "https://x/cb".into(),
        credential_kind: 1,
        credential_sealed: Some(vec![1, 2, 3]),
        credential_key_version: Some("v1".into()),
        credential_reference: String::new(),
        credential_expires_at: None,
        created_at: at,
        updated_at: at,
    }
}

fn consent(partner: &str, id: &str, at: i64) -> ConsentRow {
    ConsentRow {
        consent_id: id.into(),
        partner_tenant_id: partner.into(),
        app_id: "app-1".into(),
        consented_by_upn: "admin@p".into(),
        consented_with_mfa: true,
        source: "consent".into(),
        refresh_token_sealed: Some(vec![9; 40]),
        key_version: Some("v1".into()),
        version: 1,
        rotation_count: 0,
        health: TokenHealthState::Healthy as i32,
        health_detail: String::new(),
        remediation: String::new(),
        reconsent_url: String::new(),
        health_changed_at: at,
        created_at: at,
        last_redeemed_at: at,
        cliff_warned_at: None,
        revoked_at: None,
    }
}

fn event(partner: &str) -> palisade_contracts::events::v1::Envelope {
    palisade_queue::envelope(
        "token.health_changed",
        partner,
        &TokenHealthChanged {
            partner_tenant_id: partner.into(),
            ..Default::default()
        },
    )
}

async fn outbox_len(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn apps_are_per_partner_paged_and_soft_deleted(backend: TestBackend) {
    let (store, _db) = open(&backend).await;
    for i in 0..3 {
        store
            .insert_app(
                &app("p1", &format!("a{i}"), 100 + i),
                &audit("p1", "app.registered", 1, false),
            )
            .await
            .unwrap();
    }
    store
        .insert_app(
            &app("p2", "other", 100),
            &audit("p2", "app.registered", 1, false),
        )
        .await
        .unwrap();
    let page = store
        .list_apps(
            "p1",
            &Cursor {
                after: None,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
        ["a0", "a1"]
    );
    let rest = store
        .list_apps(
            "p1",
            &Cursor {
                after: Some((page[1].created_at, page[1].app_id.clone())),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0], app("p1", "a2", 102));
    assert!(
        store.get_app("p2", "a0").await.unwrap().is_none(),
        "another partner's app is invisible"
    );
    assert!(
        store
            .delete_app("p1", "a0", &audit("p1", "app.deleted", 2, false))
            .await
            .unwrap()
    );
    assert!(store.get_app("p1", "a0").await.unwrap().is_none());
    assert!(
        !store
            .delete_app("p1", "a0", &audit("p1", "app.deleted", 3, false))
            .await
            .unwrap()
    );
}
backend_conformance!(apps, apps_are_per_partner_paged_and_soft_deleted);

async fn the_refresh_token_is_replaced_only_by_compare_and_swap(backend: TestBackend) {
    let (store, _db) = open(&backend).await;
    store
        .insert_consent(
            &consent("p1", "c1", 10),
            &audit("p1", "consent.completed", 10, true),
        )
        .await
        .unwrap();
    let token_row = |obtained_at: i64| AccessTokenRow {
        cache_key: "p1|p1|graph".into(),
        partner_tenant_id: "p1".into(),
        consent_id: "c1".into(),
        token_sealed: vec![obtained_at as u8; 20],
        key_version: "v1".into(),
        token_type: "Bearer".into(),
        mfa: true,
        expires_at: obtained_at + 3_600_000,
        obtained_at,
    };
    // Two redemptions raced from version 1: the first write wins, the second is discarded.
    let first = store
        .record_redemption(
            "c1",
            1,
            Some((&[1; 30], "v1")),
            Some(&token_row(20)),
            &audit("p1", "redemption", 20, true),
        )
        .await
        .unwrap();
    let second = store
        .record_redemption(
            "c1",
            1,
            Some((&[2; 30], "v1")),
            Some(&token_row(21)),
            &audit("p1", "redemption", 21, true),
        )
        .await
        .unwrap();
    assert_eq!(
        (first, second),
        (RotationOutcome::Stored, RotationOutcome::LostRace)
    );
    let row = store.get_consent("c1").await.unwrap().unwrap();
    assert_eq!(row.refresh_token_sealed, Some(vec![1; 30]));
    assert_eq!((row.version, row.rotation_count), (2, 1));
    assert_eq!(row.last_redeemed_at, 20);
    // The newest access token is kept, an older answer never replaces it.
    assert_eq!(
        store
            .get_access_token("p1|p1|graph")
            .await
            .unwrap()
            .unwrap()
            .obtained_at,
        21
    );
    store
        .record_redemption(
            "c1",
            2,
            None,
            Some(&token_row(15)),
            &audit("p1", "redemption", 30, false),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_access_token("p1|p1|graph")
            .await
            .unwrap()
            .unwrap()
            .obtained_at,
        21
    );
    // No new refresh token: the old one stays, its inactivity clock restarts.
    let row = store.get_consent("c1").await.unwrap().unwrap();
    assert_eq!((row.version, row.last_redeemed_at), (2, 30));
    assert_eq!(
        store.mfa_statistics("p1", (None, None)).await.unwrap(),
        (3, 2)
    );
    assert_eq!(
        store.mfa_statistics("p1", (Some(21), None)).await.unwrap(),
        (2, 1)
    );
}
backend_conformance!(
    compare_and_swap,
    the_refresh_token_is_replaced_only_by_compare_and_swap
);

async fn health_changes_publish_once_with_their_event(backend: TestBackend) {
    let (store, db) = open(&backend).await;
    store
        .insert_consent(
            &consent("p1", "c1", 10),
            &audit("p1", "consent.completed", 10, true),
        )
        .await
        .unwrap();
    let change = HealthChange {
        expected: TokenHealthState::Healthy as i32,
        health: TokenHealthState::Revoked as i32,
        detail: "AADSTS50173".into(),
        remediation: "consent again".into(),
        reconsent_url: "https://login/x".into(),
        at: 50,
    };
    // Two replicas saw the same failure: one change, one event.
    assert!(
        store
            .set_consent_health("c1", &change, Some(&event("p1")))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_consent_health("c1", &change, Some(&event("p1")))
            .await
            .unwrap()
    );
    assert_eq!(outbox_len(&db).await, 1);
    let row = store.get_consent("c1").await.unwrap().unwrap();
    assert_eq!(row.health, TokenHealthState::Revoked as i32);
    assert_eq!(
        (row.health_detail.as_str(), row.health_changed_at),
        ("AADSTS50173", 50)
    );
    // The active consent prefers a healthy one.
    store
        .insert_consent(
            &consent("p1", "c0", 5),
            &audit("p1", "consent.completed", 5, true),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .active_consent("p1")
            .await
            .unwrap()
            .unwrap()
            .consent_id,
        "c0"
    );
    // Customers: set, unchanged, cleared; an event for each change only.
    let denied = CustomerAccessRow {
        partner_tenant_id: "p1".into(),
        customer_tenant_id: "cust".into(),
        health: TokenHealthState::CustomerAccessDenied as i32,
        detail: "AADSTS50020".into(),
        since: 60,
    };
    let make = |_previous: i32| event("p1");
    assert_eq!(
        store.set_customer_access(&denied, &make).await.unwrap(),
        Some(TokenHealthState::Healthy as i32)
    );
    assert_eq!(
        store.set_customer_access(&denied, &make).await.unwrap(),
        None
    );
    assert_eq!(
        store.customer_access("p1").await.unwrap(),
        vec![denied.clone()]
    );
    let healthy = CustomerAccessRow {
        health: TokenHealthState::Healthy as i32,
        ..denied
    };
    assert!(
        store
            .set_customer_access(&healthy, &make)
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.customer_access("p1").await.unwrap().is_empty());
    assert_eq!(outbox_len(&db).await, 3);
}
backend_conformance!(health, health_changes_publish_once_with_their_event);

async fn revocation_shreds_the_token_and_drops_cached_ones(backend: TestBackend) {
    let (store, db) = open(&backend).await;
    store
        .insert_consent(
            &consent("p1", "c1", 10),
            &audit("p1", "consent.completed", 10, true),
        )
        .await
        .unwrap();
    let row = AccessTokenRow {
        cache_key: "k".into(),
        partner_tenant_id: "p1".into(),
        consent_id: "c1".into(),
        token_sealed: vec![5; 20],
        key_version: "v1".into(),
        token_type: "Bearer".into(),
        mfa: true,
        expires_at: 99_999,
        obtained_at: 11,
    };
    store
        .record_redemption(
            "c1",
            1,
            None,
            Some(&row),
            &audit("p1", "redemption", 11, true),
        )
        .await
        .unwrap();
    assert!(
        store
            .revoke_consent(
                "p2",
                "c1",
                20,
                &audit("p2", "consent.revoked", 20, false),
                &event("p2")
            )
            .await
            .unwrap()
            .is_none()
    );
    let revoked = store
        .revoke_consent(
            "p1",
            "c1",
            20,
            &audit("p1", "consent.revoked", 20, false),
            &event("p1"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.refresh_token_sealed, None);
    assert_eq!(revoked.revoked_at, Some(20));
    assert_eq!(revoked.health, TokenHealthState::RevokedByOperator as i32);
    assert!(store.get_access_token("k").await.unwrap().is_none());
    assert!(store.active_consent("p1").await.unwrap().is_none());
    assert_eq!(
        store.revoked_since(15).await.unwrap(),
        vec![("c1".to_owned(), 20)]
    );
    assert_eq!(outbox_len(&db).await, 1);
    // A late redemption for the revoked consent stores nothing.
    let outcome = store
        .record_redemption(
            "c1",
            revoked.version,
            Some((&[1; 30], "v1")),
            Some(&row),
            &audit("p1", "redemption", 21, true),
        )
        .await
        .unwrap();
    assert_eq!(outcome, RotationOutcome::LostRace);
    assert!(store.get_access_token("k").await.unwrap().is_none());
}
backend_conformance!(
    revocation,
    revocation_shreds_the_token_and_drops_cached_ones
);

async fn usage_accumulates_per_minute_and_audit_pages(backend: TestBackend) {
    let (store, _db) = open(&backend).await;
    let usage = |hits, issued| UsageRow {
        partner_tenant_id: "p1".into(),
        minute: 60_000,
        caller: "cred".into(),
        target_tenant_id: "cust".into(),
        resource: "graph".into(),
        cache_hits: hits,
        issued,
    };
    store.add_usage(&[usage(3, 1)]).await.unwrap();
    store.add_usage(&[usage(4, 0)]).await.unwrap();
    let rows = store
        .list_usage(
            "p1",
            Some("cust"),
            (None, None),
            &Cursor {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(rows, vec![usage(7, 1)]);
    assert!(
        store
            .list_usage(
                "p1",
                Some("x"),
                (None, None),
                &Cursor {
                    after: None,
                    limit: 10
                }
            )
            .await
            .unwrap()
            .is_empty()
    );
    for at in 1..=5 {
        store
            .insert_audit(&audit("p1", "redemption", at, false))
            .await
            .unwrap();
    }
    let first = store
        .list_audit(
            "p1",
            None,
            (Some(2), Some(5)),
            &Cursor {
                after: None,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|a| a.occurred_at).collect::<Vec<_>>(),
        [2, 3]
    );
    let next = store
        .list_audit(
            "p1",
            Some("p1"),
            (Some(2), Some(5)),
            &Cursor {
                after: Some((3, first[1].event_id.clone())),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(next.iter().map(|a| a.occurred_at).collect::<Vec<_>>(), [4]);
}
backend_conformance!(
    usage_and_audit,
    usage_accumulates_per_minute_and_audit_pages
);

async fn rewrap_replaces_only_what_is_unchanged(backend: TestBackend) {
    let (store, _db) = open(&backend).await;
    store
        .insert_app(
            &app("p1", "a1", 1),
            &audit("p1", "app.registered", 1, false),
        )
        .await
        .unwrap();
    store
        .insert_consent(
            &consent("p1", "c1", 10),
            &audit("p1", "consent.completed", 10, true),
        )
        .await
        .unwrap();
    assert_eq!(
        store.records_by_key_version().await.unwrap(),
        vec![("v1".to_owned(), 2)]
    );
    let pending = store.sealed_not_under("v2", 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    let rt = pending
        .iter()
        .find(|r| r.kind == SealedKind::RefreshToken)
        .unwrap();
    // A writer re-sealed the refresh token meanwhile: the rewrap leaves it alone.
    store
        .record_redemption(
            "c1",
            1,
            Some((&[7; 30], "v2")),
            None,
            &audit("p1", "redemption", 11, true),
        )
        .await
        .unwrap();
    assert!(!store.replace_sealed(rt, &[8; 30], "v2").await.unwrap());
    let app_record = pending
        .iter()
        .find(|r| r.kind == SealedKind::AppCredential)
        .unwrap();
    assert!(
        store
            .replace_sealed(app_record, &[6; 10], "v2")
            .await
            .unwrap()
    );
    assert!(store.sealed_not_under("v2", 10).await.unwrap().is_empty());
    assert_eq!(
        store.records_by_key_version().await.unwrap(),
        vec![("v2".to_owned(), 2)]
    );
    assert_eq!(
        store
            .get_consent("c1")
            .await
            .unwrap()
            .unwrap()
            .refresh_token_sealed,
        Some(vec![7; 30])
    );
}
backend_conformance!(rewrap, rewrap_replaces_only_what_is_unchanged);
