//! The channel senders: email over SMTP, Standard Webhooks, Teams, Slack, SMS and PagerDuty.
//!
//! A sender takes a planned delivery (its body was built by [`format`] at planning time) and
//! reports what the far end said. It never decides about retries; the dispatcher does.
//! Partner-supplied URLs go through the SSRF-guarded client; operator-configured endpoints
//! (the SMTP relay, the SMS provider, PagerDuty) use the plain one.

pub mod format;
pub mod signing;
pub mod sms;
pub mod ssrf;

use std::{path::PathBuf, sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{authentication::Credentials, client::Tls, client::TlsParameters},
};
use palisade_contracts::notify::v1::ChannelKind;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{error::Result, store::DeliveryRow};

pub use ssrf::SsrfPolicy;

/// What the far end answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub success: bool,
    /// The HTTP status, or the SMTP reply code; 0 when nothing answered.
    pub status: u32,
    pub detail: String,
    /// `Retry-After` from a 429 or 503, in seconds.
    pub retry_after: Option<u64>,
    /// The failure will not heal by retrying the same bytes (a refused address, 410 Gone,
    /// a rejected recipient).
    pub permanent: bool,
}

impl SendOutcome {
    fn ok(status: u32) -> Self {
        Self {
            success: true,
            status,
            ..Default::default()
        }
    }

    fn failed(status: u32, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            ..Default::default()
        }
    }

    fn permanent(status: u32, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            permanent: true,
            ..Default::default()
        }
    }

    pub fn gone(&self) -> bool {
        self.status == 410
    }

    pub fn throttled(&self) -> bool {
        self.status == 429
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP: only for a relay on the same host or in tests.
    None,
    /// STARTTLS on the submission port (587), required.
    #[default]
    Starttls,
    /// Implicit TLS (465).
    Tls,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// The From address, e.g. `Palisade <security-notifications@example.com>`.
    pub from: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: "Palisade <palisade@localhost>".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("from", &self.from)
            .finish()
    }
}

/// Where messages go: the real world, or files for the local run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    #[default]
    Live,
    /// Emails become `.eml` files under `<dir>/mail/new`, HTTP bodies `.json` files under
    /// `<dir>/http`, and both are logged; nothing leaves the machine.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelSettings {
    pub sink: SinkMode,
    pub sink_dir: PathBuf,
    pub smtp: SmtpSettings,
    pub ssrf: SsrfPolicy,
    pub sms: sms::SmsSettings,
    /// The PagerDuty Events API v2 endpoint.
    pub pagerduty_url: String,
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            sink: SinkMode::Live,
            sink_dir: PathBuf::from(".palisade/outbox"),
            smtp: SmtpSettings::default(),
            ssrf: SsrfPolicy::default(),
            sms: sms::SmsSettings::default(),
            pagerduty_url: "https://events.pagerduty.com/v2/enqueue".into(),
            http_timeout: Duration::from_secs(15),
        }
    }
}

/// A decrypted channel secret, held only for the duration of one send.
pub struct ChannelSecrets(pub Vec<SecretString>);

impl std::fmt::Debug for ChannelSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelSecrets([{} redacted])", self.0.len())
    }
}

pub struct Senders {
    settings: ChannelSettings,
    guarded: reqwest::Client,
    trusted: reqwest::Client,
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    sms: Arc<dyn sms::SmsProvider>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senders")
            .field("sink", &self.settings.sink)
            .finish_non_exhaustive()
    }
}

impl Senders {
    pub fn new(settings: ChannelSettings) -> anyhow::Result<Self> {
        let guarded = reqwest::Client::builder()
            .dns_resolver(ssrf::GuardedResolver::new(settings.ssrf))
            // A redirect could lead anywhere, including to a literal private address that no
            // resolver would see.
            .redirect(reqwest::redirect::Policy::none())
            // An environment proxy would connect on our behalf and bypass the address check.
            .no_proxy()
            .timeout(settings.http_timeout)
            .user_agent("Palisade-Notifier/1")
            .build()?;
        let trusted = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.http_timeout)
            .user_agent("Palisade-Notifier/1")
            .build()?;
        let smtp = build_smtp(&settings.smtp)?;
        let from: Mailbox = settings
            .smtp
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("channels.smtp.from: {e}"))?;
        let sms = sms::provider(&settings.sms, trusted.clone())?;
        Ok(Self {
            settings,
            guarded,
            trusted,
            smtp,
            from,
            sms,
        })
    }

    pub fn ssrf(&self) -> SsrfPolicy {
        self.settings.ssrf
    }

    /// Sends one delivery. `secrets` are the channel's signing secrets or routing key.
    pub async fn send(&self, d: &DeliveryRow, secrets: &ChannelSecrets) -> SendOutcome {
        let kind =
            ChannelKind::try_from(d.delivery.channel_kind).unwrap_or(ChannelKind::Unspecified);
        if self.settings.sink == SinkMode::File {
            return self.write_file(kind, d).await;
        }
        match kind {
            ChannelKind::Email => self.send_email(d).await,
            ChannelKind::Webhook => self.send_webhook(d, secrets).await,
            ChannelKind::Teams | ChannelKind::Slack => {
                self.post_json(
                    &self.guarded,
                    &d.delivery.target,
                    d.delivery.body.clone(),
                    &[],
                    true,
                )
                .await
            }
            ChannelKind::Sms => self.sms.send(&d.delivery.target, &d.delivery.body).await,
            ChannelKind::Pagerduty => self.send_pagerduty(d, secrets).await,
            ChannelKind::Unspecified => SendOutcome::permanent(0, "unknown channel kind"),
        }
    }

    async fn send_email(&self, d: &DeliveryRow) -> SendOutcome {
        let message = match build_email(&self.from, d) {
            Ok(m) => m,
            Err(e) => return SendOutcome::permanent(0, e),
        };
        match self.smtp.send(message).await {
            Ok(response) => SendOutcome::ok(u32::from(u16::from(response.code()))),
            Err(e) => {
                let code = e.status().map(|c| u32::from(u16::from(c))).unwrap_or(0);
                // 5xx replies are permanent for this message (bad recipient); transport
                // errors and 4xx are worth retrying.
                if e.is_permanent() {
                    SendOutcome::permanent(code, format!("smtp: {e}"))
                } else {
                    SendOutcome::failed(code, format!("smtp: {e}"))
                }
            }
        }
    }

    async fn send_webhook(&self, d: &DeliveryRow, secrets: &ChannelSecrets) -> SendOutcome {
        // Real time, not the injected clock: receivers check it against their own clocks
        // within a tolerance, and each attempt is signed afresh with the same id.
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signing::sign(
            &d.delivery.delivery_id,
            timestamp,
            d.delivery.body.as_bytes(),
            &secrets.0,
        );
        let headers = [
            ("webhook-id", d.delivery.delivery_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        self.post_json(
            &self.guarded,
            &d.delivery.target,
            d.delivery.body.clone(),
            &headers,
            true,
        )
        .await
    }

    async fn send_pagerduty(&self, d: &DeliveryRow, secrets: &ChannelSecrets) -> SendOutcome {
        let Some(key) = secrets.0.first() else {
            return SendOutcome::permanent(0, "pagerduty channel has no routing key");
        };
        let mut event: serde_json::Value = match serde_json::from_str(&d.delivery.body) {
            Ok(v) => v,
            Err(e) => return SendOutcome::permanent(0, format!("stored body is not json: {e}")),
        };
        event["routing_key"] = serde_json::Value::String(key.expose_secret().to_owned());
        let url = self.settings.pagerduty_url.clone();
        self.post_json(&self.trusted, &url, event.to_string(), &[], false)
            .await
    }

    async fn post_json(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: String,
        headers: &[(&str, String)],
        guarded: bool,
    ) -> SendOutcome {
        if guarded && let Err(e) = self.settings.ssrf.check_url(url) {
            return SendOutcome::permanent(0, e.to_string());
        }
        let mut request = client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = u32::from(response.status().as_u16());
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                if response.status().is_success() {
                    return SendOutcome::ok(status);
                }
                // A little of the answer helps whoever reads the delivery log.
                let text = response.text().await.unwrap_or_default();
                let detail = format!(
                    "http {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                SendOutcome {
                    retry_after,
                    ..SendOutcome::failed(status, detail)
                }
            }
            Err(e) => {
                let detail = error_chain(&e);
                if detail.contains("ssrf guard") {
                    SendOutcome::permanent(0, detail)
                } else {
                    SendOutcome::failed(0, detail)
                }
            }
        }
    }

    async fn write_file(&self, kind: ChannelKind, d: &DeliveryRow) -> SendOutcome {
        let (dir, name, bytes) = match kind {
            ChannelKind::Email => match build_email(&self.from, d) {
                Ok(m) => (
                    self.settings.sink_dir.join("mail").join("new"),
                    format!("{}.eml", d.delivery.delivery_id),
                    m.formatted(),
                ),
                Err(e) => return SendOutcome::permanent(0, e),
            },
            _ => (
                self.settings.sink_dir.join("http"),
                format!("{}.json", d.delivery.delivery_id),
                d.delivery.body.clone().into_bytes(),
            ),
        };
        tracing::info!(
            delivery_id = %d.delivery.delivery_id,
            channel_kind = kind.as_str_name(),
            target = %d.delivery.target,
            body = %d.delivery.body,
            "file sink: message written instead of sent"
        );
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(dir.join(name), bytes).await
        }
        .await;
        match result {
            Ok(()) => SendOutcome::ok(200),
            Err(e) => SendOutcome::failed(0, format!("file sink: {e}")),
        }
    }
}

fn build_smtp(s: &SmtpSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder = match s.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .tls(Tls::Required(TlsParameters::new(s.host.clone())?)),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .tls(Tls::Wrapper(TlsParameters::new(s.host.clone())?)),
    }
    .port(s.port)
    .timeout(Some(s.timeout));
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose_secret().to_owned(),
        ));
    }
    Ok(builder.build())
}

/// A text/plain UTF-8 message; lettre encodes a non-ASCII subject as an RFC 2047 word and
/// picks quoted-printable or base64 for the body.
fn build_email(from: &Mailbox, d: &DeliveryRow) -> Result<lettre::Message, String> {
    let to: Mailbox = d
        .delivery
        .target
        .parse()
        .map_err(|e| format!("recipient address: {e}"))?;
    let domain = from.email.domain().to_owned();
    lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(d.delivery.subject.clone())
        // Stable across retries, so a mail system can drop a duplicate.
        .message_id(Some(format!("<{}@{domain}>", d.delivery.delivery_id)))
        // lettre adds MIME-Version only to multipart messages; RFC 2045 wants it whenever
        // there is a Content-Type.
        .header(lettre::message::header::MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        .body(d.delivery.body.clone())
        .map_err(|e| format!("building the message: {e}"))
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let secs = at.timestamp() - chrono::Utc::now().timestamp();
    Some(secs.max(0) as u64)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What `TestChannel` and the dispatcher need from a channel row before sending.
pub fn kind_of(kind: i32) -> ChannelKind {
    ChannelKind::try_from(kind).unwrap_or(ChannelKind::Unspecified)
}
