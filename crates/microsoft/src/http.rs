//! What every Microsoft client shares: one typed HTTP error, retries with exponential backoff
//! that honour `Retry-After`, and a throttle budget that several callers (one per partner) can
//! share so that a fleet of pollers never exceeds what the API allows.
//!
//! This module never decides what a response means; the clients do. It only decides whether
//! an attempt may be repeated, and when.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::Rng;
use reqwest::{StatusCode, header::HeaderMap};
use serde::Deserialize;

/// Partner Center's documented error body: `{code, description, data, source}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PartnerCenterError {
    #[serde(default, deserialize_with = "crate::graph_alerts::lenient::string")]
    pub code: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub source: String,
}

/// Why a call to Microsoft failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Microsoft answered with a non-success status.
    #[error("{method} {path}: HTTP {status}{}", detail(.partner_center, .body))]
    Status {
        method: String,
        /// The path only: query strings may carry ids that do not belong in logs.
        path: String,
        status: u16,
        retry_after: Option<Duration>,
        /// `WWW-Authenticate`, e.g. `Bearer error="invalid_token"` for a token without MFA.
        www_authenticate: Option<String>,
        partner_center: Option<PartnerCenterError>,
        /// The body, truncated to 1 KiB.
        body: String,
    },
    /// The connection failed, was reset, or timed out.
    #[error("{method} {path}: {source}")]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// The response arrived but is not what the API documents (truncated or malformed JSON).
    #[error("{method} {path}: malformed response: {reason}")]
    Malformed {
        method: String,
        path: String,
        reason: String,
    },
    /// A URL we were asked to follow points somewhere we will not send a token.
    #[error("refused url: {0}")]
    RefusedUrl(String),
}

fn detail(pc: &Option<PartnerCenterError>, body: &str) -> String {
    match pc {
        Some(e) if !e.code.is_empty() || !e.description.is_empty() => {
            format!(" ({}: {})", e.code, e.description)
        }
        _ if body.is_empty() => String::new(),
        _ => format!(" ({})", body.chars().take(200).collect::<String>()),
    }
}

impl HttpError {
    /// The HTTP status, when Microsoft answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth repeating: throttling, server errors, timeouts, resets and torn bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                *status == 429 || *status == 408 || (500..=599).contains(status)
            }
            Self::Transport { .. } | Self::Malformed { .. } => true,
            Self::RefusedUrl(_) => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    pub(crate) fn malformed(method: &str, url: &reqwest::Url, reason: impl ToString) -> Self {
        Self::Malformed {
            method: method.to_owned(),
            path: url.path().to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// How often and how patiently a call is repeated.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is clamped (a misbehaving server cannot park us forever).
    pub max_retry_after: Duration,
    /// Never retry sooner than this, whatever the server says: no tight loops.
    pub min_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            min_delay: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (1-based `attempt` just failed).
    pub fn delay(&self, attempt: u32, error: &HttpError) -> Duration {
        if let Some(after) = error.retry_after() {
            return after.clamp(self.min_delay, self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay);
        // ±20 % jitter, so a fleet of pollers does not retry in lockstep.
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        exp.mul_f64(jitter).max(self.min_delay)
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A request budget shared by every caller holding it: a token bucket, plus a pause that a
/// 429 imposes on all of them (Graph throttles per app across tenants, so one partner's 429 is
/// everybody's).
#[derive(Debug)]
pub struct Throttle {
    per_second: f64,
    burst: f64,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    throttled: u64,
}

impl Throttle {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: per_second.max(0.001),
            burst,
            state: Mutex::new(ThrottleState {
                tokens: burst,
                refilled_at: Instant::now(),
                paused_until: None,
                throttled: 0,
            }),
        }
    }

    /// No limit (a test, or a caller that throttles elsewhere).
    pub fn unlimited() -> Self {
        Self::new(1e9, u32::MAX)
    }

    /// Waits for a request slot.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if let Some(until) = s.paused_until.filter(|u| *u > now) {
                    until - now
                } else {
                    let elapsed = now.duration_since(s.refilled_at).as_secs_f64();
                    s.tokens = (s.tokens + elapsed * self.per_second).min(self.burst);
                    s.refilled_at = now;
                    if s.tokens >= 1.0 {
                        s.tokens -= 1.0;
                        return;
                    }
                    Duration::from_secs_f64((1.0 - s.tokens) / self.per_second)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Everybody holding this budget waits at least `for_` before the next request.
    pub fn pause(&self, for_: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + for_;
        s.throttled += 1;
        if s.paused_until.is_none_or(|u| u < until) {
            s.paused_until = Some(until);
        }
    }

    /// How many 429s this budget has absorbed.
    pub fn throttled_count(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .throttled
    }
}

/// A successful response, read in full.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        url: &reqwest::Url,
    ) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::malformed(method, url, e))
    }
}

/// Sends one attempt and reads the whole body. Non-2xx statuses become [`HttpError::Status`].
pub async fn send_once(
    request: reqwest::RequestBuilder,
    method: &str,
    url: &reqwest::Url,
) -> Result<Response, HttpError> {
    let transport = |source| HttpError::Transport {
        method: method.to_owned(),
        path: url.path().to_owned(),
        source,
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport)?.to_vec();
    if status.is_success() {
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
    let text = String::from_utf8_lossy(&body);
    let partner_center = serde_json::from_slice::<PartnerCenterError>(&body).ok();
    Err(HttpError::Status {
        method: method.to_owned(),
        path: url.path().to_owned(),
        status: status.as_u16(),
        retry_after: parse_retry_after(&headers),
        www_authenticate: headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        partner_center,
        body: text.chars().take(1024).collect(),
    })
}

/// Sends `build()` until it succeeds and `parse` accepts the body, or the error is final, or
/// the attempts are spent. A 429 pauses the shared throttle for its `Retry-After`.
///
/// `build` is called once per attempt, so headers that must stay the same on a retry (such as
/// Partner Center's `MS-RequestId`) are decided by the caller, outside it.
pub async fn send_with_retry<T>(
    policy: &RetryPolicy,
    throttle: &Throttle,
    method: &str,
    url: &reqwest::Url,
    build: impl Fn() -> reqwest::RequestBuilder,
    parse: impl Fn(&Response) -> Result<T, HttpError>,
) -> Result<T, HttpError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        throttle.acquire().await;
        let result = match send_once(build(), method, url).await {
            Ok(response) => parse(&response),
            Err(e) => Err(e),
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt < policy.max_attempts => {
                let delay = policy.delay(attempt, &error);
                if error.is_throttled() {
                    throttle.pause(delay);
                }
                tracing::debug!(%error, attempt, delay_ms = delay.as_millis() as u64, "retrying a Microsoft call");
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                if error.is_throttled() {
                    throttle.pause(policy.delay(attempt, &error));
                }
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_clamped() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&headers), Some(Duration::ZERO));
        let policy = RetryPolicy::default();
        let throttled = |s: u64| HttpError::Status {
            method: "GET".into(),
            path: "/".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(s)),
            www_authenticate: None,
            partner_center: None,
            body: String::new(),
        };
        assert_eq!(policy.delay(1, &throttled(3)), Duration::from_secs(3));
        assert_eq!(policy.delay(1, &throttled(0)), policy.min_delay);
        assert_eq!(policy.delay(1, &throttled(100_000)), policy.max_retry_after);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default();
        let reset = HttpError::RefusedUrl("x".into());
        let first = policy.delay(1, &reset);
        let fifth = policy.delay(5, &reset);
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        assert!(fifth >= Duration::from_secs(6));
        assert!(policy.delay(30, &reset) <= policy.max_delay.mul_f64(1.2));
    }

    #[test]
    fn partner_center_error_bodies_are_kept() {
        let e: PartnerCenterError = serde_json::from_str(
            r#"{"code":600008,"description":"The requested resource was not found","data":[],"source":"PartnerFD"}"#,
        )
        .unwrap();
        assert_eq!(e.code, "600008");
        assert_eq!(e.source, "PartnerFD");
    }
}
