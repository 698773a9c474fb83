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

/// How the floor's statements carry their rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `INSERT … VALUES ($1, …), ($23, …), …`: one bind per value.
    Values,
    /// `INSERT … SELECT * FROM UNNEST($1::text[], …)`: one array bind per column.
    Unnest,
}

/// The floor of one ingest path, measured in both statement forms, with one writer and with as
/// many writers as the path has; the floor is the fastest of the four.
#[derive(Debug, Clone)]
pub struct RowsFloor {
    /// Alerts per second of the fastest variant.
    pub rate: f64,
    /// Every variant: (form, writers, alerts per second).
    pub variants: Vec<(Form, usize, f64)>,
}

impl RowsFloor {
    pub fn describe(&self) -> String {
        self.variants
            .iter()
            .map(|(form, writers, rate)| format!("{form:?}/{writers}w {rate:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One alert's rows, as the path writes them.
struct AlertRows {
    alert: palisade_contracts::alerts::v1::Alert,
    alert_type_key: String,
    detected_at: i64,
    created_at: i64,
    proto: Vec<u8>,
    raw: String,
    transition: palisade_contracts::alerts::v1::AlertTransition,
    message_id: String,
    envelope: Vec<u8>,
}

/// One page: one ingest transaction of the path.
struct Page {
    /// The webhook inbox row (webhook path): inbox id, partner, body digest, body.
    inbox: Option<(String, String, String, Vec<u8>)>,
    alerts: Vec<AlertRows>,
}

/// Raw batched INSERTs of exactly the rows the ingest path `path` persists, which the verdict
/// of the alerts workload is judged against (the "raw batched INSERT of the same rows";
/// see docs/ARCHITECTURE.md, Benchmarks).
///
/// The same rows: the benchmark's own items (same partners, same pages, same page size) through
/// the real normaliser and merge, so per alert the alert row (its columns, protobuf and raw
/// payload in `raw_graph` or `raw_fraud`), its history entry and its outbox event (the envelope
/// the path builds, the alert without history), and on the webhook path one inbox row per page
/// (the notification's body, already in its final, done state). Into alert-ingest's own schema
/// (its migrations: the same tables, constraints and indexes), in a database of its own on the
/// same server, one transaction per page as the path commits them.
///
/// Best effort, not a strawman: everything is built before the clock starts (no normalising,
/// no merging, no lock, no read of stored alerts, no publishing, no outbox delete), and it is
/// measured in both statement forms (multi-row VALUES and UNNEST of arrays, one statement per
/// table per page) with one writer and with `partners` writers (as many as the path has), on the native
/// Postgres driver; the fastest is the floor. Returns alerts per second.
pub async fn raw_batched_insert_ingest_rows(
    database_url: &str,
    path: crate::alerts::Path,
    alerts: usize,
    partners: usize,
) -> anyhow::Result<RowsFloor> {
    use palisade_alert_ingest::{model, store::AlertStore};
    use palisade_contracts::{alerts::v1::Alert, events::v1::AlertRaised};
    use prost::Message;

    use crate::alerts::{self, Path};

    let now = chrono::Utc::now().timestamp_millis();
    let ms = |t: &Option<palisade_contracts::time::Timestamp>| {
        t.as_ref().map(palisade_contracts::time::to_millis)
    };
    let partners = partners.max(1);
    let per_partner = alerts / partners;
    let mut pages: Vec<Vec<Page>> = Vec::with_capacity(partners);
    for p in 0..partners {
        let partner = alerts::partner_id(p);
        let mut own = Vec::new();
        for chunk in alerts::pages(path, per_partner) {
            let inbox = match path {
                Path::Polling => None,
                Path::Webhook => {
                    let (sha, body) = alerts::webhook_notification(p, chunk[0]);
                    Some((
                        uuid::Uuid::now_v7().to_string(),
                        partner.clone(),
                        sha,
                        body.into_bytes(),
                    ))
                }
            };
            let rows = path
                .items(p, &chunk, now)
                .into_iter()
                .map(|item| {
                    let obs = match path {
                        Path::Polling => model::from_graph(&partner, item),
                        Path::Webhook => model::from_fraud_event(&partner, item),
                    }
                    .map_err(anyhow::Error::msg)?;
                    let merged = model::merge(None, &obs, now);
                    let alert = merged.alert;
                    // Events carry the alert without its history, as the store sends them.
                    let envelope = palisade_queue::envelope(
                        "alert.raised",
                        &partner,
                        &AlertRaised {
                            alert: Some(Alert {
                                history: Vec::new(),
                                ..alert.clone()
                            }),
                        },
                    );
                    Ok(AlertRows {
                        alert_type_key: alert.alert_type.to_ascii_lowercase(),
                        detected_at: [ms(&alert.detected_at), ms(&alert.first_observed_at)]
                            .into_iter()
                            .flatten()
                            .find(|t| *t > 0)
                            .unwrap_or(now),
                        created_at: ms(&alert.created_at).filter(|t| *t > 0).unwrap_or(now),
                        proto: alert.encode_to_vec(),
                        raw: obs.raw,
                        transition: merged.transition.unwrap_or_default(),
                        message_id: envelope.message_id.clone(),
                        envelope: envelope.encode_to_vec(),
                        alert,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            own.push(Page {
                inbox,
                alerts: rows,
            });
        }
        pages.push(own);
    }
    let graph = matches!(path, Path::Polling);
    let pages = std::sync::Arc::new(pages);
    let total = pages
        .iter()
        .flatten()
        .map(|p| p.alerts.len())
        .sum::<usize>() as f64;

    let mut variants = Vec::new();
    for form in [Form::Values, Form::Unnest] {
        for concurrent in [1, partners] {
            // A fresh database each time, so every variant starts from empty tables.
            let scratch = crate::scratch::ScratchDatabase::create(database_url, "rows").await?;
            let db = palisade_storage::Database::connect(
                &palisade_storage::DatabaseSettings {
                    url: secrecy::SecretString::from(scratch.url.clone()),
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
            // The tables live in the service's schema, found through the search path as the
            // service does.
            let options =
                <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&scratch.url)?
                    .options([("search_path", "alerts")]);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(concurrent as u32)
                .min_connections(concurrent as u32)
                .connect_with(options)
                .await?;
            let start = std::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..concurrent {
                let (pool, pages) = (pool.clone(), std::sync::Arc::clone(&pages));
                tasks.spawn(async move {
                    // Writer `w` of `concurrent` takes every partner p with p % concurrent == w.
                    for own in pages.iter().skip(w).step_by(concurrent) {
                        for page in own {
                            insert_page(&pool, page, form, graph, now).await?;
                        }
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            variants.push((form, concurrent, total / start.elapsed().as_secs_f64()));
            pool.close().await;
            scratch.drop().await?;
            if concurrent == partners {
                break;
            }
        }
    }
    let rate = variants.iter().map(|v| v.2).fold(0.0, f64::max);
    Ok(RowsFloor { rate, variants })
}

/// One page of the floor in one transaction: the inbox row, then one statement per table.
async fn insert_page(
    pool: &sqlx::PgPool,
    page: &Page,
    form: Form,
    graph: bool,
    now: i64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if let Some((inbox_id, partner, sha, body)) = &page.inbox {
        sqlx::query(
            "INSERT INTO webhook_inbox (inbox_id, partner_tenant_id, body_sha256, event_name, body, received_at, \
             state, attempts, next_attempt_at, last_error) VALUES ($1, $2, $3, $4, $5, $6, 1, 1, $6, '')",
        )
        .bind(inbox_id)
        .bind(partner)
        .bind(sha)
        .bind(crate::alerts::WEBHOOK_EVENT)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let rows = &page.alerts;
    const ALERT_COLUMNS: &str = "alert_id, partner_tenant_id, fingerprint, status, severity, alert_type, \
        alert_type_key, customer_tenant_id, subscription_id, reseller_tenant_id, is_test, detected_at, \
        last_observed_at, resolved_at, write_back_state, enrich_state, enrich_after, alert_proto, raw_graph, \
        raw_fraud, created_at, updated_at";
    let ms = |t: &Option<palisade_contracts::time::Timestamp>| {
        t.as_ref().map(palisade_contracts::time::to_millis)
    };
    match form {
        Form::Values => {
            let mut alerts = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) "
            ));
            alerts.push_values(rows, |mut b, r| {
                let a = &r.alert;
                let (g, f) = raw_graph_fraud(graph, r);
                b.push_bind(&a.alert_id)
                    .push_bind(&a.partner_tenant_id)
                    .push_bind(&a.fingerprint)
                    .push_bind(i64::from(a.status))
                    .push_bind(i64::from(a.severity))
                    .push_bind(&a.alert_type)
                    .push_bind(&r.alert_type_key)
                    .push_bind(&a.customer_tenant_id)
                    .push_bind(&a.subscription_id)
                    .push_bind(&a.reseller_tenant_id)
                    .push_bind(i64::from(a.is_test))
                    .push_bind(r.detected_at)
                    .push_bind(ms(&a.last_observed_at).unwrap_or(0))
                    .push_bind(ms(&a.resolved_at))
                    .push_bind(i64::from(a.write_back_state))
                    .push_bind(0_i64)
                    .push_bind(now)
                    .push_bind(&r.proto)
                    .push_bind(g)
                    .push_bind(f)
                    .push_bind(r.created_at)
                    .push_bind(now);
            });
            alerts.build().execute(&mut *tx).await?;
            let mut history = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO alert_transitions (alert_id, partner_tenant_id, from_status, to_status, actor, reason, at) ",
            );
            history.push_values(rows, |mut b, r| {
                let t = &r.transition;
                b.push_bind(&r.alert.alert_id)
                    .push_bind(&r.alert.partner_tenant_id)
                    .push_bind(i64::from(t.from_status))
                    .push_bind(i64::from(t.to_status))
                    .push_bind(&t.actor)
                    .push_bind(&t.reason)
                    .push_bind(ms(&t.at).unwrap_or(0));
            });
            history.build().execute(&mut *tx).await?;
            let mut outbox = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO outbox (topic, message_id, envelope, created_at) ",
            );
            outbox.push_values(rows, |mut b, r| {
                b.push_bind("alerts")
                    .push_bind(&r.message_id)
                    .push_bind(&r.envelope)
                    .push_bind(now);
            });
            outbox.build().execute(&mut *tx).await?;
        }
        Form::Unnest => {
            let text = |f: fn(&AlertRows) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            let int = |f: &dyn Fn(&AlertRows) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
            let n = rows.len();
            sqlx::query(&format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
                 $4::int8[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], \
                 $12::int8[], $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::bytea[], \
                 $19::text[], $20::text[], $21::int8[], $22::int8[])"
            ))
            .bind(text(|r| &r.alert.alert_id))
            .bind(text(|r| &r.alert.partner_tenant_id))
            .bind(text(|r| &r.alert.fingerprint))
            .bind(int(&|r| i64::from(r.alert.status)))
            .bind(int(&|r| i64::from(r.alert.severity)))
            .bind(text(|r| &r.alert.alert_type))
            .bind(text(|r| &r.alert_type_key))
            .bind(text(|r| &r.alert.customer_tenant_id))
            .bind(text(|r| &r.alert.subscription_id))
            .bind(text(|r| &r.alert.reseller_tenant_id))
            .bind(int(&|r| i64::from(r.alert.is_test)))
            .bind(int(&|r| r.detected_at))
            .bind(int(&|r| ms(&r.alert.last_observed_at).unwrap_or(0)))
            .bind(rows.iter().map(|r| ms(&r.alert.resolved_at)).collect::<Vec<_>>())
            .bind(int(&|r| i64::from(r.alert.write_back_state)))
            .bind(vec![0_i64; n])
            .bind(vec![now; n])
            .bind(rows.iter().map(|r| r.proto.as_slice()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| raw_graph_fraud(graph, r).0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| raw_graph_fraud(graph, r).1).collect::<Vec<_>>())
            .bind(int(&|r| r.created_at))
            .bind(vec![now; n])
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO alert_transitions (alert_id, partner_tenant_id, from_status, to_status, actor, reason, at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::int8[])",
            )
            .bind(text(|r| &r.alert.alert_id))
            .bind(text(|r| &r.alert.partner_tenant_id))
            .bind(int(&|r| i64::from(r.transition.from_status)))
            .bind(int(&|r| i64::from(r.transition.to_status)))
            .bind(text(|r| &r.transition.actor))
            .bind(text(|r| &r.transition.reason))
            .bind(int(&|r| ms(&r.transition.at).unwrap_or(0)))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO outbox (topic, message_id, envelope, created_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::int8[])",
            )
            .bind(vec!["alerts"; n])
            .bind(text(|r| &r.message_id))
            .bind(
                rows.iter()
                    .map(|r| r.envelope.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(vec![now; n])
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The raw payload goes to `raw_graph` on the polling path and to `raw_fraud` on the webhook's.
fn raw_graph_fraud(graph: bool, r: &AlertRows) -> (Option<&str>, Option<&str>) {
    match graph {
        true => (Some(r.raw.as_str()), None),
        false => (None, Some(r.raw.as_str())),
    }
}
