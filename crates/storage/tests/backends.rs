//! The storage layer's own conformance: connect, isolate schemas, migrate, on both backends.

use palisade_storage::{Database, Migration};
use palisade_testkit::{TestBackend, backend_conformance};
use sqlx::Row;

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "widgets",
    postgres: "CREATE TABLE widgets (id TEXT PRIMARY KEY, weight BIGINT NOT NULL, blob BYTEA)",
    sqlite: "CREATE TABLE widgets (id TEXT PRIMARY KEY, weight BIGINT NOT NULL, blob BLOB)",
}];

async fn migrates_once_and_round_trips(backend: TestBackend) {
    let db = Database::connect(&backend.settings(), "widgets")
        .await
        .unwrap();
    assert_eq!(db.migrate(MIGRATIONS).await.unwrap(), 1);
    // A second replica starting later applies nothing.
    assert_eq!(db.migrate(MIGRATIONS).await.unwrap(), 0);

    sqlx::query("INSERT INTO widgets (id, weight, blob) VALUES ($1, $2, $3)")
        .bind("w1")
        .bind(42_i64)
        .bind(vec![0_u8, 159, 255])
        .execute(db.pool())
        .await
        .unwrap();
    let row = sqlx::query("SELECT weight, blob FROM widgets WHERE id = $1")
        .bind("w1")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 42);
    assert_eq!(row.get::<Vec<u8>, _>(1), vec![0_u8, 159, 255]);
}
backend_conformance!(migrates_once_and_round_trips, migrates_once_and_round_trips);

async fn schemas_are_isolated(backend: TestBackend) {
    let a = Database::connect(&backend.settings(), "svc_a")
        .await
        .unwrap();
    let b = Database::connect(&backend.settings(), "svc_b")
        .await
        .unwrap();
    a.migrate(MIGRATIONS).await.unwrap();
    sqlx::query("INSERT INTO widgets (id, weight) VALUES ('only-in-a', 1)")
        .execute(a.pool())
        .await
        .unwrap();
    // svc_b has no widgets table at all: another service's tables are invisible.
    let err = match sqlx::query("SELECT count(*) FROM widgets")
        .fetch_one(b.pool())
        .await
    {
        Ok(_) => panic!("svc_b sees svc_a's table"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("widgets"), "{err}");
}
backend_conformance!(schemas_are_isolated, schemas_are_isolated);

async fn edited_migration_is_refused(backend: TestBackend) {
    let db = Database::connect(&backend.settings(), "edits")
        .await
        .unwrap();
    db.migrate(MIGRATIONS).await.unwrap();
    let edited = [Migration {
        postgres: "CREATE TABLE widgets (id TEXT)",
        sqlite: "CREATE TABLE widgets (id TEXT)",
        ..MIGRATIONS[0]
    }];
    let err = db.migrate(&edited).await.unwrap_err();
    assert!(
        err.to_string().contains("edited after it was applied"),
        "{err}"
    );
}
backend_conformance!(edited_migration_is_refused, edited_migration_is_refused);

#[tokio::test]
async fn concurrent_migrations_from_many_replicas_apply_once() {
    let backend = TestBackend::postgres().await;
    let settings = backend.settings();
    let mut handles = Vec::new();
    for _ in 0..6 {
        let settings = settings.clone();
        handles.push(tokio::spawn(async move {
            let db = Database::connect(&settings, "racy").await.unwrap();
            db.migrate(MIGRATIONS).await.unwrap()
        }));
    }
    let mut applied = 0;
    for h in handles {
        applied += h.await.unwrap();
    }
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn bad_urls_and_schemas_are_refused_clearly() {
    let settings = palisade_storage::DatabaseSettings {
        url: "mysql://x".to_owned().into(),
        ..Default::default()
    };
    let err = Database::connect(&settings, "ok").await.unwrap_err();
    assert!(
        err.to_string().contains("unsupported database url scheme"),
        "{err}"
    );
    let err = Database::connect(&Default::default(), "Robert'); DROP")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid schema name"), "{err}");
}
