//! The partner's webhook endpoint, as the notifier sees it: it accepts every POST and records
//! its `webhook-id` and body, so the end of the run can tell which notifications arrived and
//! whether a duplicate carried the id of the first.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Received {
    pub partner: String,
    pub webhook_id: String,
    pub body: String,
}

#[derive(Debug, Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves on `port` until `stop`.
    pub async fn serve(&self, port: u16, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/hooks/{partner}", post(record))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(addr)
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn record(
    State(receiver): State<Receiver>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    receiver
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            partner,
            webhook_id,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    StatusCode::NO_CONTENT
}
