//! The one load generator every workload and its baseline share, so that a ratio compares the
//! system under test and nothing else.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub operations: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub histogram: Histogram<u64>,
}

impl Sample {
    pub fn throughput(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The one gRPC client connection every gRPC workload and its echo baseline use. HTTP/2 flow
/// control windows are raised from the 64 KiB default, as a client that makes thousands of calls
/// a second would: with 64 calls in flight, kilobyte replies would otherwise wait for
/// WINDOW_UPDATE frames.
pub async fn grpc_channel(addr: std::net::SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(1 << 20))
            .connect()
            .await?,
    )
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Closed loop: `concurrency` workers call `op` back to back for `duration`.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Sample
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let merged = Arc::new(Mutex::new((new_histogram(), 0_u64, 0_u64)));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let op = op.clone();
        let merged = merged.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let (mut ok, mut errors) = (0_u64, 0_u64);
            let mut i = worker as u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => {
                        ok += 1;
                        let _ = histogram.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
                i += concurrency as u64;
            }
            let mut m = merged.lock().await;
            let _ = m.0.add(&histogram);
            m.1 += ok;
            m.2 += errors;
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    let (histogram, operations, errors) = Arc::try_unwrap(merged)
        .map(|m| m.into_inner())
        .unwrap_or_else(|_| (new_histogram(), 0, 0));
    Sample {
        operations,
        errors,
        elapsed,
        histogram,
    }
}

/// Finds the highest throughput over increasing concurrency, then measures latency at half of
/// it: the "p99 at half of the maximum load" the targets speak of.
pub async fn max_then_half<F, Fut>(duration: Duration, op: F) -> (Sample, Sample)
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut best: Option<(usize, Sample)> = None;
    for concurrency in [8, 32, 64] {
        let sample = closed_loop(concurrency, duration, op.clone()).await;
        if best
            .as_ref()
            .is_none_or(|(_, b)| sample.throughput() > b.throughput())
        {
            best = Some((concurrency, sample));
        }
    }
    let (_, max) = best.expect("at least one run");
    let half_rate = (max.throughput() / 2.0).max(1.0);
    let half = fixed_rate(half_rate, duration, 64, op).await;
    (max, half)
}

/// Open loop at a fixed rate, latency measured from the intended start, so that a slow system
/// cannot hide its queueing delay (no coordinated omission).
pub async fn fixed_rate<F, Fut>(
    rate_per_s: f64,
    duration: Duration,
    max_in_flight: usize,
    op: F,
) -> Sample
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let total = (duration.as_secs_f64() * rate_per_s) as u64;
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let merged = Arc::new(Mutex::new((new_histogram(), 0_u64, 0_u64)));
    let start = Instant::now();
    // Paced from a blocking thread with the OS's sleep: tokio's timer has a resolution of one
    // millisecond, so pacing with it sent requests in bursts up to a millisecond late and
    // charged that delay to the system under test (an idle echo showed p50 ≈ 2 ms at half load).
    let runtime = tokio::runtime::Handle::current();
    let tasks = tokio::task::spawn_blocking(move || {
        let _precise = PreciseSleep::new();
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let intended = start + interval.mul_f64(i as f64);
            if let Some(early) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(early);
            }
            let permit = runtime.block_on(permits.clone().acquire_owned());
            let op = op.clone();
            let merged = merged.clone();
            tasks.push(runtime.spawn(async move {
                let result = op(i).await;
                let latency = intended.elapsed().as_micros().max(1) as u64;
                drop(permit);
                let mut m = merged.lock().await;
                match result {
                    Ok(()) => {
                        let _ = m.0.record(latency);
                        m.1 += 1;
                    }
                    Err(_) => m.2 += 1,
                }
            }));
        }
        (tasks, merged)
    })
    .await
    .expect("the pacer does not panic");
    let (tasks, merged) = tasks;
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let (histogram, operations, errors) = Arc::try_unwrap(merged)
        .map(|m| m.into_inner())
        .unwrap_or_else(|_| (new_histogram(), 0, 0));
    Sample {
        operations,
        errors,
        elapsed,
        histogram,
    }
}

/// The calling thread's sleeps end on time while this lives. Linux lets a sleep end up to the
/// thread's timer slack (50 µs by default) late, and every request's latency counts from its
/// intended start: the pacer's median lateness was ~90 µs with the default slack and ~40 µs
/// with 1 ns, for the echo and the broker alike. The pacer runs on a thread of the blocking
/// pool, which later runs other work, so the slack is restored on drop.
struct PreciseSleep {
    #[cfg(target_os = "linux")]
    previous: Option<std::num::NonZeroU64>,
}

impl PreciseSleep {
    fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            let previous = rustix::thread::current_timer_slack()
                .ok()
                .and_then(std::num::NonZeroU64::new);
            let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
            Self { previous }
        }
        #[cfg(not(target_os = "linux"))]
        Self {}
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        let _ = rustix::thread::set_current_timer_slack(self.previous);
    }
}

/// How long this process's threads have waited, in total, for a CPU while runnable (the
/// kernel's per-thread schedstat, Linux only). On a shared machine this is what a latency
/// tail is made of; the bench reports it next to the p99 it measured.
pub fn run_queue_wait() -> Option<Duration> {
    let mut total = 0_u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else {
            continue; // the thread has exited
        };
        total += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Two operations measured in alternating slices, A then B, `slices` times each, so that a busy
/// patch of a shared machine lands on both instead of on whichever ran at that moment. Each
/// pair of slices gives one ratio B/A; the caller takes the median.
pub struct Paired {
    pub ratios: Vec<f64>,
    pub a: Sample,
    pub b: Sample,
}

/// Runs `a` then `b`, `slices` times each (each call measures one slice), pairing them up.
pub async fn paired<FA, FB>(
    slices: usize,
    mut a: impl FnMut() -> FA,
    mut b: impl FnMut() -> FB,
) -> Paired
where
    FA: Future<Output = Sample>,
    FB: Future<Output = Sample>,
{
    let mut paired = Paired::new();
    for _ in 0..slices {
        let sa = a().await;
        let sb = b().await;
        paired.add(sa, sb);
    }
    paired
}

impl Paired {
    fn new() -> Self {
        let empty = || Sample {
            operations: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            histogram: new_histogram(),
        };
        Self {
            ratios: Vec::new(),
            a: empty(),
            b: empty(),
        }
    }

    fn add(&mut self, a: Sample, b: Sample) {
        self.ratios.push(b.throughput() / a.throughput().max(1e-9));
        for (total, slice) in [(&mut self.a, a), (&mut self.b, b)] {
            total.operations += slice.operations;
            total.errors += slice.errors;
            total.elapsed += slice.elapsed;
            let _ = total.histogram.add(&slice.histogram);
        }
    }
}
