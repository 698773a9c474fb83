//! Start-up during a database outage: `Database::connect` waits for Postgres to come back
//! (up to `startup_wait`) instead of failing, so a restarted service does not exit into a
//! crash loop. Postgres "comes back" when a TCP proxy to the real test server starts listening.

use std::{str::FromStr, time::Duration};

use palisade_storage::{Database, DatabaseSettings};
use palisade_testkit::TestDatabase;
use sqlx::{ConnectOptions, Row, postgres::PgConnectOptions};

/// A loopback port nobody listens on (yet).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test database's URL, with its port replaced by `port`.
fn url_via(db: &TestDatabase, port: u16) -> (String, String) {
    let options = PgConnectOptions::from_str(db.url()).unwrap();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let via = options
        .host("127.0.0.1")
        .port(port)
        .to_url_lossy()
        .to_string();
    (via, upstream)
}

/// After `delay`, forwards every connection on `port` to `upstream`.
fn proxy_after(delay: Duration, port: u16, upstream: String) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn connect_waits_for_a_database_that_comes_back() {
    let db = TestDatabase::create().await;
    let port = unused_port();
    let (url, upstream) = url_via(&db, port);
    proxy_after(Duration::from_secs(2), port, upstream);
    let settings = DatabaseSettings {
        url: url.into(),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let database = Database::connect(&settings, "waits")
        .await
        .expect("connect waits until Postgres answers");
    let row = sqlx::query("SELECT current_schema()::text")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "waits");
    database.close().await;
}

#[tokio::test]
async fn without_a_startup_wait_an_unreachable_database_fails_at_once() {
    let db = TestDatabase::create().await;
    let (url, _) = url_via(&db, unused_port());
    let settings = DatabaseSettings {
        url: url.into(),
        connect_timeout: Duration::from_millis(500),
        startup_wait: Duration::ZERO,
        ..Default::default()
    };
    let err = Database::connect(&settings, "fails").await.unwrap_err();
    assert!(
        err.is_unavailable(),
        "a refused connection is UNAVAILABLE: {err}"
    );
}

/// What the services map to `UNAVAILABLE` (retry) rather than `INTERNAL`: a connection that
/// the server ends (as Postgres does when it shuts down or restarts), not a bad statement.
#[tokio::test]
async fn a_terminated_connection_is_unavailable_and_a_bad_statement_is_not() {
    let db = TestDatabase::create().await;
    let database = Database::connect(
        &DatabaseSettings {
            url: db.url().to_owned().into(),
            ..Default::default()
        },
        "outage",
    )
    .await
    .unwrap();
    let bad = sqlx::query("SELEC 1")
        .execute(database.pool())
        .await
        .unwrap_err();
    assert!(!palisade_storage::is_unavailable(&bad), "{bad}");
    let terminated = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(database.pool())
        .await
        .unwrap_err();
    assert!(
        palisade_storage::is_unavailable(&terminated),
        "{terminated:?}"
    );
    database.close().await;
}
