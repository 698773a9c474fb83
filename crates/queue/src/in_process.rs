//! The embedded queue: the same semantics as Redis Streams, in memory, for the single-process
//! local run and for tests of code that does not care which backend it gets.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use palisade_contracts::events::v1::Envelope;
use tokio::sync::Notify;

use crate::{Consumer, DeadLetter, Delivery, Queue, QueueSettings, QueueStats, Result};

#[derive(Default)]
struct Group {
    ready: VecDeque<(u64, Envelope)>,
    /// delivery id -> (envelope, visible again at)
    pending: HashMap<u64, (Envelope, Instant)>,
    dead: Vec<(u64, String, Envelope)>,
}

#[derive(Default)]
struct Topic {
    /// Retained history, so a group created later starts from the beginning, as in Redis.
    history: VecDeque<(u64, Envelope)>,
    groups: HashMap<String, Group>,
    /// due -> envelopes
    delayed: BTreeMap<(Instant, u64), Envelope>,
}

struct State {
    topics: HashMap<String, Topic>,
    next_id: u64,
}

/// The embedded queue; clones share it.
#[derive(Clone)]
pub struct InProcessQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    visibility_timeout: Duration,
    max_receives: u32,
    retention: usize,
}

impl std::fmt::Debug for InProcessQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessQueue").finish_non_exhaustive()
    }
}

impl InProcessQueue {
    pub fn new(settings: &QueueSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    topics: HashMap::new(),
                    next_id: 1,
                }),
                notify: Notify::new(),
                visibility_timeout: settings.visibility_timeout,
                max_receives: settings.max_receives.max(1),
                retention: settings.max_stream_length.max(1),
            }),
        }
    }

    /// One queue per key prefix per process.
    pub fn shared(settings: &QueueSettings) -> Arc<dyn Queue> {
        static QUEUES: OnceLock<Mutex<HashMap<String, InProcessQueue>>> = OnceLock::new();
        let mut queues = QUEUES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::new(
            queues
                .entry(settings.key_prefix.clone())
                .or_insert_with(|| Self::new(settings))
                .clone(),
        )
    }
}

impl Inner {
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn append(&self, state: &mut State, topic: &str, envelope: Envelope) {
        let id = state.next_id;
        state.next_id += 1;
        let t = state.topics.entry(topic.to_owned()).or_default();
        t.history.push_back((id, envelope.clone()));
        while t.history.len() > self.retention {
            t.history.pop_front();
        }
        for group in t.groups.values_mut() {
            group.ready.push_back((id, envelope.clone()));
        }
    }

    /// Moves due delayed messages and expired pending ones back to ready (or to the DLQ).
    fn sweep(&self, state: &mut State, topic: &str) {
        let now = Instant::now();
        let due: Vec<Envelope> = {
            let Some(t) = state.topics.get_mut(topic) else {
                return;
            };
            let keys: Vec<(Instant, u64)> = t
                .delayed
                .range(..=(now, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| t.delayed.remove(&k))
                .collect()
        };
        for envelope in due {
            self.append(state, topic, envelope);
        }
        let max = self.max_receives;
        let Some(t) = state.topics.get_mut(topic) else {
            return;
        };
        for group in t.groups.values_mut() {
            let expired: Vec<u64> = group
                .pending
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some((mut envelope, _)) = group.pending.remove(&id) {
                    if envelope.attempt >= max {
                        group.dead.push((
                            id,
                            format!("not acknowledged after {max} receives"),
                            envelope,
                        ));
                    } else {
                        envelope.attempt += 1;
                        group.ready.push_front((id, envelope));
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Queue for InProcessQueue {
    async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<()> {
        self.inner
            .with_state(|s| self.inner.append(s, topic, envelope.clone()));
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn publish_delayed(
        &self,
        topic: &str,
        envelope: &Envelope,
        delay: Duration,
    ) -> Result<()> {
        self.inner.with_state(|s| {
            let id = s.next_id;
            s.next_id += 1;
            s.topics
                .entry(topic.to_owned())
                .or_default()
                .delayed
                .insert((Instant::now() + delay, id), envelope.clone());
        });
        Ok(())
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        _consumer: &str,
    ) -> Result<Box<dyn Consumer>> {
        self.inner.with_state(|s| {
            let t = s.topics.entry(topic.to_owned()).or_default();
            if !t.groups.contains_key(group) {
                let g = Group {
                    ready: t.history.iter().cloned().collect(),
                    ..Group::default()
                };
                t.groups.insert(group.to_owned(), g);
            }
        });
        Ok(Box::new(InProcessConsumer {
            queue: self.inner.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
        }))
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        Ok(self.inner.with_state(|s| {
            s.topics
                .get(topic)
                .and_then(|t| t.groups.get(group))
                .map(|g| {
                    g.dead
                        .iter()
                        .take(limit)
                        .map(|(id, reason, e)| DeadLetter {
                            delivery_id: id.to_string(),
                            reason: reason.clone(),
                            envelope: Some(e.clone()),
                        })
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn redrive(&self, topic: &str, group: &str) -> Result<u64> {
        let count = self.inner.with_state(|s| {
            let Some(g) = s
                .topics
                .get_mut(topic)
                .and_then(|t| t.groups.get_mut(group))
            else {
                return 0;
            };
            let dead = std::mem::take(&mut g.dead);
            let n = dead.len() as u64;
            for (id, _, mut envelope) in dead {
                envelope.attempt = 1;
                g.ready.push_back((id, envelope));
            }
            n
        });
        self.inner.notify.notify_waiters();
        Ok(count)
    }

    async fn stats(&self, topic: &str, group: &str) -> Result<QueueStats> {
        Ok(self.inner.with_state(|s| {
            let Some(t) = s.topics.get(topic) else {
                return QueueStats::default();
            };
            let g = t.groups.get(group);
            QueueStats {
                depth: t.history.len() as u64,
                pending: g.map(|g| g.pending.len() as u64).unwrap_or(0),
                lag: g
                    .map(|g| g.ready.len() as u64)
                    .unwrap_or(t.history.len() as u64),
                dead_letters: g.map(|g| g.dead.len() as u64).unwrap_or(0),
                delayed: t.delayed.len() as u64,
            }
        }))
    }
}

struct InProcessConsumer {
    queue: Arc<Inner>,
    topic: String,
    group: String,
}

#[async_trait::async_trait]
impl Consumer for InProcessConsumer {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.queue.notify.notified();
            let got = self.queue.with_state(|s| {
                self.queue.sweep(s, &self.topic);
                let visible_again = Instant::now() + self.queue.visibility_timeout;
                let mut batch = Vec::new();
                let Some(g) = s
                    .topics
                    .get_mut(&self.topic)
                    .and_then(|t| t.groups.get_mut(&self.group))
                else {
                    return batch;
                };
                while batch.len() < max.max(1) {
                    let Some((id, envelope)) = g.ready.pop_front() else {
                        break;
                    };
                    g.pending.insert(id, (envelope.clone(), visible_again));
                    batch.push(Delivery {
                        delivery_id: id.to_string(),
                        envelope,
                    });
                }
                batch
            });
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            // Wake on a publish, or poll again soon for delayed and expired messages.
            let nap = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        let id: u64 = delivery
            .delivery_id
            .parse()
            .map_err(|_| crate::QueueError::UnknownDelivery(delivery.delivery_id.clone()))?;
        self.queue.with_state(|s| {
            if let Some(g) = s
                .topics
                .get_mut(&self.topic)
                .and_then(|t| t.groups.get_mut(&self.group))
            {
                g.pending.remove(&id);
            }
        });
        Ok(())
    }

    async fn nack(&mut self, delivery: &Delivery, delay: Duration) -> Result<()> {
        self.ack(delivery).await?;
        let mut envelope = delivery.envelope.clone();
        envelope.attempt += 1;
        if envelope.attempt > self.queue.max_receives {
            return self.dead_letter(delivery, "retries exhausted").await;
        }
        // Only this group retries: the message goes back to this group's queue, not the topic.
        let due = Instant::now() + delay;
        let queue = self.queue.clone();
        let (topic, group) = (self.topic.clone(), self.group.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            queue.with_state(|s| {
                let id = s.next_id;
                s.next_id += 1;
                if let Some(g) = s
                    .topics
                    .get_mut(&topic)
                    .and_then(|t| t.groups.get_mut(&group))
                {
                    g.ready.push_back((id, envelope));
                }
            });
            queue.notify.notify_waiters();
        });
        Ok(())
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<()> {
        let id: u64 = delivery.delivery_id.parse().unwrap_or(0);
        self.queue.with_state(|s| {
            if let Some(g) = s
                .topics
                .get_mut(&self.topic)
                .and_then(|t| t.groups.get_mut(&self.group))
            {
                g.pending.remove(&id);
                g.dead
                    .push((id, reason.to_owned(), delivery.envelope.clone()));
            }
        });
        Ok(())
    }
}
