//! One suite, both implementations: every case runs against Redis Streams (real Redis, a
//! private key prefix) and the in-process queue.

use std::{collections::HashSet, sync::Arc, time::Duration};

use palisade_contracts::events::v1::Envelope;
use palisade_queue::{Backend, InProcessQueue, Queue, QueueSettings, RedisQueue, envelope};
use palisade_testkit::TestRedis;

struct Harness {
    queue: Arc<dyn Queue>,
    redis: Option<TestRedis>,
}

fn settings(prefix: &str) -> QueueSettings {
    QueueSettings {
        key_prefix: prefix.trim_end_matches(':').to_owned(),
        visibility_timeout: Duration::from_millis(300),
        max_receives: 3,
        ..QueueSettings::default()
    }
}

async fn in_process() -> Harness {
    Harness {
        queue: Arc::new(InProcessQueue::new(&settings("test"))),
        redis: None,
    }
}

async fn redis() -> Harness {
    let redis = TestRedis::create().await;
    let settings = QueueSettings {
        backend: Backend::Redis,
        redis_url: Some(redis.url().to_owned().into()),
        ..settings(redis.prefix())
    };
    Harness {
        queue: Arc::new(RedisQueue::connect(&settings).await.unwrap()),
        redis: Some(redis),
    }
}

macro_rules! conformance {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(super::in_process().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::redis().await).await;
            }
        }
    };
}

fn event(n: u32) -> Envelope {
    envelope(
        "alert.raised",
        "partner-1",
        &palisade_contracts::events::v1::AlertWriteBack {
            partner_tenant_id: "partner-1".into(),
            alert_id: format!("a-{n}"),
        },
    )
}

fn alert_id(e: &Envelope) -> String {
    <palisade_contracts::events::v1::AlertWriteBack as prost::Message>::decode(e.payload.as_slice())
        .unwrap()
        .alert_id
}

const WAIT: Duration = Duration::from_secs(3);

async fn delivers_in_order_and_acks(h: Harness) {
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    for n in 0..3 {
        h.queue.publish("alerts", &event(n)).await.unwrap();
    }
    for n in 0..3 {
        let d = c.next(WAIT).await.unwrap().expect("a message");
        assert_eq!(alert_id(&d.envelope), format!("a-{n}"));
        assert_eq!(d.envelope.attempt, 1);
        c.ack(&d).await.unwrap();
    }
    assert!(
        c.next(Duration::from_millis(600)).await.unwrap().is_none(),
        "acked messages never come back"
    );
}
conformance!(delivers_in_order_and_acks);

async fn a_published_batch_arrives_whole_per_topic(h: Harness) {
    let mut alerts = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    let mut other = h.queue.consumer("other", "notifier", "c1").await.unwrap();
    let events: Vec<Envelope> = (0..5).map(event).collect();
    let batch: Vec<(&str, &Envelope)> = events
        .iter()
        .enumerate()
        .map(|(n, e)| (if n == 2 { "other" } else { "alerts" }, e))
        .collect();
    h.queue.publish_batch(&batch).await.unwrap();
    h.queue.publish_batch(&[]).await.unwrap();
    let got = alerts.next_batch(10, WAIT).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|d| alert_id(&d.envelope))
            .collect::<Vec<_>>(),
        ["a-0", "a-1", "a-3", "a-4"]
    );
    let got_other = other.next_batch(10, WAIT).await.unwrap();
    assert_eq!(
        got_other
            .iter()
            .map(|d| alert_id(&d.envelope))
            .collect::<Vec<_>>(),
        ["a-2"]
    );
    assert_eq!(got[0].envelope.attempt, 1);
}
conformance!(a_published_batch_arrives_whole_per_topic);

async fn batches_take_what_is_waiting_and_ack_together(h: Harness) {
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    for n in 0..7 {
        h.queue.publish("alerts", &event(n)).await.unwrap();
    }
    let first = c.next_batch(5, WAIT).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|d| alert_id(&d.envelope))
            .collect::<Vec<_>>(),
        ["a-0", "a-1", "a-2", "a-3", "a-4"]
    );
    let rest = c.next_batch(5, WAIT).await.unwrap();
    assert_eq!(
        rest.len(),
        2,
        "takes what is there, does not wait for a full batch"
    );
    c.ack_many(&first).await.unwrap();
    c.ack_many(&rest).await.unwrap();
    assert!(
        c.next_batch(5, Duration::from_millis(800))
            .await
            .unwrap()
            .is_empty(),
        "all acknowledged"
    );
    assert_eq!(
        h.queue.stats("alerts", "notifier").await.unwrap().pending,
        0
    );
}
conformance!(batches_take_what_is_waiting_and_ack_together);

async fn a_killed_consumer_s_messages_are_redelivered(h: Harness) {
    h.queue.publish("alerts", &event(7)).await.unwrap();
    {
        let mut doomed = h
            .queue
            .consumer("alerts", "notifier", "doomed")
            .await
            .unwrap();
        let held = doomed.next(WAIT).await.unwrap().unwrap();
        assert_eq!(held.envelope.attempt, 1);
        // Dropped without ack: the process died holding it.
    }
    let mut survivor = h
        .queue
        .consumer("alerts", "notifier", "survivor")
        .await
        .unwrap();
    let again = survivor
        .next(WAIT)
        .await
        .unwrap()
        .expect("redelivered after the visibility timeout");
    assert_eq!(alert_id(&again.envelope), "a-7");
    assert_eq!(again.envelope.attempt, 2);
    survivor.ack(&again).await.unwrap();
    assert!(
        survivor
            .next(Duration::from_millis(800))
            .await
            .unwrap()
            .is_none()
    );
}
conformance!(a_killed_consumer_s_messages_are_redelivered);

async fn dead_letters_after_max_receives_then_redrive(h: Harness) {
    h.queue.publish("alerts", &event(9)).await.unwrap();
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    for attempt in 1..=3 {
        let d = c.next(WAIT).await.unwrap().expect("delivery");
        assert_eq!(d.envelope.attempt, attempt);
        // Never acked: each receive times out.
    }
    assert!(
        c.next(Duration::from_millis(900)).await.unwrap().is_none(),
        "dead-lettered, not redelivered"
    );
    let dead = h
        .queue
        .dead_letters("alerts", "notifier", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("3 receives"), "{}", dead[0].reason);
    assert_eq!(
        h.queue
            .stats("alerts", "notifier")
            .await
            .unwrap()
            .dead_letters,
        1
    );
    assert_eq!(h.queue.redrive("alerts", "notifier").await.unwrap(), 1);
    let back = c.next(WAIT).await.unwrap().expect("redriven");
    assert_eq!(alert_id(&back.envelope), "a-9");
    assert_eq!(back.envelope.attempt, 1);
    c.ack(&back).await.unwrap();
    assert!(
        h.queue
            .dead_letters("alerts", "notifier", 10)
            .await
            .unwrap()
            .is_empty()
    );
}
conformance!(dead_letters_after_max_receives_then_redrive);

async fn delayed_messages_wait_their_turn(h: Harness) {
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    h.queue
        .publish_delayed("alerts", &event(1), Duration::from_millis(700))
        .await
        .unwrap();
    assert!(
        c.next(Duration::from_millis(300)).await.unwrap().is_none(),
        "not before its time"
    );
    let d = c.next(WAIT).await.unwrap().expect("delivered once due");
    assert_eq!(alert_id(&d.envelope), "a-1");
    c.ack(&d).await.unwrap();
}
conformance!(delayed_messages_wait_their_turn);

async fn nack_retries_only_for_its_group(h: Harness) {
    let mut notifier = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    let mut compliance = h
        .queue
        .consumer("alerts", "compliance", "c1")
        .await
        .unwrap();
    h.queue.publish("alerts", &event(3)).await.unwrap();
    let d = notifier.next(WAIT).await.unwrap().unwrap();
    notifier.nack(&d, Duration::from_millis(200)).await.unwrap();
    let retried = notifier.next(WAIT).await.unwrap().expect("retried");
    assert_eq!(retried.envelope.attempt, 2);
    notifier.ack(&retried).await.unwrap();
    let once = compliance.next(WAIT).await.unwrap().unwrap();
    compliance.ack(&once).await.unwrap();
    assert!(
        compliance
            .next(Duration::from_millis(600))
            .await
            .unwrap()
            .is_none(),
        "the other group sees it once"
    );
}
conformance!(nack_retries_only_for_its_group);

async fn consumers_share_a_group_and_groups_each_see_everything(h: Harness) {
    let total = 40;
    let mut handles = Vec::new();
    for worker in 0..3 {
        let queue = h.queue.clone();
        handles.push(tokio::spawn(async move {
            let mut c = queue
                .consumer("alerts", "notifier", &format!("w{worker}"))
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Some(d) = c.next(Duration::from_millis(1500)).await.unwrap() {
                seen.push(alert_id(&d.envelope));
                c.ack(&d).await.unwrap();
            }
            seen
        }));
    }
    let mut other = h
        .queue
        .consumer("alerts", "compliance", "solo")
        .await
        .unwrap();
    for n in 0..total {
        h.queue.publish("alerts", &event(n)).await.unwrap();
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    assert_eq!(
        all.len(),
        total as usize,
        "each message handled once within the group"
    );
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), total as usize);
    let mut other_seen = 0;
    while let Some(d) = other.next(Duration::from_millis(800)).await.unwrap() {
        other.ack(&d).await.unwrap();
        other_seen += 1;
    }
    assert_eq!(other_seen, total);
}
conformance!(consumers_share_a_group_and_groups_each_see_everything);

/// The numbers the platform sampler exports: depth, pending, lag and dead letters per group.
async fn stats_count_depth_pending_lag_and_dead_letters(h: Harness) {
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    for n in 0..3 {
        h.queue.publish("alerts", &event(n)).await.unwrap();
    }
    let stats = h.queue.stats("alerts", "notifier").await.unwrap();
    assert_eq!(
        (stats.depth, stats.pending, stats.lag, stats.dead_letters),
        (3, 0, 3, 0)
    );
    let held = c.next(WAIT).await.unwrap().expect("a message");
    let stats = h.queue.stats("alerts", "notifier").await.unwrap();
    assert_eq!(
        (stats.depth, stats.pending, stats.lag),
        (3, 1, 2),
        "{stats:?}"
    );
    c.dead_letter(&held, "poison").await.unwrap();
    let stats = h.queue.stats("alerts", "notifier").await.unwrap();
    assert_eq!(
        (stats.depth, stats.pending, stats.dead_letters),
        (3, 0, 1),
        "{stats:?}"
    );
    // Another group's view of the same topic is its own.
    h.queue
        .consumer("alerts", "compliance", "c1")
        .await
        .unwrap();
    let other = h.queue.stats("alerts", "compliance").await.unwrap();
    assert_eq!((other.depth, other.pending, other.dead_letters), (3, 0, 0));
}
conformance!(stats_count_depth_pending_lag_and_dead_letters);

/// The sampler renders the group's numbers on `/metrics` under the names the dashboard reads.
async fn sampler_exports_queue_gauges(h: Harness) {
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    for n in 0..4 {
        h.queue.publish("alerts", &event(n)).await.unwrap();
    }
    let held = c.next(WAIT).await.unwrap().expect("a message");
    c.dead_letter(&held, "poison").await.unwrap();
    let _pending = c.next(WAIT).await.unwrap().expect("a message");
    let metrics = palisade_telemetry::Metrics::new();
    let sampler = palisade_queue::PlatformSampler::register(&metrics, "notifier")
        .watch(&h.queue, "alerts", "notifier");
    sampler.sample_once().await;
    let text = metrics.render();
    for line in [
        "palisade_queue_depth{topic=\"alerts\",group=\"notifier\"} 4",
        "palisade_queue_pending{topic=\"alerts\",group=\"notifier\"} 1",
        "palisade_queue_lag{topic=\"alerts\",group=\"notifier\"} 2",
        "palisade_queue_dead_letters{topic=\"alerts\",group=\"notifier\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
conformance!(sampler_exports_queue_gauges);

#[tokio::test]
async fn redis_heals_after_its_groups_vanish() {
    let h = redis().await;
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    // A restart without persistence, or a FLUSHALL, removes streams and groups.
    let redis = h.redis.as_ref().unwrap();
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}*", redis.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the queue's keys carry the test prefix in their hash tag"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(c.next(Duration::from_millis(300)).await.unwrap().is_none());
    h.queue.publish("alerts", &event(5)).await.unwrap();
    let d = c
        .next(WAIT)
        .await
        .unwrap()
        .expect("the consumer recreated its group and carried on");
    assert_eq!(alert_id(&d.envelope), "a-5");
}

#[tokio::test]
async fn redis_dead_letters_undecodable_entries_without_crashing() {
    let h = redis().await;
    let mut c = h.queue.consumer("alerts", "notifier", "c1").await.unwrap();
    let redis = h.redis.as_ref().unwrap();
    let mut conn = redis.connection().await;
    let stream = format!("{{{}:alerts}}:stream", redis.prefix().trim_end_matches(':'));
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("e")
        .arg(b"\xff\x00garbage".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    h.queue.publish("alerts", &event(1)).await.unwrap();
    let d = c
        .next(WAIT)
        .await
        .unwrap()
        .expect("the good message still arrives");
    assert_eq!(alert_id(&d.envelope), "a-1");
    let dead = h
        .queue
        .dead_letters("alerts", "notifier", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
}

/// A throwaway Redis configured to evict keys under memory pressure: the queue must refuse it.
#[tokio::test]
async fn redis_refuses_an_evicting_policy() {
    let Ok(server) = which_redis_server() else {
        eprintln!("redis-server not installed; the policy check is covered by unit tests");
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "allkeys-lru",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let settings = QueueSettings {
        backend: Backend::Redis,
        redis_url: Some(url.into()),
        ..settings("evict")
    };
    let mut outcome = None;
    for _ in 0..50 {
        match RedisQueue::connect(&settings).await {
            Err(palisade_queue::QueueError::Redis(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => {
                outcome = Some(other);
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Some(Err(palisade_queue::QueueError::UnsafeEvictionPolicy(policy))) => {
            assert_eq!(policy, "allkeys-lru")
        }
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|r| r.map(|_| "connected"))
        ),
    }
}

fn which_redis_server() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.exists())
        .ok_or(())
}
