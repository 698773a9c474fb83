//! A stand-in partner endpoint for webhook forgery tests: it keeps what Partner Center sends
//! (so a test can replay it, altered), and serves a self-made certificate for the host name
//! Microsoft's dispatcher uses at `/forged.cer`.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};

pub type Captured = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// Listens on 127.0.0.1; POSTs to `/hook` are kept in `Captured` and answered 200.
pub async fn capture_server() -> (std::net::SocketAddr, Captured) {
    let captured: Captured = Arc::default();
    let forged =
        rcgen::generate_simple_self_signed(vec!["pcnotifications-dispatch.microsoft.com".into()])
            .unwrap();
    let forged_der = forged.cert.der().to_vec();
    let store = Arc::clone(&captured);
    let app = Router::new()
        .route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = Arc::clone(&store);
                async move {
                    store.lock().unwrap().push((headers, body));
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/forged.cer",
            get(move || async move { forged_der.clone() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, captured)
}

/// POSTs `body` to `url` with the captured headers (all but the hop-by-hop ones); the status.
pub async fn post_to(url: &str, headers: &HeaderMap, body: impl Into<reqwest::Body>) -> u16 {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        request = request.header(name, value.to_str().unwrap());
    }
    request.send().await.unwrap().status().as_u16()
}
