//! The outbox survives a crash between commit and publish, on both database backends.

use std::{sync::Arc, time::Duration};

use palisade_queue::{InProcessQueue, Queue, QueueSettings, envelope, outbox};
use palisade_storage::{Database, Migration};
use palisade_testkit::{TestBackend, backend_conformance};

const ALERTS: Migration = Migration {
    version: 1,
    description: "alerts",
    postgres: "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY)",
    sqlite: "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY)",
};

async fn survives_a_crash_between_commit_and_publish(backend: TestBackend) {
    let db = Database::connect(&backend.settings(), "alerts")
        .await
        .unwrap();
    db.migrate(&[ALERTS, outbox::MIGRATION]).await.unwrap();
    let queue: Arc<dyn Queue> = Arc::new(InProcessQueue::new(&QueueSettings::default()));
    let mut consumer = queue.consumer("alerts", "notifier", "c1").await.unwrap();

    // The row and its event commit together...
    for n in 0..5 {
        let mut tx = db.pool().begin().await.unwrap();
        sqlx::query("INSERT INTO alerts (alert_id) VALUES ($1)")
            .bind(format!("a-{n}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let e = envelope(
            "alert.raised",
            "p1",
            &palisade_contracts::events::v1::AlertWriteBack {
                partner_tenant_id: "p1".into(),
                alert_id: format!("a-{n}"),
            },
        );
        outbox::enqueue(&mut tx, "alerts", &e).await.unwrap();
        tx.commit().await.unwrap();
    }
    // ...and a transaction that rolls back leaves neither.
    {
        let mut tx = db.pool().begin().await.unwrap();
        sqlx::query("INSERT INTO alerts (alert_id) VALUES ('ghost')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let e = envelope(
            "alert.raised",
            "p1",
            &palisade_contracts::events::v1::AlertWriteBack {
                partner_tenant_id: "p1".into(),
                alert_id: "ghost".into(),
            },
        );
        outbox::enqueue(&mut tx, "alerts", &e).await.unwrap();
        tx.rollback().await.unwrap();
    }
    // The process dies here, before any relay ran: nothing is on the queue yet.
    assert!(
        consumer
            .next(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );

    // A new process starts its relay; every committed event goes out, in order, once.
    let relay = outbox::OutboxRelay::new(db.clone(), queue.clone());
    assert_eq!(relay.pending().await.unwrap(), 5);
    assert_eq!(relay.relay_once().await.unwrap(), 5);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(relay.pending().await.unwrap(), 0);
    for n in 0..5 {
        let d = consumer
            .next(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("event");
        let payload = <palisade_contracts::events::v1::AlertWriteBack as prost::Message>::decode(
            d.envelope.payload.as_slice(),
        )
        .unwrap();
        assert_eq!(payload.alert_id, format!("a-{n}"));
        consumer.ack(&d).await.unwrap();
    }
    assert!(
        consumer
            .next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "the rolled-back event never left"
    );
}
backend_conformance!(
    survives_a_crash_between_commit_and_publish,
    survives_a_crash_between_commit_and_publish
);

/// Unpublished rows are counted, and the sampler exports them as `palisade_outbox_pending`.
async fn pending_rows_are_counted_and_exported(backend: TestBackend) {
    let db = Database::connect(&backend.settings(), "alerts")
        .await
        .unwrap();
    db.migrate(&[ALERTS, outbox::MIGRATION]).await.unwrap();
    let metrics = palisade_telemetry::Metrics::new();
    let sampler =
        palisade_queue::PlatformSampler::register(&metrics, "alert-ingest").outbox(db.clone());
    sampler.sample_once().await;
    assert!(
        metrics
            .render()
            .contains("palisade_outbox_pending{service=\"alert-ingest\"} 0")
    );
    for n in 0..3 {
        let mut tx = db.pool().begin().await.unwrap();
        let e = envelope(
            "alert.raised",
            "p1",
            &palisade_contracts::events::v1::AlertWriteBack {
                partner_tenant_id: "p1".into(),
                alert_id: format!("a-{n}"),
            },
        );
        outbox::enqueue(&mut tx, "alerts", &e).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(outbox::pending(&db).await.unwrap(), 3);
    sampler.sample_once().await;
    let text = metrics.render();
    assert!(
        text.contains("palisade_outbox_pending{service=\"alert-ingest\"} 3"),
        "{text}"
    );
    let queue: Arc<dyn Queue> = Arc::new(InProcessQueue::new(&QueueSettings::default()));
    outbox::OutboxRelay::new(db.clone(), queue)
        .relay_once()
        .await
        .unwrap();
    assert_eq!(outbox::pending(&db).await.unwrap(), 0);
}
backend_conformance!(
    pending_rows_are_counted_and_exported,
    pending_rows_are_counted_and_exported
);
