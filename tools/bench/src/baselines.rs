//! The baselines each workload is compared with, measured in the same run on the same machine,
//! because this machine is shared and noisy: only ratios mean anything.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::{
    echo::{
        EchoRequest, EchoResponse, echo_service_client::EchoServiceClient, echo_service_server,
    },
    loadgen::{self, Sample},
};

/// Echoes the request, or answers with a fixed reply (copied per call, as a handler copies a
/// cached value) to match a workload's response size.
#[derive(Default)]
struct Echo {
    reply: Option<String>,
}

#[tonic::async_trait]
impl echo_service_server::EchoService for Echo {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
        let payload = match &self.reply {
            Some(reply) => reply.clone(),
            None => request.into_inner().payload,
        };
        Ok(tonic::Response::new(EchoResponse { payload }))
    }
}

/// Starts a bare tonic echo server on loopback; `reply_len` > 0 fixes the reply's size.
pub async fn start_echo(reply_len: usize) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = Echo {
        reply: (reply_len > 0).then(|| "x".repeat(reply_len)),
    };
    tokio::spawn(
        Server::builder()
            .add_service(echo_service_server::EchoServiceServer::new(echo))
            .serve_with_incoming(tokio_stream_adapter(listener)),
    );
    Ok(addr)
}

fn tokio_stream_adapter(
    listener: TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// Unary echo calls with the shared load generator: (max throughput, latency at half of it).
/// The request carries 64 bytes; the reply echoes them, or is `reply_len` bytes when > 0.
pub async fn grpc_echo(duration: Duration, reply_len: usize) -> anyhow::Result<(Sample, Sample)> {
    Ok(loadgen::max_then_half(duration, echo_op(reply_len).await?).await)
}

/// One echo call against a fresh echo server, as a load generator operation.
pub async fn echo_op(
    reply_len: usize,
) -> anyhow::Result<
    impl Fn(u64) -> futures::future::BoxFuture<'static, anyhow::Result<()>>
    + Send
    + Sync
    + Clone
    + 'static,
> {
    let addr = start_echo(reply_len).await?;
    let channel = crate::loadgen::grpc_channel(addr).await?;
    Ok(move |_i: u64| {
        let mut client = EchoServiceClient::new(channel.clone());
        let op: futures::future::BoxFuture<'static, anyhow::Result<()>> = Box::pin(async move {
            client
                .echo(EchoRequest {
                    payload: "x".repeat(64),
                })
                .await?;
            Ok(())
        });
        op
    })
}

/// Raw batched INSERTs of alert-sized rows: the ceiling for any ingest path into Postgres.
pub async fn raw_batched_insert(
    database_url: &str,
    rows: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    pool.execute(
        "DROP TABLE IF EXISTS bench_raw_alerts; \
         CREATE TABLE bench_raw_alerts (alert_id TEXT PRIMARY KEY, partner_tenant_id TEXT NOT NULL, \
         fingerprint TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL)",
    )
    .await?;
    let payload = "x".repeat(1500);
    let start = std::time::Instant::now();
    for chunk_start in (0..rows).step_by(batch) {
        let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO bench_raw_alerts (alert_id, partner_tenant_id, fingerprint, payload, created_at) ",
        );
        builder.push_values(chunk_start..(chunk_start + batch).min(rows), |mut b, i| {
            b.push_bind(format!("a-{i}"))
                .push_bind("partner")
                .push_bind(format!("f-{i}"))
                .push_bind(payload.clone())
                .push_bind(i as i64);
        });
        builder.build().execute(&pool).await?;
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    pool.execute("DROP TABLE bench_raw_alerts").await?;
    pool.close().await;
    Ok(rate)
}

/// Raw XADD then XREADGROUP + XACK of `messages` envelope-sized entries, pipelined.
pub async fn raw_streams(redis_url: &str, messages: usize) -> anyhow::Result<(f64, f64)> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = format!("bench:{{raw}}:{}", uuid::Uuid::new_v4().simple());
    let body = vec![b'x'; 512];
    let start = std::time::Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("m")
                .arg(&body)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let produce_rate = messages as f64 / start.elapsed().as_secs_f64();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let start = std::time::Instant::now();
    let mut consumed = 0;
    while consumed < messages {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(500)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = reply
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|i| i.id.clone()))
            .collect();
        if ids.is_empty() {
            break;
        }
        consumed += ids.len();
        let _: i64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
    }
    let consume_rate = consumed as f64 / start.elapsed().as_secs_f64();
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok((produce_rate, consume_rate))
}

/// Raw batched INSERTs of exactly the rows the ingest path writes per alert, into alert-ingest's
/// own schema (its migrations, so the same indexes): the alert row (its columns, protobuf and raw
/// payload), its history entry and its outbox event, one transaction of three 500-row
/// statements per page. The rows are built from the benchmark's own Graph items before the
/// clock starts, so this is the storage floor of the path, without normalisation, merging or
/// publishing. Returns alerts per second.
pub async fn raw_batched_insert_ingest_rows(
    database_url: &str,
    alerts: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    use palisade_alert_ingest::{model, store::AlertStore};
    use palisade_contracts::events::v1::AlertRaised;
    use prost::Message;

    let scratch = crate::scratch::ScratchDatabase::create(database_url, "rows").await?;
    let url = scratch.url.clone();
    let db = palisade_storage::Database::connect(
        &palisade_storage::DatabaseSettings {
            url: secrecy::SecretString::from(url.clone()),
            max_connections: 1,
            ..Default::default()
        },
        "alerts",
    )
    .await?;
    palisade_alert_ingest::store::SqlStore::new(db.clone())
        .migrate()
        .await?;
    db.close().await;

    struct Rows {
        alert: palisade_contracts::alerts::v1::Alert,
        proto: Vec<u8>,
        raw: String,
        transition: palisade_contracts::alerts::v1::AlertTransition,
        message_id: String,
        envelope: Vec<u8>,
    }
    let now = chrono::Utc::now().timestamp_millis();
    let rows: Vec<Rows> = (0..alerts)
        .map(|n| {
            let partner = format!("partner-{}", n % 8);
            let obs = model::from_graph(&partner, crate::alerts::graph_item(n % 8, n, now))
                .map_err(anyhow::Error::msg)?;
            let merged = model::merge(None, &obs, now);
            let alert = merged.alert;
            let envelope = palisade_queue::envelope(
                "alert.raised",
                &partner,
                &AlertRaised {
                    alert: Some(alert.clone()),
                },
            );
            Ok(Rows {
                proto: alert.encode_to_vec(),
                raw: obs.raw,
                transition: merged.transition.unwrap_or_default(),
                message_id: envelope.message_id.clone(),
                envelope: envelope.encode_to_vec(),
                alert,
            })
        })
        .collect::<anyhow::Result<_>>()?;

    // The tables live in the service's schema, found through the search path as the service does.
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)?
        .options([("search_path", "alerts")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ms = |t: &Option<palisade_contracts::time::Timestamp>| {
        t.as_ref()
            .map(palisade_contracts::time::to_millis)
            .unwrap_or(now)
    };
    let start = std::time::Instant::now();
    for page in rows.chunks(batch) {
        let mut tx = pool.begin().await?;
        let mut alerts_insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO alerts (alert_id, partner_tenant_id, fingerprint, status, severity, alert_type, \
             alert_type_key, customer_tenant_id, subscription_id, reseller_tenant_id, is_test, detected_at, \
             last_observed_at, resolved_at, write_back_state, enrich_state, enrich_after, alert_proto, raw_graph, \
             raw_fraud, created_at, updated_at) ",
        );
        alerts_insert.push_values(page, |mut b, r| {
            let a = &r.alert;
            b.push_bind(&a.alert_id)
                .push_bind(&a.partner_tenant_id)
                .push_bind(&a.fingerprint)
                .push_bind(i64::from(a.status))
                .push_bind(i64::from(a.severity))
                .push_bind(&a.alert_type)
                .push_bind(a.alert_type.to_ascii_lowercase())
                .push_bind(&a.customer_tenant_id)
                .push_bind(&a.subscription_id)
                .push_bind(&a.reseller_tenant_id)
                .push_bind(i64::from(a.is_test))
                .push_bind(ms(&a.detected_at))
                .push_bind(ms(&a.last_observed_at))
                .push_bind(None::<i64>)
                .push_bind(i64::from(a.write_back_state))
                .push_bind(0_i64)
                .push_bind(now)
                .push_bind(&r.proto)
                .push_bind(&r.raw)
                .push_bind(None::<String>)
                .push_bind(now)
                .push_bind(now);
        });
        alerts_insert.build().execute(&mut *tx).await?;
        let mut history = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO alert_transitions (alert_id, partner_tenant_id, from_status, to_status, actor, reason, at) ",
        );
        history.push_values(page, |mut b, r| {
            let t = &r.transition;
            b.push_bind(&r.alert.alert_id)
                .push_bind(&r.alert.partner_tenant_id)
                .push_bind(i64::from(t.from_status))
                .push_bind(i64::from(t.to_status))
                .push_bind(&t.actor)
                .push_bind(&t.reason)
                .push_bind(ms(&t.at));
        });
        history.build().execute(&mut *tx).await?;
        let mut outbox = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO outbox (topic, message_id, envelope, created_at) ",
        );
        outbox.push_values(page, |mut b, r| {
            b.push_bind("alerts")
                .push_bind(&r.message_id)
                .push_bind(&r.envelope)
                .push_bind(now);
        });
        outbox.build().execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let rate = alerts as f64 / start.elapsed().as_secs_f64();
    pool.close().await;
    scratch.drop().await?;
    Ok(rate)
}
