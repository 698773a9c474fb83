//! At most one refresh per key: first within the process (single-flight, in `broker`), then
//! across replicas with a lease in Redis that carries an owner token, so only its holder can
//! release it and a crashed holder's lease simply expires.
//!
//! The lock is an optimisation for the identity provider, not the correctness of the refresh
//! token chain: that rests on the compare-and-swap on the consent's version. A lease that
//! expires under a slow holder can let a second redemption through, and the store still keeps
//! exactly one newest token.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;

/// A held lease; give it back with [`RefreshLock::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: String,
}

#[async_trait::async_trait]
pub trait RefreshLock: Send + Sync + std::fmt::Debug {
    /// Takes the lease if nobody holds it.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> anyhow::Result<Option<Lease>>;
    /// Releases the lease if this owner still holds it.
    async fn release(&self, lease: &Lease) -> anyhow::Result<()>;
}

fn owner_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Redis `SET key owner NX PX ttl`, released by a compare-and-delete script.
pub struct RedisLock {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("prefix", &self.prefix)
            .finish()
    }
}

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl RedisLock {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        // The default response timeout is short for a loaded replica; a slow answer is
        // better than a failed refresh.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}tokens:refresh-lock:{key}", self.prefix)
    }
}

#[async_trait::async_trait]
impl RefreshLock for RedisLock {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> anyhow::Result<Option<Lease>> {
        let owner = owner_token();
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| Lease {
            key: key.to_owned(),
            owner,
        }))
    }

    async fn release(&self, lease: &Lease) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.redis_key(&lease.key))
            .arg(&lease.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// For one replica without Redis (the embedded default): the same lease semantics in memory.
#[derive(Debug, Default)]
pub struct LocalLock {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

#[async_trait::async_trait]
impl RefreshLock for LocalLock {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> anyhow::Result<Option<Lease>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if held.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let owner = owner_token();
        held.insert(key.to_owned(), (owner.clone(), now + ttl));
        Ok(Some(Lease {
            key: key.to_owned(),
            owner,
        }))
    }

    async fn release(&self, lease: &Lease) -> anyhow::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(&lease.key).is_some_and(|(o, _)| *o == lease.owner) {
            held.remove(&lease.key);
        }
        Ok(())
    }
}
