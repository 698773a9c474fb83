//! Workloads on the platform itself: the server stack every RPC crosses, and the queue every
//! event crosses. Their baselines are the bare tonic echo and raw Redis stream commands.

use std::{sync::Arc, time::Duration};

use palisade_auth::{AuthStore, Authenticator, BearerInterceptor, bootstrap_admin};
use palisade_contracts::auth::v1::{
    WhoAmIRequest, credential_service_client::CredentialServiceClient,
};
use palisade_queue::{Backend, Queue, QueueSettings, RedisQueue};
use palisade_server::{Listeners, ServeOptions, ServerSettings, always_ready, serve};
use palisade_storage::DatabaseSettings;
use tokio_util::sync::CancellationToken;

use crate::loadgen::{self, Sample};

/// `WhoAmI` through the full stack: trace + metrics, load shed, concurrency limit, credential
/// check from the cache, then the handler (answered from the same cache). A cached
/// `GetAccessToken` crosses the same stack.
pub async fn authenticated_unary(
    database_url: &str,
    duration: Duration,
) -> anyhow::Result<(Sample, Sample)> {
    let shutdown = CancellationToken::new();
    let database = DatabaseSettings {
        url: database_url.to_owned().into(),
        ..Default::default()
    };
    let store = AuthStore::open(&database).await?;
    let secret = bootstrap_admin(&store, "bench").await?;
    let authenticator =
        Authenticator::start(store, Duration::from_secs(1), shutdown.clone()).await?;
    let settings = ServerSettings::ephemeral();
    let listeners = Listeners::bind(&settings).await?;
    let addr = listeners.grpc.local_addr()?;
    tokio::spawn(serve(ServeOptions {
        service_name: "bench",
        health_names: vec![],
        settings,
        listeners,
        routes: tonic::service::RoutesBuilder::default().routes(),
        authenticator: Arc::clone(&authenticator),
        metrics: palisade_telemetry::Metrics::new(),
        readiness: always_ready(),
        shutdown: shutdown.clone(),
    }));
    let channel = crate::loadgen::grpc_channel(addr).await?;
    let secret = secrecy::SecretString::from(secret);
    // One interceptor, as a real client keeps one (see tokens.rs).
    let interceptor = BearerInterceptor::new(Some(&secret));
    let op = move |_i: u64| {
        let mut client =
            CredentialServiceClient::with_interceptor(channel.clone(), interceptor.clone());
        async move {
            client.who_am_i(WhoAmIRequest {}).await?;
            Ok(())
        }
    };
    let result = loadgen::max_then_half(duration, op).await;
    shutdown.cancel();
    Ok(result)
}

/// Events through `palisade-queue` on Redis Streams: publish `messages`, then consume them in
/// batches and acknowledge each batch at once. Returns (publish/s, consume/s).
pub async fn queue_round_trip(redis_url: &str, messages: usize) -> anyhow::Result<(f64, f64)> {
    let settings = QueueSettings {
        backend: Backend::Redis,
        redis_url: Some(redis_url.to_owned().into()),
        key_prefix: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        ..QueueSettings::default()
    };
    let queue = RedisQueue::connect(&settings).await?;
    let mut consumer = queue.consumer("bench", "g", "c").await?;
    let event = palisade_queue::envelope("bench.event", "partner", &WhoAmIRequest {});
    let start = std::time::Instant::now();
    for _ in 0..messages {
        queue.publish("bench", &event).await?;
    }
    let publish_rate = messages as f64 / start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let mut consumed = 0;
    // As the notifier consumes: whatever is waiting, up to 500, acknowledged together.
    while consumed < messages {
        let batch = consumer.next_batch(500, Duration::from_secs(2)).await?;
        if batch.is_empty() {
            break;
        }
        consumer.ack_many(&batch).await?;
        consumed += batch.len();
    }
    let consume_rate = consumed as f64 / start.elapsed().as_secs_f64();
    // Leave nothing behind on a shared Redis.
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}:*", settings.key_prefix))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
    }
    Ok((publish_rate, consume_rate))
}
